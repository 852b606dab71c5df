//! The key queue every coord primitive stands on, as in etcd's Go `concurrency` package: holders
//! and waiters are keys under `namespace + name + "/"`, ordered by create revision; the first key(s)
//! hold, the others wait (docs/wire-format.md).
//!
//! This module holds the mechanics that must be identical wherever a queue is used:
//! - [`Entry`]: put a key in the queue with the session's lease, learning its create revision even
//!   if the caller is cancelled meanwhile, and removing it again (in the background) unless it is
//!   handed over to a guard;
//! - [`wait_until_first`]: wait, watching only the predecessor, until no older key remains;
//! - [`release`] / [`release_in_background`]: delete a key only if it is still the same key
//!   (create revision), never a newer one of the same session;
//! - [`key_lost`]: the "you no longer hold it" signal;
//! - [`local_slot`]: in-process exclusion for holders sharing one session and one key.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex as StdMutex, PoisonError, Weak};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, GetResponse, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use tokio::sync::OwnedMutexGuard;

use crate::watch::wait_deleted;
use crate::{Client, Error, LeaseId, Ownership, Result, RetryPolicy, Session};

/// `Range(prefix)` sorted by create revision ascending, limit 1: the head of the queue.
pub fn first_by_create() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
}

/// `Range(prefix)` of the newest key created before `revision`: a waiter's predecessor (Go's
/// `waitDeletes` range).
pub fn last_created_before(revision: i64) -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_max_create_revision(revision - 1)
        .with_limit(1)
}

/// The outcome of putting a key into the queue.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Enqueued {
    /// The key's create revision (a fresh put's revision, or the existing key's).
    pub revision: i64,
    /// Whether this call created the key. `false`: the session already had a key there, which is
    /// reused with its queue place, as Go does.
    pub created: bool,
    /// The existing key's value when it was not created by this call.
    pub existing_value: Option<Vec<u8>>,
    /// The responses of the reads sent with the put (see [`Entry::enqueue_reading`]), in order.
    /// In [`Entry::enqueue`]'s case: the head of the queue. Empty when [`alone`](Self::alone).
    pub reads: Vec<GetResponse>,
    /// The key was created into an empty queue, so it is the head (see
    /// [`Entry::enqueue_reading_unless_alone`]); no reads were sent.
    pub alone: bool,
}

impl Enqueued {
    /// The create revision of the head of the queue, for an entry made by [`Entry::enqueue`].
    pub fn first(&self) -> Option<i64> {
        self.reads
            .first()
            .and_then(|r| r.kvs().first())
            .map(|kv| kv.create_revision())
    }
}

/// A key being put into a queue, and the obligation to remove it again.
///
/// Dropping an `Entry` removes its key in the background (exactly the key it created, once the
/// in-flight request has settled), so an acquisition that fails or is cancelled leaves nothing in
/// etcd. Hand the key over to a guard with [`Entry::into_parts`], or drop the obligation with
/// [`Entry::forget`] when the key is not this caller's to remove.
///
/// A minimal lock on top of it (coord-lock's `Mutex` is this, plus local exclusion and guards):
///
/// ```no_run
/// # async fn demo(session: coord_core::Session) -> coord_core::Result<()> {
/// use coord_core::queue::{Entry, release, wait_until_first};
///
/// let prefix = session.client().key("jobs/");
/// let key = format!("{prefix}{}", session.lease_id());
/// let mut entry = Entry::enqueue(&session, key, &prefix, Vec::new());
/// let enqueued = entry.settle().await?;
/// wait_until_first(&session, &prefix, enqueued.revision).await?;
/// let (ownership, _) = entry.into_parts(); // we hold it now; nothing is removed on drop
/// if let Some(ownership) = ownership {
///     release(session.client(), &ownership).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Entry {
    session: Session,
    key: String,
    state: EntryState,
    local: Option<OwnedMutexGuard<()>>,
}

/// The enqueue request. It is polled in place by [`Entry::settle`] (no task on the fast path);
/// an entry dropped while it is in flight moves it to a task that finishes it and then removes the
/// key, so the outcome is never lost.
struct Request(Pin<Box<dyn Future<Output = Result<Enqueued>> + Send>>);

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request(..)")
    }
}

#[derive(Debug)]
enum EntryState {
    /// The enqueue transaction is in flight.
    InFlight(Request),
    /// The key exists (or existed) with this create revision.
    Known(Ownership),
    /// The enqueue failed in a way that hides whether its put was applied.
    Unknown(LeaseId),
    /// Nothing is owed.
    Done,
}

