//! Watching keys in a way that survives disconnects.
//!
//! The waits queue-based primitives need: until a key is deleted ([`wait_deleted`]), changed
//! ([`wait_changed`]), or any (older) key under a prefix is deleted ([`wait_prefix_deleted`],
//! [`wait_older_deleted`]). The resumable event stream is [`crate::stream`], the cache on it
//! [`crate::cache`].
//!
//! # Recovery
//!
//! A watch that breaks (connection reset, member down, server closed the stream) is re-created
//! with a jittered backoff, resuming at the revision after the last one it has seen (events or
//! progress notifications), so no delete is missed and none is reported twice. If that revision
//! has been compacted meanwhile, the wait ends with [`Error::Compacted`]: the caller re-reads the
//! state it was waiting on (the key may be gone) instead of retrying the same revision.

use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchFilterType, WatchOptions};

use crate::{Client, Error, Result, RetryPolicy};

/// Waits until `key` is deleted at or after `start_revision`, and returns the revision of the delete
/// (or of a read that showed the key gone, when the delete happened before the watch was created).
///
/// Start at the revision *after* the read that showed the key (`header.revision + 1`), never at the
/// read's own revision: a watch from an already-current revision lands in etcd's "unsynced" watcher
/// group, which is served by a 100 ms loop (see `docs/architecture.md`).
///
/// # Errors
///
/// - [`Error::Compacted`] when `start_revision` (or the resume point after a reconnect) has been
///   compacted: re-read and decide again.
/// - A non-retryable error of the watch (permission denied, TLS, auth), or
///   [`Error::WatchCancelled`] when the server cancels the watch for another reason.
///
/// Transient failures are retried for ever; bound the wait with your own timeout or select.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future cancels the watch and changes nothing in etcd.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
/// let key = client.key("jobs/holder");
/// let read = client.get(key.clone(), None).await?;
/// if !read.kvs().is_empty() {
///     let from = read.header().map_or(0, |h| h.revision()) + 1;
///     let deleted_at = coord_core::watch::wait_deleted(&client, key, from).await?;
///     println!("deleted at revision {deleted_at}");
/// }
/// # Ok(()) }
/// ```
pub async fn wait_deleted(
    client: &Client,
    key: impl Into<Vec<u8>>,
    start_revision: i64,
) -> Result<i64> {
    first_event(
        client,
        Target::one_key(key.into(), true, false),
        start_revision,
    )
    .await
    .map(|woken| woken.revision)
}

/// Waits until `key` is written or deleted at or after `start_revision`, and returns the revision
/// of that change. Same start-revision rule, errors and recovery as [`wait_deleted`].
///
/// # Errors
///
/// As [`wait_deleted`].
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn wait_changed(
    client: &Client,
    key: impl Into<Vec<u8>>,
    start_revision: i64,
) -> Result<i64> {
    wait_changed_value(client, key, start_revision)
        .await
        .map(|(revision, _)| revision)
}

/// Like [`wait_changed`], but also returns the key as it is after the change: `Some` with the
/// written value (or, when the change happened before the watch existed, the value a read found
/// then), `None` when the key is gone. A key deleted and created again shows its new create
/// revision; callers that hold a create revision compare it.
///
/// # Errors
///
/// As [`wait_deleted`].
///
/// # Cancel safety
///
/// Cancel safe.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
/// let key = client.key("jobs/state");
/// let read = client.get(key.clone(), None).await?;
/// let from = read.header().map_or(0, |h| h.revision()) + 1;
/// match coord_core::watch::wait_changed_value(&client, key, from).await?.1 {
///     Some(kv) => println!("now {:?}", kv.value_str()),
///     None => println!("deleted"),
/// }
/// # Ok(()) }
/// ```
pub async fn wait_changed_value(
    client: &Client,
    key: impl Into<Vec<u8>>,
    start_revision: i64,
) -> Result<(i64, Option<KeyValue>)> {
    let target = Target::one_key(key.into(), false, false);
    first_event(client, target, start_revision)
        .await
        .map(|woken| (woken.revision, woken.kv))
}

