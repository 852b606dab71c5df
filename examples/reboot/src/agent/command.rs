//! The commands an agent runs: the reboot signal, the health check, the pre-reboot hook and the
//! reboot itself. Each is a shell line (`sh -c`) or an argument vector run as is.

use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;

/// A command: `"systemctl reboot"` (run with `sh -c`) or `["systemctl", "reboot"]` (run as is).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    /// A line for `/bin/sh -c`.
    Shell(String),
    /// A program and its arguments.
    Argv(Vec<String>),
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandLine::Shell(line) => f.write_str(line),
            CommandLine::Argv(argv) => f.write_str(&argv.join(" ")),
        }
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// It could not be started (not found, not executable, empty).
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command.
        command: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{command}` failed ({status})")]
    Failed {
        /// The command.
        command: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// It ran past its timeout and was killed.
    #[error("`{command}` did not finish within {after:?} and was killed")]
    TimedOut {
        /// The command.
        command: String,
        /// The timeout.
        after: Duration,
    },
}

impl CommandLine {
    /// Whether it is empty (nothing to run).
    pub fn is_empty(&self) -> bool {
        match self {
            CommandLine::Shell(line) => line.trim().is_empty(),
            CommandLine::Argv(argv) => argv.first().is_none_or(String::is_empty),
        }
    }

    fn command(&self) -> tokio::process::Command {
        match self {
            CommandLine::Shell(line) => {
                let mut command = tokio::process::Command::new("/bin/sh");
                command.arg("-c").arg(line);
                command
            }
            CommandLine::Argv(argv) => {
                let mut command =
                    tokio::process::Command::new(argv.first().map_or("", String::as_str));
                command.args(argv.iter().skip(1));
                command
            }
        }
    }

    /// Runs it with `env` added to the environment, stdin closed and stdout/stderr inherited;
    /// kills it after `timeout` (when given). Returns how it exited.
    ///
    /// # Errors
    ///
    /// [`CommandError::Spawn`] or [`CommandError::TimedOut`] (a failing exit is not an error here).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future kills the command.
    pub async fn status(
        &self,
        env: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, CommandError> {
        let spawn_error = |source| CommandError::Spawn {
            command: self.to_string(),
            source,
        };
        if self.is_empty() {
            return Err(spawn_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty command",
            )));
        }
        let mut command = self.command();
        command
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(spawn_error)?;
        let waited = match timeout {
            Some(after) => match tokio::time::timeout(after, child.wait()).await {
                Ok(waited) => waited,
                Err(_) => {
                    let _ = child.kill().await;
                    return Err(CommandError::TimedOut {
                        command: self.to_string(),
                        after,
                    });
                }
            },
            None => child.wait().await,
        };
        waited.map_err(spawn_error)
    }

    /// Runs it as [`status`](Self::status) and requires success.
    ///
    /// # Errors
    ///
    /// As [`status`](Self::status), and [`CommandError::Failed`] for a non-zero exit.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future kills the command.
    pub async fn run(
        &self,
        env: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<(), CommandError> {
        let status = self.status(env, timeout).await?;
        if status.success() {
            Ok(())
        } else {
            Err(CommandError::Failed {
                command: self.to_string(),
                status,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[tokio::test]
    async fn shell_lines_and_argv_run_with_the_given_environment() {
        let line = CommandLine::Shell("test \"$X\" = yes".to_owned());
        assert!(line.run(&[("X", "yes")], None).await.is_ok());
        assert!(matches!(
            line.run(&[("X", "no")], None).await,
            Err(CommandError::Failed { .. })
        ));
        let argv = CommandLine::Argv(vec!["true".to_owned()]);
        assert!(argv.run(&[], None).await.is_ok());
    }

    #[tokio::test]
    async fn a_missing_program_or_an_empty_command_cannot_be_spawned() {
        for command in [
            CommandLine::Argv(vec!["/nonexistent/coord-reboot-test".to_owned()]),
            CommandLine::Argv(Vec::new()),
            CommandLine::Shell("  ".to_owned()),
        ] {
            assert!(
                matches!(
                    command.run(&[], None).await,
                    Err(CommandError::Spawn { .. })
                ),
                "{command:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        let slow = CommandLine::Shell("exec sleep 30".to_owned());
        let result = slow.run(&[], Some(Duration::from_millis(100))).await;
        assert!(
            matches!(result, Err(CommandError::TimedOut { .. })),
            "{result:?}"
        );
    }
}