impl Entry {
    /// Prepares Go's `tryAcquire` transaction —
    /// `if create_revision(key) == 0 then put(key, value, lease) + get(head) else get(key) + get(head)`
    /// — with the session's lease; [`settle`](Self::settle) sends it. If the caller is cancelled
    /// while it is in flight, the outcome is still learned and the key removed exactly.
    pub fn enqueue(
        session: &Session,
        key: impl Into<String>,
        prefix: &str,
        value: Vec<u8>,
    ) -> Entry {
        Entry::enqueue_reading(
            session,
            key,
            value,
            vec![TxnOp::get(prefix, Some(first_by_create()))],
        )
    }

    /// Like [`enqueue`](Self::enqueue) with other reads in the same transaction:
    /// `if create_revision(key) == 0 then put(key, value, lease) + reads else get(key) + reads`.
    /// The reads see the put (when it happens); their responses are [`Enqueued::reads`].
    pub fn enqueue_reading(
        session: &Session,
        key: impl Into<String>,
        value: Vec<u8>,
        reads: Vec<TxnOp>,
    ) -> Entry {
        Entry::start(session, key.into(), value, None, reads)
    }

    /// Like [`enqueue_reading`](Self::enqueue_reading), but first tries a smaller transaction
    /// that puts the key only into an empty queue:
    /// `if create_revision([prefix, prefix end)) == 0 then put(key, value, lease)` — true exactly
    /// when no key exists under `prefix`. When it succeeds the key is the head and
    /// [`Enqueued::alone`] is set (no reads are sent); otherwise `enqueue_reading`'s transaction
    /// follows. etcd serves the small transaction in about the time of a bare create, where the
    /// read in the full one costs it 22–30 µs more (2–3 % of an uncontended lock cycle on the
    /// bench machine, BENCHMARKS.md); a busy queue pays one extra request (a failed write
    /// transaction is still a raft proposal), so use it when the queue is usually empty.
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_core::Result<()> {
    /// use coord_core::etcd_client::TxnOp;
    /// use coord_core::queue::{Entry, newest_two};
    ///
    /// let prefix = session.client().key("jobs/");
    /// let key = format!("{prefix}{}", session.lease_id());
    /// let reads = vec![TxnOp::get(prefix.clone(), Some(newest_two()))];
    /// let mut entry = Entry::enqueue_reading_unless_alone(&session, key, &prefix, Vec::new(), reads);
    /// let enqueued = entry.settle().await?;
    /// // Alone: the head, nothing was read. Otherwise `enqueued.reads` holds the two newest keys.
    /// println!("head: {}", enqueued.alone);
    /// # Ok(()) }
    /// ```
    pub fn enqueue_reading_unless_alone(
        session: &Session,
        key: impl Into<String>,
        prefix: &str,
        value: Vec<u8>,
        reads: Vec<TxnOp>,
    ) -> Entry {
        Entry::start(session, key.into(), value, Some(prefix.to_owned()), reads)
    }

    fn start(
        session: &Session,
        key: String,
        value: Vec<u8>,
        alone_in: Option<String>,
        reads: Vec<TxnOp>,
    ) -> Entry {
        let request = enqueue(
            session.client().clone(),
            key.clone(),
            session.lease_id(),
            value,
            alone_in,
            reads,
        );
        Entry {
            session: session.clone(),
            key,
            state: EntryState::InFlight(Request(Box::pin(request))),
            local: None,
        }
    }

    /// Keeps `local` (an in-process exclusion, see [`local_slot`]) until the key is removed or
    /// handed over.
    #[must_use = "the entry is returned with the slot attached"]
    pub fn holding(mut self, local: OwnedMutexGuard<()>) -> Entry {
        self.local = Some(local);
        self
    }

    /// Waits for the enqueue transaction. Transient failures (a connection reset, a timeout) are
    /// retried within the client's request timeout; the transaction is safe to repeat, and a key of
    /// this lease and value found by a retry counts as created by this call.
    ///
    /// # Errors
    ///
    /// [`Error::SessionLost`] when the session's lease no longer exists; the request's own errors
    /// once retries are exhausted (the key is then removed if it was written after all); [`Error::Shutdown`] when called
    /// again after the entry settled.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the request continues, and dropping the entry removes its key.
    pub async fn settle(&mut self) -> Result<Enqueued> {
        let EntryState::InFlight(request) = &mut self.state else {
            return Err(Error::Shutdown);
        };
        match request.0.as_mut().await {
            Ok(enqueued) => {
                self.state = EntryState::Known(Ownership::new(self.key.clone(), enqueued.revision));
                Ok(enqueued)
            }
            Err(error) => {
                self.state = if rejected(&error) {
                    // etcd refused the transaction as a whole: nothing to remove, and the
                    // in-process slot is free again as soon as the entry is dropped.
                    EntryState::Done
                } else {
                    // A timeout may hide an applied put: remove a key of this lease if there is one.
                    EntryState::Unknown(self.session.lease_id())
                };
                Err(error)
            }
        }
    }

    /// The queued key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key's ownership, once settled.
    pub fn ownership(&self) -> Option<&Ownership> {
        match &self.state {
            EntryState::Known(ownership) => Some(ownership),
            _ => None,
        }
    }

    /// Drops the obligation to remove the key (it is not this caller's, or it is already gone).
    pub fn forget(&mut self) {
        self.state = EntryState::Done;
    }

    /// Removes the key now (guarded by its create revision). On failure the obligation stays and
    /// the removal is retried in the background when the entry is dropped.
    ///
    /// # Errors
    ///
    /// Transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the entry afterwards completes the removal.
    pub async fn remove(&mut self) -> Result<()> {
        if let EntryState::Known(ownership) = &self.state {
            release(self.session.client(), ownership).await?;
            self.state = EntryState::Done;
        }
        Ok(())
    }

    /// Hands the key over: nothing is removed on drop; returns the ownership (once settled) and the
    /// in-process slot.
    pub fn into_parts(mut self) -> (Option<Ownership>, Option<OwnedMutexGuard<()>>) {
        let state = std::mem::replace(&mut self.state, EntryState::Done);
        let ownership = match state {
            EntryState::Known(ownership) => Some(ownership),
            _ => None,
        };
        (ownership, self.local.take())
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, EntryState::Done);
        let owed = match state {
            EntryState::Done => return,
            EntryState::Known(ownership) => Owed::Key(ownership),
            EntryState::Unknown(lease) => Owed::Leased(self.key.clone(), lease),
            EntryState::InFlight(request) => Owed::InFlight(self.key.clone(), request),
        };
        spawn_removal(&self.session, owed, self.local.take());
    }
}