/// Like [`wait_changed_value`], without its read: one watch from `start_revision` itself, which
/// etcd serves from its "unsynced" watcher group. That costs etcd one batched catch-up instead of a
/// request per wait, but a change in the first ~100 ms of the wait can be reported up to ~100 ms
/// late (etcd's catch-up loop runs every 100 ms; changes after the catch-up arrive at once). For
/// waits that usually last longer and that a late wake-up only slows down — a queue waiter's
/// predecessor, when its turn is normally handed to it on another key.
///
/// # Errors
///
/// As [`wait_deleted`].
///
/// # Cancel safety
///
/// Cancel safe.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
/// let key = client.key("queue/ahead-of-me");
/// let read = client.get(key.clone(), None).await?;
/// let from = read.header().map_or(0, |h| h.revision()) + 1;
/// let (revision, now) = coord_core::watch::wait_changed_value_from_history(&client, key, from).await?;
/// println!("changed at {revision}, now {:?}", now.map(|kv| kv.value().to_vec()));
/// # Ok(()) }
/// ```
pub async fn wait_changed_value_from_history(
    client: &Client,
    key: impl Into<Vec<u8>>,
    start_revision: i64,
) -> Result<(i64, Option<KeyValue>)> {
    let target = Target::one_key(key.into(), false, true);
    first_event(client, target, start_revision)
        .await
        .map(|woken| (woken.revision, woken.kv))
}

/// Waits until any key under `prefix` is deleted at or after `start_revision`, and returns the
/// revision of that delete. Same start-revision rule, errors and recovery as [`wait_deleted`].
///
/// # Errors
///
/// As [`wait_deleted`].
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn wait_prefix_deleted(
    client: &Client,
    prefix: impl Into<Vec<u8>>,
    start_revision: i64,
) -> Result<i64> {
    let key = prefix.into();
    let range_end = Some(crate::keys::prefix_range_end(&key));
    first_event(
        client,
        Target {
            key,
            range_end,
            deletes_only: true,
            created_before: None,
            from_history: false,
        },
        start_revision,
    )
    .await
    .map(|woken| woken.revision)
}

/// Waits until a key under `prefix` **created before `created_before`** is deleted, at or after
/// `start_revision`; deletes of newer keys are skipped without waking the caller. This is the wait
/// of a queue entry for the keys ahead of it. Same start-revision rule, errors and recovery as
/// [`wait_deleted`].
///
/// Returns `Some(revision)` of a delete known to be of an older key, or `None` for a delete whose
/// previous value etcd no longer had (compacted): then the caller must re-read to know.
///
/// # Errors
///
/// As [`wait_deleted`].
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn wait_older_deleted(
    client: &Client,
    prefix: impl Into<Vec<u8>>,
    created_before: i64,
    start_revision: i64,
) -> Result<Option<i64>> {
    let key = prefix.into();
    let range_end = Some(crate::keys::prefix_range_end(&key));
    let target = Target {
        key,
        range_end,
        deletes_only: true,
        created_before: Some(created_before),
        from_history: false,
    };
    let woken = first_event(client, target, start_revision).await?;
    Ok(woken.certain.then_some(woken.revision))
}

/// A watch on one key, opened *before* the wait it serves (typically before the write that creates
/// the key): every change after it was opened arrives on it, so a wait from a later revision needs
/// no read to cover the time between that revision and the watch's creation — unlike
/// [`wait_changed_value`], which opens its watch when called and settles that gap with a read.
/// A queue entry that watches its own key from before its enqueue saves that read on every wait.
///
/// It keeps only the newest change it has seen. If its watch breaks (a reconnect, a cancellation
/// by the server), each later wait falls back to [`wait_changed_value`].
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
/// let key = client.key("jobs/worker-1");
/// let mut watch = coord_core::watch::KeyWatch::open(&client, key.clone());
/// let put = client.put(key, "waiting", None).await?;
/// let from = put.header().map_or(0, |h| h.revision()) + 1;
/// let (revision, now) = watch.changed_since(from).await?;
/// println!("changed at {revision}: {:?}", now.as_ref().map(|kv| kv.value_str()));
/// # Ok(()) }
/// ```
pub struct KeyWatch {
    client: Client,
    key: Vec<u8>,
    /// `None` once the watch broke: waits then fall back to [`wait_changed_value`].
    watch: Option<crate::hub::HubWatch>,
    /// The revision the watch was created at, once etcd confirmed it.
    created_at: Option<i64>,
    /// The newest change seen: its revision and the key after it (`None`: deleted).
    latest: Option<(i64, Option<KeyValue>)>,
}

impl std::fmt::Debug for KeyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWatch")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("created_at", &self.created_at)
            .field("broken", &self.watch.is_none())
            .finish()
    }
}

impl KeyWatch {
    /// Opens the watch (on the client's shared watch stream) from now on.
    pub fn open(client: &Client, key: impl Into<Vec<u8>>) -> KeyWatch {
        let key = key.into();
        let watch = client.hub_watch(key.clone(), WatchOptions::new().with_progress_notify());
        KeyWatch {
            client: client.clone(),
            key,
            watch: Some(watch),
            created_at: None,
            latest: None,
        }
    }

