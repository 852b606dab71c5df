//! The error type of coord-core, and how to tell whether retrying can help.

use std::time::Duration;

use tonic::Code;

use crate::keys::NameError;

/// A specialised `Result` for coord-core operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in coord-core.
///
/// Variants say *what* failed; [`Error::is_retryable`] says whether trying again (with a fresh
/// request, after a backoff) can help. Session loss ([`Error::SessionLost`]) is kept apart from
/// transport trouble on purpose: a lost session means every lock, permit or leadership bound to it
/// is gone, and retrying the same operation on the same session can never succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name or key given by the caller cannot be used (empty, NUL byte, trailing `/`, too long).
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The offending name, possibly shortened for display.
        name: String,
        /// Why it was rejected.
        #[source]
        reason: NameError,
    },

    /// A configuration value is out of range or malformed.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The setting, e.g. `"ttl"` or `"endpoints"`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The server granted a different TTL than requested and the caller asked for an exact TTL.
    ///
    /// etcd silently raises TTLs below its minimum (`ceil(1.5 × election timeout)`, 2 s by default).
    #[error("etcd granted a TTL of {granted:?} where {requested:?} was requested")]
    TtlNotGranted {
        /// What the caller asked for.
        requested: Duration,
        /// What the server granted.
        granted: Duration,
    },

    /// The client could not be built or could not reach any endpoint at connect time.
    #[error("cannot connect to etcd at {endpoints:?}")]
    Connect {
        /// The endpoints that were tried.
        endpoints: Vec<String>,
        /// The underlying failure.
        #[source]
        source: EtcdError,
    },

    /// A request did not complete within the client's per-request timeout.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out, e.g. `"txn"`.
        operation: &'static str,
        /// The timeout that expired.
        after: Duration,
    },

    /// The server or the network is temporarily unable to serve (no leader, connection refused or
    /// reset, leader changed, too many requests…). Retrying after a backoff may succeed.
    #[error("etcd unavailable during {operation}")]
    Unavailable {
        /// The operation that failed.
        operation: &'static str,
        /// The underlying failure.
        #[source]
        source: EtcdError,
    },

    /// The TLS handshake failed: wrong CA, expired or mismatched certificate, plain-text server…
    #[error(
        "TLS handshake with etcd failed during {operation} (check the CA, certificate and server name)"
    )]
    Tls {
        /// The operation that failed.
        operation: &'static str,
        /// The underlying failure; its chain names the certificate problem.
        #[source]
        source: EtcdError,
    },

    /// The user name or password was rejected, or the auth token is invalid.
    #[error("etcd authentication failed during {operation}")]
    AuthFailed {
        /// The operation that failed.
        operation: &'static str,
        /// The underlying failure.
        #[source]
        source: EtcdError,
    },

    /// The authenticated user lacks the permission the operation needs.
    #[error("permission denied by etcd during {operation}")]
    PermissionDenied {
        /// The operation that failed.
        operation: &'static str,
        /// The underlying failure.
        #[source]
        source: EtcdError,
    },

    /// The session's lease expired or was revoked, or the session could not prove it is alive in
    /// time. Everything bound to it is gone; start a new session.
    #[error("session (lease {lease_id}) lost")]
    SessionLost {
        /// The lease that was lost, in Go's lowercase hex.
        lease_id: crate::LeaseId,
    },

    /// The session was closed (or detached) by its owner.
    #[error("session (lease {lease_id}) closed")]
    SessionClosed {
        /// The lease of the closed session.
        lease_id: crate::LeaseId,
    },

    /// A watch could not continue because the revision it needed was compacted away.
    #[error("revision {requested} compacted (compaction at {compact_revision})")]
    Compacted {
        /// The revision that was asked for.
        requested: i64,
        /// The server's compaction revision.
        compact_revision: i64,
    },

    /// A background reader (a [`Cache`](crate::cache::Cache)) cannot follow `prefix`: etcd refuses
    /// the read or the watch (`source`: permission denied, authentication, TLS). It keeps
    /// retrying; this is what its `wait_ready` reports instead of waiting for ever.
    #[error("cannot follow {prefix}")]
    Follow {
        /// The full key prefix.
        prefix: String,
        /// What etcd said (shared with the snapshot that reports it).
        #[source]
        source: std::sync::Arc<Error>,
    },

    /// The server cancelled a watch for a reason other than compaction (for example a permission
    /// revoked while watching).
    #[error("etcd cancelled the watch: {reason}")]
    WatchCancelled {
        /// The server's cancel reason.
        reason: String,
    },

    /// etcd answered with a response whose shape the operation did not expect (for example fewer
    /// results than the transaction had operations). Not retryable: it points at a bug or an
    /// incompatible server.
    #[error("etcd answered {operation} with a response of an unexpected shape")]
    UnexpectedResponse {
        /// The operation.
        operation: &'static str,
    },

    /// A background task the operation depends on was cancelled: the Tokio runtime is shutting down.
    #[error("the runtime is shutting down")]
    Shutdown,

    /// etcd answered with an error that none of the other variants describes (bad request, lease not
    /// found, request too large…).
    #[error("etcd rejected {operation}")]
    Etcd {
        /// The operation that failed.
        operation: &'static str,
        /// The underlying failure.
        #[source]
        source: EtcdError,
    },
}