enum Owed {
    Key(Ownership),
    Leased(String, LeaseId),
    InFlight(String, Request),
}

async fn enqueue(
    client: Client,
    key: String,
    lease: LeaseId,
    value: Vec<u8>,
    alone_in: Option<String>,
    reads: Vec<TxnOp>,
) -> Result<Enqueued> {
    let put = PutOptions::new().with_lease(lease.get());
    // Both transactions are safe to send again: if an attempt whose answer was lost (a connection
    // reset after the commit) created the key, the next one finds it. Transient failures are
    // retried within the request timeout.
    let uncertain = std::sync::atomic::AtomicBool::new(false);
    if let Some(prefix) = alone_in {
        // A compare over a range holds for every key in it, and over no key compares a zero
        // create revision: true exactly when the queue is empty. (A lost answer of an applied
        // attempt makes the retry fail on our own key; the full transaction below then finds
        // the key as this call's own.)
        let txn = || {
            Txn::new()
                .when([Compare::create_revision(prefix.clone(), CompareOp::Equal, 0).with_prefix()])
                .and_then([TxnOp::put(key.clone(), value.clone(), Some(put.clone()))])
        };
        let resp = send(&client, txn, lease, &uncertain).await?;
        if resp.succeeded() {
            return Ok(Enqueued {
                revision: resp.header().map_or(0, |h| h.revision()),
                created: true,
                existing_value: None,
                reads: Vec::new(),
                alone: true,
            });
        }
    }
    let txn = || {
        let then: Vec<TxnOp> =
            std::iter::once(TxnOp::put(key.clone(), value.clone(), Some(put.clone())))
                .chain(reads.iter().cloned())
                .collect();
        let otherwise: Vec<TxnOp> = std::iter::once(TxnOp::get(key.clone(), None))
            .chain(reads.iter().cloned())
            .collect();
        Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then(then)
            .or_else(otherwise)
    };
    let resp = send(&client, txn, lease, &uncertain).await?;
    let header_revision = resp.header().map_or(0, |h| h.revision());
    let mut responses = resp.op_responses().into_iter();
    let mut existing = match responses.next() {
        Some(TxnOpResponse::Get(get)) if !resp.succeeded() => get.kvs().first().cloned(),
        _ => None,
    };
    let created = resp.succeeded();
    // An earlier attempt may have written the key after all: a key of this lease with this
    // value is then this call's own.
    if uncertain.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(kv) = existing.take_if(|kv| kv.lease() == lease.get() && kv.value() == value) {
            return Ok(Enqueued {
                revision: kv.create_revision(),
                created: true,
                existing_value: None,
                reads: responses
                    .filter_map(|r| match r {
                        TxnOpResponse::Get(get) => Some(get),
                        _ => None,
                    })
                    .collect(),
                alone: false,
            });
        }
    }
    let reads = responses
        .filter_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        })
        .collect();
    let revision = existing
        .as_ref()
        .map_or(header_revision, |kv| kv.create_revision());
    Ok(Enqueued {
        revision,
        created,
        existing_value: existing.map(|kv| kv.value().to_vec()),
        reads,
        alone: false,
    })
}