    /// Waits until the key has changed (written or deleted) at or after `start_revision`, and
    /// returns the revision of the newest such change seen and the key after it (`None`: gone) —
    /// as [`wait_changed_value`], without its read when the watch was opened before
    /// `start_revision`.
    ///
    /// # Errors
    ///
    /// As [`wait_changed_value`] (after the watch broke, the waits are its).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what the watch delivered is kept for the next call.
    pub async fn changed_since(&mut self, start_revision: i64) -> Result<(i64, Option<KeyValue>)> {
        loop {
            if let Some((revision, kv)) = &self.latest {
                if *revision >= start_revision {
                    return Ok((*revision, kv.clone()));
                }
            }
            let Some(watch) = self.watch.as_mut() else {
                return wait_changed_value(&self.client, self.key.clone(), start_revision).await;
            };
            if let Some(created_at) = self.created_at {
                if created_at >= start_revision {
                    // Opened after the start: changes in [start, created_at] came before the
                    // watch; a read tells whether there were any.
                    let target = Target::one_key(self.key.clone(), false, false);
                    match changed_since(&self.client, &target, start_revision).await {
                        Ok(Some((revision, kv))) => {
                            self.note(revision, kv);
                            continue;
                        }
                        // Nothing before the watch: from now on its events tell.
                        Ok(None) => self.created_at = Some(start_revision - 1),
                        // A failed read must not fail the wait: `wait_changed_value` retries.
                        Err(_) => {
                            self.watch = None;
                            continue;
                        }
                    }
                }
            }
            let response = match watch.next().await {
                Ok(response) if !response.canceled() && response.compact_revision() == 0 => {
                    response
                }
                _ => {
                    self.watch = None;
                    continue;
                }
            };
            if response.created() {
                self.created_at = Some(response.header().map_or(i64::MAX, |h| h.revision()));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let value = (event.event_type() == EventType::Put).then(|| kv.clone());
                self.note(kv.mod_revision(), value);
            }
        }
    }

    fn note(&mut self, revision: i64, kv: Option<KeyValue>) {
        if self
            .latest
            .as_ref()
            .is_none_or(|(seen, _)| revision >= *seen)
        {
            self.latest = Some((revision, kv));
        }
    }
}

struct Target {
    key: Vec<u8>,
    range_end: Option<Vec<u8>>,
    deletes_only: bool,
    /// Only deletes of keys created before this revision count (read from the previous value).
    created_before: Option<i64>,
    /// One watch from the start revision (etcd's unsynced group), no live watch and no read.
    from_history: bool,
}

impl Target {
    /// A wait on one key: for its deletion only, or for any change; live, or from history.
    fn one_key(key: Vec<u8>, deletes_only: bool, from_history: bool) -> Target {
        Target {
            key,
            range_end: None,
            deletes_only,
            created_before: None,
            from_history,
        }
    }

    /// Whether the event ends the wait, and whether it is certain to be one the caller waits for.
    fn matches(&self, event: &etcd_client::Event) -> Option<bool> {
        if !self.deletes_only {
            return Some(true);
        }
        if event.event_type() != EventType::Delete {
            return None;
        }
        match (self.created_before, event.prev_kv()) {
            (None, _) => Some(true),
            (Some(before), Some(prev)) => (prev.create_revision() < before).then_some(true),
            // No previous value (compacted away): wake the caller, who re-reads.
            (Some(_), None) => Some(false),
        }
    }
}

