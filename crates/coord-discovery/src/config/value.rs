//! [`Config`]: one key holding a typed value, watched, with a default, a validation hook, and
//! compare-and-set writes.

use std::fmt;
use std::sync::Arc;

use coord_core::stream::{Entry, Event, Watcher};
use coord_core::{Client, RetryPolicy};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::codec::{Codec, Validator, error_chain};
use super::error::{BoxError, ConfigError};
use super::format::Format;
use super::write::{self, Written};

/// Where the value in use came from.
///
/// ```no_run
/// # fn demo(config: coord_discovery::config::Config<u32>) {
/// use coord_discovery::config::Source;
/// if config.borrow().source == Source::Default { println!("nothing stored: using the default"); }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// The key is absent (or nothing stored has been accepted yet): the default is in use.
    Default,
    /// The value stored in etcd at [`Snapshot::mod_revision`].
    Stored,
}

/// The config value in use, as of an etcd revision.
///
/// Snapshots of one [`Config`] only move forward: each has a higher `revision` than the one before.
#[non_exhaustive]
pub struct Snapshot<T> {
    /// The value in use: the last stored value that decoded and passed validation, or the default.
    pub value: Arc<T>,
    /// The etcd revision this snapshot reflects; 0 until the first read (not ready).
    pub revision: i64,
    /// The mod revision of the stored value in use; 0 when the default is in use.
    pub mod_revision: i64,
    /// Whether `value` is the default or a stored value.
    pub source: Source,
    /// Why the value currently stored is *not* in use ([`ConfigError::Decode`] or
    /// [`ConfigError::Invalid`]), or why the key cannot be followed now
    /// ([`ConfigError::Follow`]: etcd refuses the read or watch; cleared by the next successful
    /// read); `None` when the stored value (or the absence of one) is in use.
    pub last_error: Option<Arc<ConfigError>>,
}

impl<T> Snapshot<T> {
    /// Whether the snapshot reflects a read of the key (`revision > 0`).
    ///
    /// ```no_run
    /// # fn demo(config: coord_discovery::config::Config<u32>) {
    /// assert!(config.borrow().is_ready() || config.borrow().revision == 0);
    /// # }
    /// ```
    pub fn is_ready(&self) -> bool {
        self.revision > 0
    }
}

impl<T> Clone for Snapshot<T> {
    fn clone(&self) -> Snapshot<T> {
        Snapshot {
            value: Arc::clone(&self.value),
            revision: self.revision,
            mod_revision: self.mod_revision,
            source: self.source,
            last_error: self.last_error.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Snapshot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("value", &self.value)
            .field("revision", &self.revision)
            .field("mod_revision", &self.mod_revision)
            .field("source", &self.source)
            .field("last_error", &self.last_error)
            .finish()
    }
}

/// How a [`Config`] is set up: its default, validation hook, format and write retries.
#[must_use = "a builder does nothing until `start` is called"]
pub struct ConfigBuilder<T> {
    client: Client,
    name: String,
    default: T,
    validate: Option<Validator<T>>,
    format: Format,
    retry: RetryPolicy,
}

impl<T> fmt::Debug for ConfigBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("validate", &self.validate.is_some())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> ConfigBuilder<T> {
    /// A hook every value must pass before it is used (when read) or written (by
    /// [`Config::set`] and [`Config::update`]). A stored value it rejects is reported in
    /// [`Snapshot::last_error`] as [`ConfigError::Invalid`] and the last good value stays in use.
    /// The default is not checked.
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let workers = coord_discovery::config::Config::builder(&client, "workers", 4u32)
    ///     .validate(|n: &u32| if *n == 0 { Err("at least one worker") } else { Ok(()) })
    ///     .start()?;
    /// # let _ = workers; Ok(()) }
    /// ```
    pub fn validate<E, F>(mut self, hook: F) -> ConfigBuilder<T>
    where
        F: Fn(&T) -> Result<(), E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        self.validate = Some(Arc::new(move |value: &T| hook(value).map_err(Into::into)));
        self
    }

