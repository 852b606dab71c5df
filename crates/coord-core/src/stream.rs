//! The watch engine: every change of a key or prefix as a stream of events, across disconnects,
//! member fail-over, etcd restarts and compaction.
//!
//! A [`Watcher`] starts with the state of its range (a [`Event::Resync`] from an empty state),
//! unless it is given a revision to start from, then yields every [`Event::Put`] and
//! [`Event::Delete`] in revision order. Its recovery is its own business: the consumer never sees
//! a transient error, never sees an event twice, and after a compaction gets one `Resync` that
//! turns what it had into the current state. The [`cache`](crate::cache) is built on it.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
//! use coord_core::stream::{Event, Watcher};
//!
//! let mut watcher = Watcher::prefix(&client, client.key("services/"));
//! loop {
//!     match watcher.next().await? {
//!         Event::Resync { revision, puts, deletes, .. } => {
//!             println!("at {revision}: {} changed, {} gone", puts.len(), deletes.len())
//!         }
//!         Event::Put { entry, .. } => println!("put {:?}", entry.key_str()),
//!         Event::Delete { key, revision, .. } => println!("deleted {key:?} at {revision}"),
//!         _ => {}
//!     }
//! }
//! # }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use futures_util::Stream;
use tokio::time::Instant;

use crate::hub::HubWatch;
use crate::{Client, Error, Result, RetryPolicy};

/// Reads of a whole range may be far larger than tonic's default 4 MiB message limit.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// A watch up this long counts as healthy: the next failure starts the backoff afresh.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// One key's state as etcd reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The full key (with the client's namespace).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (its fencing token).
    pub create_revision: i64,
    /// The revision of the last write to the key.
    pub mod_revision: i64,
    /// How many times the key was written since its creation (1 for a new key).
    pub version: i64,
    /// The lease the key is attached to (0 for none).
    pub lease: i64,
}

