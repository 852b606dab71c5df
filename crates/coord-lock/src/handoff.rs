//! Hand-off: whoever frees a permit gives it to the waiter that the freed permit makes eligible,
//! by writing that waiter's "held" mark (docs/design/semaphore.md §3).
//!
//! Without it, grants travel along the queue one waiter at a time (each granted waiter's mark
//! wakes the next, which reads and marks in turn), so with several permits freed at once the
//! grants are serial. With it, every release grants its successor directly, in parallel with the
//! other releases; the waiters' own wake-up rule stays as the fallback for deletes nobody hands
//! off (an expired session, a crashed releaser, a delete by another tool).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use coord_core::etcd_client::{
    Compare, CompareOp, GetOptions, GetResponse, KeyValue, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use coord_core::queue::read_retry;
use coord_core::{Client, Ownership, RetryPolicy, Session};
use tokio::sync::OwnedMutexGuard;

use crate::semaphore::{Limit, Record, parse_limit};

/// How long a waiter that finds itself eligible, or saw the delete that makes it eligible, waits
/// for the releaser's hand-off before writing its own mark. A hand-off follows its delete by one
/// request, so this only matters when nobody hands off; it is small next to a session's TTL,
/// the usual cause of such deletes.
pub(crate) const GRACE: Duration = Duration::from_millis(250);

/// Hand-off reads of more than this many keys are not made: for larger limits the waiters'
/// fallback grants (after [`GRACE`]).
pub(crate) const MAX_READ: u32 = 1_000;

/// What a releaser needs to hand off: the queue, and where the limit comes from.
#[derive(Debug)]
pub(crate) struct Handoff {
    prefix: String,
    limit_key: String,
    limit: Limit,
    /// The stored limit last seen (a stored limit's read size); starts at its default.
    seen_limit: AtomicU32,
}

impl Handoff {
    pub(crate) fn new(prefix: &str, limit_key: &str, limit: Limit) -> Arc<Handoff> {
        let initial = match limit {
            Limit::Fixed(n) | Limit::Stored { default: n } => n,
        };
        Arc::new(Handoff {
            prefix: prefix.to_owned(),
            limit_key: limit_key.to_owned(),
            limit,
            seen_limit: AtomicU32::new(initial),
        })
    }

    /// Whether releasers hand off for this limit (see [`MAX_READ`]): waiters then wait
    /// [`GRACE`] for a hand-off before marking themselves.
    pub(crate) fn expected(limit: Limit) -> bool {
        match limit {
            Limit::Fixed(n) | Limit::Stored { default: n } => n <= MAX_READ,
        }
    }

    fn read_size(&self) -> u32 {
        self.seen_limit.load(Ordering::Relaxed).min(MAX_READ)
    }

    /// The reads to send in the transaction that frees a permit (after its delete): the oldest
    /// keys and the stored limit.
    pub(crate) fn reads(&self) -> Vec<TxnOp> {
        vec![
            TxnOp::get(self.prefix.clone(), Some(oldest(self.read_size()))),
            TxnOp::get(self.limit_key.clone(), None),
        ]
    }

    /// Hands off from the responses of [`reads`](Self::reads) (the last two responses of
    /// `responses`). Best effort: a failure leaves the grant to the waiter's own fallback.
    pub(crate) async fn hand_off_from(&self, client: &Client, responses: Vec<TxnOpResponse>) {
        let mut gets: Vec<GetResponse> = responses
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(get) => Some(get),
                _ => None,
            })
            .collect();
        let (Some(stored), Some(head)) = (gets.pop(), gets.pop()) else {
            return;
        };
        self.hand_off(client, head, stored).await;
    }

    /// Hands off after a delete made without the reads (its outcome was uncertain, or it was not
    /// ours to make): reads the head, then as [`hand_off_from`](Self::hand_off_from).
    pub(crate) async fn after_delete(&self, client: &Client) {
        let read = Txn::new().and_then(self.reads());
        match read_retry()
            .retry(|| client.txn_with(|| read.clone()))
            .await
        {
            Ok(resp) => self.hand_off_from(client, resp.op_responses()).await,
            Err(error) => tracing::debug!(%error, prefix = %self.prefix, "hand-off read failed"),
        }
    }

    async fn hand_off(&self, client: &Client, mut head: GetResponse, stored: GetResponse) {
        let limit = match self.limit {
            Limit::Fixed(n) => n,
            Limit::Stored { default } => {
                let limit = parse_limit(stored.kvs().first().map(|kv| kv.value()), default);
                self.seen_limit.store(limit, Ordering::Relaxed);
                limit
            }
        };
        if limit > MAX_READ {
            return;
        }
        let read = u32::try_from(head.kvs().len()).unwrap_or(u32::MAX);
        if read < limit && head.more() {
            // The stored limit grew past the read: read that many.
            let options = oldest(limit);
            match client.get(self.prefix.clone(), Some(options)).await {
                Ok(more) => head = more,
                Err(error) => {
                    tracing::debug!(%error, prefix = %self.prefix, "hand-off read failed");
                    return;
                }
            }
        }
        let eligible = eligible(self.limit, limit, head.take_kvs());
        for kv in eligible {
            if let Err(error) = mark(client, &kv).await {
                tracing::debug!(%error, key = ?kv.key_str(), "hand-off mark failed");
            }
        }
    }
}