    /// The encoding of the stored value ([`Format::Json`] by default).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// use coord_discovery::config::{Config, Format};
    /// let limits = Config::builder(&client, "limits", 10u64).format(Format::Json).start()?;
    /// # let _ = limits; Ok(()) }
    /// ```
    pub fn format(mut self, format: Format) -> ConfigBuilder<T> {
        self.format = format;
        self
    }

    /// The backoff between attempts of [`Config::update`] after losing a compare-and-set
    /// (by default 2 ms doubling up to 200 ms, with jitter, for up to 30 s of delays).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// use coord_core::RetryPolicy;
    /// let counter = coord_discovery::config::Config::builder(&client, "counter", 0u64)
    ///     .retry(RetryPolicy::new().with_max_times(Some(100)))
    ///     .start()?;
    /// # let _ = counter; Ok(()) }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> ConfigBuilder<T> {
        self.retry = policy;
        self
    }

    /// Starts following the key in a background task on the current Tokio runtime and returns at
    /// once; until the first read, the default is in use with `revision == 0` (see
    /// [`Config::wait_ready`]). The task ends when the last clone of the `Config` (and of its
    /// [`receiver`](Config::receiver)) is dropped.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Core`] with [`coord_core::Error::InvalidName`] for a name
    /// [`validate_name`](coord_core::keys::validate_name) rejects, and with
    /// [`coord_core::Error::Shutdown`] when called outside a Tokio runtime.
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let limits = coord_discovery::config::Config::builder(&client, "limits", 10u64).start()?;
    /// # let _ = limits; Ok(()) }
    /// ```
    pub fn start(self) -> Result<Config<T>, ConfigError> {
        coord_core::keys::validate_name(self.client.namespace(), &self.name)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| coord_core::Error::Shutdown)?;
        let key = self.client.key(&self.name);
        let default = Arc::new(self.default);
        let (sender, receiver) = watch::channel(Snapshot {
            value: Arc::clone(&default),
            revision: 0,
            mod_revision: 0,
            source: Source::Default,
            last_error: None,
        });
        let shared = Arc::new(Shared {
            client: self.client,
            key,
            default,
            codec: Codec {
                format: self.format,
                validate: self.validate,
            },
            retry: self.retry,
        });
        let watcher = Watcher::key(&shared.client, shared.key.clone());
        runtime.spawn(follow(Arc::clone(&shared), watcher, sender));
        Ok(Config { shared, receiver })
    }
}

/// What the reader task and the writers share.
struct Shared<T> {
    client: Client,
    key: String,
    default: Arc<T>,
    codec: Codec<T>,
    retry: RetryPolicy,
}

impl<T: DeserializeOwned> Shared<T> {
    fn use_stored(&self, snapshot: &mut Snapshot<T>, entry: &Entry) {
        match self
            .codec
            .accept(&self.key, &entry.value, entry.mod_revision)
        {
            Ok(value) => {
                snapshot.value = Arc::new(value);
                snapshot.mod_revision = entry.mod_revision;
                snapshot.source = Source::Stored;
                snapshot.last_error = None;
            }
            Err(error) => {
                tracing::warn!(key = %self.key, mod_revision = entry.mod_revision, error = %error_chain(&error), "config: stored value rejected; keeping the last good one");
                snapshot.last_error = Some(Arc::new(error));
            }
        }
    }

    fn use_default(&self, snapshot: &mut Snapshot<T>) {
        snapshot.value = Arc::clone(&self.default);
        snapshot.mod_revision = 0;
        snapshot.source = Source::Default;
        snapshot.last_error = None;
    }

