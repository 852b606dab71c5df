//! The one error type of this crate.

use std::{io, path::PathBuf, time::Duration};

/// Why a testkit operation failed.
///
/// Every variant names the problem in its message; startup failures carry the
/// last lines of the etcd log, so a failing test shows what etcd said.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No etcd binary could be found (see [`etcd_binary`](crate::etcd_binary)).
    #[error("cannot find the etcd binary: {reason}")]
    BinaryNotFound {
        /// What was tried.
        reason: String,
    },

    /// `etcd-bin-vendored` ships no etcd for this platform and `$COORD_ETCD_BIN` is not set.
    #[error("no vendored etcd for this platform; set COORD_ETCD_BIN to an etcd binary")]
    UnsupportedPlatform(#[source] etcd_bin_vendored::ArchitectureNotSupported),

    /// A file-system, socket or process operation failed.
    #[error("{context}")]
    Io {
        /// What the testkit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An etcd process did not become healthy.
    ///
    /// When a first start fails, the server's directory is kept so that the log can be
    /// read; the first start in a later test process removes it.
    #[error("etcd member `{member}` did not start: {reason}\n--- last lines of {} ---\n{log_tail}", log.display())]
    Startup {
        /// The member name (`--name`).
        member: String,
        /// Why the testkit gave up (process exited, timed out, ...).
        reason: String,
        /// The member's log file (stdout and stderr of etcd).
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// An etcd RPC issued by the testkit failed.
    #[error("{context}")]
    Client {
        /// What the testkit was doing.
        context: String,
        /// The client error.
        #[source]
        source: etcd_client::Error,
    },

    /// An HTTP request to an etcd metrics/health endpoint failed.
    #[error("GET {url} failed: {reason}")]
    Http {
        /// The requested URL.
        url: String,
        /// What went wrong.
        reason: String,
    },

    /// Generating test certificates failed.
    #[error("cannot generate test certificates")]
    Certificates(#[source] rcgen::Error),

    /// No raft leader was observed among the live members within the deadline.
    #[error("no raft leader among the live members after {waited:?}")]
    NoLeader {
        /// How long the testkit waited.
        waited: Duration,
    },

    /// A member index was out of range.
    #[error("no member {index}: the cluster has {len} members")]
    NoSuchMember {
        /// The requested index.
        index: usize,
        /// The cluster size.
        len: usize,
    },

    /// A wait for a state of etcd did not end in time.
    #[error("no {what} after {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },

    /// A builder was given values that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn client(context: impl Into<String>, source: etcd_client::Error) -> Self {
        Error::Client {
            context: context.into(),
            source,
        }
    }
}
