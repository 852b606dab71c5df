//! The key queue shared by the Mutex and the Semaphore: holders and waiters are keys under
//! `ns + name + "/"`, ordered by create revision (docs/wire-format.md).

use std::time::Duration;

use coord_core::etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use coord_core::watch::wait_deleted;
use coord_core::{Client, Error as CoreError, LeaseId, Ownership, RetryPolicy, Session};
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// `Range(prefix)` sorted by create revision, ascending, limit 1: the first in the queue.
pub(crate) fn first_by_create() -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
}

/// The newest key created before `revision`: a waiter's predecessor (Go's `waitDeletes` range).
pub(crate) fn last_created_before(revision: i64) -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_max_create_revision(revision - 1)
        .with_limit(1)
}

/// The outcome of putting a key into the queue.
#[derive(Debug, Clone)]
pub(crate) struct Enqueued {
    /// The key's create revision (a fresh put's revision, or the existing key's).
    pub(crate) revision: i64,
    /// Whether this call created the key (false: the session already had a key there, which is
    /// reused with its queue place, as Go does).
    pub(crate) created: bool,
    /// The existing key's value when it was not created by this call.
    pub(crate) existing_value: Option<Vec<u8>>,
    /// The create revision of the first key in the queue.
    pub(crate) first: Option<i64>,
}

/// Go's `tryAcquire` transaction: create the key if absent, and read the queue head, in one request.
///
/// The request runs in its own task: if the caller is cancelled while it is in flight, the
/// returned handle still yields the outcome, so the key can be removed exactly.
pub(crate) fn enqueue(
    client: &Client,
    key: &str,
    prefix: &str,
    lease: LeaseId,
    value: Vec<u8>,
) -> JoinHandle<Result<Enqueued>> {
    let (client, key, prefix) = (client.clone(), key.to_owned(), prefix.to_owned());
    tokio::spawn(async move {
        let put = PutOptions::new().with_lease(lease.get());
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(key.clone(), value, Some(put)),
                TxnOp::get(prefix.clone(), Some(first_by_create())),
            ])
            .or_else([
                TxnOp::get(key.clone(), None),
                TxnOp::get(prefix, Some(first_by_create())),
            ]);
        let resp = match client.txn(txn).await {
            Ok(resp) => resp,
            // The put names a lease that is gone: the session expired under us.
            Err(e) if is_lease_not_found(&e) => {
                return Err(CoreError::SessionLost { lease_id: lease }.into());
            }
            Err(e) => return Err(e.into()),
        };
        let header_revision = resp.header().map_or(0, |h| h.revision());
        let responses = resp.op_responses();
        let first = match responses.get(1) {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.create_revision()),
            _ => None,
        };
        let existing = match responses.first() {
            Some(TxnOpResponse::Get(get)) if !resp.succeeded() => get.kvs().first().cloned(),
            _ => None,
        };
        let revision = match &existing {
            None => header_revision,
            Some(kv) => kv.create_revision(),
        };
        Ok(Enqueued {
            revision,
            created: resp.succeeded(),
            existing_value: existing.map(|kv| kv.value().to_vec()),
            first,
        })
    })
}

fn is_lease_not_found(e: &CoreError) -> bool {
    matches!(e, CoreError::Etcd { source, .. } if source.to_string().contains("requested lease not found"))
}

/// Waits for the in-flight enqueue of `cleanup` and records what is owed if the caller gives up:
/// the exact key on success, "whatever this lease left under that key" when the outcome is unknown.
pub(crate) async fn settle(cleanup: &mut Cleanup<'_>) -> Result<Enqueued> {
    let (key, outcome) = match &mut cleanup.pending {
        Some(Pending::InFlight { key, task }) => (key.clone(), task.await),
        _ => return Err(Error::Aborted),
    };
    match outcome {
        Ok(Ok(enqueued)) => {
            cleanup.pending = Some(Pending::Known(Ownership::new(key, enqueued.revision)));
            Ok(enqueued)
        }
        Ok(Err(error)) => {
            // A timeout may hide an applied put: remove a key of ours if there is one.
            let lease = cleanup.session.lease_id();
            cleanup.pending = Some(Pending::Unknown { key, lease });
            Err(error)
        }
        Err(_) => {
            cleanup.pending = None;
            Err(Error::Aborted)
        }
    }
}

/// Deletes the key only if it is still the one created at `ownership`'s revision, so a stale
/// release never deletes a newer key of the same session (Go's bug #22082). Returns whether it
/// deleted.
pub(crate) async fn release(client: &Client, ownership: &Ownership) -> coord_core::Result<bool> {
    let txn = Txn::new()
        .when([ownership.compare()])
        .and_then([TxnOp::delete(ownership.key().to_vec(), None)]);
    Ok(client.txn(txn).await?.succeeded())
}

