//! Running a command (`-- CMD…`) while something is held: it gets the key and the fencing token
//! in its environment, coordctl exits with its exit code and releases after it; if the hold is
//! lost meanwhile, the command is sent SIGTERM (then SIGKILL after a grace period).

use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tokio::process::{Child, Command};

use crate::Error;
use crate::error::signal_code;
use crate::held::Held;
use crate::signals::{Signals, Stop};

/// Runs `command` (program and arguments) with `env` added to coordctl's environment while
/// `held` lasts, then releases it.
///
/// - The command exits: release, then its exit code (`128 + N` if killed by signal N). If the
///   release finds the key gone, the hold was lost before the command finished: [`Error::Lost`].
/// - The hold is lost: SIGTERM to the command, SIGKILL after `grace`, then [`Error::Lost`].
/// - SIGTERM to coordctl is passed on to the command, and coordctl goes on waiting for it;
///   SIGINT is not (Ctrl-C in a terminal reaches the whole process group already).
pub(crate) async fn run_while_held(
    held: Held,
    command: &[String],
    env: Vec<(&'static str, String)>,
    signals: &mut Signals,
    grace: Duration,
) -> Result<u8, Error> {
    let Some((program, args)) = command.split_first() else {
        held.release().await?;
        return Err(Error::Usage("no command given after --".to_owned()));
    };
    let spawned = Command::new(program).args(args).envs(env).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(source) => {
            held.release().await?;
            return Err(Error::Spawn {
                program: program.clone(),
                source,
            });
        }
    };

    enum Next {
        Exited(std::io::Result<ExitStatus>),
        Lost,
        Stopped(Stop),
    }
    loop {
        let next = tokio::select! {
            status = child.wait() => Next::Exited(status),
            () = held.lost() => Next::Lost,
            stop = signals.recv() => Next::Stopped(stop),
        };
        match next {
            Next::Exited(status) => {
                let code = exit_code(status?);
                return match held.release().await {
                    Ok(()) => Ok(code),
                    Err(lost @ Error::Lost { .. }) => Err(lost),
                    Err(e) => {
                        // The session's close revokes the lease, which releases it anyway.
                        tracing::warn!(error = %crate::error::chain(&e), "release after the command failed");
                        Ok(code)
                    }
                };
            }
            Next::Lost => {
                tracing::warn!(held = %held.describe(), "lost while the command runs: stopping it");
                terminate(&mut child, grace).await;
                return Err(Error::Lost {
                    what: held.describe(),
                });
            }
            Next::Stopped(Stop::Terminate) => signal(&child, Signal::TERM),
            Next::Stopped(Stop::Interrupt) => {}
        }
    }
}

/// SIGTERM, then SIGKILL if the command is still running after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    signal(child, Signal::TERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(?grace, "the command ignored SIGTERM: killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

fn signal(child: &Child, signal: Signal) {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    if let Some(pid) = pid {
        // The child may have exited meanwhile (ESRCH): nothing to do then.
        let _ = kill_process(pid, signal);
    }
}

/// The exit code as a shell reports it.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(crate::exit::ERROR),
        (None, Some(signal)) => signal_code(signal),
        (None, None) => crate::exit::ERROR,
    }
}
