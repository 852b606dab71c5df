//! Discovery: the live set of a service's instances as `watch` snapshots, and the changes between
//! them as a stream.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use coord_core::stream::{Entry, Event, Watcher};
use coord_core::{Client, LeaseId};
use futures_util::Stream;
use imbl::OrdMap;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::error::ServiceError;
use super::instance::{Status, check_service};
use super::wire::{self, Origin};

/// One instance of a service, as discovered. Shared as `Arc<Endpoint<T>>` between snapshots and
/// changes: cloning one is a reference count.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Endpoint<T> {
    /// The instance id (the last key segment).
    pub id: String,
    /// The full key.
    pub key: String,
    /// Where to reach it (`Addr`).
    pub addr: String,
    /// Who wrote it: coord, or another writer of Go's format.
    pub origin: Origin,
    /// Its announced status ([`Status::Healthy`] for [foreign](Origin::Foreign) entries).
    pub status: Status,
    /// Its zone, if it says.
    pub zone: Option<String>,
    /// Its weight, if it says.
    pub weight: Option<u32>,
    /// Its version, if it says.
    pub version: Option<String>,
    /// The typed metadata; `None` for [foreign](Origin::Foreign) entries.
    pub metadata: Option<T>,
    /// A foreign entry's `Metadata` as stored (`None` for coord's entries and for a foreign
    /// `null`).
    pub raw_metadata: Option<serde_json::Value>,
    /// The lease the key is attached to (0: none).
    pub lease: LeaseId,
    /// The key's create revision: it changes when the instance registers anew.
    pub create_revision: i64,
    /// The revision of the last write to the key.
    pub mod_revision: i64,
}

/// An entry under the service's prefix that could not be used (not an endpoint record, no
/// address, metadata that does not decode as `T`, a key that is not UTF-8). It is left out of
/// [`ServiceSet::endpoints`]; the others are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("skipped {key} (revision {mod_revision}): {reason}")]
#[non_exhaustive]
pub struct MalformedEntry {
    /// The full key (lossily converted if not UTF-8).
    pub key: String,
    /// The revision of the unusable value.
    pub mod_revision: i64,
    /// What is wrong with it.
    pub reason: String,
}

/// The instances of a service exactly as they were at `revision` (and still are, until the next
/// snapshot), after the discovery's filters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceSet<T> {
    /// The etcd revision the set reflects; 0 until the first read (not ready).
    pub revision: i64,
    /// The instances by id: a persistent ordered map ([`imbl::OrdMap`], re-exported as
    /// [`crate::service::OrdMap`]). Consecutive snapshots share every part of it that did not
    /// change, so a snapshot after one change costs O(log n), not a copy of the set.
    pub endpoints: OrdMap<String, Arc<Endpoint<T>>>,
    /// Entries that could not be used, by key order. Filters do not apply to them.
    pub malformed: Vec<MalformedEntry>,
    /// Why the service cannot be followed now (permission denied, failed authentication, TLS),
    /// if etcd refuses it; the set is then the last one read (empty and not ready if none was).
    /// Cleared by the next successful read. Transient trouble (disconnects, a member down) is
    /// retried quietly and not reported here.
    pub error: Option<Arc<coord_core::Error>>,
    /// This snapshot's place in its discovery's sequence (0: the empty set before the first read).
    pub(crate) seq: u64,
    /// The changes from snapshot `seq - 1` to this one, when they were few enough to record
    /// ([`Changes`] diffs the two sets otherwise).
    pub(crate) delta: Option<Vec<Change<T>>>,
}

impl<T> ServiceSet<T> {
    fn empty() -> ServiceSet<T> {
        ServiceSet {
            revision: 0,
            endpoints: OrdMap::new(),
            malformed: Vec::new(),
            error: None,
            seq: 0,
            delta: None,
        }
    }

    /// Whether the set holds a read of the service (`revision > 0`).
    ///
    /// ```
    /// # fn demo(set: &coord_discovery::service::ServiceSet<()>) {
    /// if set.is_ready() { println!("{} instances", set.len()); }
    /// # }
    /// ```
    pub fn is_ready(&self) -> bool {
        self.revision > 0
    }

    /// How many instances there are.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The instance with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Endpoint<T>>> {
        self.endpoints.get(id)
    }

    /// The instances, by id.
    ///
    /// ```
    /// # fn demo(set: &coord_discovery::service::ServiceSet<()>) {
    /// let addrs: Vec<&str> = set.iter().map(|e| e.addr.as_str()).collect();
    /// # let _ = addrs; }
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint<T>>> {
        self.endpoints.values()
    }
}

