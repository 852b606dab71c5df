//! What can go wrong registering or discovering a service instance.

use std::sync::Arc;

use coord_core::LeaseId;
use coord_core::keys::NameError;

/// Everything that can go wrong registering, updating, deregistering or discovering an instance.
///
/// Input errors ([`InvalidService`](ServiceError::InvalidService),
/// [`InvalidInstanceId`](ServiceError::InvalidInstanceId), [`InvalidAddr`](ServiceError::InvalidAddr),
/// [`Encode`](ServiceError::Encode)) are found before anything is sent: nothing is written.
///
/// ```no_run
/// # async fn demo(session: coord_core::Session) {
/// use coord_discovery::service::{Instance, ServiceError, register};
///
/// match register(&session, "api", Instance::new("api-1", "10.0.0.1:8080", ())).await {
///     Ok(registration) => { let _ = registration; }
///     Err(ServiceError::Conflict { key, lease, .. }) => eprintln!("{key} is held by lease {lease}"),
///     Err(e) if e.is_retryable() => eprintln!("etcd trouble, try again: {e}"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// etcd (or the connection to it) failed; see [`coord_core::Error::is_retryable`].
    #[error(transparent)]
    Core(#[from] coord_core::Error),

    /// The service name cannot be used: empty, NUL byte, trailing `/`, or too long.
    #[error("invalid service name {name:?}")]
    InvalidService {
        /// The rejected name, possibly shortened.
        name: String,
        /// Why.
        #[source]
        reason: NameError,
    },

    /// The instance id cannot be used: empty, NUL byte, a `/` (ids are one key segment), or too
    /// long together with the namespace and the service name.
    #[error("invalid instance id {id:?}")]
    InvalidInstanceId {
        /// The rejected id, possibly shortened.
        id: String,
        /// Why.
        #[source]
        reason: NameError,
    },

    /// The address is empty or contains whitespace or control characters.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddr {
        /// The rejected address.
        addr: String,
        /// Why.
        reason: &'static str,
    },

    /// The instance (its metadata) could not be encoded as JSON — including metadata holding a
    /// NaN or infinite float, which JSON cannot represent (serde_json would store `null`, which
    /// no discoverer could decode). Nothing was written.
    #[error("cannot encode the instance for {key}")]
    Encode {
        /// The full key.
        key: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },

    /// Another process holds this instance id: the key exists and is attached to a lease that is
    /// not this registration's. Nothing was written. If the holder died, its key goes when its
    /// lease expires (`lease` is 0 for a key without lease, which never expires by itself).
    #[error("{key} is registered by another holder (lease {lease})")]
    Conflict {
        /// The full key.
        key: String,
        /// The lease the existing key is attached to.
        lease: LeaseId,
    },

    /// This process already has a live [`Registration`](super::Registration) of this instance id
    /// on this etcd cluster. Two registrations of one id would overwrite each other's metadata
    /// and one's deregistration would remove the other's entry, so the second is refused.
    #[error("{key} is already registered by this process")]
    AlreadyRegistered {
        /// The full key.
        key: String,
    },

    /// The registration is not in etcd right now (its session was lost, or its key was deleted)
    /// and is being re-made. The value just set was **kept**: the re-registration writes it.
    #[error(
        "{key} is not registered at the moment (re-registration pending); the new value will be written with it"
    )]
    NotRegistered {
        /// The full key.
        key: String,
    },

    /// The registration was deregistered (or its session closed by its owner): nothing more can
    /// be written through it.
    #[error("{key} was deregistered")]
    Deregistered {
        /// The full key.
        key: String,
    },

    /// A background task the operation depends on is gone: the Tokio runtime is shutting down.
    #[error("the runtime is shutting down")]
    Shutdown,

    /// The service cannot be followed: etcd refuses the read or the watch (permission denied,
    /// failed authentication, TLS). The discovery keeps retrying in the background; this is what
    /// [`Discovery::wait_ready`](crate::service::Discovery::wait_ready) reports instead of waiting
    /// for ever, and what [`ServiceSet::error`](crate::service::ServiceSet::error) holds.
    #[error("cannot follow service {service}")]
    Follow {
        /// The service name.
        service: String,
        /// What etcd said (shared with the snapshot that reports it).
        #[source]
        source: Arc<coord_core::Error>,
    },
}

impl ServiceError {
    /// Whether trying again can help: transient etcd trouble, or a registration that is being
    /// re-made ([`NotRegistered`](ServiceError::NotRegistered)).
    ///
    /// A [`Conflict`](ServiceError::Conflict) is not retryable as such: it may resolve when the
    /// holder's lease expires, but it may also be a real duplicate id.
    ///
    /// ```
    /// use coord_discovery::service::ServiceError;
    ///
    /// assert!(!ServiceError::Shutdown.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            ServiceError::Core(e) => e.is_retryable(),
            ServiceError::Follow { source, .. } => source.is_retryable(),
            ServiceError::NotRegistered { .. } => true,
            _ => false,
        }
    }
}