/// Waits for the first matching event at or after `start_revision`.
///
/// etcd serves a watch whose start revision is not newer than its current revision from the
/// "unsynced" group, which a 100 ms loop catches up — even for events that happen later. So the
/// wait opens a *live* watch (no start revision: synced, events after its creation revision `C`
/// arrive at once) and, only when revisions were committed between `start_revision` and `C`, a
/// second *gap* watch from `start_revision` for the events that already happened. Both are created
/// on the client's shared watch stream.
async fn first_event(client: &Client, target: Target, start_revision: i64) -> Result<Woken> {
    let mut next = start_revision;
    let mut backoff = reconnect_backoff();
    let options = |start: Option<i64>| {
        let mut options = WatchOptions::new().with_progress_notify();
        if let Some(start) = start {
            options = options.with_start_revision(start);
        }
        if target.deletes_only {
            options = options.with_filters([WatchFilterType::NoPut]);
        }
        if let Some(end) = &target.range_end {
            options = options.with_range(end.clone());
        }
        if target.created_before.is_some() {
            options = options.with_prev_key();
        }
        options
    };
    loop {
        let start = target.from_history.then_some(next);
        let mut live = client.hub_watch(target.key.clone(), options(start));
        let mut gap: Option<crate::hub::HubWatch> = None;
        // A watch from history needs neither the read nor the gap watch below.
        let mut live_created = target.from_history;
        loop {
            let (resp, from_gap) = tokio::select! {
                resp = live.next() => (resp, false),
                resp = async {
                    match gap.as_mut() {
                        Some(gap) => gap.next().await,
                        None => std::future::pending().await,
                    }
                } => (resp, true),
            };
            let resp = match resp {
                Ok(resp) => resp,
                Err(error) => {
                    retry_or_fail(error, &mut backoff).await?;
                    break;
                }
            };
            if resp.compact_revision() > 0 {
                return Err(Error::Compacted {
                    requested: next,
                    compact_revision: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Err(Error::watch_cancelled(resp.cancel_reason()));
            }
            backoff = reconnect_backoff();
            if resp.created() {
                if !from_gap && !live_created {
                    live_created = true;
                    let created_at = resp.header().map_or(i64::MAX, |h| h.revision());
                    if created_at < next {
                        // The member serving the watch is behind the caller's start (another
                        // member answered the read it came from): the live watch also delivers
                        // the events in (created_at, next), which are skipped below — one of them
                        // can be the delete of an earlier key of the same name.
                    } else if target.range_end.is_none() {
                        // Revisions [next, created_at] were committed before the live watch existed.
                        // For one key a read tells whether it already changed; a gap watch would be
                        // an unsynced watcher itself, served up to 100 ms late.
                        match changed_since(client, &target, next).await {
                            Ok(Some((revision, kv))) => {
                                return Ok(Woken {
                                    revision,
                                    certain: true,
                                    kv,
                                });
                            }
                            Ok(None) => next = created_at + 1,
                            // Transient trouble: start over (new live watch, new read), like
                            // a broken watch; the wait must not fail on a timeout.
                            Err(error) => {
                                retry_or_fail(error, &mut backoff).await?;
                                break;
                            }
                        }
                    } else {
                        gap = Some(client.hub_watch(target.key.clone(), options(Some(next))));
                    }
                }
                continue;
            }
            for event in resp.events() {
                let revision = event.kv().map_or(next, |kv| kv.mod_revision());
                if revision < next {
                    // Before the caller's start (or already covered): not an answer.
                    continue;
                }
                if let Some(certain) = target.matches(event) {
                    return Ok(Woken {
                        revision,
                        certain,
                        kv: event
                            .kv()
                            .filter(|_| event.event_type() == EventType::Put)
                            .cloned(),
                    });
                }
            }
            // A progress notification on the watch that covers `next` promises that every event up
            // to its header revision has been delivered: resume after it.
            let covers_next = from_gap || gap.is_none();
            if resp.events().is_empty() && covers_next {
                if let Some(header) = resp.header() {
                    next = next.max(header.revision() + 1);
                }
            }
        }
    }
}

/// What ended a wait: the revision, whether the event is certain to be one the caller waits for,
/// and the key's value after it (`None` for a delete).
struct Woken {
    revision: i64,
    certain: bool,
    kv: Option<KeyValue>,
}

/// Whether the single key of `target` already changed (was deleted, or for non-delete waits also
/// written) at or after `since`, judged from a read: returns the read's revision and the key as
/// read if so.
async fn changed_since(
    client: &Client,
    target: &Target,
    since: i64,
) -> Result<Option<(i64, Option<KeyValue>)>> {
    let mut read = client.get(target.key.clone(), None).await?;
    let revision = read.header().map_or(since, |h| h.revision());
    let changed = match read.kvs().first() {
        None => true,
        // Deleted and created again after `since`.
        Some(kv) if kv.create_revision() >= since => true,
        Some(kv) => !target.deletes_only && kv.mod_revision() >= since,
    };
    Ok(changed.then(|| (revision, read.take_kvs().into_iter().next())))
}

fn reconnect_backoff() -> backon::ExponentialBackoff {
    RetryPolicy::new()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_max_elapsed(None)
        .backoff()
}

async fn retry_or_fail(error: Error, backoff: &mut backon::ExponentialBackoff) -> Result<()> {
    if !error.is_retryable() {
        return Err(error);
    }
    let delay = backoff.next().unwrap_or(Duration::from_secs(2));
    tracing::debug!(%error, ?delay, "watch failed; re-creating it");
    tokio::time::sleep(delay).await;
    Ok(())
}
