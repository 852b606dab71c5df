//! [`ConfigMap`]: every key under a prefix as a map of typed values, watched entry by entry, with
//! defaults, a validation hook, and compare-and-set writes per entry.

use std::collections::BTreeMap;
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
use super::value::Source;
use super::write::{self, Written};

/// One entry of a [`ConfigMap`] in use.
///
/// ```no_run
/// # fn demo(map: coord_discovery::config::ConfigMap<u32>) {
/// for (name, entry) in &map.borrow().entries {
///     println!("{name} = {} ({:?}, mod revision {})", entry.value, entry.source, entry.mod_revision);
/// }
/// # }
/// ```
#[non_exhaustive]
pub struct MapEntry<T> {
    /// The value in use: the last stored value of the entry that decoded and passed validation,
    /// or the entry's default.
    pub value: Arc<T>,
    /// The mod revision of the stored value in use; 0 for a default.
    pub mod_revision: i64,
    /// Whether `value` is a default or a stored value.
    pub source: Source,
}

impl<T> Clone for MapEntry<T> {
    fn clone(&self) -> MapEntry<T> {
        MapEntry {
            value: Arc::clone(&self.value),
            mod_revision: self.mod_revision,
            source: self.source,
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for MapEntry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapEntry")
            .field("value", &self.value)
            .field("mod_revision", &self.mod_revision)
            .field("source", &self.source)
            .finish()
    }
}

/// The entries of a [`ConfigMap`] in use, as of an etcd revision.
///
/// Snapshots of one map only move forward: each has a higher `revision` than the one before.
#[non_exhaustive]
pub struct MapSnapshot<T> {
    /// The etcd revision this snapshot reflects; 0 until the first read (not ready).
    pub revision: i64,
    /// Entries in use by name (the key after the map's prefix): stored entries that were accepted
    /// at least once since they were last created, and defaults of absent entries.
    pub entries: BTreeMap<String, MapEntry<T>>,
    /// Why an entry's stored value is *not* in use ([`ConfigError::Decode`] or
    /// [`ConfigError::Invalid`]), by name; the entry keeps its last good value (or default, or
    /// stays out of `entries`) until a later write or delete.
    pub errors: BTreeMap<String, Arc<ConfigError>>,
    /// Why the prefix cannot be followed now ([`ConfigError::Follow`]: etcd refuses the read or
    /// watch, e.g. permission denied); the entries are the last ones read. Cleared by the next
    /// successful read.
    pub follow_error: Option<Arc<ConfigError>>,
}

impl<T> MapSnapshot<T> {
    /// Whether the snapshot reflects a read of the prefix (`revision > 0`).
    ///
    /// ```no_run
    /// # fn demo(map: coord_discovery::config::ConfigMap<u32>) {
    /// if map.borrow().is_ready() { println!("{} entries", map.borrow().entries.len()); }
    /// # }
    /// ```
    pub fn is_ready(&self) -> bool {
        self.revision > 0
    }