/// A change between two [`ServiceSet`]s, as [`Changes`] reports it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Change<T> {
    /// An instance appeared (registered, or passes the filters now).
    Insert(Arc<Endpoint<T>>),
    /// An instance's value changed (same registration: same create revision).
    Update {
        /// Before.
        old: Arc<Endpoint<T>>,
        /// After.
        new: Arc<Endpoint<T>>,
    },
    /// An instance disappeared (deregistered, lease expired, or no longer passes the filters).
    /// An instance that registered anew (new create revision) is a `Remove` and an `Insert`.
    Remove(Arc<Endpoint<T>>),
}

// Not derived: a clone copies `Arc`s, whatever `T` is.
impl<T> Clone for Change<T> {
    fn clone(&self) -> Self {
        match self {
            Change::Insert(e) => Change::Insert(e.clone()),
            Change::Update { old, new } => Change::Update {
                old: old.clone(),
                new: new.clone(),
            },
            Change::Remove(e) => Change::Remove(e.clone()),
        }
    }
}

impl<T> Change<T> {
    /// The instance id concerned.
    ///
    /// ```
    /// # fn demo(change: coord_discovery::service::Change<()>) {
    /// println!("{} changed", change.id());
    /// # }
    /// ```
    pub fn id(&self) -> &str {
        match self {
            Change::Insert(e) | Change::Remove(e) | Change::Update { new: e, .. } => &e.id,
        }
    }
}

type Filter<T> = Arc<dyn Fn(&Endpoint<T>) -> bool + Send + Sync>;

/// Builds a [`Discovery`]; from [`Discovery::builder`].
#[must_use = "a builder does nothing until `start` is called"]
pub struct DiscoveryBuilder<T> {
    client: Client,
    service: String,
    statuses: Option<Vec<Status>>,
    filters: Vec<Filter<T>>,
}

impl<T> std::fmt::Debug for DiscoveryBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryBuilder")
            .field("service", &self.service)
            .field("statuses", &self.statuses)
            .field("filters", &self.filters.len())
            .finish_non_exhaustive()
    }
}

impl<T> DiscoveryBuilder<T> {
    /// Keeps only instances with one of these statuses.
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
    /// use coord_discovery::service::{Discovery, Status};
    /// let healthy = Discovery::<()>::builder(&client, "api").statuses([Status::Healthy]).start()?;
    /// # let _ = healthy; Ok(()) }
    /// ```
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = Status>) -> DiscoveryBuilder<T> {
        self.statuses = Some(statuses.into_iter().collect());
        self
    }

    /// Keeps only instances for which `keep` is true (several filters: all must pass).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
    /// use coord_discovery::service::Discovery;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Api { grpc: bool }
    ///
    /// let grpc = Discovery::<Api>::builder(&client, "api")
    ///     .filter(|e| e.metadata.as_ref().is_some_and(|m| m.grpc))
    ///     .start()?;
    /// # let _ = grpc; Ok(()) }
    /// ```
    pub fn filter(
        mut self,
        keep: impl Fn(&Endpoint<T>) -> bool + Send + Sync + 'static,
    ) -> DiscoveryBuilder<T> {
        self.filters.push(Arc::new(keep));
        self
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> DiscoveryBuilder<T> {
    /// Starts following the service (in a task on the current Tokio runtime) and returns at
    /// once; see [`Discovery::wait_ready`] for the first read.
    ///
    /// # Errors
    ///
    /// [`ServiceError::InvalidService`] for a bad name; [`ServiceError::Shutdown`] outside a
    /// Tokio runtime.
    pub fn start(self) -> Result<Discovery<T>, ServiceError> {
        check_service(self.client.namespace(), &self.service)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ServiceError::Shutdown)?;
        let prefix = format!("{}/", self.client.key(&self.service));
        let (sender, receiver) = watch::channel(Arc::new(ServiceSet::empty()));
        let reflector = Reflector {
            watcher: Watcher::prefix(&self.client, prefix.clone()),
            prefix_len: prefix.len(),
            statuses: self.statuses,
            filters: self.filters,
            visible: OrdMap::new(),
            touched: BTreeSet::new(),
            overflow: false,
            malformed: BTreeMap::new(),
            seq: 0,
            revision: 0,
            error: None,
            sender,
        };
        runtime.spawn(reflector.run());
        Ok(Discovery {
            receiver,
            service: self.service.into(),
        })
    }
}

