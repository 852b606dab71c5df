//! A distributed mutex, wire-compatible with etcd's Go `concurrency.Mutex`.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use coord_core::etcd_client::{Compare, TxnOp};
use coord_core::keys::{lease_key, queue_prefix, validate_name};
use coord_core::{FencingToken, Ownership, Session};
use tokio::sync::OwnedMutexGuard;

use coord_core::queue::{
    Enqueued, Entry, Predecessor, Turn, first_by_create, key_lost, local_slot, newest_two,
    wait_for_turn,
};

use crate::held::Held;
use crate::{Error, Result};

/// A mutual-exclusion lock held in etcd, bound to a [`Session`].
///
/// The key layout and protocol are those of etcd's Go `concurrency.Mutex`, so a coord holder and a
/// Go holder — the etcd server's Lock RPC, `etcdctl lock` — on the same name exclude each other. The
/// lock is FIFO: waiters are served in the order they queued (by create revision), and each waiter
/// watches only its predecessor, so a release wakes exactly one waiter.
///
/// Two holders **on the same session** and the same name would share one etcd key; coord serialises
/// them inside the process (the second waits until the first releases), where Go would let both in.
/// Holders on different sessions queue in etcd as usual.
///
/// Unless this process last found the lock's queue busy, an acquisition first sends a transaction
/// that puts its key only into an empty queue, which etcd serves like a bare create; when that
/// fails it sends Go's acquire transaction, which reads the queue, and acquisitions of that lock
/// in this process send Go's transaction first until one finds the queue empty again. The keys
/// written are the same either way.
///
/// The guard's [`MutexGuard::owns`] compare is the safety guarantee; see the crate docs.
///
/// ```no_run
/// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
/// use coord_lock::Mutex;
///
/// let mutex = Mutex::new(&session, "jobs/nightly")?;
/// let guard = mutex.lock().await?;
/// println!("holding {} with fencing token {}", guard.key(), guard.token());
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Mutex {
    session: Session,
    prefix: String,
    key: String,
    local: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Mutex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The current holder of a lock, as seen by [`Mutex::holder`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holder's key.
    pub key: String,
    /// Its fencing token (create revision).
    pub token: FencingToken,
    /// The lease the key is bound to (0 for none).
    pub lease: i64,
}

impl Mutex {
    /// A mutex named `name` (under the client's namespace) for holders of `session`.
    ///
    /// Nothing is sent to etcd until the lock is taken.
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidName`] for an empty name, a NUL byte, a trailing `/` or an over-long
    /// name.
    pub fn new(session: &Session, name: &str) -> Result<Mutex> {
        let namespace = session.client().namespace();
        validate_name(namespace, name)?;
        let key = lease_key(namespace, name, session.lease_id());
        Ok(Mutex {
            session: session.clone(),
            prefix: queue_prefix(namespace, name),
            local: local_slot(&key),
            key,
        })
    }

    /// The key this session's holder writes: `namespace + name + "/" + lease hex`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The queue prefix: `namespace + name + "/"`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Waits until the lock is held.
    ///
    /// # Errors
    ///
    /// - [`coord_core::Error::SessionLost`] / `SessionClosed` when the session ends before or while
    ///   waiting (checked continuously, not only when the predecessor leaves);
    /// - transport errors that outlast the client's retries.
    ///
    /// Compaction and reconnects during the wait are handled by re-reading the queue.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped, the waiter's key is removed from etcd in the background
    /// (also when the acquire request was still in flight).
    pub async fn lock(&self) -> Result<MutexGuard> {
        self.session.check_alive()?;
        let local = self.local.clone().lock_owned().await;
        self.acquire(local, true).await
    }

    /// Like [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] when the timeout expires (the waiter's key is then removed); otherwise as
    /// [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::{Error, Mutex};
    /// use std::time::Duration;
    ///
    /// let mutex = Mutex::new(&session, "compaction")?;
    /// match mutex.lock_timeout(Duration::from_secs(10)).await {
    ///     Ok(guard) => guard.unlock().await?,
    ///     Err(Error::TimedOut { .. }) => eprintln!("someone else is compacting"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(result) => result,
            Err(_) => Err(Error::TimedOut {
                name: self.prefix.clone(),
                after: timeout,
            }),
        }
    }

    /// Takes the lock if it is free, without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] when another holder has it (or another holder of this process on the
    /// same session); otherwise as [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::{Error, Mutex};
    ///
    /// match Mutex::new(&session, "compaction")?.try_lock().await {
    ///     Ok(guard) => guard.unlock().await?,
    ///     Err(Error::WouldBlock { .. }) => eprintln!("busy"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self) -> Result<MutexGuard> {
        self.session.check_alive()?;
        let local = self
            .local
            .clone()
            .try_lock_owned()
            .map_err(|_| Error::WouldBlock {
                name: self.prefix.clone(),
            })?;
        self.acquire(local, false).await
    }

    /// The current holder, if any (the key with the lowest create revision under the prefix).
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
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::Mutex;
    ///
    /// if let Some(holder) = Mutex::new(&session, "compaction")?.holder().await? {
    ///     println!("held by {} since revision {}", holder.key, holder.token);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn holder(&self) -> Result<Option<Holder>> {
        let resp = self
            .session
            .client()
            .get(self.prefix.clone(), Some(first_by_create()))
            .await?;
        Ok(resp.kvs().first().map(|kv| Holder {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            token: FencingToken::new(kv.create_revision()),
            lease: kv.lease(),
        }))
    }

    /// Whether the entry's key is the head of the queue (the oldest key): from the enqueue's
    /// newest-two read for a key it created, from a read of the head for a key that existed.
    async fn is_head(&self, enqueued: &Enqueued, ownership: &Ownership) -> Result<bool> {
        if enqueued.alone {
            return Ok(true);
        }
        if enqueued.created {
            if let Some(newest) = enqueued.reads.first().map(|r| r.kvs()) {
                if newest.first().is_some_and(|kv| kv.key() == ownership.key()) {
                    return Ok(newest.len() == 1);
                }
            }
        }
        let head = self
            .session
            .client()
            .get(self.prefix.clone(), Some(first_by_create()))
            .await?;
        Ok(head.kvs().first().map(|kv| kv.create_revision()) == Some(enqueued.revision))
    }

    async fn acquire(&self, local: OwnedMutexGuard<()>, wait: bool) -> Result<MutexGuard> {
        // Go's acquire transaction, reading the two newest keys instead of the head: a fresh key
        // is the newest, so it is the head exactly when no second key shows, and otherwise the
        // second is its predecessor. One sorted read instead of two (etcd reads every key of a
        // range it sorts by create revision).
        //
        // An uncontended lock is the common case, and etcd serves a transaction with a read in it
        // measurably slower than a bare create: unless this process last found the queue busy,
        // it first sends `if no key under the prefix then put(key)` (alone ⇒ head), and Go's
        // transaction only when that fails.
        let reads = vec![TxnOp::get(self.prefix.clone(), Some(newest_two()))];
        let key = self.key.clone();
        let entry = if found_busy(&self.prefix) {
            Entry::enqueue_reading(&self.session, key, Vec::new(), reads)
        } else {
            Entry::enqueue_reading_unless_alone(&self.session, key, &self.prefix, Vec::new(), reads)
        };
        let mut entry = entry.holding(local);
        let enqueued = entry.settle().await?;
        let ownership = Ownership::new(self.key.clone(), enqueued.revision);

        let head = self.is_head(&enqueued, &ownership).await?;
        note_queue(&self.prefix, enqueued.alone || alone_in_read(&enqueued));
        if !head {
            if !wait {
                if enqueued.created {
                    // Our fresh key must not stay in the queue (if this fails, dropping the entry
                    // retries in the background).
                    let _ = entry.remove().await;
                } else {
                    // A key this session already had (e.g. a Go caller on the same lease): not
                    // ours to remove.
                    entry.forget();
                }
                return Err(Error::WouldBlock {
                    name: self.prefix.clone(),
                });
            }
            // Predecessor watch (docs/wire-format.md); each read after a wake-up also checks that our
            // own key is still there (it vanishes with an expired session, or an operator's delete).
            let predecessor = Predecessor::from_enqueue(&enqueued, 0, ownership.key());
            let turn = wait_for_turn(&self.session, &self.prefix, &ownership, predecessor).await?;
            if turn != Turn::First || !self.session.is_alive() {
                entry.forget();
                return Err(crate::gone_or_removed(&self.session, &ownership).await);
            }
        }
        let (_, local) = entry.into_parts();
        Ok(MutexGuard {
            held: Held::new(self.session.clone(), ownership, local),
        })
    }
}

/// Queues (prefixes) whose last acquisition in this process found other keys: their next
/// acquisition sends Go's transaction at once rather than the empty-queue transaction, whose
/// failure would cost a raft proposal. Process-wide, not per `Mutex` value, so that the common
/// `Mutex::new(..)?.lock()` on a busy lock pays that extra request once, not on every lock.
static BUSY: LazyLock<StdMutex<HashSet<String>>> = LazyLock::new(Default::default);

/// At most this many busy queues are remembered; beyond that the set starts afresh (forgetting
/// costs one extra request per queue, never correctness).
const BUSY_REMEMBERED: usize = 1024;

fn found_busy(prefix: &str) -> bool {
    BUSY.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(prefix)
}

fn note_queue(prefix: &str, alone: bool) {
    let mut busy = BUSY.lock().unwrap_or_else(PoisonError::into_inner);
    if alone {
        busy.remove(prefix);
    } else if !busy.contains(prefix) {
        if busy.len() >= BUSY_REMEMBERED {
            busy.clear();
        }
        busy.insert(prefix.to_owned());
    }
}

/// Whether the enqueue's newest-two read shows the queue held no key but the new one.
fn alone_in_read(enqueued: &Enqueued) -> bool {
    enqueued.created && enqueued.reads.first().is_some_and(|r| r.kvs().len() == 1)
}

/// Proof of holding a [`Mutex`]. Dropping it releases the lock in the background; prefer
/// [`unlock`](Self::unlock), which reports errors.
///
/// Guard writes that must not happen after losing the lock with [`owns`](Self::owns) in the same
/// transaction:
///
/// ```no_run
/// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
/// use coord_core::etcd_client::{Txn, TxnOp};
///
/// let guard = coord_lock::Mutex::new(&session, "counter-lock")?.lock().await?;
/// let txn = Txn::new().when([guard.owns()]).and_then([TxnOp::put("counter", "42", None)]);
/// let applied = session.client().txn(txn).await?.succeeded();
/// # let _ = applied; Ok(()) }
/// ```
#[must_use = "dropping the guard releases the lock at once"]
pub struct MutexGuard {
    held: Held,
}

impl fmt::Debug for MutexGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("key", &self.key())
            .field("token", &self.held.ownership.token())
            .finish_non_exhaustive()
    }
}

