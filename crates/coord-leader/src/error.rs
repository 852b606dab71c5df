//! The error type of coord-leader.

/// A specialised `Result` for coord-leader.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when campaigning, leading, resigning or running a leadership loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A coord-core failure: invalid name, transport, timeout of a request, auth, session lost…
    #[error(transparent)]
    Core(#[from] coord_core::Error),

    /// The candidate's key was gone or replaced: leadership (or the candidacy) had ended before
    /// this call — an operator deleted the key, or another client on the same lease resigned it.
    /// An expired session is reported as [`coord_core::Error::SessionLost`] instead.
    #[error("not the leader: the key {key} was gone or replaced")]
    NotLeader {
        /// The candidate's key.
        key: String,
    },

    /// A proposal (campaign or proclaim value, runner identity) does not fit into one etcd request.
    ///
    /// etcd rejects requests over `--max-request-bytes` (1.5 MiB by default); the limit left for
    /// the value depends on the key's length, see [`crate::Election::max_value_len`]. Nothing was
    /// written.
    #[error("the value is {len} bytes long, over the limit of {max} bytes for this election")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The largest value this election accepts.
        max: usize,
    },

    /// A runner was given an empty identity: observers could not tell its leadership from an
    /// anonymous one.
    #[error("the identity is empty")]
    EmptyIdentity,
}

impl Error {
    /// Whether retrying can help (see [`coord_core::Error::is_retryable`]). Bad input and
    /// [`Error::NotLeader`] are final.
    ///
    /// ```
    /// use coord_leader::Error;
    ///
    /// assert!(!Error::NotLeader { key: "e/1".into() }.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Core(e) => e.is_retryable(),
            Error::NotLeader { .. } | Error::ValueTooLarge { .. } | Error::EmptyIdentity => false,
        }
    }

    /// Whether the error means the session is gone.
    pub fn is_session_lost(&self) -> bool {
        matches!(self, Error::Core(e) if e.is_session_lost())
    }
}
