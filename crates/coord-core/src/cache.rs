//! The cache: a prefix's keys decoded from JSON, as a consistent snapshot behind a
//! [`tokio::sync::watch`] channel, kept up to date by one [watcher](crate::stream::Watcher) per
//! process.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! #[derive(serde::Deserialize, Debug)]
//! struct Limits { max_jobs: u32 }
//!
//! let mut limits = coord_core::cache::Cache::<Limits>::new(&client, "limits/")?;
//! {
//!     let snapshot = limits.wait_ready().await?;
//!     for (name, limits) in &snapshot.entries {
//!         println!("{name}: {limits:?} (at revision {})", snapshot.revision);
//!     }
//!     for error in &snapshot.errors {
//!         eprintln!("cannot use {}: {}", error.key, error.message);
//!     }
//! }
//! while limits.changed().await.is_ok() {
//!     println!("now {} entries", limits.borrow().entries.len());
//! }
//! # Ok(()) }
//! ```

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex as StdMutex, MutexGuard, PoisonError};

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::stream::{Entry, Event, Watcher};
use crate::{Client, Error, Result};

/// An entry of the prefix whose value could not be decoded (or whose key is not UTF-8). It is
/// left out of [`Snapshot::entries`]; the other entries are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {key} (revision {mod_revision}): {message}")]
#[non_exhaustive]
pub struct DecodeError {
    /// The entry's name (the key without the cache's prefix; lossily converted if not UTF-8).
    pub key: String,
    /// The revision of the undecodable value.
    pub mod_revision: i64,
    /// What is wrong with it.
    pub message: String,
}

/// The prefix's entries exactly as they were at `revision`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Snapshot<T> {
    /// The etcd revision the snapshot reflects; 0 until the first read (not ready).
    pub revision: i64,
    /// Decoded entries by name (the key without the cache's prefix).
    pub entries: BTreeMap<String, T>,
    /// Entries present at `revision` that could not be decoded, by name.
    pub errors: Vec<DecodeError>,
    /// Why the prefix cannot be followed now (permission denied, authentication, TLS), if etcd
    /// refuses it; the entries are then the last ones read. Cleared by the next successful read.
    /// Transient trouble is retried quietly and not reported here.
    pub error: Option<Arc<Error>>,
}

impl<T: PartialEq> PartialEq for Snapshot<T> {
    fn eq(&self, other: &Snapshot<T>) -> bool {
        let same_error = match (&self.error, &other.error) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same_error
            && self.revision == other.revision
            && self.entries == other.entries
            && self.errors == other.errors
    }
}

impl<T> Snapshot<T> {
    /// Whether the snapshot holds a read of the prefix (`revision > 0`).
    ///
    /// ```
    /// # fn demo(snapshot: &coord_core::cache::Snapshot<String>) {
    /// if snapshot.is_ready() { println!("{} entries", snapshot.entries.len()); }
    /// # }
    /// ```
    pub fn is_ready(&self) -> bool {
        self.revision > 0
    }

    fn empty() -> Snapshot<T> {
        Snapshot {
            revision: 0,
            entries: BTreeMap::new(),
            errors: Vec::new(),
            error: None,
        }
    }
}

impl<T: DeserializeOwned> Snapshot<T> {
    fn apply(&mut self, prefix_len: usize, event: Event) {
        self.revision = self.revision.max(event.revision());
        match event {
            Event::Put { entry } => self.put(prefix_len, &entry),
            Event::Delete { key, .. } => self.delete(&name_of(prefix_len, &key)),
            Event::Resync { puts, deletes, .. } => {
                for key in deletes {
                    self.delete(&name_of(prefix_len, &key));
                }
                for entry in &puts {
                    self.put(prefix_len, entry);
                }
            }
        }
    }

