//! The error type of coord-lock.

use std::time::Duration;

/// A specialised `Result` for coord-lock.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when acquiring or releasing a lock or permit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A coord-core failure: invalid name, transport, timeout of a request, auth, session lost…
    #[error(transparent)]
    Core(#[from] coord_core::Error),

    /// `try_lock` found the lock held by someone else.
    #[error("{name} is held by another holder")]
    WouldBlock {
        /// The full key prefix of the lock.
        name: String,
    },

    /// A bounded wait (`lock_timeout`) expired; the waiter's key has been removed.
    #[error("gave up waiting for {name} after {after:?}")]
    TimedOut {
        /// The full key prefix of the lock.
        name: String,
        /// The bound that expired.
        after: Duration,
    },

    /// The holder's key was gone or replaced when it was released or checked: the lock had been
    /// lost (session expiry, or an operator deleted the key) before this call.
    #[error("the lock {key} was no longer held")]
    NotHeld {
        /// The holder's key.
        key: String,
    },
}

impl Error {
    /// Whether retrying can help (see [`coord_core::Error::is_retryable`]); `WouldBlock` and
    /// `TimedOut` are retryable: the lock may be free later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Core(e) => e.is_retryable(),
            Error::WouldBlock { .. } | Error::TimedOut { .. } => true,
            Error::NotHeld { .. } => false,
        }
    }

    /// Whether the error means the session is gone.
    pub fn is_session_lost(&self) -> bool {
        matches!(self, Error::Core(e) if e.is_session_lost())
    }
}