/// The live set of a service's instances.
///
/// A background task follows the keys under `namespace + service + "/"` with coord's
/// [watch engine](coord_core::stream::Watcher) and publishes a [`ServiceSet`] for every revision
/// that changes it (after the filters), as a [`watch`] value: readers never wait, and a slow
/// reader just skips to the latest set. [`changes`](Discovery::changes) turns the snapshots into
/// `Insert`/`Update`/`Remove` events.
///
/// - **Recovery:** the watcher's ([`Watcher`](coord_core::stream::Watcher#recovery)):
///   disconnects, etcd restarts and member fail-over resume at the next revision; after a
///   compaction it reads the prefix again and the set jumps to the current state — an instance
///   removed meanwhile is removed, never left behind (Go's `naming/endpoints` watch dies on
///   compaction; Curator left phantoms: curator#685).
/// - **Bad entries** written by other tools are skipped and listed in
///   [`ServiceSet::malformed`] (and logged), never fatal.
/// - **Layout:** entries are the keys directly under the prefix; keys further down belong to
///   other services (`api/v2/…` is service `api/v2`, not an instance of `api`) and are ignored.
///
/// Each `start` opens one watch (on the client's shared watch stream); clones share it, and it
/// ends when the last clone, receiver and [`Changes`] are dropped.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
/// use coord_discovery::service::{Discovery, Status};
///
/// let mut api = Discovery::<serde_json::Value>::builder(&client, "api")
///     .statuses([Status::Healthy])
///     .start()?;
/// let set = api.wait_ready().await?;
/// for endpoint in set.iter() {
///     println!("{} at {}", endpoint.id, endpoint.addr);
/// }
/// loop {
///     let set = api.changed().await?;
///     println!("now {} healthy instances (revision {})", set.len(), set.revision);
/// }
/// # }
/// ```
pub struct Discovery<T> {
    receiver: watch::Receiver<Arc<ServiceSet<T>>>,
    service: Arc<str>,
}

impl<T> Clone for Discovery<T> {
    fn clone(&self) -> Discovery<T> {
        Discovery {
            receiver: self.receiver.clone(),
            service: self.service.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Discovery<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.receiver.borrow();
        f.debug_struct("Discovery")
            .field("service", &self.service)
            .field("revision", &set.revision)
            .field("endpoints", &set.len())
            .field("malformed", &set.malformed.len())
            .finish()
    }
}

impl<T> Discovery<T> {
    /// Starts building the discovery of `service` (a name under the client's namespace).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
    /// let api = coord_discovery::service::Discovery::<()>::builder(&client, "api").start()?;
    /// # let _ = api; Ok(()) }
    /// ```
    pub fn builder(client: &Client, service: &str) -> DiscoveryBuilder<T> {
        DiscoveryBuilder {
            client: client.clone(),
            service: service.to_owned(),
            statuses: None,
            filters: Vec::new(),
        }
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The latest set (cheap: an `Arc`).
    ///
    /// ```no_run
    /// # fn demo(api: coord_discovery::service::Discovery<()>) {
    /// let set = api.snapshot();
    /// println!("{} instances at revision {}", set.len(), set.revision);
    /// # }
    /// ```
    pub fn snapshot(&self) -> Arc<ServiceSet<T>> {
        self.receiver.borrow().clone()
    }

    /// Waits until the first read of the service is in, and returns that set.
    ///
    /// While etcd cannot be reached at all (no member answers, a partition), the discovery keeps
    /// retrying and this waits with it, like client-go's cache sync: bound it with
    /// [`tokio::time::timeout`] where a start-up deadline applies, as in the example.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Follow`] when etcd refuses to let the service be read before any read
    /// succeeded (permission denied, authentication, TLS; the discovery goes on retrying);
    /// [`ServiceError::Shutdown`] when the discovery's task is gone (its runtime shut down).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(mut api: coord_discovery::service::Discovery<()>) -> Result<(), coord_discovery::service::ServiceError> {
    /// use std::time::Duration;
    /// match tokio::time::timeout(Duration::from_secs(10), api.wait_ready()).await {
    ///     Ok(set) => println!("{} instances", set?.len()),
    ///     Err(_) => eprintln!("etcd not reachable yet; starting with no instances"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_ready(&mut self) -> Result<Arc<ServiceSet<T>>, ServiceError> {
        let set = self
            .receiver
            .wait_for(|set| set.is_ready() || set.error.is_some())
            .await
            .map(|set| set.clone())
            .map_err(|_| ServiceError::Shutdown)?;
        match &set.error {
            Some(source) if !set.is_ready() => Err(ServiceError::Follow {
                service: self.service.to_string(),
                source: source.clone(),
            }),
            _ => Ok(set),
        }
    }

