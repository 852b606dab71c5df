//! What can go wrong, and the exit code each failure maps to (docs/coordctl.md, "Exit codes").

use std::time::Duration;

use coord_discovery::config::ConfigError;
use coord_discovery::service::ServiceError;

/// The exit codes coordctl documents. A command run by `lock` or `sem acquire` (`-- CMD…`) passes
/// its own exit code through; these are the ones coordctl adds.
pub mod exit {
    /// Success (with `-- CMD…`: CMD exited 0).
    pub const OK: u8 = 0;
    /// An error: etcd unreachable, authentication or permission refused, TLS, an unexpected
    /// response, a command that could not be started for another reason than the two below.
    pub const ERROR: u8 = 1;
    /// Usage: bad flags or arguments (clap's code), or an argument rejected before anything was
    /// written (an invalid name or id, a limit of 0, a value that is not JSON).
    pub const USAGE: u8 = 2;
    /// `config get`: the key is not set.
    pub const NOT_SET: u8 = 3;
    /// Not acquired: the lock, permit or leadership was not obtained within `--timeout`
    /// (sysexits' `EX_TEMPFAIL`, as `coord-reboot lock`).
    pub const NOT_ACQUIRED: u8 = 75;
    /// Lost: the session expired or the key was deleted while waiting or holding; a running
    /// command was sent SIGTERM.
    pub const LOST: u8 = 80;
    /// The command was found but could not be executed (as a shell reports it).
    pub const CANNOT_EXECUTE: u8 = 126;
    /// The command was not found (as a shell reports it).
    pub const NOT_FOUND: u8 = 127;
    /// `128 + N`: the command was killed by signal N, or coordctl was interrupted by signal N
    /// before it acquired anything.
    pub const SIGNAL_BASE: u8 = 128;
}

/// Everything coordctl reports as a failure. [`Error::exit_code`] says how the process ends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument that cannot be used; nothing was written.
    #[error("{0}")]
    Usage(String),

    /// A coord-core failure (connecting, sessions, requests).
    #[error(transparent)]
    Core(#[from] coord_core::Error),

    /// A lock or semaphore failure.
    #[error(transparent)]
    Lock(#[from] coord_lock::Error),

    /// An election failure.
    #[error(transparent)]
    Leader(#[from] coord_leader::Error),

    /// A service registry failure.
    #[error(transparent)]
    Service(#[from] ServiceError),

    /// A config failure.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// `--timeout` expired before the lock, permit or leadership was obtained (nothing is left in
    /// etcd).
    #[error("{what} not acquired within {after:?}")]
    NotAcquired {
        /// What was asked for, e.g. `lock jobs/nightly`.
        what: String,
        /// The timeout.
        after: Duration,
    },

    /// The lock, permit or leadership was lost while held: the session expired or the key was
    /// deleted.
    #[error("{what} was lost while held (session expired or key deleted)")]
    Lost {
        /// What was held.
        what: String,
    },

    /// A signal arrived before anything was acquired.
    #[error("interrupted by signal {signal} while waiting")]
    Interrupted {
        /// The signal number.
        signal: i32,
    },

    /// The command given after `--` could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// Waiting for the command or for signals failed.
    #[error("process handling failed")]
    Io(#[from] std::io::Error),

    /// A watch (`elect --observe`, `services watch`, `config watch`) ended for good: its etcd
    /// watch failed permanently (permission denied, authentication, TLS), see the log.
    #[error("{what} ended: the watch failed permanently (see the log above)")]
    WatchEnded {
        /// What was watched.
        what: String,
    },

    /// `config get`: the stored value is not JSON (a `Config<T>` reader ignores it too), or
    /// etcd stopped letting the key be read.
    #[error("{key}: {reason}")]
    ConfigUnusable {
        /// The full key.
        key: String,
        /// Why.
        reason: String,
    },

    /// `config get`: the key holds nothing.
    #[error("{key} is not set")]
    NotSet {
        /// The full key.
        key: String,
    },
}

impl Error {
    /// The process exit code for this failure (see [`exit`]).
    ///
    /// ```
    /// use coordctl::{Error, exit};
    ///
    /// assert_eq!(Error::Usage("empty name".into()).exit_code(), exit::USAGE);
    /// assert_eq!(Error::Interrupted { signal: 2 }.exit_code(), 130);
    /// ```
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Core(e) => core_code(e),
            Error::Lock(coord_lock::Error::Core(e)) => core_code(e),
            Error::Lock(
                coord_lock::Error::TimedOut { .. } | coord_lock::Error::WouldBlock { .. },
            ) => exit::NOT_ACQUIRED,
            Error::Lock(coord_lock::Error::NotHeld { .. }) => exit::LOST,
            Error::Leader(coord_leader::Error::Core(e)) => core_code(e),
            Error::Leader(coord_leader::Error::ValueTooLarge { .. }) => exit::USAGE,
            Error::Leader(coord_leader::Error::NotLeader { .. }) => exit::LOST,
            Error::Service(ServiceError::Core(e)) => core_code(e),
            Error::Service(
                ServiceError::InvalidService { .. }
                | ServiceError::InvalidInstanceId { .. }
                | ServiceError::InvalidAddr { .. },
            ) => exit::USAGE,
            Error::Config(ConfigError::Core(e)) => core_code(e),
            Error::Config(ConfigError::Invalid { .. } | ConfigError::Encode { .. }) => exit::USAGE,
            Error::NotAcquired { .. } => exit::NOT_ACQUIRED,
            Error::Lost { .. } => exit::LOST,
            Error::Interrupted { signal } => signal_code(*signal),
            Error::Spawn { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                std::io::ErrorKind::PermissionDenied => exit::CANNOT_EXECUTE,
                _ => exit::ERROR,
            },
            Error::NotSet { .. } => exit::NOT_SET,
            _ => exit::ERROR,
        }
    }
}

fn core_code(error: &coord_core::Error) -> u8 {
    match error {
        coord_core::Error::InvalidName { .. } | coord_core::Error::InvalidConfig { .. } => {
            exit::USAGE
        }
        e if e.is_session_lost() => exit::LOST,
        _ => exit::ERROR,
    }
}

/// `128 + signal`, as shells report a process killed by a signal.
pub(crate) fn signal_code(signal: i32) -> u8 {
    u8::try_from(signal)
        .ok()
        .and_then(|s| exit::SIGNAL_BASE.checked_add(s))
        .unwrap_or(exit::ERROR)
}

/// An error and its causes on one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // `#[error(transparent)]` layers repeat their source's message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