    /// Applies a watcher event; `false` (nothing published) for a revision already reflected.
    fn apply(&self, snapshot: &mut Snapshot<T>, event: Event) -> bool {
        let revision = event.revision();
        if revision <= snapshot.revision {
            return false;
        }
        match event {
            Event::Put { entry } => self.use_stored(snapshot, &entry),
            Event::Delete { .. } => self.use_default(snapshot),
            Event::Resync { puts, deletes, .. } => {
                if let Some(entry) = puts.iter().find(|e| e.key == self.key.as_bytes()) {
                    self.use_stored(snapshot, entry);
                } else if !deletes.is_empty() {
                    self.use_default(snapshot);
                }
                // Otherwise the key is as last reported (or absent from the start).
            }
            _ => {}
        }
        snapshot.revision = revision;
        true
    }
}

/// Follows the key until every receiver is gone.
async fn follow<T: DeserializeOwned + Send + Sync + 'static>(
    shared: Arc<Shared<T>>,
    mut watcher: Watcher,
    sender: watch::Sender<Snapshot<T>>,
) {
    loop {
        let event = tokio::select! {
            biased;
            () = sender.closed() => return,
            event = watcher.next() => event,
        };
        match event {
            Ok(event) => {
                sender.send_if_modified(|snapshot| {
                    let following_again = snapshot
                        .last_error
                        .as_deref()
                        .is_some_and(|e| matches!(e, ConfigError::Follow { .. }));
                    if following_again {
                        snapshot.last_error = None;
                    }
                    shared.apply(snapshot, event) || following_again
                });
            }
            // The watcher retries on the next call; what it returns needs the user (permission
            // denied and the like): report it in the snapshot, keeping the value.
            Err(error) => {
                let error = ConfigError::Follow {
                    key: shared.key.clone(),
                    source: Arc::new(error),
                };
                sender.send_modify(|snapshot| snapshot.last_error = Some(Arc::new(error)));
            }
        }
    }
}

/// One key holding a typed config value: always the latest good value, and compare-and-set
/// writes.
///
/// # Reading
///
/// A background task follows the key with a [`Watcher`] (so it resumes after disconnects and
/// resyncs after compaction; see its [recovery](coord_core::stream::Watcher#recovery)) and
/// publishes a [`Snapshot`] per revision in a [`tokio::sync::watch`] channel:
///
/// - key absent, or deleted → the default ([`Source::Default`]);
/// - a stored value that decodes and passes the validation hook → that value
///   ([`Source::Stored`]);
/// - a stored value that does not → the previous value stays in use (the last good stored value,
///   or the default) and [`Snapshot::last_error`] says why, until a later write or delete.
///
/// Snapshots only move forward in revision; like any `watch` channel, a slow reader skips
/// intermediate ones and sees the latest. After a compaction the snapshot jumps to the current
/// value. Errors that need an operator (permission denied…) are logged with `tracing` and retried;
/// the snapshot then stays at its last revision.
///
/// # Writing
///
/// [`set`](Config::set) writes a value; [`update`](Config::update) reads the stored value,
/// computes a new one and writes it only if the key's mod revision is still the one read
/// (`create_revision == 0` for an absent key), retrying on conflict. Values are validated before
/// they are written.
///
/// Clones share the task and the channel.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
/// #[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
/// struct Limits { max_jobs: u32 }
///
/// use coord_discovery::config::Config;
/// let mut limits = Config::builder(&client, "limits", Limits { max_jobs: 8 })
///     .validate(|l: &Limits| if l.max_jobs > 1000 { Err("max_jobs over 1000") } else { Ok(()) })
///     .start()?;
/// limits.wait_ready().await?;
/// limits.update(|old| Limits { max_jobs: old.max_jobs + 1 }).await?;
/// while limits.changed().await.is_ok() {
///     println!("max_jobs = {}", limits.borrow_and_update().value.max_jobs);
/// }
/// # Ok(()) }
/// ```
pub struct Config<T> {
    shared: Arc<Shared<T>>,
    receiver: watch::Receiver<Snapshot<T>>,
}

impl<T> Clone for Config<T> {
    fn clone(&self) -> Config<T> {
        Config {
            shared: Arc::clone(&self.shared),
            receiver: self.receiver.clone(),
        }
    }
}