/// Sends an enqueue transaction, retrying transient failures within the request timeout; sets
/// `uncertain` when a failed attempt may have been applied.
async fn send(
    client: &Client,
    txn: impl Fn() -> Txn,
    lease: LeaseId,
    uncertain: &std::sync::atomic::AtomicBool,
) -> Result<etcd_client::TxnResponse> {
    RetryPolicy::new()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(500))
        .with_max_elapsed(Some(client.request_timeout()))
        .retry(|| async {
            match client.txn_with(&txn).await {
                Ok(resp) => Ok(resp),
                // The put names a lease that is gone: the session expired under us.
                Err(e) if is_lease_not_found(&e) => Err(Error::SessionLost { lease_id: lease }),
                Err(e) => {
                    uncertain.store(true, std::sync::atomic::Ordering::Relaxed);
                    Err(e)
                }
            }
        })
        .await
}

/// Errors that mean etcd refused the whole transaction, so its put certainly did not happen.
fn rejected(e: &Error) -> bool {
    matches!(
        e,
        Error::PermissionDenied { .. } | Error::AuthFailed { .. } | Error::SessionLost { .. }
    )
}

fn is_lease_not_found(e: &Error) -> bool {
    matches!(e, Error::Etcd { source, .. } if source.to_string().contains("requested lease not found"))
}

/// Deletes the key only if it is still the one created at `ownership`'s revision, so a stale
/// release never deletes a newer key of the same session (Go's bug #22082). Returns whether it
/// deleted — or may have: the guarded delete is idempotent, so a transient failure (a reset
/// connection, a member going down) is retried within the client's request timeout, and if an
/// earlier attempt may have been applied, a later one that finds the key gone counts as deleted.
///
/// # Errors
///
/// Transport errors that outlast the retries; non-retryable errors at once.
///
/// # Cancel safety
///
/// Dropping the future abandons the request; it may or may not have been applied.
pub async fn release(client: &Client, ownership: &Ownership) -> Result<bool> {
    let txn = || {
        Txn::new()
            .when([ownership.compare()])
            .and_then([TxnOp::delete(ownership.key().to_vec(), None)])
    };
    let attempts = std::sync::atomic::AtomicU32::new(0);
    RetryPolicy::new()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(500))
        .with_max_elapsed(Some(client.request_timeout()))
        .retry(|| {
            let earlier = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0;
            async move { Ok(client.txn_with(txn).await?.succeeded() || earlier) }
        })
        .await
}

/// [`release`] in a background task (for `Drop` of guards), retrying transient failures while the
/// session lives, and keeping `local` until the key is gone so that no other in-process holder can
/// reuse the key meanwhile. Without a Tokio runtime the key stays until the session ends.
pub fn release_in_background(
    session: &Session,
    ownership: Ownership,
    local: Option<OwnedMutexGuard<()>>,
) {
    spawn_removal(session, Owed::Key(ownership), local);
}

fn spawn_removal(session: &Session, owed: Owed, local: Option<OwnedMutexGuard<()>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no Tokio runtime to remove a queue key; it stays until the session ends");
        return;
    };
    let session = session.clone();
    runtime.spawn(async move {
        let ownership = match owed {
            Owed::Key(ownership) => ownership,
            Owed::InFlight(key, request) => match request.0.await {
                Ok(enqueued) => Ownership::new(key, enqueued.revision),
                Err(_) => return remove_if_leased(&session, key, session.lease_id(), local).await,
            },
            Owed::Leased(key, lease) => return remove_if_leased(&session, key, lease, local).await,
        };
        let policy = RetryPolicy::new().with_max_elapsed(Some(session.ttl()));
        let attempt = policy.retry(|| release(session.client(), &ownership));
        tokio::select! {
            result = attempt => {
                if let Err(error) = result {
                    tracing::warn!(key = ?ownership.key_str(), %error, "background release failed; the key stays until the session ends");
                }
            }
            _ = session.ended() => {}
        }
        drop(local);
    });
}