    /// Waits for a set newer than the last one seen through this handle, and returns it.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Shutdown`] when the discovery's task is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(mut api: coord_discovery::service::Discovery<()>) -> Result<(), coord_discovery::service::ServiceError> {
    /// let set = api.changed().await?;
    /// # let _ = set; Ok(()) }
    /// ```
    pub async fn changed(&mut self) -> Result<Arc<ServiceSet<T>>, ServiceError> {
        self.receiver
            .changed()
            .await
            .map_err(|_| ServiceError::Shutdown)?;
        Ok(self.receiver.borrow_and_update().clone())
    }

    /// A plain receiver of the sets (it keeps the discovery running like a handle does).
    ///
    /// ```no_run
    /// # fn demo(api: coord_discovery::service::Discovery<()>) {
    /// let mut sets = api.receiver();
    /// tokio::spawn(async move { while sets.changed().await.is_ok() {} });
    /// # }
    /// ```
    pub fn receiver(&self) -> watch::Receiver<Arc<ServiceSet<T>>> {
        self.receiver.clone()
    }

    /// The changes from an empty set: first an `Insert` for every instance of the first ready
    /// set, then the differences between consecutive sets.
    ///
    /// ```no_run
    /// # async fn demo(api: coord_discovery::service::Discovery<()>) -> Result<(), coord_discovery::service::ServiceError> {
    /// use coord_discovery::service::Change;
    /// let mut changes = api.changes();
    /// loop {
    ///     match changes.next().await? {
    ///         Change::Insert(e) => println!("+ {} {}", e.id, e.addr),
    ///         Change::Update { new, .. } => println!("~ {} {}", new.id, new.status),
    ///         Change::Remove(e) => println!("- {}", e.id),
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub fn changes(&self) -> Changes<T> {
        let mut receiver = self.receiver.clone();
        receiver.mark_changed();
        Changes {
            receiver,
            last: Arc::new(ServiceSet::empty()),
            pending: VecDeque::new(),
            service: self.service.to_string(),
            reported: None,
        }
    }
}

/// The differences between consecutive [`ServiceSet`]s of a [`Discovery`], one [`Change`] at a
/// time; from [`Discovery::changes`].
///
/// Derived by comparing snapshots, so they are exact whatever happened in between (reconnects,
/// a resync after compaction): applying them to an empty map gives the latest set. A consumer
/// that falls behind gets the net changes (an instance that came and went meanwhile is not
/// reported at all).
pub struct Changes<T> {
    receiver: watch::Receiver<Arc<ServiceSet<T>>>,
    last: Arc<ServiceSet<T>>,
    pending: VecDeque<Change<T>>,
    service: String,
    /// The follow error last returned, so that each is returned once.
    reported: Option<Arc<coord_core::Error>>,
}

impl<T> std::fmt::Debug for Changes<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("revision", &self.last.revision)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<T> Changes<T> {
    /// The next change.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Shutdown`] when the discovery's task is gone;
    /// [`ServiceError::Follow`] when etcd refuses to let the service be read (a permission denied,
    /// an authentication failure) — returned once per such refusal, after the changes before it;
    /// the next call waits for further changes.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call loses no change.
    ///
    /// ```no_run
    /// # async fn demo(mut changes: coord_discovery::service::Changes<()>) -> Result<(), coord_discovery::service::ServiceError> {
    /// let change = changes.next().await?;
    /// println!("{}", change.id());
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Result<Change<T>, ServiceError> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Ok(change);
            }
            self.receiver
                .changed()
                .await
                .map_err(|_| ServiceError::Shutdown)?;
            let set = self.receiver.borrow_and_update().clone();
            match &set.delta {
                // The next snapshot after the last one seen: its recorded changes are the diff.
                Some(delta) if set.seq == self.last.seq + 1 => {
                    self.pending.extend(delta.iter().cloned());
                }
                _ => diff(&self.last, &set, &mut self.pending),
            }
            let refused = set.error.clone();
            self.last = set;
            let Some(source) = refused else {
                self.reported = None;
                continue;
            };
            let new = !self
                .reported
                .as_ref()
                .is_some_and(|seen| Arc::ptr_eq(seen, &source));
            if new && self.pending.is_empty() {
                self.reported = Some(source.clone());
                return Err(ServiceError::Follow {
                    service: self.service.clone(),
                    source,
                });
            }
        }
    }

    /// The set the changes so far add up to.
    pub fn current(&self) -> &Arc<ServiceSet<T>> {
        &self.last
    }

    /// The changes as a [`Stream`], ending when the discovery's task is gone or etcd refuses to
    /// let the service be read ([`next`](Self::next) returns why).
    ///
    /// ```no_run
    /// # async fn demo(api: coord_discovery::service::Discovery<()>) {
    /// use futures_util::StreamExt;
    /// let mut changes = std::pin::pin!(api.changes().into_stream());
    /// while let Some(change) = changes.next().await {
    ///     println!("{}", change.id());
    /// }
    /// # }
    /// ```
    pub fn into_stream(self) -> impl Stream<Item = Change<T>> + Send
    where
        T: Send + Sync + 'static,
    {
        futures_util::stream::unfold(self, |mut changes| async move {
            let change = changes.next().await.ok()?;
            Some((change, changes))
        })
    }
}