    /// The value in use for `name`, if any.
    ///
    /// ```no_run
    /// # fn demo(map: coord_discovery::config::ConfigMap<u32>) {
    /// let eu = map.borrow().get("eu").map_or(0, |v| *v);
    /// # let _ = eu; }
    /// ```
    pub fn get(&self, name: &str) -> Option<Arc<T>> {
        self.entries.get(name).map(|e| Arc::clone(&e.value))
    }
}

impl<T> Clone for MapSnapshot<T> {
    fn clone(&self) -> MapSnapshot<T> {
        MapSnapshot {
            revision: self.revision,
            entries: self.entries.clone(),
            errors: self.errors.clone(),
            follow_error: self.follow_error.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for MapSnapshot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapSnapshot")
            .field("revision", &self.revision)
            .field("entries", &self.entries)
            .field("errors", &self.errors)
            .finish()
    }
}

/// How a [`ConfigMap`] is set up: its defaults, validation hook, format and write retries.
#[must_use = "a builder does nothing until `start` is called"]
pub struct ConfigMapBuilder<T> {
    client: Client,
    name: String,
    defaults: BTreeMap<String, T>,
    validate: Option<Validator<T>>,
    format: Format,
    retry: RetryPolicy,
}

impl<T> fmt::Debug for ConfigMapBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigMapBuilder")
            .field("name", &self.name)
            .field("defaults", &self.defaults.len())
            .field("format", &self.format)
            .field("validate", &self.validate.is_some())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> ConfigMapBuilder<T> {
    /// Values in use for entries that are absent (or deleted): `(name, value)` pairs.
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let quotas = coord_discovery::config::ConfigMap::builder(&client, "quotas")
    ///     .defaults([("eu".to_owned(), 100u32), ("us".to_owned(), 100)])
    ///     .start()?;
    /// # let _ = quotas; Ok(()) }
    /// ```
    pub fn defaults(
        mut self,
        defaults: impl IntoIterator<Item = (String, T)>,
    ) -> ConfigMapBuilder<T> {
        self.defaults = defaults.into_iter().collect();
        self
    }

    /// A hook every entry's value must pass before it is used or written; see
    /// [`ConfigBuilder::validate`](super::ConfigBuilder::validate). Defaults are not checked.
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let quotas = coord_discovery::config::ConfigMap::builder(&client, "quotas")
    ///     .validate(|q: &u32| if *q > 10_000 { Err("quota over 10000") } else { Ok(()) })
    ///     .start()?;
    /// # let _ = quotas; Ok(()) }
    /// ```
    pub fn validate<E, F>(mut self, hook: F) -> ConfigMapBuilder<T>
    where
        F: Fn(&T) -> Result<(), E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        self.validate = Some(Arc::new(move |value: &T| hook(value).map_err(Into::into)));
        self
    }

    /// The encoding of the stored values ([`Format::Json`] by default).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// use coord_discovery::config::{ConfigMap, Format};
    /// let quotas = ConfigMap::<u32>::builder(&client, "quotas").format(Format::Json).start()?;
    /// # let _ = quotas; Ok(()) }
    /// ```
    pub fn format(mut self, format: Format) -> ConfigMapBuilder<T> {
        self.format = format;
        self
    }

    /// The backoff of [`ConfigMap::update`] after losing a compare-and-set; see
    /// [`ConfigBuilder::retry`](super::ConfigBuilder::retry).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let quotas = coord_discovery::config::ConfigMap::<u32>::builder(&client, "quotas")
    ///     .retry(coord_core::RetryPolicy::new().with_max_times(Some(100)))
    ///     .start()?;
    /// # let _ = quotas; Ok(()) }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> ConfigMapBuilder<T> {
        self.retry = policy;
        self
    }

    /// Starts following the prefix in a background task on the current Tokio runtime and returns
    /// at once (see [`ConfigMap::wait_ready`]). The task ends when the last clone of the map (and
    /// of its [`receiver`](ConfigMap::receiver)) is dropped.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Core`] with [`coord_core::Error::InvalidName`] for a name
    /// [`validate_name`](coord_core::keys::validate_name) rejects, and with
    /// [`coord_core::Error::Shutdown`] when called outside a Tokio runtime.
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let quotas = coord_discovery::config::ConfigMap::<u32>::builder(&client, "quotas").start()?;
    /// # let _ = quotas; Ok(()) }
    /// ```
    pub fn start(self) -> Result<ConfigMap<T>, ConfigError> {
        coord_core::keys::validate_name(self.client.namespace(), &self.name)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| coord_core::Error::Shutdown)?;
        let prefix = coord_core::keys::queue_prefix(self.client.namespace(), &self.name);
        let defaults: BTreeMap<String, MapEntry<T>> = self
            .defaults
            .into_iter()
            .map(|(name, value)| {
                let entry = MapEntry {
                    value: Arc::new(value),
                    mod_revision: 0,
                    source: Source::Default,
                };
                (name, entry)
            })
            .collect();
        let (sender, receiver) = watch::channel(MapSnapshot {
            revision: 0,
            entries: defaults.clone(),
            errors: BTreeMap::new(),
            follow_error: None,
        });
        let shared = Arc::new(Shared {
            client: self.client,
            prefix,
            defaults,
            codec: Codec {
                format: self.format,
                validate: self.validate,
            },
            retry: self.retry,
        });
        let watcher = Watcher::prefix(&shared.client, shared.prefix.clone());
        runtime.spawn(follow(Arc::clone(&shared), watcher, sender));
        Ok(ConfigMap { shared, receiver })
    }
}