impl<T> fmt::Debug for Config<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.receiver.borrow();
        f.debug_struct("Config")
            .field("key", &self.shared.key)
            .field("revision", &snapshot.revision)
            .field("source", &snapshot.source)
            .field("last_error", &snapshot.last_error.is_some())
            .finish()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Config<T> {
    /// A builder for the config stored under `name` (below the client's namespace), with
    /// `default` in use while the key is absent.
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let limits = coord_discovery::config::Config::builder(&client, "limits", 10u64).start()?;
    /// # let _ = limits; Ok(()) }
    /// ```
    pub fn builder(client: &Client, name: &str, default: T) -> ConfigBuilder<T> {
        ConfigBuilder {
            client: client.clone(),
            name: name.to_owned(),
            default,
            validate: None,
            format: Format::Json,
            retry: write::conflict_policy(),
        }
    }

    /// Shorthand for `Config::builder(client, name, default).start()`: JSON, no validation.
    ///
    /// # Errors
    ///
    /// As [`ConfigBuilder::start`].
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let limits = coord_discovery::config::Config::new(&client, "limits", 10u64)?;
    /// println!("{}", limits.get());
    /// # Ok(()) }
    /// ```
    pub fn new(client: &Client, name: &str, default: T) -> Result<Config<T>, ConfigError> {
        Config::builder(client, name, default).start()
    }
}

impl<T> Config<T> {
    /// The full key (with the client's namespace).
    ///
    /// ```no_run
    /// # fn demo(config: coord_discovery::config::Config<u64>) {
    /// println!("following {}", config.key());
    /// # }
    /// ```
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The value in use.
    ///
    /// ```no_run
    /// # fn demo(config: coord_discovery::config::Config<u64>) {
    /// let limit: std::sync::Arc<u64> = config.get();
    /// # let _ = limit; }
    /// ```
    pub fn get(&self) -> Arc<T> {
        Arc::clone(&self.receiver.borrow().value)
    }