/// Appends the changes from `old` to `new`: O(n log n) over the larger set, unless they share
/// their map.
fn diff<T>(old: &ServiceSet<T>, new: &ServiceSet<T>, out: &mut VecDeque<Change<T>>) {
    if old.endpoints.ptr_eq(&new.endpoints) {
        return;
    }
    for (id, before) in &old.endpoints {
        changed(Some(before), new.endpoints.get(id), out);
    }
    for (id, after) in &new.endpoints {
        if !old.endpoints.contains_key(id) {
            out.push_back(Change::Insert(after.clone()));
        }
    }
}

/// Appends how one instance changed from `before` (it was in the old set) to `after`: nothing,
/// an update, a removal, or (registered anew) a removal and an insert. An instance that was not
/// in the old set is an insert, which callers add after all the others.
fn changed<T>(
    before: Option<&Arc<Endpoint<T>>>,
    after: Option<&Arc<Endpoint<T>>>,
    out: &mut impl Extend<Change<T>>,
) {
    let Some(before) = before else {
        return;
    };
    match after {
        None => out.extend([Change::Remove(before.clone())]),
        Some(after) if Arc::ptr_eq(before, after) => {}
        Some(after) if after.create_revision != before.create_revision => {
            out.extend([
                Change::Remove(before.clone()),
                Change::Insert(after.clone()),
            ]);
        }
        Some(after) if after.mod_revision != before.mod_revision => {
            out.extend([Change::Update {
                old: before.clone(),
                new: after.clone(),
            }]);
        }
        Some(_) => {}
    }
}

/// Whether two maps of instances differ in any id, registration or write (stops at the first
/// difference).
fn differs<T>(
    old: &OrdMap<String, Arc<Endpoint<T>>>,
    new: &OrdMap<String, Arc<Endpoint<T>>>,
) -> bool {
    if old.ptr_eq(new) {
        return false;
    }
    old.len() != new.len()
        || old.iter().zip(new.iter()).any(|((a, x), (b, y))| {
            a != b
                || !Arc::ptr_eq(x, y)
                    && (x.create_revision != y.create_revision || x.mod_revision != y.mod_revision)
        })
}

/// Snapshots record their changes from the one before when no more instances than this changed;
/// a consumer of [`Changes`] diffs the sets otherwise (the first read, a resync).
const RECORDED_CHANGES: usize = 256;

/// The task behind a [`Discovery`].
struct Reflector<T> {
    watcher: Watcher,
    prefix_len: usize,
    statuses: Option<Vec<Status>>,
    filters: Vec<Filter<T>>,
    /// The instances that pass the filters: the next snapshot's map, shared with the published
    /// one until a change.
    visible: OrdMap<String, Arc<Endpoint<T>>>,
    /// The ids put or deleted since the last snapshot, unless there were more than
    /// [`RECORDED_CHANGES`] (`overflow`).
    touched: BTreeSet<String>,
    overflow: bool,
    malformed: BTreeMap<Vec<u8>, MalformedEntry>,
    /// The last snapshot's sequence number.
    seq: u64,
    revision: i64,
    /// The watcher's last error that needs the user (cleared by the next event).
    error: Option<Arc<coord_core::Error>>,
    sender: watch::Sender<Arc<ServiceSet<T>>>,
}