/// The waiters a freed permit makes eligible, from the `limit` oldest keys (oldest first):
/// with a fixed limit, the key at position `limit - 1` if it is not marked (it was the first
/// waiter: keys of rank ≥ limit are never holders); with a stored limit, every key among the
/// first `limit` not marked held (every grant under a stored limit writes its mark). Values that
/// are not records count as holders.
pub(crate) fn eligible(kind: Limit, limit: u32, oldest: Vec<KeyValue>) -> Vec<KeyValue> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let unmarked = |kv: &KeyValue| Record::decode(kv.value()).is_some_and(|r| !r.is_held());
    match kind {
        Limit::Fixed(_) => oldest
            .into_iter()
            .nth(limit.saturating_sub(1))
            .filter(|kv| limit > 0 && unmarked(kv))
            .into_iter()
            .collect(),
        Limit::Stored { .. } => oldest.into_iter().take(limit).filter(unmarked).collect(),
    }
}

/// Writes `kv`'s record as held, if the key is unchanged since it was read (so a waiter's own
/// mark, a removal or a re-creation in between wins); the key keeps its lease.
async fn mark(client: &Client, kv: &KeyValue) -> coord_core::Result<()> {
    let Some(record) = Record::decode(kv.value()) else {
        return Ok(());
    };
    let txn = Txn::new()
        .when([Compare::mod_revision(
            kv.key().to_vec(),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then([TxnOp::put(
            kv.key().to_vec(),
            record.granted().encode(),
            Some(PutOptions::new().with_ignore_lease()),
        )]);
    client.txn(txn).await.map(|_| ())
}

/// The `n` oldest keys under a prefix, oldest first.
fn oldest(n: u32) -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(i64::from(n.max(1)))
}

/// Releases a permit (`create_revision(key) == token` then delete) and hands it off, retrying
/// transient failures within the client's request timeout. Returns whether the key was deleted
/// (by this call or an earlier attempt of it).
pub(crate) async fn release(
    client: &Client,
    ownership: &Ownership,
    handoff: &Handoff,
) -> coord_core::Result<bool> {
    let mut then = vec![TxnOp::delete(ownership.key().to_vec(), None)];
    then.extend(handoff.reads());
    let txn = Txn::new().when([ownership.compare()]).and_then(then);
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let outcome = RetryPolicy::new()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(500))
        .with_max_elapsed(Some(client.request_timeout()))
        .retry(|| {
            let earlier = attempts.fetch_add(1, Ordering::Relaxed) > 0;
            let txn = &txn;
            async move {
                let resp = client.txn_with(|| txn.clone()).await?;
                Ok(if resp.succeeded() {
                    Some(resp.op_responses())
                } else if earlier {
                    // An earlier attempt may have deleted it: hand off from a fresh read.
                    Some(Vec::new())
                } else {
                    None
                })
            }
        })
        .await?;
    match outcome {
        Some(responses) if responses.is_empty() => {
            handoff.after_delete(client).await;
            Ok(true)
        }
        Some(responses) => {
            handoff.hand_off_from(client, responses).await;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// [`release`] in a background task (for a dropped permit), retrying transient failures while the
/// session lives and keeping `local` until the key is gone. Without a Tokio runtime the key stays
/// until the session ends.
pub(crate) fn release_in_background(
    session: &Session,
    ownership: Ownership,
    local: Option<OwnedMutexGuard<()>>,
    handoff: Arc<Handoff>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no Tokio runtime to release a permit; it stays until the session ends");
        return;
    };
    let session = session.clone();
    runtime.spawn(async move {
        let policy = RetryPolicy::new().with_max_elapsed(Some(session.ttl()));
        let attempt = policy.retry(|| release(session.client(), &ownership, &handoff));
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