/// Releases in a background task (used from `Drop` and from cancelled acquisitions), retrying
/// transient failures while the session lives; keeps `local` (the process-local exclusion) until
/// the key is gone so that no other local holder can reuse it meanwhile. Without a runtime the key
/// stays until the session ends.
pub(crate) fn release_in_background(
    session: &Session,
    pending: Pending,
    local: Option<OwnedMutexGuard<()>>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no Tokio runtime to release a lock key; it stays until the session ends");
        return;
    };
    let session = session.clone();
    runtime.spawn(async move {
        let ownership = match pending {
            Pending::Known(ownership) => ownership,
            Pending::InFlight { key, task } => match task.await {
                Ok(Ok(enqueued)) if enqueued.revision > 0 => Ownership::new(key, enqueued.revision),
                Ok(Err(_)) => {
                    let lease = session.lease_id();
                    return remove_if_leased(&session, key, lease, local).await;
                }
                // Never applied: nothing to remove.
                _ => return drop(local),
            },
            Pending::Unknown { key, lease } => {
                return remove_if_leased(&session, key, lease, local).await;
            }
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

/// Deletes `key` if it is attached to the session's lease (an enqueue whose outcome is unknown).
async fn remove_if_leased(
    session: &Session,
    key: String,
    lease: LeaseId,
    local: Option<OwnedMutexGuard<()>>,
) {
    let lease = lease.get();
    let txn = Txn::new()
        .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
        .and_then([TxnOp::delete(key, None)]);
    if let Err(error) = session.client().txn(txn).await {
        tracing::debug!(%error, "could not remove a queue key of unknown state; it goes with the session");
    }
    drop(local);
}

/// A queue key whose release is still owed.
#[derive(Debug)]
pub(crate) enum Pending {
    /// The acquire transaction failed in a way that hides whether its put was applied.
    Unknown { key: String, lease: LeaseId },
    /// The acquire transaction was sent but its outcome is not known yet.
    InFlight {
        key: String,
        task: JoinHandle<Result<Enqueued>>,
    },
    /// The key exists (or existed) with this create revision.
    Known(Ownership),
}

/// How long to wait between attempts to read the queue after a transient failure.
pub(crate) fn read_retry() -> RetryPolicy {
    RetryPolicy::new()
        .with_max_delay(Duration::from_secs(1))
        .with_max_elapsed(None)
}

/// Releases a queued key if an acquisition does not complete (error or cancellation).
pub(crate) struct Cleanup<'a> {
    pub(crate) session: &'a Session,
    pub(crate) pending: Option<Pending>,
    pub(crate) local: Option<OwnedMutexGuard<()>>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            release_in_background(self.session, pending, self.local.take());
        }
    }
}

/// Resolves when the holder behind `ownership` is gone: its session ended, or its key was deleted
/// or replaced. After a compaction the key is re-read; if the key cannot be watched at all
/// (permissions), only the session signal remains.
pub(crate) async fn key_lost(session: &Session, ownership: &Ownership) {
    let client = session.client();
    let key = ownership.key().to_vec();
    let token = ownership.token().revision();
    let key_deleted = async {
        let mut from = token + 1;
        loop {
            match wait_deleted(client, key.clone(), from).await {
                Ok(_) => return,
                Err(coord_core::Error::Compacted { .. }) => {
                    match client.get(key.clone(), None).await {
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
                    }
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        _ = session.ended() => {}
        () = key_deleted => {}
    }
}

/// The error for a wait that ended because the session did.
pub(crate) fn session_gone(session: &Session) -> Error {
    match session.check_alive() {
        Err(e) => e.into(),
        Ok(()) => CoreError::SessionLost {
            lease_id: session.lease_id(),
        }
        .into(),
    }
}

/// Our key vanished: tell an expired session (the lease is gone on the server, even if the
/// keep-alive task has not noticed yet) from an operator's removal.
pub(crate) async fn session_gone_or_removed(session: &Session, ownership: &Ownership) -> Error {
    if !session.is_alive() {
        return session_gone(session);
    }
    match session
        .client()
        .lease_time_to_live(session.lease_id(), false)
        .await
    {
        Ok(ttl) if ttl.ttl() < 0 => CoreError::SessionLost {
            lease_id: session.lease_id(),
        }
        .into(),
        _ => Error::NotHeld {
            key: ownership.key_str().unwrap_or_default().to_owned(),
        },
    }
}