    fn put(&mut self, prefix_len: usize, entry: &Entry) {
        let name = name_of(prefix_len, &entry.key);
        self.errors.retain(|e| e.key != name);
        let decoded = match std::str::from_utf8(&entry.key) {
            Ok(_) => serde_json::from_slice::<T>(&entry.value).map_err(|e| e.to_string()),
            Err(_) => Err("the key is not UTF-8".to_owned()),
        };
        match decoded {
            Ok(value) => {
                self.entries.insert(name, value);
            }
            Err(message) => {
                tracing::warn!(key = %name, revision = entry.mod_revision, %message, "cache: undecodable entry left out");
                self.entries.remove(&name);
                self.errors.push(DecodeError {
                    key: name,
                    mod_revision: entry.mod_revision,
                    message,
                });
            }
        }
    }

    fn delete(&mut self, name: &str) {
        self.entries.remove(name);
        self.errors.retain(|e| e.key != name);
    }
}

fn name_of(prefix_len: usize, key: &[u8]) -> String {
    String::from_utf8_lossy(key.get(prefix_len..).unwrap_or(key)).into_owned()
}

/// A process-wide, always up-to-date view of the keys under a prefix, decoded from JSON.
///
/// All caches of one prefix and value type in a process share **one etcd watch** and one
/// decoded snapshot (per endpoint list, full prefix and `T`; clients made with
/// [`Client::from_etcd`] have no endpoint list and get a watch of their own). It runs in a task on
/// the runtime of the call that started it and ends when the last [`Cache`] and receiver of it
/// are dropped (or that runtime shuts down).
///
/// Every published snapshot is the prefix exactly as it was at its revision: all events of a
/// revision are applied before it is published. Recovery (disconnects, etcd restarts,
/// compaction, stalls) is the [watcher's](crate::stream::Watcher#recovery): after a compaction
/// the snapshot jumps to the current state. Errors that need an operator (permission denied…) are
/// logged with `tracing` and retried; the snapshot then stays at its last revision (and
/// [`wait_ready`](Cache::wait_ready) keeps waiting: bound it with a timeout).
///
/// Values are decoded with `serde_json`. An entry that does not decode (or whose key is not
/// UTF-8) is left out of [`Snapshot::entries`], listed in [`Snapshot::errors`] and logged with
/// `tracing` at `warn`; a later value that decodes replaces the error.
pub struct Cache<T> {
    receiver: watch::Receiver<Snapshot<T>>,
    /// The full prefix.
    prefix: Arc<str>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Cache<T> {
        Cache {
            receiver: self.receiver.clone(),
            prefix: self.prefix.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snapshot = self.receiver.borrow();
        f.debug_struct("Cache")
            .field("revision", &snapshot.revision)
            .field("entries", &snapshot.entries.len())
            .field("errors", &snapshot.errors.len())
            .finish()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Cache<T> {
    /// The cache of the keys under `prefix` (a name under the client's namespace, e.g.
    /// `"config/"`), joining the process's existing one if there is one. Entries are named by the
    /// rest of their key after the prefix.
    ///
    /// Returns at once; see [`Cache::wait_ready`] for the first read.
    ///
    /// # Errors
    ///
    /// [`Error::Shutdown`] when called outside a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// let cache = coord_core::cache::Cache::<serde_json::Value>::new(&client, "config/")?;
    /// # let _ = cache; Ok(()) }
    /// ```
    pub fn new(client: &Client, prefix: &str) -> Result<Cache<T>> {
        let prefix = client.key(prefix);
        let shared_as = (!client.endpoints().is_empty()).then(|| {
            (
                client.endpoints().to_vec(),
                client.identity().to_owned(),
                prefix.clone(),
                TypeId::of::<T>(),
            )
        });
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Shutdown)?;
        let mut registry = registry();
        if let Some(key) = &shared_as {
            if let Some(sender) = registry
                .get(key)
                .and_then(|(_, sender)| sender.downcast_ref::<watch::Sender<Snapshot<T>>>())
            {
                return Ok(Cache {
                    receiver: sender.subscribe(),
                    prefix: prefix.as_str().into(),
                });
            }
        }
        let (sender, receiver) = watch::channel(Snapshot::empty());
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if let Some(key) = &shared_as {
            registry.insert(key.clone(), (id, Box::new(sender.clone())));
        }
        drop(registry);
        let reflector = Reflector {
            watcher: Watcher::prefix(client, prefix.clone()),
            prefix_len: prefix.len(),
            sender,
            registration: Registration { shared_as, id },
            _type: PhantomData,
        };
        runtime.spawn(reflector.run());
        Ok(Cache {
            receiver,
            prefix: prefix.as_str().into(),
        })
    }

    /// Waits until the cache holds its first read of the prefix, and returns the snapshot.
    ///
    /// # Errors
    ///
    /// [`Error::Follow`] when etcd refuses to let the prefix be read before any read succeeded
    /// (permission denied, authentication, TLS; the cache goes on retrying);
    /// [`Error::Shutdown`] when the cache's task is gone (its runtime shut down).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// let mut cache = coord_core::cache::Cache::<u64>::new(&client, "counters/")?;
    /// let snapshot = cache.wait_ready().await?;
    /// println!("{} counters at revision {}", snapshot.entries.len(), snapshot.revision);
    /// # Ok(()) }
    /// ```
    pub async fn wait_ready(&mut self) -> Result<watch::Ref<'_, Snapshot<T>>> {
        let prefix = self.prefix.to_string();
        let snapshot = self
            .receiver
            .wait_for(|s| s.is_ready() || s.error.is_some())
            .await
            .map_err(|_| Error::Shutdown)?;
        match &snapshot.error {
            Some(source) if !snapshot.is_ready() => Err(Error::Follow {
                prefix,
                source: source.clone(),
            }),
            _ => Ok(snapshot),
        }
    }
}

impl<T> Cache<T> {
    /// The latest snapshot (do not hold it across an `.await`: it locks the channel).
    ///
    /// ```no_run
    /// # fn demo(cache: coord_core::cache::Cache<u64>) {
    /// let total: u64 = cache.borrow().entries.values().sum();
    /// # let _ = total; }
    /// ```
    pub fn borrow(&self) -> watch::Ref<'_, Snapshot<T>> {
        self.receiver.borrow()
    }