impl Error {
    /// Whether retrying the operation (after a backoff, within the caller's own deadline) can help.
    ///
    /// `true` for timeouts and for transport or availability problems (no leader, leader changed,
    /// connection refused or reset, too many requests). `false` for everything that needs a change
    /// by the caller: bad input, authentication and permissions, TLS set-up, a lost or closed session,
    /// compaction (re-read instead of retrying the same revision).
    ///
    /// ```
    /// use coord_core::Error;
    /// use std::time::Duration;
    ///
    /// let e = Error::Timeout { operation: "get", after: Duration::from_secs(5) };
    /// assert!(e.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Follow { source, .. } => source.is_retryable(),
            _ => matches!(self, Error::Timeout { .. } | Error::Unavailable { .. }),
        }
    }

    /// Whether this error means the session (and everything bound to it) is gone.
    pub fn is_session_lost(&self) -> bool {
        matches!(self, Error::SessionLost { .. })
    }

    /// The error for a watch the server cancelled with `reason` (other than for compaction):
    /// a denied permission or failed authentication is classified as such (etcd only says so in
    /// the cancel reason), anything else is [`Error::WatchCancelled`].
    ///
    /// ```
    /// use coord_core::Error;
    ///
    /// let denied = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
    /// assert!(matches!(Error::watch_cancelled(denied), Error::PermissionDenied { operation: "watch", .. }));
    /// assert!(matches!(Error::watch_cancelled("shutting down"), Error::WatchCancelled { .. }));
    /// ```
    pub fn watch_cancelled(reason: &str) -> Error {
        let status = |code| {
            EtcdError(etcd_client::Error::GRpcStatus(tonic::Status::new(
                code,
                reason.to_owned(),
            )))
        };
        if reason.contains("code = PermissionDenied") || reason.contains("permission denied") {
            Error::PermissionDenied {
                operation: "watch",
                source: status(Code::PermissionDenied),
            }
        } else if reason.contains("code = Unauthenticated")
            || reason.contains("invalid auth token")
            || reason.contains("authentication failed")
        {
            Error::AuthFailed {
                operation: "watch",
                source: status(Code::Unauthenticated),
            }
        } else {
            Error::WatchCancelled {
                reason: reason.to_owned(),
            }
        }
    }

    /// Classifies an etcd-client error that happened during `operation`.
    pub fn from_etcd(operation: &'static str, source: etcd_client::Error) -> Error {
        let source = EtcdError(source);
        let code = match &source.0 {
            etcd_client::Error::GRpcStatus(status) => {
                Some((status.code(), status.message().to_owned()))
            }
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                return if mentions_tls(&source) {
                    Error::Tls { operation, source }
                } else {
                    Error::Unavailable { operation, source }
                };
            }
            _ => None,
        };
        let Some((code, message)) = code else {
            return Error::Etcd { operation, source };
        };
        match code {
            Code::PermissionDenied => Error::PermissionDenied { operation, source },
            Code::Unauthenticated => Error::AuthFailed { operation, source },
            Code::InvalidArgument if message.contains("authentication failed") => {
                Error::AuthFailed { operation, source }
            }
            Code::FailedPrecondition if message.contains("user name is empty") => {
                Error::AuthFailed { operation, source }
            }
            Code::Unavailable | Code::Unknown | Code::Cancelled if mentions_tls(&source) => {
                Error::Tls { operation, source }
            }
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled => Error::Unavailable { operation, source },
            // etcd reports "leader changed" and "timed out" style conditions as Unknown in some
            // versions; they are transient.
            Code::Unknown if is_transient_message(&message) => {
                Error::Unavailable { operation, source }
            }
            _ => Error::Etcd { operation, source },
        }
    }
}

/// An error reported by etcd-client, with its cause chain exposed through
/// [`std::error::Error::source`] (etcd-client's own error type does not expose it).
#[derive(Debug)]
pub struct EtcdError(etcd_client::Error);

impl EtcdError {
    /// The gRPC status code, when the server (or tonic) answered with a status.
    pub fn code(&self) -> Option<Code> {
        match &self.0 {
            etcd_client::Error::GRpcStatus(status) => Some(status.code()),
            _ => None,
        }
    }

    /// The etcd-client error itself.
    pub fn inner(&self) -> &etcd_client::Error {
        &self.0
    }

    /// Unwraps the etcd-client error.
    pub fn into_inner(self) -> etcd_client::Error {
        self.0
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            etcd_client::Error::GRpcStatus(status) => std::error::Error::source(status),
            etcd_client::Error::TransportError(e) => Some(e),
            etcd_client::Error::IoError(e) => Some(e),
            etcd_client::Error::InvalidUri(e) => Some(e),
            etcd_client::Error::Utf8Error(e) => Some(e),
            _ => None,
        }
    }
}

fn is_transient_message(message: &str) -> bool {
    const TRANSIENT: [&str; 6] = [
        "leader changed",
        "no leader",
        "timed out",
        "too many requests",
        "transport",
        "connection",
    ];
    TRANSIENT.iter().any(|t| message.contains(t))
}

/// Walks the error chain looking for a TLS/certificate failure: tonic and rustls bury it a few
/// `source()` levels down ("invalid peer certificate: UnknownIssuer").
fn mentions_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
            return true;
        }
        current = e.source();
    }
    false
}