/// Deletes `key` if it is attached to `lease` (an enqueue whose outcome is unknown).
async fn remove_if_leased(
    session: &Session,
    key: String,
    lease: LeaseId,
    local: Option<OwnedMutexGuard<()>>,
) {
    let txn = Txn::new()
        .when([Compare::lease(key.clone(), CompareOp::Equal, lease.get())])
        .and_then([TxnOp::delete(key, None)]);
    if let Err(error) = session.client().txn(txn).await {
        tracing::debug!(%error, "could not remove a queue key of unknown state; it goes with the session");
    }
    drop(local);
}

/// Retries of queue reads: transient failures are retried for as long as the wait lasts.
pub fn read_retry() -> RetryPolicy {
    RetryPolicy::new()
        .with_max_delay(Duration::from_secs(1))
        .with_max_elapsed(None)
}

/// Waits until no key created before `revision` remains under `prefix`: each round reads the
/// newest older key (the predecessor) and watches it until it is deleted, then reads again. Only one
/// waiter wakes per release. A compaction or reconnect during the wait leads to a new read.
///
/// # Errors
///
/// [`Error::SessionLost`] / [`Error::SessionClosed`] as soon as the session ends; non-retryable
/// errors of the reads and watches.
///
/// # Cancel safety
///
/// Cancel safe: it only reads and watches.
pub async fn wait_until_first(session: &Session, prefix: &str, revision: i64) -> Result<()> {
    let client = session.client();
    let retry = read_retry();
    loop {
        let read = tokio::select! {
            biased;
            _ = session.ended() => return Err(session_end_error(session)),
            read = retry.retry(|| client.get(prefix, Some(last_created_before(revision)))) => read?,
        };
        let Some(predecessor) = read.kvs().first() else {
            return Ok(());
        };
        let from = read.header().map_or(0, |h| h.revision()) + 1;
        let predecessor = predecessor.key().to_vec();
        tokio::select! {
            biased;
            _ = session.ended() => return Err(session_end_error(session)),
            deleted = wait_deleted(client, predecessor, from) => match deleted {
                Ok(_) | Err(Error::Compacted { .. }) => continue,
                Err(e) => return Err(e),
            },
        }
    }
}

/// A waiter's predecessor as last read: its key and the revision of the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predecessor {
    /// The predecessor's key.
    pub key: Vec<u8>,
    /// The revision of the read that showed it (watches start after it).
    pub read_revision: i64,
}

impl Predecessor {
    /// The predecessor of a key just created by an [`Entry`] whose reads include
    /// `get(prefix, `[`newest_two`]`())` at `index`: the second-newest key, when the newest is
    /// the entry's own.
    pub fn from_enqueue(enqueued: &Enqueued, index: usize, own_key: &[u8]) -> Option<Predecessor> {
        if !enqueued.created {
            return None;
        }
        let newest = enqueued.reads.get(index)?.kvs();
        match newest {
            [me, predecessor, ..] if me.key() == own_key => Some(Predecessor {
                key: predecessor.key().to_vec(),
                read_revision: enqueued.revision,
            }),
            _ => None,
        }
    }
}

/// `Range(prefix)` of the two newest keys: read with a put in the same transaction, the new key
/// and its predecessor.
pub fn newest_two() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(2)
}

/// How a wait for one's turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Turn {
    /// No older key remains and the own key is still there: the queue's head.
    First,
    /// The own key is gone (the session expired, or an operator deleted it).
    KeyGone,
}