impl MutexGuard {
    /// The holder's key.
    pub fn key(&self) -> &str {
        self.held.key()
    }

    /// The fencing token: the key's create revision, larger for every later holder.
    pub fn token(&self) -> FencingToken {
        self.held.ownership.token()
    }

    /// `create_revision(key) == token`: put it in the `when` of any transaction that must only
    /// apply while this guard still holds the lock.
    pub fn owns(&self) -> Compare {
        self.held.ownership.compare()
    }

    /// The ownership proof (key and token).
    pub fn ownership(&self) -> &Ownership {
        &self.held.ownership
    }

    /// The session the lock is bound to.
    pub fn session(&self) -> &Session {
        &self.held.session
    }

    /// Resolves when the lock is lost: the session ended, or the key was deleted (by an operator,
    /// or with the lease). A process that resumes after a stall past the session's deadline finds
    /// it ready on the first poll ([`Session::state`] reads the clock). An early warning only — a
    /// paused process can still be stopped between this check and its write; fence writes with
    /// [`owns`](Self::owns).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::Mutex;
    ///
    /// let guard = Mutex::new(&session, "singleton-job")?.lock().await?;
    /// tokio::select! {
    ///     _ = guard.lost() => eprintln!("lock lost: stop the job"),
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => guard.unlock().await?,
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        key_lost(&self.held.session, &self.held.ownership).await;
    }

    /// Releases the lock: deletes the key, but only if it is still this holder's (a stale unlock
    /// never deletes a newer key of the same session — Go's bug #22082).
    ///
    /// # Errors
    ///
    /// - [`Error::NotHeld`] when the key was already gone or replaced: the lock had been lost;
    /// - transport errors; the release is then retried in the background.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the release continues in the background.
    pub async fn unlock(mut self) -> Result<()> {
        self.held.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, as the set is process-wide and the bound clears it.
    #[test]
    fn busy_queues_are_remembered_until_found_empty_and_the_set_is_bounded() {
        assert!(!found_busy("busy-test/a/"));
        note_queue("busy-test/a/", false);
        assert!(found_busy("busy-test/a/"));
        note_queue("busy-test/a/", false);
        assert!(found_busy("busy-test/a/"));
        note_queue("busy-test/a/", true);
        assert!(!found_busy("busy-test/a/"));

        for i in 0..=BUSY_REMEMBERED {
            note_queue(&format!("busy-test/{i}/"), false);
        }
        let remembered = BUSY.lock().unwrap_or_else(PoisonError::into_inner).len();
        assert!((1..=BUSY_REMEMBERED).contains(&remembered), "{remembered}");
        assert!(found_busy(&format!("busy-test/{BUSY_REMEMBERED}/")));
    }
}