impl Entry {
    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }

    fn from_kv(kv: &KeyValue) -> Entry {
        Entry {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

/// A change reported by a [`Watcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A key was created or written at `entry.mod_revision`.
    Put {
        /// The key's new state.
        entry: Entry,
    },
    /// A key was deleted (or its lease expired) at `revision`.
    Delete {
        /// The full key.
        key: Vec<u8>,
        /// The revision of the delete.
        revision: i64,
    },
    /// The range was read at `revision` (at start, or because the revisions the watcher needed
    /// were compacted): apply `puts` and `deletes` to what you had from this watcher and you have
    /// the range exactly as it was at `revision`.
    Resync {
        /// The revision of the read.
        revision: i64,
        /// Keys that are new or changed since the watcher last reported them.
        puts: Vec<Entry>,
        /// Keys the watcher reported that no longer exist.
        deletes: Vec<Vec<u8>>,
    },
}

impl Event {
    /// The revision the event happened at (for a resync, the revision of the read).
    pub fn revision(&self) -> i64 {
        match self {
            Event::Put { entry } => entry.mod_revision,
            Event::Delete { revision, .. } | Event::Resync { revision, .. } => *revision,
        }
    }
}

/// Follows a key or a prefix: every change, in revision order, exactly once.
///
/// Watches run on the client's shared watch stream (one gRPC stream per [`Client`], see
/// `docs/architecture.md`, "Watch waits").
///
/// # Recovery
///
/// The watcher remembers the revision after the last one it reported (`next`) and, for every key
/// it has reported and not since seen deleted, the key's mod revision.
///
/// - **Start:** without [`from_revision`](Watcher::from_revision), it reads the range
///   (linearizable) and yields it as a [`Event::Resync`] of puts at the read's revision `R`, then
///   watches from `R + 1`. With `from_revision(r)`, it watches from `r` and yields no initial read.
/// - **Broken stream** (connection reset, member down or failed over, etcd restarted, server
///   closed the stream): the watch is re-created at `next`.
///   Events and progress notifications advance `next`, and events below it are dropped, so
///   nothing is missed and nothing is reported twice. Revisions are cluster-wide, so resuming on
///   another member is the same as resuming on the same one.
/// - **Stall:** if the watch yields nothing (no event, no progress notification, no error) for
///   [`stall_after`](Watcher::stall_after) (60 s by default) while [`next`](Watcher::next) waits,
///   it is cancelled and re-created at `next`. Progress notifications are requested, but etcd
///   sends them only every 10 minutes by default
///   (`--experimental-watch-progress-notify-interval`), so a quiet but healthy range is
///   re-watched once per bound; that costs one cancel and one create, and loses nothing. The new
///   watch is created on the client's shared stream, so this catches a watch the server stopped
///   serving, not a dead connection: a connection that went silent is detected by the client's
///   HTTP/2 keep-alive (10 s + 5 s by default, [`ClientConfig::with_keep_alive`](crate::ClientConfig::with_keep_alive)), which breaks
///   the stream (see the previous point).
/// - **Compaction** of `next`: the range is read again at revision `R`, and the watcher yields one
///   [`Event::Resync`]: puts for keys that are new or whose mod revision differs from the one it
///   reported, deletes for keys it reported that are gone. Then it watches from `R + 1`. Changes
///   inside the compacted gap are not reported one by one; intermediate values are lost, the
///   final state is exact. This is never an error. (A watcher started with `from_revision` knows
///   only the keys it reported itself: keys that existed before that revision and were deleted in
///   the gap do not appear in `deletes`.)
/// - **Oversized catch-up:** the client's shared watch stream accepts responses of up to 4 MiB
///   (tonic's default). A resumed watch that must catch up on more than that in one response (etcd
///   batches up to 1,000 revisions) breaks the stream every time it is re-created; so after such
///   a failure the watcher reads the range and yields a [`Event::Resync`] exactly as after a
///   compaction, then watches from after the read (live, one revision per response).
/// - **Backoff:** failed attempts are retried for ever, after a jittered exponential backoff from
///   20 ms up to 2 s ([`RetryPolicy`]). It is reset by health: an event or progress notification,
///   or a watch that stayed up for 10 s — not by a watch that is created and then fails at once.
/// - **Errors that need the caller** (permission denied, auth, TLS, or a watch the server
///   cancelled for a reason other than compaction, such as a permission revoked while watching):
///   [`Watcher::next`] returns the error; calling it again retries after the backoff, from the
///   same `next`.
///
/// A watch whose start revision is not newer than etcd's current revision is served by etcd's
/// 100 ms catch-up loop until it has caught up; a watcher that resumes after writes therefore
/// sees those first events up to 100 ms late (never out of order).
///
/// Responses are buffered without bound between the client's watch stream and the watcher: a
/// consumer that falls behind costs memory, not correctness.
#[must_use = "a watcher does nothing until `next` is called"]
pub struct Watcher {
    client: Client,
    key: Vec<u8>,
    range_end: Option<Vec<u8>>,
    stall_after: Duration,
    /// Key → mod revision of every key reported and not deleted since.
    known: BTreeMap<Vec<u8>, i64>,
    /// The first revision not yet reported; `None` until the first read.
    next: Option<i64>,
    watch: Option<HubWatch>,
    buffered: VecDeque<Event>,
    backoff: backon::ExponentialBackoff,
    retry_at: Option<Instant>,
    /// When the current watch was created.
    created_at: Option<Instant>,
    /// Read the range again before watching (the watch cannot catch up; see Recovery).
    relist: bool,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("prefix", &self.range_end.is_some())
            .field("next", &self.next)
            .field("known", &self.known.len())
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// A watcher of every key that starts with `prefix` (a full key: use [`Client::key`]).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) {
    /// let watcher = coord_core::stream::Watcher::prefix(&client, client.key("config/"));
    /// # let _ = watcher; }
    /// ```
    pub fn prefix(client: &Client, prefix: impl Into<Vec<u8>>) -> Watcher {
        let key = prefix.into();
        let range_end = Some(crate::keys::prefix_range_end(&key));
        Watcher::new(client, key, range_end)
    }

    /// A watcher of one key (a full key: use [`Client::key`]).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) {
    /// let watcher = coord_core::stream::Watcher::key(&client, client.key("config/limits"));
    /// # let _ = watcher; }
    /// ```
    pub fn key(client: &Client, key: impl Into<Vec<u8>>) -> Watcher {
        Watcher::new(client, key.into(), None)
    }

    fn new(client: &Client, key: Vec<u8>, range_end: Option<Vec<u8>>) -> Watcher {
        Watcher {
            client: client.clone(),
            key,
            range_end,
            stall_after: Duration::from_secs(60),
            known: BTreeMap::new(),
            next: None,
            watch: None,
            buffered: VecDeque::new(),
            backoff: reconnect_backoff(),
            retry_at: None,
            created_at: None,
            relist: false,
        }
    }

    /// Starts at `revision` (the events of `revision` included) instead of with a read of the
    /// range. Use the revision after a read of your own (`header.revision + 1`).
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// let read = client.get(client.key("config/"), Some(etcd_client::GetOptions::new().with_prefix())).await?;
    /// let from = read.header().map_or(1, |h| h.revision() + 1);
    /// let watcher = coord_core::stream::Watcher::prefix(&client, client.key("config/")).from_revision(from);
    /// # let _ = watcher; Ok(()) }
    /// ```
    #[must_use = "builder methods return the modified watcher"]
    pub fn from_revision(mut self, revision: i64) -> Watcher {
        self.next = Some(revision.max(1));
        self
    }

    /// Re-creates the watch when it has yielded nothing for this long (60 s by default); see
    /// "Stall" under [Recovery](Watcher#recovery).
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) {
    /// use std::time::Duration;
    /// let watcher = coord_core::stream::Watcher::key(&client, client.key("k")).stall_after(Duration::from_secs(30));
    /// # let _ = watcher; }
    /// ```
    #[must_use = "builder methods return the modified watcher"]
    pub fn stall_after(mut self, bound: Duration) -> Watcher {
        self.stall_after = bound.max(Duration::from_millis(1));
        self
    }

    /// The next event.
    ///
    /// # Errors
    ///
    /// Only errors that need the caller: permission denied, authentication, TLS (see
    /// [`Error::is_retryable`]), and [`Error::WatchCancelled`] when the server cancels the watch
    /// for a reason other than compaction. The watcher stays usable: the next call retries after
    /// a backoff.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call loses no event; the next call continues where it left off.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// let mut watcher = coord_core::stream::Watcher::key(&client, client.key("k"));
    /// let first = watcher.next().await?; // the key's current state, as a resync
    /// println!("{first:?}");
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Ok(event);
            }
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            if let Err(error) = self.step().await {
                self.watch = None;
                if self
                    .created_at
                    .take()
                    .is_some_and(|at| at.elapsed() >= HEALTHY_AFTER)
                {
                    self.backoff = reconnect_backoff();
                }
                if is_oversized(&error) {
                    self.relist = true;
                }
                let delay = self.backoff.next().unwrap_or(Duration::from_secs(2));
                self.retry_at = Some(Instant::now() + delay);
                if !error.is_retryable() {
                    tracing::warn!(key = %String::from_utf8_lossy(&self.key), %error, ?delay, "watcher: failed; will retry");
                    return Err(error);
                }
                tracing::debug!(key = %String::from_utf8_lossy(&self.key), %error, ?delay, "watcher: failed; retrying");
            }
        }
    }

    /// The watcher as a [`Stream`] of [`Watcher::next`] results (it never ends).
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// use futures_util::StreamExt;
    /// let mut events = std::pin::pin!(coord_core::stream::Watcher::prefix(&client, client.key("jobs/")).into_stream());
    /// while let Some(event) = events.next().await {
    ///     println!("{:?}", event?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn into_stream(self) -> impl Stream<Item = Result<Event>> + Send {
        futures_util::stream::unfold(self, |mut watcher| async move {
            let event = watcher.next().await;
            Some((event, watcher))
        })
    }

    /// How many events are ready to be returned without waiting (the rest of the response, or
    /// of the revision, being delivered).
    pub fn buffered(&self) -> usize {
        self.buffered.len()
    }

    /// One step: read the range, or take one response of the watch.
    async fn step(&mut self) -> Result<()> {
        let Some(next) = self.next.filter(|_| !self.relist) else {
            return self.relist().await;
        };
        let stall_after = self.stall_after;
        if self.watch.is_none() {
            self.watch = Some(self.client.hub_watch(self.key.clone(), self.options(next)));
        }
        let Some(watch) = self.watch.as_mut() else {
            return Ok(());
        };
        let resp = match tokio::time::timeout(stall_after, watch.next()).await {
            Ok(resp) => resp?,
            Err(_) => {
                tracing::info!(key = %String::from_utf8_lossy(&self.key), next, ?stall_after, "watcher: no response; re-creating the watch");
                self.watch = None;
                return Ok(());
            }
        };
        if resp.compact_revision() > 0 {
            tracing::debug!(key = %String::from_utf8_lossy(&self.key), next, compacted = resp.compact_revision(), "watcher: compacted; reading again");
            self.watch = None;
            return self.relist().await;
        }
        if resp.canceled() {
            self.watch = None;
            return Err(Error::watch_cancelled(resp.cancel_reason()));
        }
        if resp.created() {
            self.created_at = Some(Instant::now());
            return Ok(());
        }
        self.backoff = reconnect_backoff();
        if resp.events().is_empty() {
            // Progress notification: every event up to the header's revision was delivered.
            if let Some(header) = resp.header() {
                self.next = Some(next.max(header.revision() + 1));
            }
            return Ok(());
        }
        let mut last = next - 1;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let at = kv.mod_revision();
            // Already reported. etcd keeps all events of a revision in one response (its watch
            // batches split between revisions only), so a revision is never half-reported.
            if at < next {
                continue;
            }
            last = last.max(at);
            match event.event_type() {
                EventType::Put => {
                    self.known.insert(kv.key().to_vec(), at);
                    self.buffered.push_back(Event::Put {
                        entry: Entry::from_kv(kv),
                    });
                }
                EventType::Delete => {
                    self.known.remove(kv.key());
                    self.buffered.push_back(Event::Delete {
                        key: kv.key().to_vec(),
                        revision: at,
                    });
                }
            }
        }
        self.next = Some(last + 1);
        Ok(())
    }

    fn options(&self, start: i64) -> WatchOptions {
        let mut options = WatchOptions::new()
            .with_progress_notify()
            .with_start_revision(start);
        if let Some(end) = &self.range_end {
            options = options.with_range(end.clone());
        }
        options
    }

    /// Reads the range and queues the resync from what was reported to it.
    async fn relist(&mut self) -> Result<()> {
        let mut options = GetOptions::new();
        if let Some(end) = &self.range_end {
            options = options.with_range(end.clone());
        }
        let read = self
            .client
            .idempotent_request("get", |etcd| {
                let (key, options) = (self.key.clone(), options.clone());
                async move {
                    etcd.kv_client()
                        .max_decoding_message_size(MAX_MESSAGE)
                        .get(key, Some(options))
                        .await
                }
            })
            .await?;
        let revision = read.header().map_or(0, |h| h.revision());
        let mut present = BTreeMap::new();
        let mut puts = Vec::new();
        for kv in read.kvs() {
            if self.known.get(kv.key()) != Some(&kv.mod_revision()) {
                puts.push(Entry::from_kv(kv));
            }
            present.insert(kv.key().to_vec(), kv.mod_revision());
        }
        let deletes = self
            .known
            .keys()
            .filter(|key| !present.contains_key(*key))
            .cloned()
            .collect();
        self.known = present;
        self.next = Some(revision + 1);
        self.relist = false;
        self.watch = None;
        self.buffered.push_back(Event::Resync {
            revision,
            puts,
            deletes,
        });
        Ok(())
    }
}