struct Shared<T> {
    client: Client,
    /// `namespace + name + "/"`.
    prefix: String,
    defaults: BTreeMap<String, MapEntry<T>>,
    codec: Codec<T>,
    retry: RetryPolicy,
}

impl<T: DeserializeOwned> Shared<T> {
    fn name_of(&self, key: &[u8]) -> String {
        String::from_utf8_lossy(key.get(self.prefix.len()..).unwrap_or(key)).into_owned()
    }

    fn put(&self, snapshot: &mut MapSnapshot<T>, entry: &Entry) {
        let name = self.name_of(&entry.key);
        let key = String::from_utf8_lossy(&entry.key);
        match self.codec.accept(&key, &entry.value, entry.mod_revision) {
            Ok(value) => {
                snapshot.errors.remove(&name);
                let entry = MapEntry {
                    value: Arc::new(value),
                    mod_revision: entry.mod_revision,
                    source: Source::Stored,
                };
                snapshot.entries.insert(name, entry);
            }
            Err(error) => {
                tracing::warn!(%key, mod_revision = entry.mod_revision, error = %error_chain(&error), "config map: stored value rejected; keeping the last good one");
                snapshot.errors.insert(name, Arc::new(error));
            }
        }
    }

    fn remove(&self, snapshot: &mut MapSnapshot<T>, key: &[u8]) {
        let name = self.name_of(key);
        snapshot.errors.remove(&name);
        match self.defaults.get(&name) {
            Some(default) => {
                snapshot.entries.insert(name, default.clone());
            }
            None => {
                snapshot.entries.remove(&name);
            }
        }
    }

    /// Applies a watcher event newer than `floor` (the revision before the batch: one revision
    /// may hold several events); `false` (nothing to publish) for one already reflected.
    fn apply(&self, snapshot: &mut MapSnapshot<T>, floor: i64, event: Event) -> bool {
        let revision = event.revision();
        if revision <= floor {
            return false;
        }
        match event {
            Event::Put { entry } => self.put(snapshot, &entry),
            Event::Delete { key, .. } => self.remove(snapshot, &key),
            Event::Resync { puts, deletes, .. } => {
                for key in &deletes {
                    self.remove(snapshot, key);
                }
                for entry in &puts {
                    self.put(snapshot, entry);
                }
            }
            _ => {}
        }
        snapshot.revision = revision;
        true
    }
}