    /// Waits for a snapshot newer than the last one seen through this handle.
    ///
    /// # Errors
    ///
    /// [`Error::Shutdown`] when the cache's task is gone (its runtime shut down).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(mut cache: coord_core::cache::Cache<u64>) -> coord_core::Result<()> {
    /// cache.changed().await?;
    /// println!("revision {}", cache.borrow_and_update().revision);
    /// # Ok(()) }
    /// ```
    pub async fn changed(&mut self) -> Result<()> {
        self.receiver.changed().await.map_err(|_| Error::Shutdown)
    }

    /// The latest snapshot, marked as seen.
    ///
    /// ```no_run
    /// # fn demo(mut cache: coord_core::cache::Cache<u64>) {
    /// let revision = cache.borrow_and_update().revision;
    /// # let _ = revision; }
    /// ```
    pub fn borrow_and_update(&mut self) -> watch::Ref<'_, Snapshot<T>> {
        self.receiver.borrow_and_update()
    }

    /// A plain receiver of the snapshots (keeps the cache alive like a `Cache` does).
    ///
    /// ```no_run
    /// # fn demo(cache: coord_core::cache::Cache<u64>) {
    /// let mut snapshots = cache.receiver();
    /// tokio::spawn(async move { while snapshots.changed().await.is_ok() {} });
    /// # }
    /// ```
    pub fn receiver(&self) -> watch::Receiver<Snapshot<T>> {
        self.receiver.clone()
    }
}

/// (endpoints, identity, full prefix, value type) → the cache serving it.
type RegistryKey = (Vec<String>, String, String, TypeId);

/// The cache's id and its `watch::Sender<Snapshot<T>>` for the key's `T`.
type Registry = HashMap<RegistryKey, (u64, Box<dyn Any + Send>)>;