/// A stream of every change under `prefix` (a full key: use [`Client::key`]), from `from` or,
/// with `None`, from a read of the range. Shorthand for [`Watcher::prefix`] and
/// [`Watcher::into_stream`]; the same [recovery](Watcher#recovery).
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
/// use futures_util::StreamExt;
/// let mut events = std::pin::pin!(coord_core::stream::watch_prefix(&client, client.key("jobs/"), None));
/// while let Some(event) = events.next().await {
///     println!("{:?}", event?);
/// }
/// # Ok(()) }
/// ```
pub fn watch_prefix(
    client: &Client,
    prefix: impl Into<Vec<u8>>,
    from: Option<i64>,
) -> impl Stream<Item = Result<Event>> + Send {
    let watcher = Watcher::prefix(client, prefix);
    match from {
        Some(from) => watcher.from_revision(from),
        None => watcher,
    }
    .into_stream()
}

/// Whether a watch failed because a response exceeded the client's message size limit.
fn is_oversized(error: &Error) -> bool {
    let (Error::Unavailable { source, .. } | Error::Etcd { source, .. }) = error else {
        return false;
    };
    match source.inner() {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::OutOfRange && status.message().contains("too large")
        }
        _ => false,
    }
}

fn reconnect_backoff() -> backon::ExponentialBackoff {
    RetryPolicy::new()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_max_elapsed(None)
        .backoff()
}
