//! Observers: the leader of an election as a [`watch::Receiver`], fed by one etcd watch per
//! process and election. Recovery: see [`observe`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex as StdMutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use coord_core::etcd_client::{EventType, GetOptions, WatchOptions, WatchStream};
use coord_core::keys::{prefix_range_end, queue_prefix, validate_name};
use coord_core::{Client, Error as CoreError, FencingToken, LeaseId, RetryPolicy};
use tokio::sync::{oneshot, watch};

use crate::{LeaderInfo, Result};

/// Watch responses and reads may carry many large proposals at once (up to 1.5 MiB each); tonic's
/// default limit of 4 MiB per message would turn that into a permanent error.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Follows the leader of election `name` (under the client's namespace).
///
/// Returns once the current state is known: the receiver's value is the leader at the time of the
/// call (`None` when nobody campaigns), marked as seen; [`changed`](watch::Receiver::changed)
/// then resolves on every change of leader **or of its value** (a proclaim), and when the last
/// candidate leaves (`None`). Unlike Go's `Observe`, it reports "no leader", never reports a key
/// that is not the lowest one at its revision (etcd #18163), and publishes every change in
/// revision order; like any [`watch`] channel, a receiver that reads less often than changes
/// happen sees only the latest.
///
/// All observers of one election in a process share **one etcd watch** (per endpoint list and
/// full key prefix; clients made with [`Client::from_etcd`] have no endpoint list and get a
/// watch of their own). It runs in a task on the runtime of the call that started it and ends
/// when its last receiver is dropped (or that runtime shuts down).
///
/// # Recovery
///
/// The observer keeps every candidate of the election (key, create revision, value) in memory and
/// recomputes the leader after each revision's events, so it reports exactly the state etcd had
/// at that revision.
///
/// - **Start:** it opens a *live* prefix watch (no start revision: etcd puts it in the synced
///   group, see `docs/architecture.md`, "Watch waits"), waits until it is created, and only then
///   reads every candidate. Events up to the read's revision are already in the read and skipped.
/// - **Broken stream** (reset, member down, server closed it): the watch is re-created at the
///   revision after the last one seen (events and progress notifications advance it), so no change
///   is missed or reported twice. Transient failures are retried for ever with a jittered backoff.
/// - **Compaction** of that revision: start again (watch, then read). Changes inside the compacted
///   gap are not reported one by one — the next report is the state after it.
/// - **Permanent failure** (permission denied, auth, TLS, a watch cancelled by the server): the
///   observer ends and its receivers' [`changed`](watch::Receiver::changed) returns an error.
///
/// # Errors
///
/// [`coord_core::Error::InvalidName`] for an invalid name; errors of the first watch or read
/// (a timeout after the client's request timeout, permission denied…). After that, only a
/// permanent failure ends the observer, and receivers then see `changed()` return an error.
///
/// # Cancel safety
///
/// Cancel safe: a dropped call leaves no observer behind.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_leader::Result<()> {
/// let mut leader = coord_leader::observe(&client, "scheduler").await?;
/// loop {
///     match leader.borrow_and_update().as_ref() {
///         Some(info) => println!("{} leads since revision {}", info.value_str().unwrap_or("?"), info.since),
///         None => println!("no leader"),
///     }
///     if leader.changed().await.is_err() {
///         break; // the observer failed permanently
///     }
/// }
/// # Ok(()) }
/// ```
pub async fn observe(client: &Client, name: &str) -> Result<watch::Receiver<Option<LeaderInfo>>> {
    validate_name(client.namespace(), name)?;
    let prefix = queue_prefix(client.namespace(), name);
    let shared_as = (!client.endpoints().is_empty()).then(|| {
        (
            client.endpoints().to_vec(),
            client.identity().to_owned(),
            prefix.clone(),
        )
    });
    loop {
        if let Some(key) = &shared_as {
            let joined = registry()
                .get(key)
                .and_then(Weak::upgrade)
                .map(|observed| (observed.state.subscribe(), observed.ready.subscribe()));
            if let Some((mut state, mut ready)) = joined {
                if ready.wait_for(|ready| *ready).await.is_ok() {
                    // What it has published so far is the current state: seen.
                    state.mark_unchanged();
                    return Ok(state);
                }
                // Its start failed (and it has left the registry): start one ourselves, to learn
                // the error first-hand.
                continue;
            }
        }
        let observed = Arc::new(Observed {
            state: watch::Sender::new(None),
            ready: watch::Sender::new(false),
        });
        let mut state = observed.state.subscribe();
        if let Some(key) = &shared_as {
            let mut registry = registry();
            if registry.get(key).and_then(Weak::upgrade).is_some() {
                continue; // another caller started one meanwhile: join it
            }
            registry.insert(key.clone(), Arc::downgrade(&observed));
        }
        let (started, start) = oneshot::channel();
        let observer = Observer {
            client: client.clone(),
            range_end: prefix_range_end(prefix.as_bytes()),
            prefix: prefix.clone(),
            observed,
            shared_as: shared_as.clone(),
        };
        tokio::spawn(observer.run(started));
        return match start.await {
            Ok(Ok(())) => {
                state.mark_unchanged();
                Ok(state)
            }
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(CoreError::Shutdown.into()),
        };
    }
}