impl<T: DeserializeOwned + Send + Sync + 'static> Reflector<T> {
    async fn run(mut self) {
        loop {
            let event = tokio::select! {
                biased;
                () = self.sender.closed() => return,
                event = self.watcher.next() => event,
            };
            // The watcher retries on the next call; errors it returns need the user (permission
            // denied and the like): the snapshot reports them.
            let first = match event {
                Ok(first) => first,
                Err(error) => {
                    self.error = Some(Arc::new(error));
                    self.publish();
                    continue;
                }
            };
            self.error = None;
            self.apply(first);
            // The rest of the response is buffered: apply whole revisions, then publish.
            while self.watcher.buffered() > 0 {
                match self.watcher.next().await {
                    Ok(event) => self.apply(event),
                    Err(_) => break,
                }
            }
            self.publish();
        }
    }

    fn apply(&mut self, event: Event) {
        self.revision = self.revision.max(event.revision());
        match event {
            Event::Put { entry } => self.put(entry),
            Event::Delete { key, .. } => self.delete(&key),
            Event::Resync { puts, deletes, .. } => {
                for key in deletes {
                    self.delete(&key);
                }
                for entry in puts {
                    self.put(entry);
                }
            }
            _ => {}
        }
    }

    /// The instance id of a key directly under the prefix; `None` for keys of nested services.
    fn id_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let rest = key.get(self.prefix_len..)?;
        (!rest.is_empty() && !rest.contains(&b'/')).then_some(rest)
    }

    fn put(&mut self, entry: Entry) {
        let Some(id) = self.id_of(&entry.key) else {
            return;
        };
        let decoded = std::str::from_utf8(id)
            .map_err(|_| "the key is not UTF-8".to_owned())
            .and_then(|id| Ok((id.to_owned(), wire::decode::<T>(&entry.value)?)));
        match decoded {
            Ok((id, decoded)) => {
                self.malformed.remove(&entry.key);
                let endpoint = Endpoint {
                    key: String::from_utf8_lossy(&entry.key).into_owned(),
                    id: id.clone(),
                    addr: decoded.addr,
                    origin: decoded.origin,
                    status: decoded.status,
                    zone: decoded.zone,
                    weight: decoded.weight,
                    version: decoded.version,
                    metadata: decoded.metadata,
                    raw_metadata: decoded.raw_metadata,
                    lease: LeaseId::new(entry.lease),
                    create_revision: entry.create_revision,
                    mod_revision: entry.mod_revision,
                };
                if self.passes(&endpoint) {
                    self.visible.insert(id.clone(), Arc::new(endpoint));
                } else {
                    self.visible.remove(&id);
                }
                self.touch(id);
            }
            Err(reason) => {
                let key = String::from_utf8_lossy(&entry.key).into_owned();
                tracing::warn!(%key, revision = entry.mod_revision, %reason, "discovery: unusable entry skipped");
                let id = String::from_utf8_lossy(id).into_owned();
                self.visible.remove(&id);
                self.touch(id);
                self.malformed.insert(
                    entry.key,
                    MalformedEntry {
                        key,
                        mod_revision: entry.mod_revision,
                        reason,
                    },
                );
            }
        }
    }

    fn delete(&mut self, key: &[u8]) {
        self.malformed.remove(key);
        if let Some(id) = self.id_of(key) {
            let id = String::from_utf8_lossy(id).into_owned();
            if self.visible.remove(&id).is_some() {
                self.touch(id);
            }
        }
    }

    fn touch(&mut self, id: String) {
        if self.overflow {
            return;
        }
        self.touched.insert(id);
        if self.touched.len() > RECORDED_CHANGES {
            self.overflow = true;
            self.touched.clear();
        }
    }

    fn passes(&self, endpoint: &Endpoint<T>) -> bool {
        self.statuses
            .as_ref()
            .is_none_or(|statuses| statuses.contains(&endpoint.status))
            && self.filters.iter().all(|keep| keep(endpoint))
    }

    /// Publishes the filtered set if it differs from the published one (or is the first), with
    /// the changes from the published one: O(log n) per changed instance.
    fn publish(&mut self) {
        let published = self.sender.borrow().clone();
        let touched = std::mem::take(&mut self.touched);
        let delta = (!std::mem::take(&mut self.overflow)).then(|| {
            let mut delta = Vec::new();
            for id in &touched {
                changed(
                    published.endpoints.get(id),
                    self.visible.get(id),
                    &mut delta,
                );
            }
            for id in &touched {
                if !published.endpoints.contains_key(id) {
                    if let Some(after) = self.visible.get(id) {
                        delta.push(Change::Insert(after.clone()));
                    }
                }
            }
            delta
        });
        let same_endpoints = match &delta {
            Some(delta) => delta.is_empty(),
            None => !differs(&published.endpoints, &self.visible),
        };
        let malformed: Vec<_> = self.malformed.values().cloned().collect();
        let same_error = match (&published.error, &self.error) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        let same = same_error
            && (published.is_ready() || self.error.is_some())
            && same_endpoints
            && published.malformed == malformed;
        if same {
            return;
        }
        self.seq += 1;
        self.sender.send_replace(Arc::new(ServiceSet {
            revision: self.revision,
            endpoints: self.visible.clone(),
            malformed,
            error: self.error.clone(),
            seq: self.seq,
            delta,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, create: i64, modified: i64) -> Arc<Endpoint<()>> {
        Arc::new(Endpoint {
            id: id.to_owned(),
            key: format!("svc/{id}"),
            addr: "h:1".to_owned(),
            origin: Origin::Coord,
            status: Status::Healthy,
            zone: None,
            weight: None,
            version: None,
            metadata: Some(()),
            raw_metadata: None,
            lease: LeaseId::new(1),
            create_revision: create,
            mod_revision: modified,
        })
    }

    fn set(endpoints: &[&Arc<Endpoint<()>>]) -> ServiceSet<()> {
        ServiceSet {
            revision: 10,
            endpoints: endpoints
                .iter()
                .map(|e| (e.id.clone(), (*e).clone()))
                .collect(),
            malformed: Vec::new(),
            error: None,
            seq: 0,
            delta: None,
        }
    }

    fn describe<T>(changes: VecDeque<Change<T>>) -> Vec<String> {
        changes
            .into_iter()
            .map(|c| match c {
                Change::Insert(e) => format!("+{}@{}", e.id, e.mod_revision),
                Change::Update { new, .. } => format!("~{}@{}", new.id, new.mod_revision),
                Change::Remove(e) => format!("-{}@{}", e.id, e.mod_revision),
            })
            .collect()
    }

    #[test]
    fn diffs_name_inserts_updates_and_removes() {
        let (a, b, b2, c) = (
            endpoint("a", 1, 1),
            endpoint("b", 2, 2),
            endpoint("b", 2, 5),
            endpoint("c", 6, 6),
        );
        let mut out = VecDeque::new();
        diff(&set(&[&a, &b]), &set(&[&b2, &c]), &mut out);
        assert_eq!(describe(out), ["-a@1", "~b@5", "+c@6"]);
    }

    #[test]
    fn a_registration_anew_is_a_remove_and_an_insert() {
        let (a, a2) = (endpoint("a", 1, 1), endpoint("a", 7, 7));
        let mut out = VecDeque::new();
        diff(&set(&[&a]), &set(&[&a2]), &mut out);
        assert_eq!(describe(out), ["-a@1", "+a@7"]);
    }

    #[test]
    fn unchanged_endpoints_produce_nothing() {
        let a = endpoint("a", 1, 1);
        let mut out = VecDeque::new();
        diff(&set(&[&a]), &set(&[&a]), &mut out);
        assert!(out.is_empty());
    }

    /// A client of the test binary's shared etcd, in a namespace of its own.
    async fn client(label: &str) -> Client {
        let etcd = coord_testkit::shared().await.expect("shared etcd");
        coord_core::ClientConfig::new(etcd.endpoints())
            .with_namespace(coord_testkit::unique_namespace(label))
            .connect()
            .await
            .expect("connect")
    }

    /// Every snapshot's recorded changes are exactly the diff from the one before, for changes
    /// made by registrations, filters (a status leaving and re-entering the set), updates, raw
    /// writes of several keys in one revision, a malformed entry and a deregistration.
    #[tokio::test]
    async fn recorded_changes_equal_the_diff_from_the_previous_snapshot() {
        use crate::service::{Instance, Status, register};
        use coord_core::etcd_client::{Txn, TxnOp};
        use std::time::Duration;

        let client = client("svc_delta").await;
        let session = coord_core::Session::new(client.clone(), Duration::from_secs(10))
            .await
            .expect("session");
        let mut discovery = Discovery::<u32>::builder(&client, "svc")
            .statuses([Status::Healthy])
            .start()
            .expect("start");
        let mut prev = discovery.wait_ready().await.expect("ready").clone();
        let mut receiver = discovery.receiver.clone();
        receiver.borrow_and_update();
        let mut checked = Vec::new();
        let mut next = async |prev: &mut Arc<ServiceSet<u32>>| {
            tokio::time::timeout(Duration::from_secs(30), receiver.changed())
                .await
                .expect("a snapshot in time")
                .expect("discovery running");
            let set = receiver.borrow_and_update().clone();
            assert_eq!(set.seq, prev.seq + 1, "a snapshot was skipped");
            let recorded = set.delta.clone().expect("changes recorded");
            let mut diffed = VecDeque::new();
            diff(prev, &set, &mut diffed);
            assert_eq!(describe(recorded.into()), describe(diffed.clone()));
            *prev = set;
            describe(diffed).join(" ")
        };

        let a = register(&session, "svc", Instance::new("a", "h:1", 1))
            .await
            .expect("register a");
        checked.push(next(&mut prev).await);
        let b = register(&session, "svc", Instance::new("b", "h:2", 2))
            .await
            .expect("register b");
        checked.push(next(&mut prev).await);
        a.set_status(Status::Draining).await.expect("drain a");
        checked.push(next(&mut prev).await);
        a.set_status(Status::Healthy).await.expect("a healthy");
        checked.push(next(&mut prev).await);
        b.update(7).await.expect("update b");
        checked.push(next(&mut prev).await);
        // One revision: b deleted, a malformed entry, a third instance written as `register`
        // would.
        let c_value = client
            .get(b.key().to_owned(), None)
            .await
            .expect("read b")
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .expect("b stored");
        let prefix = format!("{}/", client.key("svc"));
        client
            .txn(Txn::new().and_then([
                TxnOp::delete(b.key(), None),
                TxnOp::put(format!("{prefix}x"), "not a record", None),
                TxnOp::put(format!("{prefix}c"), c_value, None),
            ]))
            .await
            .expect("txn");
        checked.push(next(&mut prev).await);
        a.deregister().await.expect("deregister a");
        checked.push(next(&mut prev).await);

        let starts: Vec<&str> = checked.iter().map(|c| &c[..2]).collect();
        assert_eq!(
            starts,
            ["+a", "+b", "-a", "+a", "~b", "-b", "-a"],
            "{checked:?}"
        );
        assert!(checked[5].contains(" +c@"), "{checked:?}");
        assert_eq!(prev.malformed.len(), 1);
        assert_eq!(prev.endpoints.keys().collect::<Vec<_>>(), ["c"]);
        drop(b);
    }

    /// A snapshot with more changes than [`RECORDED_CHANGES`] records none, and [`Changes`]
    /// diffs the sets instead; the next small change is recorded again.
    #[tokio::test]
    async fn many_changes_at_once_are_diffed_not_recorded() {
        use coord_core::etcd_client::{Txn, TxnOp};
        use std::time::Duration;

        let client = client("svc_many").await;
        let prefix = format!("{}/", client.key("svc"));
        let value = |i: usize| format!(r#"{{"Op":0,"Addr":"h:{i}"}}"#);
        let many = RECORDED_CHANGES + 44;
        for chunk in (0..many).collect::<Vec<_>>().chunks(100) {
            let puts = chunk
                .iter()
                .map(|i| TxnOp::put(format!("{prefix}{i:04}"), value(*i), None));
            client
                .txn(Txn::new().and_then(puts.collect::<Vec<_>>()))
                .await
                .expect("txn");
        }
        let mut discovery = Discovery::<()>::builder(&client, "svc")
            .start()
            .expect("start");
        let mut changes = discovery.changes();
        let first = discovery.wait_ready().await.expect("ready").clone();
        assert_eq!(first.len(), many);
        assert!(first.delta.is_none(), "{many} changes recorded");
        for _ in 0..many {
            let change = tokio::time::timeout(Duration::from_secs(30), changes.next())
                .await
                .expect("a change in time")
                .expect("discovery running");
            assert!(matches!(change, Change::Insert(_)), "{change:?}");
        }

        client
            .put(format!("{prefix}new"), value(0), None)
            .await
            .expect("put");
        let change = tokio::time::timeout(Duration::from_secs(30), changes.next())
            .await
            .expect("a change in time")
            .expect("discovery running");
        assert_eq!(change.id(), "new");
        let set = changes.current().clone();
        assert_eq!(set.seq, first.seq + 1);
        assert_eq!(set.delta.as_ref().map(Vec::len), Some(1));
    }
}
