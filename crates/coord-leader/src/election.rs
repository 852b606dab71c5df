//! An election, wire-compatible with etcd's Go `concurrency.Election`.

use std::fmt;
use std::sync::Arc;

use coord_core::etcd_client::{PutOptions, Txn, TxnOp};
use coord_core::keys::{lease_key, queue_prefix, validate_name};
use coord_core::queue::{
    Entry, Predecessor, Turn, first_by_create, lease_gone, local_slot, newest_two,
    session_end_error, wait_for_turn,
};
use coord_core::{Ownership, Session};
use tokio::sync::watch;

use crate::leader::read_leader;
use crate::{Error, LeaderInfo, Leadership, Result};

/// etcd's default `--max-request-bytes` (1.5 MiB): the largest request a default server accepts.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024 / 2;

/// Room left in a request for everything but the value and the keys: compares, operation headers,
/// the lease, etcd's raft request header.
const FRAMING: usize = 4 * 1024;

/// The largest value (proposal) an election whose candidate key is `key_len` bytes long accepts.
///
/// The campaign transaction carries the value once and the key (or the prefix and its range end)
/// seven times; coord reserves eight key lengths and 4 KiB of framing out of
/// [`MAX_REQUEST_BYTES`], so an accepted value always fits into a request to a default etcd.
pub(crate) fn max_value_len(key_len: usize) -> usize {
    MAX_REQUEST_BYTES.saturating_sub(8 * key_len + FRAMING)
}