/// Follows the prefix until every receiver is gone, publishing once per revision.
async fn follow<T: DeserializeOwned + Send + Sync + 'static>(
    shared: Arc<Shared<T>>,
    mut watcher: Watcher,
    sender: watch::Sender<MapSnapshot<T>>,
) {
    loop {
        let first = tokio::select! {
            biased;
            () = sender.closed() => return,
            event = watcher.next() => event,
        };
        // The watcher retries on the next call; what it returns needs the user (permission
        // denied and the like): report it in the snapshot, keeping the entries.
        let first = match first {
            Ok(first) => first,
            Err(error) => {
                let error = ConfigError::Follow {
                    key: shared.prefix.clone(),
                    source: Arc::new(error),
                };
                sender.send_modify(|snapshot| snapshot.follow_error = Some(Arc::new(error)));
                continue;
            }
        };
        // The rest of the response is buffered: apply whole revisions, then publish, so a
        // snapshot never shows half of a transaction.
        let mut batch = vec![first];
        while watcher.buffered() > 0 {
            match watcher.next().await {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        sender.send_if_modified(|snapshot| {
            let floor = snapshot.revision;
            let mut modified = snapshot.follow_error.take().is_some();
            for event in batch {
                modified |= shared.apply(snapshot, floor, event);
            }
            modified
        });
    }
}

/// Every key under a prefix as a map of typed config values: the [`Config`](super::Config)
/// rules, entry by entry.
///
/// Entries live at `namespace + name + "/" + entry`. Each entry in use is its last stored value
/// that decoded and passed validation, or its default while absent; a stored value that does not
/// decode or validate leaves the entry as it was and is reported in [`MapSnapshot::errors`].
/// All events of one revision are applied before a snapshot is published (a transaction that
/// writes several entries shows up at once), and snapshots only move forward in revision.
/// Recovery is the [watcher's](coord_core::stream::Watcher#recovery).
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
/// use coord_discovery::config::ConfigMap;
///
/// let mut quotas = ConfigMap::builder(&client, "quotas")
///     .defaults([("eu".to_owned(), 100u32)])
///     .start()?;
/// quotas.wait_ready().await?;
/// quotas.update("eu", |old| old.copied().unwrap_or(0) + 10).await?;
/// while quotas.changed().await.is_ok() {
///     println!("{:?}", quotas.borrow_and_update().get("eu"));
/// }
/// # Ok(()) }
/// ```
pub struct ConfigMap<T> {
    shared: Arc<Shared<T>>,
    receiver: watch::Receiver<MapSnapshot<T>>,
}

impl<T> Clone for ConfigMap<T> {
    fn clone(&self) -> ConfigMap<T> {
        ConfigMap {
            shared: Arc::clone(&self.shared),
            receiver: self.receiver.clone(),
        }
    }
}

impl<T> fmt::Debug for ConfigMap<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.receiver.borrow();
        f.debug_struct("ConfigMap")
            .field("prefix", &self.shared.prefix)
            .field("revision", &snapshot.revision)
            .field("entries", &snapshot.entries.len())
            .field("errors", &snapshot.errors.len())
            .finish()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> ConfigMap<T> {
    /// A builder for the map stored under `name + "/"` (below the client's namespace).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
    /// let quotas = coord_discovery::config::ConfigMap::<u32>::builder(&client, "quotas").start()?;
    /// # let _ = quotas; Ok(()) }
    /// ```
    pub fn builder(client: &Client, name: &str) -> ConfigMapBuilder<T> {
        ConfigMapBuilder {
            client: client.clone(),
            name: name.to_owned(),
            defaults: BTreeMap::new(),
            validate: None,
            format: Format::Json,
            retry: write::conflict_policy(),
        }
    }
}

impl<T> ConfigMap<T> {
    /// The full prefix of the entries' keys (`namespace + name + "/"`).
    ///
    /// ```no_run
    /// # fn demo(map: coord_discovery::config::ConfigMap<u32>) {
    /// println!("following {}", map.prefix());
    /// # }
    /// ```
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The latest snapshot (do not hold it across an `.await`: it locks the channel).
    ///
    /// ```no_run
    /// # fn demo(map: coord_discovery::config::ConfigMap<u32>) {
    /// println!("{} entries", map.borrow().entries.len());
    /// # }
    /// ```
    pub fn borrow(&self) -> watch::Ref<'_, MapSnapshot<T>> {
        self.receiver.borrow()
    }

    /// The latest snapshot, marked as seen by [`changed`](ConfigMap::changed).
    ///
    /// ```no_run
    /// # fn demo(mut map: coord_discovery::config::ConfigMap<u32>) {
    /// let revision = map.borrow_and_update().revision;
    /// # let _ = revision; }
    /// ```
    pub fn borrow_and_update(&mut self) -> watch::Ref<'_, MapSnapshot<T>> {
        self.receiver.borrow_and_update()
    }

    /// Waits for a snapshot newer than the last one seen through this handle.
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
    /// # async fn demo(mut map: coord_discovery::config::ConfigMap<u32>) -> Result<(), coord_discovery::config::ConfigError> {
    /// map.changed().await?;
    /// # Ok(()) }
    /// ```
    pub async fn changed(&mut self) -> Result<(), ConfigError> {
        self.receiver
            .changed()
            .await
            .map_err(|_| ConfigError::Closed)
    }

    /// Waits until the prefix has been read once, and returns that snapshot (marked as seen).
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
    /// # async fn demo(mut map: coord_discovery::config::ConfigMap<u32>) -> Result<(), coord_discovery::config::ConfigError> {
    /// println!("{} entries", map.wait_ready().await?.entries.len());
    /// # Ok(()) }
    /// ```
    pub async fn wait_ready(&mut self) -> Result<watch::Ref<'_, MapSnapshot<T>>, ConfigError> {
        let snapshot = self
            .receiver
            .wait_for(|s| s.is_ready() || s.follow_error.is_some())
            .await
            .map_err(|_| ConfigError::Closed)?;
        if !snapshot.is_ready() {
            if let Some(error) = super::value::follow_error(&snapshot.follow_error) {
                return Err(error);
            }
        }
        Ok(snapshot)
    }

    /// A plain receiver of the snapshots (it keeps the background task alive like the map).
    ///
    /// ```no_run
    /// # fn demo(map: coord_discovery::config::ConfigMap<u32>) {
    /// let mut snapshots = map.receiver();
    /// tokio::spawn(async move { while snapshots.changed().await.is_ok() {} });
    /// # }
    /// ```
    pub fn receiver(&self) -> watch::Receiver<MapSnapshot<T>> {
        self.receiver.clone()
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> ConfigMap<T> {
    fn key_of(&self, name: &str) -> Result<String, ConfigError> {
        coord_core::keys::validate_name(&self.shared.prefix, name)?;
        Ok(format!("{}{name}", self.shared.prefix))
    }

    /// Writes entry `name` (after validating the value), unconditionally.
    ///
    /// # Errors
    ///
    /// As [`Config::set`](super::Config::set), plus [`ConfigError::Core`] with
    /// [`coord_core::Error::InvalidName`] for a bad entry name.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the write; it may or may not have happened.
    ///
    /// ```no_run
    /// # async fn demo(map: coord_discovery::config::ConfigMap<u32>) -> Result<(), coord_discovery::config::ConfigError> {
    /// map.set("eu", 120).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set(&self, name: &str, value: T) -> Result<Written<T>, ConfigError> {
        let key = self.key_of(name)?;
        write::put(&self.shared.client, &self.shared.codec, &key, value).await
    }

    /// Compare-and-set of entry `name`: `f` gets the stored value, or the entry's default, or
    /// `None`; the rules of [`Config::update`](super::Config::update) apply.
    ///
    /// # Errors
    ///
    /// As [`Config::update`](super::Config::update), plus [`ConfigError::Core`] with
    /// [`coord_core::Error::InvalidName`] for a bad entry name.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the attempt in flight; its write may or may not have happened
    /// (once at most).
    ///
    /// ```no_run
    /// # async fn demo(map: coord_discovery::config::ConfigMap<u32>) -> Result<(), coord_discovery::config::ConfigError> {
    /// map.update("eu", |old| old.copied().unwrap_or(0) + 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn update<F>(&self, name: &str, mut f: F) -> Result<Written<T>, ConfigError>
    where
        F: FnMut(Option<&T>) -> T,
    {
        let key = self.key_of(name)?;
        let shared = &self.shared;
        let default = shared.defaults.get(name).map(|e| Arc::clone(&e.value));
        write::compare_and_set(&shared.client, &shared.codec, &shared.retry, &key, |old| {
            f(old.as_ref().or(default.as_deref()))
        })
        .await
    }
}
