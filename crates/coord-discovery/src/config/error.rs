//! What can go wrong with a config value: etcd trouble, a value that does not decode, a value the
//! validation hook rejects, a write that keeps losing its compare-and-set.

use std::error::Error as StdError;
use std::sync::Arc;

/// A boxed error from a decoder, an encoder or a validation hook.
///
/// ```
/// let reason: coord_discovery::config::BoxError = "max_jobs must be positive".into();
/// assert_eq!(reason.to_string(), "max_jobs must be positive");
/// ```
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong reading, watching or writing a config value.
///
/// Decode and validation failures of a *stored* value never replace the value in use: they are
/// reported in [`Snapshot::last_error`](crate::config::Snapshot::last_error) while the last good
/// value stays.
///
/// ```no_run
/// # fn demo(config: coord_discovery::config::Config<u32>) {
/// use coord_discovery::config::ConfigError;
/// if let Some(error) = &config.borrow().last_error {
///     match &**error {
///         ConfigError::Decode { mod_revision, .. } => eprintln!("revision {mod_revision} is not valid JSON"),
///         ConfigError::Invalid { source, .. } => eprintln!("rejected: {source}"),
///         other => eprintln!("{other}"),
///     }
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// etcd (or the connection to it) failed; see [`coord_core::Error::is_retryable`].
    #[error(transparent)]
    Core(#[from] coord_core::Error),

    /// The stored bytes are not a valid encoding of the value type.
    #[error("cannot decode {key} (mod revision {mod_revision})")]
    Decode {
        /// The full key.
        key: String,
        /// The revision of the undecodable value.
        mod_revision: i64,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },

    /// The value decoded but the validation hook rejected it (or, when writing, would reject it).
    #[error("invalid value for {key} (mod revision {mod_revision})")]
    Invalid {
        /// The full key.
        key: String,
        /// The revision of the rejected value (0 for a value that was never written).
        mod_revision: i64,
        /// The hook's reason.
        #[source]
        source: BoxError,
    },

    /// The value could not be encoded for writing.
    #[error("cannot encode the value for {key}")]
    Encode {
        /// The full key.
        key: String,
        /// The encoder's error.
        #[source]
        source: BoxError,
    },

    /// An [`update`](crate::config::Config::update) lost its compare-and-set to other writers on
    /// every attempt its retry policy allowed.
    #[error("{key}: gave up after {attempts} conflicting writes")]
    Conflict {
        /// The full key.
        key: String,
        /// How many compare-and-sets were tried.
        attempts: usize,
    },

    /// The config's background task is gone (its runtime shut down).
    #[error("the config watch ended: the runtime is shutting down")]
    Closed,

    /// The key (or prefix) cannot be followed: etcd refuses the read or the watch (permission
    /// denied, failed authentication, TLS). The config keeps retrying in the background and keeps
    /// its last good value; this is what `wait_ready` reports instead of waiting for ever, and
    /// what the snapshot's `last_error` (`follow_error` for a map) holds until a read succeeds.
    #[error("cannot follow {key}")]
    Follow {
        /// The full key or prefix.
        key: String,
        /// What etcd said.
        #[source]
        source: Arc<coord_core::Error>,
    },
}

impl ConfigError {
    /// Whether trying again can help (transient etcd trouble, or a lost race with other writers).
    ///
    /// ```
    /// use coord_discovery::config::ConfigError;
    ///
    /// let e = ConfigError::Conflict { key: "app/limits".into(), attempts: 10 };
    /// assert!(e.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            ConfigError::Core(e) => e.is_retryable(),
            ConfigError::Follow { source, .. } => source.is_retryable(),
            ConfigError::Conflict { .. } => true,
            _ => false,
        }
    }
}