pub(crate) fn check_value(key: &str, value: &[u8]) -> Result<()> {
    let max = max_value_len(key.len());
    if value.len() > max {
        return Err(Error::ValueTooLarge {
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// A leader election held in etcd, for candidates bound to a [`Session`].
///
/// The key layout and protocol are those of etcd's Go `concurrency.Election` — and so of
/// `etcdctl elect` and the etcd server's Campaign/Proclaim/Resign RPCs: a candidate writes
/// `namespace + name + "/" + lease hex` with its proposal as value and the session's lease
/// attached; the candidate with the lowest create revision leads; the others wait, each watching
/// only its predecessor. Go and coord candidates of the same election queue together.
///
/// Where coord differs from Go (docs/design/election.md):
/// - a campaign whose session ends while it waits fails at once with
///   [`coord_core::Error::SessionLost`], and a campaign that finds its own key gone after the wait
///   fails too — Go returns leadership in both cases ("phantom leader", etcd #19597);
/// - a cancelled campaign (future dropped) always removes its key (Go leaves it unless its
///   context was cancelled, #21128);
/// - resigning and proclaiming are fenced on the key's create revision, and a failed resign is
///   retried rather than forgotten (#22123);
/// - two campaigns **on the same session** and name would share one key; coord serialises them in
///   the process (the second waits until the first's leadership ends), where Go would let both
///   believe they lead.
///
/// Every key under `name + "/"` counts as a candidate — for Go as for coord, so this cannot be
/// filtered without disagreeing with Go about who leads. Never write other keys under an
/// election's prefix, and do not nest election names (`jobs` and `jobs/nightly`: the second's
/// candidates would queue in the first).
///
/// ```no_run
/// # async fn demo(session: coord_core::Session) -> coord_leader::Result<()> {
/// use coord_leader::Election;
///
/// let election = Election::new(&session, "scheduler")?;
/// let leadership = election.campaign("node-1").await?;
/// println!("leading with fencing token {}", leadership.token());
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Election {
    session: Session,
    name: String,
    prefix: String,
    key: String,
    local: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Election {
    /// The election `name` (under the client's namespace) for candidates of `session`.
    ///
    /// Nothing is sent to etcd until a campaign starts.
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidName`] for an empty name, a NUL byte, a trailing `/` or an
    /// over-long name.
    ///
    /// ```no_run
    /// # fn demo(session: coord_core::Session) -> coord_leader::Result<()> {
    /// let election = coord_leader::Election::new(&session, "jobs/scheduler")?;
    /// assert!(election.key().ends_with(&session.lease_id().to_string()));
    /// # Ok(()) }
    /// ```
    pub fn new(session: &Session, name: &str) -> Result<Election> {
        let namespace = session.client().namespace();
        validate_name(namespace, name)?;
        let key = lease_key(namespace, name, session.lease_id());
        Ok(Election {
            session: session.clone(),
            name: name.to_owned(),
            prefix: queue_prefix(namespace, name),
            local: local_slot(&key),
            key,
        })
    }

    /// The election's name, without the namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key this session's candidate writes: `namespace + name + "/" + lease hex`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The prefix under which candidates queue: `namespace + name + "/"`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The session candidates of this election are bound to.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The largest proposal this election accepts, in bytes: what is left of etcd's default
    /// request limit ([`MAX_REQUEST_BYTES`]) after the keys a campaign sends (eight times the
    /// candidate key's length) and 4 KiB of framing. A server started with a smaller
    /// `--max-request-bytes` rejects smaller values (as [`coord_core::Error::Etcd`]).
    pub fn max_value_len(&self) -> usize {
        max_value_len(self.key.len())
    }

    /// Campaigns with `value` as proposal and waits until this candidate leads.
    ///
    /// Protocol (Go's `Campaign`): one transaction `if create_revision(key) == 0 then put(key,
    /// value, lease) else get(key)`, plus reads of the head of the queue and of the newest keys
    /// (so a new candidate learns its predecessor in the same request); if the key already
    /// existed (this lease campaigned before, perhaps from Go), it keeps its place and, when its
    /// value differs, the new value is proclaimed (guarded by the key's create revision). Then the
    /// candidate waits until no key with a lower create revision remains, watching only its
    /// predecessor; every read after a wake-up fetches the predecessor and the candidate's own key
    /// together, so that a session that expired (or a key deleted) during the wait never yields a
    /// "phantom" leadership, and a hand-off costs the delete event plus one read.
    ///
    /// Compaction of the watched revision and reconnects during the wait are handled by reading
    /// the queue again.
    ///
    /// # Errors
    ///
    /// - [`Error::ValueTooLarge`] when `value` is longer than [`max_value_len`](Self::max_value_len)
    ///   (nothing is sent);
    /// - [`coord_core::Error::SessionLost`] / `SessionClosed` when the session ends before or while
    ///   waiting (noticed at once, not only when the predecessor leaves);
    /// - [`Error::NotLeader`] when the candidate's key was deleted (by an operator, or resigned by
    ///   another client on the same lease) while waiting;
    /// - transport errors that outlast the client's retries.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped, the candidate's key is removed from etcd in the
    /// background (also when the campaign request was still in flight).
    ///
    /// ```no_run
    /// # async fn demo(election: coord_leader::Election) -> coord_leader::Result<()> {
    /// use std::time::Duration;
    ///
    /// // Cancel safe: bounding the wait leaves nothing behind in etcd.
    /// match tokio::time::timeout(Duration::from_secs(30), election.campaign("node-1")).await {
    ///     Ok(leadership) => leadership?.resign().await?,
    ///     Err(_) => println!("still not leader after 30 s"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn campaign(&self, value: impl Into<Vec<u8>>) -> Result<Leadership> {
        let value = value.into();
        check_value(&self.key, &value)?;
        self.session.check_alive()?;
        // Same session, same name, same key: one candidate at a time in this process.
        let local = self.local.clone().lock_owned().await;
        // Go's campaign transaction, plus the head of the queue and the two newest keys: a new
        // candidate learns its predecessor in the same request.
        let reads = vec![
            TxnOp::get(self.prefix.clone(), Some(first_by_create())),
            TxnOp::get(self.prefix.clone(), Some(newest_two())),
        ];
        let mut entry =
            Entry::enqueue_reading(&self.session, self.key.clone(), value.clone(), reads)
                .holding(local);
        let enqueued = entry.settle().await?;
        let ownership = Ownership::new(self.key.clone(), enqueued.revision);

        if !enqueued.created && enqueued.existing_value.as_deref() != Some(value.as_slice()) {
            // The lease already had a key here (with another proposal): Go proclaims the new one.
            if let Err(error) = proclaim(&self.session, &ownership, value).await {
                if matches!(error, Error::NotLeader { .. }) || error.is_session_lost() {
                    entry.forget();
                }
                return Err(error);
            }
        }
        if enqueued.first() != Some(enqueued.revision) {
            // Predecessor watch (docs/design/election.md §2). Each read after a wake-up also
            // checks that our own key is still there: no phantom leader.
            let predecessor = Predecessor::from_enqueue(&enqueued, 1, ownership.key());
            let turn = wait_for_turn(&self.session, &self.prefix, &ownership, predecessor).await?;
            if turn != Turn::First || !self.session.is_alive() {
                entry.forget();
                return Err(gone_or_removed(&self.session, &ownership).await);
            }
        }
        let (_, local) = entry.into_parts();
        tracing::debug!(key = %self.key, token = enqueued.revision, "elected");
        Ok(Leadership::new(
            self.session.clone(),
            self.name.clone(),
            ownership,
            local,
        ))
    }

    /// The current leader, or `None` when nobody campaigns (one linearizable read).
    ///
    /// # Errors
    ///
    /// Transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    ///
    /// ```no_run
    /// # async fn demo(election: coord_leader::Election) -> coord_leader::Result<()> {
    /// if let Some(leader) = election.leader().await? {
    ///     println!("{} leads", leader.key);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        read_leader(self.session.client(), &self.prefix).await
    }

    /// Follows the election's leader: [`crate::observe`] on the session's client.
    ///
    /// # Errors
    ///
    /// As [`crate::observe`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(election: coord_leader::Election) -> coord_leader::Result<()> {
    /// let mut leader = election.observe().await?;
    /// while leader.changed().await.is_ok() {
    ///     println!("leader now: {:?}", leader.borrow().as_ref().map(|l| l.key.clone()));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn observe(&self) -> Result<watch::Receiver<Option<LeaderInfo>>> {
        crate::observe(self.session.client(), &self.name).await
    }
}

/// Go's `Proclaim`: `if create_revision(key) == token then put(key, value, lease)`.
pub(crate) async fn proclaim(
    session: &Session,
    ownership: &Ownership,
    value: Vec<u8>,
) -> Result<()> {
    let key = ownership.key_str().unwrap_or_default();
    check_value(key, &value)?;
    let lease = PutOptions::new().with_lease(session.lease_id().get());
    let txn = Txn::new().when([ownership.compare()]).and_then([TxnOp::put(
        ownership.key().to_vec(),
        value,
        Some(lease),
    )]);
    if session.client().txn(txn).await?.succeeded() {
        Ok(())
    } else {
        Err(gone_or_removed(session, ownership).await)
    }
}

/// A candidate's key vanished: an expired session (the lease is gone on the server, even if the
/// keep-alive task has not noticed yet) is `SessionLost`; otherwise someone removed it.
pub(crate) async fn gone_or_removed(session: &Session, ownership: &Ownership) -> Error {
    if lease_gone(session).await {
        session_end_error(session).into()
    } else {
        Error::NotLeader {
            key: ownership.key_str().unwrap_or_default().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_limit_leaves_room_for_eight_keys_and_framing() {
        assert_eq!(max_value_len(0), MAX_REQUEST_BYTES - FRAMING);
        assert_eq!(max_value_len(100), MAX_REQUEST_BYTES - FRAMING - 800);
        assert_eq!(max_value_len(MAX_REQUEST_BYTES), 0);
    }

    #[test]
    fn values_over_the_limit_are_rejected_with_both_lengths() {
        let key = "ns/e/694d7a2b1c3e5f01";
        let max = max_value_len(key.len());
        assert!(check_value(key, &vec![0; max]).is_ok());
        match check_value(key, &vec![0; max + 1]) {
            Err(Error::ValueTooLarge { len, max: reported }) => {
                assert_eq!((len, reported), (max + 1, max));
            }
            other => panic!("expected ValueTooLarge, got {other:?}"),
        }
    }
}