static CACHES: LazyLock<StdMutex<Registry>> = LazyLock::new(|| StdMutex::new(HashMap::new()));
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Subscribers join under this lock, and a cache decides to end under it, so a receiver is never
/// handed out by a cache that is about to end.
fn registry() -> MutexGuard<'static, Registry> {
    CACHES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the cache from the registry when its task ends, however it ends (including when its
/// runtime drops it).
struct Registration {
    shared_as: Option<RegistryKey>,
    id: u64,
}

impl Registration {
    fn remove(&self, registry: &mut Registry) {
        if let Some(key) = &self.shared_as {
            let ours = registry.get(key).is_some_and(|(id, _)| *id == self.id);
            if ours {
                registry.remove(key);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.remove(&mut registry());
    }
}

struct Reflector<T> {
    watcher: Watcher,
    prefix_len: usize,
    sender: watch::Sender<Snapshot<T>>,
    registration: Registration,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Send + Sync + 'static> Reflector<T> {
    async fn run(mut self) {
        loop {
            let event = tokio::select! {
                biased;
                () = no_receivers(&self.sender, &self.registration) => return,
                event = self.watcher.next() => event,
            };
            let first = match event {
                Ok(event) => event,
                // The watcher retries on the next call; what it returns needs the user
                // (permission denied and the like): the snapshot reports it.
                Err(error) => {
                    let error = Arc::new(error);
                    self.sender
                        .send_modify(|snapshot| snapshot.error = Some(error));
                    continue;
                }
            };
            // The rest of the response is buffered: apply the whole revision(s), then publish.
            let mut batch = vec![first];
            while self.watcher.buffered() > 0 {
                match self.watcher.next().await {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
            let prefix_len = self.prefix_len;
            self.sender.send_modify(|snapshot| {
                snapshot.error = None;
                for event in batch {
                    snapshot.apply(prefix_len, event);
                }
            });
        }
    }
}

/// Resolves once no receiver is left, after leaving the registry (under its lock, re-checking
/// the count, so that no receiver is handed out meanwhile).
async fn no_receivers<T>(sender: &watch::Sender<Snapshot<T>>, registration: &Registration) {
    loop {
        sender.closed().await;
        let mut registry = registry();
        if sender.receiver_count() > 0 {
            continue;
        }
        registration.remove(&mut registry);
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, revision: i64) -> Event {
        Event::Put {
            entry: Entry {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                create_revision: 1,
                mod_revision: revision,
                version: 1,
                lease: 0,
            },
        }
    }

    #[test]
    fn a_value_that_no_longer_decodes_is_replaced_by_an_error() {
        let mut snapshot = Snapshot::<u32>::empty();
        snapshot.apply(2, put("p/a", "1", 5));
        snapshot.apply(2, put("p/a", "x", 6));
        assert!(snapshot.entries.is_empty());
        assert_eq!(snapshot.errors.len(), 1);
        assert_eq!(
            (
                snapshot.errors[0].key.as_str(),
                snapshot.errors[0].mod_revision
            ),
            ("a", 6)
        );
        assert_eq!(snapshot.revision, 6);
    }

    #[test]
    fn a_delete_or_a_decodable_value_clears_the_error() {
        let mut snapshot = Snapshot::<u32>::empty();
        snapshot.apply(2, put("p/a", "x", 5));
        snapshot.apply(2, put("p/b", "x", 6));
        snapshot.apply(
            2,
            Event::Delete {
                key: b"p/a".to_vec(),
                revision: 7,
            },
        );
        snapshot.apply(2, put("p/b", "2", 8));
        assert!(snapshot.errors.is_empty());
        assert_eq!(snapshot.entries.get("b"), Some(&2));
    }

    #[test]
    fn a_resync_applies_its_deletes_and_puts_at_its_revision() {
        let mut snapshot = Snapshot::<u32>::empty();
        snapshot.apply(2, put("p/a", "1", 5));
        snapshot.apply(2, put("p/b", "x", 6));
        let Event::Put { entry } = put("p/c", "3", 9) else {
            unreachable!()
        };
        snapshot.apply(
            2,
            Event::Resync {
                revision: 12,
                puts: vec![entry],
                deletes: vec![b"p/a".to_vec(), b"p/b".to_vec()],
            },
        );
        assert_eq!(snapshot.revision, 12);
        assert_eq!(snapshot.entries.keys().collect::<Vec<_>>(), ["c"]);
        assert!(snapshot.errors.is_empty());
    }
}