/// Like [`wait_until_first`], for a holder that knows its key: each read after a wake-up fetches
/// the own key and the predecessor in one transaction, and a `predecessor` already known (from the
/// enqueue transaction, see [`Predecessor::from_enqueue`]) saves the first read. A contended
/// acquisition then costs the enqueue, one read per wake-up and the release.
///
/// # Errors
///
/// As [`wait_until_first`].
///
/// # Cancel safety
///
/// Cancel safe: it only reads and watches.
pub async fn wait_for_turn(
    session: &Session,
    prefix: &str,
    ownership: &Ownership,
    mut predecessor: Option<Predecessor>,
) -> Result<Turn> {
    let client = session.client();
    let retry = read_retry();
    let revision = ownership.token().revision();
    let read = Txn::new().and_then([
        TxnOp::get(ownership.key().to_vec(), None),
        TxnOp::get(prefix, Some(last_created_before(revision))),
    ]);
    loop {
        let current = match predecessor.take() {
            Some(current) => current,
            None => {
                let resp = tokio::select! {
                    biased;
                    _ = session.ended() => return Err(session_end_error(session)),
                    resp = retry.retry(|| client.txn_with(|| read.clone())) => resp?,
                };
                let read_revision = resp.header().map_or(0, |h| h.revision());
                let gets: Vec<GetResponse> = resp
                    .op_responses()
                    .into_iter()
                    .filter_map(|r| match r {
                        TxnOpResponse::Get(get) => Some(get),
                        _ => None,
                    })
                    .collect();
                let [mine, older] = gets.as_slice() else {
                    return Err(Error::UnexpectedResponse {
                        operation: "queue read",
                    });
                };
                if mine
                    .kvs()
                    .first()
                    .is_none_or(|kv| kv.create_revision() != revision)
                {
                    return Ok(Turn::KeyGone);
                }
                match older.kvs().first() {
                    None => return Ok(Turn::First),
                    Some(kv) => Predecessor {
                        key: kv.key().to_vec(),
                        read_revision,
                    },
                }
            }
        };
        tokio::select! {
            biased;
            _ = session.ended() => return Err(session_end_error(session)),
            deleted = wait_deleted(client, current.key, current.read_revision + 1) => match deleted {
                Ok(_) | Err(Error::Compacted { .. }) => continue,
                Err(e) => return Err(e),
            },
        }
    }
}

/// The error for an operation that ended because the session did.
pub fn session_end_error(session: &Session) -> Error {
    match session.check_alive() {
        Err(e) => e,
        Ok(()) => Error::SessionLost {
            lease_id: session.lease_id(),
        },
    }
}

/// Whether the session's lease is gone: ended locally, or unknown to the server (expired before
/// the keep-alive task noticed). Used to tell an expired session from an operator's delete when a
/// holder's key vanished.
pub async fn lease_gone(session: &Session) -> bool {
    if !session.is_alive() {
        return true;
    }
    matches!(session.client().lease_time_to_live(session.lease_id(), false).await, Ok(ttl) if ttl.ttl() < 0)
}

/// Resolves when the holder behind `ownership` is gone: its session ended, or its key was deleted
/// or replaced. After a compaction the key is re-read; if it cannot be watched at all
/// (permissions), only the session signal remains.
pub async fn key_lost(session: &Session, ownership: &Ownership) {
    let client = session.client();
    let key = ownership.key().to_vec();
    let token = ownership.token().revision();
    let key_deleted = async {
        let mut from = token + 1;
        loop {
            match wait_deleted(client, key.clone(), from).await {
                Ok(_) => return,
                Err(Error::Compacted { .. }) => match client.get(key.clone(), None).await {
                    Ok(read)
                        if read
                            .kvs()
                            .first()
                            .is_some_and(|kv| kv.create_revision() == token) =>
                    {
                        from = read.header().map_or(from, |h| h.revision() + 1);
                    }
                    Ok(_) => return,
                    Err(_) => std::future::pending::<()>().await,
                },
                Err(_) => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        _ = session.ended() => {}
        () = key_deleted => {}
    }
}

type Slot = Arc<tokio::sync::Mutex<()>>;

static SLOTS: LazyLock<StdMutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(|| StdMutex::new(HashMap::new()));

/// The in-process mutex for a full etcd key. Two holders on one session and one name would write
/// the same key (`name/<lease hex>`), and in Go's recipes both would then believe they hold; coord
/// serialises them instead: each acquisition takes this slot first and keeps it until its key is
/// deleted. Every caller asking for the same key gets the same slot while any of them is alive.
pub fn local_slot(key: &str) -> Slot {
    let mut slots = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(slot) = slots.get(key).and_then(Weak::upgrade) {
        return slot;
    }
    if slots.len() >= 64 {
        slots.retain(|_, slot| slot.strong_count() > 0);
    }
    let slot = Slot::default();
    slots.insert(key.to_owned(), Arc::downgrade(&slot));
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_shares_one_slot() {
        let a = local_slot("k/1");
        let b = local_slot("k/1");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &local_slot("k/2")));
    }

    #[test]
    fn unused_slots_are_forgotten() {
        let first = Arc::downgrade(&local_slot("gone/1"));
        assert!(first.upgrade().is_none());
    }
}