    /// The latest snapshot (do not hold it across an `.await`: it locks the channel).
    ///
    /// ```no_run
    /// # fn demo(config: coord_discovery::config::Config<u64>) {
    /// let snapshot = config.borrow();
    /// println!("{} at revision {}", snapshot.value, snapshot.revision);
    /// # }
    /// ```
    pub fn borrow(&self) -> watch::Ref<'_, Snapshot<T>> {
        self.receiver.borrow()
    }

    /// The latest snapshot, marked as seen by [`changed`](Config::changed).
    ///
    /// ```no_run
    /// # fn demo(mut config: coord_discovery::config::Config<u64>) {
    /// let revision = config.borrow_and_update().revision;
    /// # let _ = revision; }
    /// ```
    pub fn borrow_and_update(&mut self) -> watch::Ref<'_, Snapshot<T>> {
        self.receiver.borrow_and_update()
    }

    /// Waits for a snapshot newer than the last one seen through this handle. Snapshots never go
    /// back in revision.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Closed`] when the background task is gone (its runtime shut down).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(mut config: coord_discovery::config::Config<u64>) -> Result<(), coord_discovery::config::ConfigError> {
    /// config.changed().await?;
    /// println!("now {}", config.borrow_and_update().value);
    /// # Ok(()) }
    /// ```
    pub async fn changed(&mut self) -> Result<(), ConfigError> {
        self.receiver
            .changed()
            .await
            .map_err(|_| ConfigError::Closed)
    }

    /// Waits until the key has been read once, and returns that snapshot (marked as seen).
    ///
    /// While etcd cannot be reached at all, the background task keeps retrying and this waits
    /// with it; bound it with [`tokio::time::timeout`] where a start-up deadline applies.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Closed`] when the background task is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(mut config: coord_discovery::config::Config<u64>) -> Result<(), coord_discovery::config::ConfigError> {
    /// let value = config.wait_ready().await?.value.clone();
    /// # let _ = value; Ok(()) }
    /// ```
    pub async fn wait_ready(&mut self) -> Result<watch::Ref<'_, Snapshot<T>>, ConfigError> {
        let snapshot = self
            .receiver
            .wait_for(|s| s.is_ready() || follow_error(&s.last_error).is_some())
            .await
            .map_err(|_| ConfigError::Closed)?;
        if !snapshot.is_ready() {
            if let Some(error) = follow_error(&snapshot.last_error) {
                return Err(error);
            }
        }
        Ok(snapshot)
    }

    /// A plain receiver of the snapshots (it keeps the background task alive like a `Config`).
    ///
    /// ```no_run
    /// # fn demo(config: coord_discovery::config::Config<u64>) {
    /// let mut snapshots = config.receiver();
    /// tokio::spawn(async move { while snapshots.changed().await.is_ok() {} });
    /// # }
    /// ```
    pub fn receiver(&self) -> watch::Receiver<Snapshot<T>> {
        self.receiver.clone()
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Config<T> {
    /// Writes `value` (after validating it), unconditionally.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when the validation hook rejects `value` (nothing is written),
    /// [`ConfigError::Encode`], or [`ConfigError::Core`] when etcd fails.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the write; it may or may not have happened.
    ///
    /// ```no_run
    /// # async fn demo(config: coord_discovery::config::Config<u64>) -> Result<(), coord_discovery::config::ConfigError> {
    /// let written = config.set(42).await?;
    /// println!("written at revision {}", written.revision);
    /// # Ok(()) }
    /// ```
    pub async fn set(&self, value: T) -> Result<Written<T>, ConfigError> {
        let shared = &self.shared;
        write::put(&shared.client, &shared.codec, &shared.key, value).await
    }

    /// Compare-and-set: reads the stored value (the default if the key is absent), computes
    /// `f(&old)`, validates it, and writes it only if the key was not written meanwhile (same mod
    /// revision; still absent for an absent key). On conflict it waits per the builder's
    /// [`retry`](ConfigBuilder::retry) policy and starts over with a fresh read, so `f` may run
    /// several times. Concurrent `update`s never lose each other's changes.
    ///
    /// # Errors
    ///
    /// - [`ConfigError::Decode`] when the stored value does not decode (`f` cannot be applied
    ///   to it; overwrite it with [`set`](Config::set)), [`ConfigError::Invalid`] when the hook
    ///   rejects the stored value or `f`'s result, [`ConfigError::Encode`];
    /// - [`ConfigError::Conflict`] when every attempt the policy allows lost to another writer;
    /// - [`ConfigError::Core`] when etcd fails. Reads are retried within the client's request
    ///   timeout; a failed write is **not** retried, because it may have been applied (retrying
    ///   would apply `f` twice): the write may or may not have happened.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the attempt in flight; its write may or may not have happened
    /// (once at most).
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let counter = coord_discovery::config::Config::new(&client, "counter", 0u64)?;
    /// let written = counter.update(|n| n + 1).await?;
    /// println!("counter = {} at revision {}", written.value, written.revision);
    /// # Ok(()) }
    /// ```
    pub async fn update<F>(&self, mut f: F) -> Result<Written<T>, ConfigError>
    where
        F: FnMut(&T) -> T,
    {
        let shared = &self.shared;
        write::compare_and_set(
            &shared.client,
            &shared.codec,
            &shared.retry,
            &shared.key,
            |old| f(old.as_ref().unwrap_or(&shared.default)),
        )
        .await
    }
}

/// A copy of a [`ConfigError::Follow`] held in a snapshot.
pub(crate) fn follow_error(error: &Option<Arc<ConfigError>>) -> Option<ConfigError> {
    match error.as_deref() {
        Some(ConfigError::Follow { key, source }) => Some(ConfigError::Follow {
            key: key.clone(),
            source: source.clone(),
        }),
        _ => None,
    }
}