/// (endpoints, identity, full prefix) → the observer serving it.
type RegistryKey = (Vec<String>, String, String);

static OBSERVERS: LazyLock<StdMutex<HashMap<RegistryKey, Weak<Observed>>>> =
    LazyLock::new(|| StdMutex::new(HashMap::new()));

/// Subscribers join under this lock, and an observer decides to end under it, so a receiver is
/// never handed out by an observer that is about to end.
fn registry() -> MutexGuard<'static, HashMap<RegistryKey, Weak<Observed>>> {
    OBSERVERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Owned (strongly) only by the observer task: when the task ends, for whatever reason, both
/// channels close and the registry entry no longer upgrades.
struct Observed {
    state: watch::Sender<Option<LeaderInfo>>,
    /// Set once the first read has been published.
    ready: watch::Sender<bool>,
}

struct Observer {
    client: Client,
    prefix: String,
    range_end: Vec<u8>,
    observed: Arc<Observed>,
    shared_as: Option<RegistryKey>,
}

/// How following a watch stream ended.
enum Follow {
    /// The resume revision was compacted: read everything again.
    Relist,
    NoReceivers,
    Failed(CoreError),
}

impl Observer {
    async fn run(self, started: oneshot::Sender<coord_core::Result<()>>) {
        let mut started = Some(started);
        let mut candidates = Candidates::default();
        let mut backoff = reconnect_backoff();
        let failure = loop {
            let start = tokio::select! {
                biased;
                () = self.no_receivers() => break None,
                start = self.start(&mut candidates) => start,
            };
            let (stream, next) = match start {
                Ok(start) => start,
                Err(error) => {
                    if let Some(started) = started.take() {
                        self.unregister();
                        let _ = started.send(Err(error));
                        return;
                    }
                    if !error.is_retryable() {
                        break Some(error);
                    }
                    let delay = backoff.next().unwrap_or(Duration::from_secs(2));
                    tracing::debug!(prefix = %self.prefix, %error, ?delay, "observer: restart failed; retrying");
                    tokio::select! {
                        biased;
                        () = self.no_receivers() => break None,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            if let Some(started) = started.take() {
                self.observed.ready.send_replace(true);
                let _ = started.send(Ok(()));
            }
            backoff = reconnect_backoff();
            match self.follow(stream, next, &mut candidates).await {
                Follow::Relist => {
                    tracing::debug!(prefix = %self.prefix, "observer: compacted; reading again");
                }
                Follow::NoReceivers => break None,
                Follow::Failed(error) => break Some(error),
            }
        };
        self.unregister();
        match failure {
            Some(error) => {
                tracing::error!(prefix = %self.prefix, %error, "observer failed; its receivers are closed")
            }
            None => tracing::debug!(prefix = %self.prefix, "observer: no receivers left"),
        }
    }

    /// Opens a live watch, waits for its creation, then reads every candidate and publishes the
    /// leader. Returns the stream and the first revision it must still apply.
    async fn start(&self, candidates: &mut Candidates) -> coord_core::Result<(WatchStream, i64)> {
        let stream = self.open_watch(None).await?;
        let client = &self.client;
        let read = client
            .idempotent_request("get", |etcd| {
                let prefix = self.prefix.clone();
                async move {
                    etcd.kv_client()
                        .max_decoding_message_size(MAX_MESSAGE)
                        .get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        let revision = read.header().map_or(0, |h| h.revision());
        candidates.clear();
        for kv in read.kvs() {
            candidates.put(kv.key(), kv.create_revision(), kv.value(), kv.lease());
        }
        self.publish(candidates, revision);
        Ok((stream, revision + 1))
    }

    /// Opens a prefix watch (live, or from `start`) and waits until the server confirms it.
    async fn open_watch(&self, start: Option<i64>) -> coord_core::Result<WatchStream> {
        let mut options = WatchOptions::new()
            .with_range(self.range_end.clone())
            .with_progress_notify();
        if let Some(start) = start {
            options = options.with_start_revision(start);
        }
        let after = self.client.request_timeout();
        let open = async {
            let mut stream = self
                .client
                .etcd()
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE)
                .watch(self.prefix.clone(), Some(options))
                .await
                .map_err(|e| CoreError::from_etcd("watch", e))?;
            // A resumed watch whose start revision was compacted is created *and* cancelled in one
            // reply; `follow` sees it as the first message. A live one must be created before the
            // read that completes it.
            if start.is_none() {
                match stream.message().await {
                    Ok(Some(resp)) if resp.created() && !resp.canceled() => {}
                    Ok(Some(resp)) => {
                        return Err(CoreError::watch_cancelled(resp.cancel_reason()));
                    }
                    Ok(None) => {
                        return Err(CoreError::WatchCancelled {
                            reason: "the watch stream closed before the watch was created".into(),
                        });
                    }
                    Err(e) => return Err(CoreError::from_etcd("watch", e)),
                }
            }
            Ok(stream)
        };
        tokio::time::timeout(after, open)
            .await
            .map_err(|_| CoreError::Timeout {
                operation: "watch",
                after,
            })?
    }

    /// Applies the stream's events revision by revision, publishing the leader after each one.
    async fn follow(
        &self,
        mut stream: WatchStream,
        mut next: i64,
        candidates: &mut Candidates,
    ) -> Follow {
        let mut backoff = reconnect_backoff();
        loop {
            let message = tokio::select! {
                biased;
                () = self.no_receivers() => return Follow::NoReceivers,
                message = stream.message() => message,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                broken => {
                    let error = match broken {
                        Err(e) => CoreError::from_etcd("watch", e),
                        _ => CoreError::WatchCancelled {
                            reason: "the server closed the watch stream".into(),
                        },
                    };
                    if !error.is_retryable() && !matches!(error, CoreError::WatchCancelled { .. }) {
                        return Follow::Failed(error);
                    }
                    tracing::debug!(prefix = %self.prefix, %error, next, "observer: watch broken; resuming");
                    match self.resume(next, &mut backoff).await {
                        Ok(resumed) => stream = resumed,
                        Err(follow) => return follow,
                    }
                    continue;
                }
            };
            if resp.compact_revision() > 0 {
                return Follow::Relist;
            }
            if resp.canceled() {
                return Follow::Failed(CoreError::watch_cancelled(resp.cancel_reason()));
            }
            backoff = reconnect_backoff();
            if resp.created() {
                continue;
            }
            if resp.events().is_empty() {
                // Progress notification: every event up to the header's revision was delivered.
                if let Some(header) = resp.header() {
                    next = next.max(header.revision() + 1);
                }
                continue;
            }
            let mut revision: Option<i64> = None;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let at = kv.mod_revision();
                if at < next {
                    continue; // already in the read this stream completes
                }
                if let Some(done) = revision.filter(|done| *done != at) {
                    self.publish(candidates, done);
                }
                revision = Some(at);
                match event.event_type() {
                    EventType::Put => {
                        candidates.put(kv.key(), kv.create_revision(), kv.value(), kv.lease())
                    }
                    EventType::Delete => candidates.delete(kv.key()),
                }
                next = at + 1;
            }
            if let Some(done) = revision {
                self.publish(candidates, done);
            }
        }
    }

    /// Re-creates the watch at `next` after a broken stream: at once, then with backoff.
    async fn resume(
        &self,
        next: i64,
        backoff: &mut (impl Iterator<Item = Duration> + Send),
    ) -> std::result::Result<WatchStream, Follow> {
        let mut first = true;
        loop {
            if !first {
                let delay = backoff.next().unwrap_or(Duration::from_secs(2));
                tokio::select! {
                    biased;
                    () = self.no_receivers() => return Err(Follow::NoReceivers),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            first = false;
            let opened = tokio::select! {
                biased;
                () = self.no_receivers() => return Err(Follow::NoReceivers),
                opened = self.open_watch(Some(next)) => opened,
            };
            match opened {
                Ok(stream) => return Ok(stream),
                Err(error) if error.is_retryable() => {
                    tracing::debug!(prefix = %self.prefix, %error, "observer: resume failed; retrying");
                }
                Err(error) => return Err(Follow::Failed(error)),
            }
        }
    }

    /// Publishes the leader after `revision` if it differs from the last report.
    fn publish(&self, candidates: &Candidates, revision: i64) {
        let leader = candidates.leader(revision);
        self.observed.state.send_if_modified(|current| {
            let changed = match (current.as_ref(), leader.as_ref()) {
                (Some(was), Some(now)) => !was.same_state(now),
                (None, None) => false,
                _ => true,
            };
            if changed {
                tracing::trace!(prefix = %self.prefix, revision, leader = ?leader.as_ref().map(|l| &l.key), "observer: leader changed");
                *current = leader;
            }
            changed
        });
    }

    /// Resolves once no receiver is left, after removing this observer from the registry (under
    /// the registry lock, re-checking the count, so that no receiver is handed out meanwhile).
    async fn no_receivers(&self) {
        loop {
            self.observed.state.closed().await;
            let Some(key) = &self.shared_as else { return };
            let mut registry = registry();
            if self.observed.state.receiver_count() > 0 {
                continue;
            }
            remove_if_self(&mut registry, key, &self.observed);
            return;
        }
    }

    fn unregister(&self) {
        if let Some(key) = &self.shared_as {
            remove_if_self(&mut registry(), key, &self.observed);
        }
    }
}

fn remove_if_self(
    registry: &mut HashMap<RegistryKey, Weak<Observed>>,
    key: &RegistryKey,
    observed: &Arc<Observed>,
) {
    if registry
        .get(key)
        .is_some_and(|entry| std::ptr::eq(entry.as_ptr(), Arc::as_ptr(observed)))
    {
        registry.remove(key);
    }
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> + Send {
    RetryPolicy::new()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_max_elapsed(None)
        .backoff()
}

/// Every candidate of an election, ordered as etcd orders them for leadership.
#[derive(Debug, Default)]
struct Candidates {
    /// (create revision, key) → (value, lease). Ties (two keys created by one transaction) go to
    /// the smaller key.
    ordered: BTreeMap<(i64, Vec<u8>), (Vec<u8>, i64)>,
    /// key → create revision.
    by_key: HashMap<Vec<u8>, i64>,
}

impl Candidates {
    fn clear(&mut self) {
        self.ordered.clear();
        self.by_key.clear();
    }

    fn put(&mut self, key: &[u8], create_revision: i64, value: &[u8], lease: i64) {
        if let Some(was) = self.by_key.insert(key.to_vec(), create_revision) {
            self.ordered.remove(&(was, key.to_vec()));
        }
        self.ordered
            .insert((create_revision, key.to_vec()), (value.to_vec(), lease));
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(was) = self.by_key.remove(key) {
            self.ordered.remove(&(was, key.to_vec()));
        }
    }

    fn leader(&self, since: i64) -> Option<LeaderInfo> {
        self.ordered
            .first_key_value()
            .map(|((create_revision, key), (value, lease))| LeaderInfo {
                key: String::from_utf8_lossy(key).into_owned(),
                value: value.clone(),
                token: FencingToken::new(*create_revision),
                lease: LeaseId::new(*lease),
                since,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_create_revision_leads() {
        let mut c = Candidates::default();
        c.put(b"e/b", 12, b"b", 2);
        c.put(b"e/a", 10, b"a", 1);
        let leader = c.leader(13).unwrap();
        assert_eq!(
            (leader.key.as_str(), leader.token.revision(), leader.since),
            ("e/a", 10, 13)
        );
    }

    #[test]
    fn a_proclaim_changes_the_value_but_not_the_order() {
        let mut c = Candidates::default();
        c.put(b"e/a", 10, b"a", 1);
        c.put(b"e/b", 12, b"b", 2);
        c.put(b"e/b", 12, b"b2", 2);
        c.put(b"e/a", 10, b"a2", 1);
        assert_eq!(c.leader(0).unwrap().value, b"a2");
        c.delete(b"e/a");
        assert_eq!(c.leader(0).unwrap().value, b"b2");
    }

    #[test]
    fn deleting_the_last_candidate_leaves_no_leader() {
        let mut c = Candidates::default();
        c.put(b"e/a", 10, b"a", 1);
        c.delete(b"e/a");
        c.delete(b"e/never-there");
        assert!(c.leader(0).is_none());
    }

    #[test]
    fn a_recreated_key_moves_to_the_back() {
        let mut c = Candidates::default();
        c.put(b"e/a", 10, b"a", 1);
        c.put(b"e/b", 12, b"b", 2);
        c.delete(b"e/a");
        c.put(b"e/a", 15, b"a", 1);
        assert_eq!(c.leader(0).unwrap().key, "e/b");
    }

    #[test]
    fn keys_created_in_one_transaction_are_ordered_by_key() {
        let mut c = Candidates::default();
        c.put(b"e/b", 10, b"b", 1);
        c.put(b"e/a", 10, b"a", 1);
        assert_eq!(c.leader(0).unwrap().key, "e/a");
    }
}
