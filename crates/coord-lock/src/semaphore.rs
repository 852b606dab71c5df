//! A counting semaphore held in etcd, with session-bound permits and durable holders.
//!
//! Protocol, safety and liveness argument: `docs/design/semaphore.md`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coord_core::etcd_client::{
    Compare, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use coord_core::keys::{lease_key, queue_prefix, validate_name, validate_segment};
use coord_core::watch::{
    KeyWatch, wait_changed, wait_changed_value_from_history, wait_older_deleted,
};
use coord_core::{Client, Error as CoreError, FencingToken, Ownership, Session};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

use coord_core::queue::{Enqueued, Entry, key_lost, local_slot, read_retry, session_end_error};

use crate::handoff::{GRACE, Handoff};
use crate::held::Held;
use crate::{Error, Result};

/// The largest limit a semaphore accepts.
pub const MAX_LIMIT: u32 = 100_000;

/// The longest [`Semaphore::with_taken_by`] note, in bytes.
pub const MAX_TAKEN_BY: usize = 256;

/// Where a semaphore's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// Given by the caller. Every participant must use the same number: each enforces its own.
    Fixed(u32),
    /// Stored in etcd next to the holders (key `namespace + name`, decimal text), changeable at run
    /// time with [`Semaphore::set_limit`]; `default` applies while the key does not exist.
    Stored {
        /// The limit while none is stored.
        default: u32,
    },
}

impl Limit {
    fn validate(value: u32) -> Result<u32> {
        if value == 0 || value > MAX_LIMIT {
            return Err(CoreError::InvalidConfig {
                field: "limit",
                reason: format!("{value} is outside 1..={MAX_LIMIT}"),
            }
            .into());
        }
        Ok(value)
    }
}

/// How a durable holder's slot ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Until [`Semaphore::release_as`] or [`Semaphore::force_release`].
    #[default]
    UntilReleased,
    /// Until released, or until this much time has passed (a lease that is never renewed), so that
    /// holders that never come back do not block the semaphore for ever.
    Expires(Duration),
}

/// What the holder keys store: who holds or waits, and since when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Record {
    holder: String,
    held: bool,
    since_ms: u64,
    /// Who took it, if the handle said ([`Semaphore::with_taken_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<String>,
}

impl Record {
    pub(crate) fn new(holder: &str, held: bool, by: Option<&str>) -> Record {
        let since_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Record {
            holder: holder.to_owned(),
            held,
            since_ms: u64::try_from(since_ms).unwrap_or(u64::MAX),
            by: by.map(str::to_owned),
        }
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    /// The same record marked held, since now.
    pub(crate) fn granted(self) -> Record {
        let now = Record::new(&self.holder, true, None);
        Record {
            held: true,
            since_ms: now.since_ms,
            ..self
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A key whose value is not a record (written by another tool) counts as a holder: the safe
    /// reading for both the limit and the wake-up rule (docs/design/semaphore.md §4).
    pub(crate) fn decode(value: &[u8]) -> Option<Record> {
        serde_json::from_slice(value).ok()
    }
}

/// One entry of the semaphore's queue, from [`Semaphore::queue`] or [`Semaphore::holders`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderInfo {
    /// The holder id: the id given to `acquire_as`, or the session's lease in hex.
    pub id: String,
    /// The full key.
    pub key: String,
    /// The fencing token (create revision); also the queue order.
    pub token: FencingToken,
    /// Whether it holds a permit (`false`: waiting).
    pub held: bool,
    /// Whether it is a durable holder (not bound to a session).
    pub durable: bool,
    /// When it was granted (or started waiting), by the holder's clock.
    pub since: SystemTime,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
    /// Who took it, when the taking handle said ([`Semaphore::with_taken_by`]): a server
    /// replica, an operator, a tool.
    pub taken_by: Option<String>,
}

/// A counting semaphore in etcd: at most `limit` holders at a time, FIFO.
///
/// Holders are the first `limit` keys under `namespace + name + "/"` by create revision
/// (docs/wire-format.md). Two kinds of holders share it:
/// - **session-bound** permits ([`acquire`](Self::acquire)), whose key is the session's lease in hex
///   and which vanish with the session;
/// - **durable** holders by id ([`acquire_as`](Self::acquire_as)), for slots that must survive the
///   process (a machine's reboot slot), optionally expiring.
///
/// A release costs O(1) etcd requests however many wait: only the first waiter watches the
/// holders; every other waiter watches the waiter ahead of it.
///
/// One session holds at most one permit of a semaphore at a time: a second acquisition on the same
/// session waits inside the process until the first permit is released.
///
/// ```no_run
/// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
/// use coord_lock::{Limit, Semaphore};
///
/// let slots = Semaphore::new(&session, "builds", Limit::Fixed(4))?;
/// let permit = slots.acquire().await?;
/// // … at most 4 processes are here at once …
/// permit.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    session: Session,
    name: String,
    prefix: String,
    limit_key: String,
    limit: Limit,
    key: String,
    local: Arc<tokio::sync::Mutex<()>>,
    taken_by: Option<Arc<str>>,
    handoff: Arc<Handoff>,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("prefix", &self.prefix)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The outcome of evaluating one's place in the queue.
enum Place {
    /// Granted (and marked held).
    Granted,
    /// Waiting behind holders only: watch for any delete under the prefix (and limit changes).
    First {
        /// Deletes count from the revision after this one.
        read_revision: i64,
        /// A hand-off mark on the own key counts from the revision after this one.
        own_from: i64,
        /// Inferred without a read (the predecessor was granted, so the rank is at most the
        /// limit, maybe less): unless a hand-off or a delete comes within [`GRACE`], read.
        inferred: bool,
    },
    /// Waiting behind another waiter: watch that key for any change.
    Behind {
        predecessor: Vec<u8>,
        /// The predecessor's create revision.
        predecessor_revision: i64,
        read_revision: i64,
    },
}

impl Semaphore {
    /// A semaphore named `name` (under the client's namespace) for holders of `session`.
    ///
    /// Nothing is sent to etcd until a permit is acquired.
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidName`] for an invalid name; [`coord_core::Error::InvalidConfig`]
    /// for a limit of 0 or over [`MAX_LIMIT`].
    pub fn new(session: &Session, name: &str, limit: Limit) -> Result<Semaphore> {
        let namespace = session.client().namespace();
        validate_name(namespace, name)?;
        match limit {
            Limit::Fixed(n) | Limit::Stored { default: n } => Limit::validate(n)?,
        };
        let key = lease_key(namespace, name, session.lease_id());
        let prefix = queue_prefix(namespace, name);
        let limit_key = format!("{namespace}{name}");
        Ok(Semaphore {
            session: session.clone(),
            name: name.to_owned(),
            handoff: Handoff::new(&prefix, &limit_key, limit),
            prefix,
            limit_key,
            limit,
            local: local_slot(&key),
            key,
            taken_by: None,
        })
    }

    /// The same semaphore, recording `by` as who took each entry this handle writes (shown as
    /// [`HolderInfo::taken_by`]): a FleetLock server replica, an operator's name, a tool.
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidConfig`] when `by` is longer than [`MAX_TAKEN_BY`] bytes or
    /// holds control characters.
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::{Durability, Limit, Semaphore};
    ///
    /// let reboots = Semaphore::new(&session, "reboot/workers", Limit::Stored { default: 1 })?
    ///     .with_taken_by("fleetlock@gateway-2")?;
    /// let slot = reboots.try_acquire_as("node-7", Durability::UntilReleased).await?;
    /// # let _ = slot; Ok(()) }
    /// ```
    pub fn with_taken_by(mut self, by: &str) -> Result<Semaphore> {
        if by.len() > MAX_TAKEN_BY || by.chars().any(char::is_control) {
            return Err(CoreError::InvalidConfig {
                field: "taken_by",
                reason: format!("{by:?}: at most {MAX_TAKEN_BY} bytes, no control characters"),
            }
            .into());
        }
        self.taken_by = Some(by.into());
        Ok(self)
    }

    /// A session-free handle on the same semaphore, for reads and operator writes.
    pub fn admin(&self) -> SemaphoreAdmin {
        SemaphoreAdmin {
            client: self.session.client().clone(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            limit_key: self.limit_key.clone(),
            limit: self.limit,
            handoff: self.handoff.clone(),
        }
    }

    /// The queue prefix: `namespace + name + "/"`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key holding the stored limit: `namespace + name`.
    pub fn limit_key(&self) -> &str {
        &self.limit_key
    }

    /// Waits for a permit bound to the session.
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::SessionLost`] / `SessionClosed` when the session ends before or while
    /// waiting; transport errors that outlast the client's retries.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped acquisition removes its key from etcd (in the background).
    pub async fn acquire(&self) -> Result<Permit> {
        self.session.check_alive()?;
        let local = self.local.clone().lock_owned().await;
        self.acquire_session(local, true).await
    }

    /// Like [`acquire`](Self::acquire), giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] when the timeout expires (the waiter's key is then removed); otherwise as
    /// [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::{Error, Limit, Semaphore};
    /// use std::time::Duration;
    ///
    /// let builds = Semaphore::new(&session, "builds", Limit::Fixed(4))?;
    /// match builds.acquire_timeout(Duration::from_secs(30)).await {
    ///     Ok(permit) => permit.release().await?,
    ///     Err(Error::TimedOut { .. }) => eprintln!("all build slots busy for 30 s"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Permit> {
        match tokio::time::timeout(timeout, self.acquire()).await {
            Ok(result) => result,
            Err(_) => Err(Error::TimedOut {
                name: self.prefix.clone(),
                after: timeout,
            }),
        }
    }

    /// Takes a permit if one is free now, without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] when all permits are taken (nothing is left in etcd); otherwise as
    /// [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::{Error, Limit, Semaphore};
    ///
    /// let builds = Semaphore::new(&session, "builds", Limit::Fixed(4))?;
    /// match builds.try_acquire().await {
    ///     Ok(permit) => permit.release().await?,
    ///     Err(Error::WouldBlock { .. }) => eprintln!("busy, try later"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<Permit> {
        self.session.check_alive()?;
        let local = self
            .local
            .clone()
            .try_lock_owned()
            .map_err(|_| Error::WouldBlock {
                name: self.prefix.clone(),
            })?;
        self.acquire_session(local, false).await
    }

    async fn acquire_session(&self, local: OwnedMutexGuard<()>, wait: bool) -> Result<Permit> {
        let holder = self.session.lease_id().to_string();
        // Opened before the enqueue, so that no wait on the entry's own key needs a read.
        let own = wait.then(|| KeyWatch::open(self.session.client(), self.key.clone()));
        let mut entry = Entry::enqueue_reading(
            &self.session,
            self.key.clone(),
            Record::new(&holder, false, self.taken_by.as_deref()).encode(),
            self.enqueue_reads(),
        )
        .holding(local);
        let enqueued = entry.settle().await?;
        let ownership = Ownership::new(self.key.clone(), enqueued.revision);
        let lease = KeyLease::Keep;
        // `own` is there exactly when the caller waits.
        match (self.place_at_enqueue(&enqueued, &ownership), own) {
            (Some(Place::Granted), _) => {
                if self.marks_every_grant() {
                    self.mark_held(&ownership, &holder, lease).await?;
                }
            }
            (place, Some(own)) => {
                self.wait_for_grant(&ownership, &holder, lease, place, own)
                    .await?
            }
            (place, None) => {
                let granted = match place {
                    Some(_) => false,
                    None => matches!(
                        self.evaluate(&ownership, &holder, lease, None).await?,
                        Place::Granted
                    ),
                };
                if !granted {
                    if enqueued.created {
                        let _ = entry.remove().await;
                    } else {
                        entry.forget();
                    }
                    return Err(Error::WouldBlock {
                        name: self.prefix.clone(),
                    });
                }
            }
        }
        let (_, local) = entry.into_parts();
        Ok(Permit {
            held: Held::new(self.session.clone(), ownership, local)
                .handing_off(self.handoff.clone()),
        })
    }

    /// Waits for a durable slot for `id` (a machine id, a job name…), not bound to the caller's
    /// session: once granted, the slot stays until [`release_as`](Self::release_as) (or until it
    /// expires, with [`Durability::Expires`]), even if this process exits.
    ///
    /// Idempotent: if `id` already holds a slot, this returns it without taking a second one.
    /// While waiting, the key is bound to the caller's session, so a waiter that dies leaves no
    /// trace.
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidName`] for an empty id or one with `/` or NUL;
    /// [`coord_core::Error::InvalidConfig`] for a zero or fractional expiry (nothing is written);
    /// otherwise as [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe while waiting (the waiting key is removed). If dropped after the grant was
    /// written, the slot is held; `acquire_as` again returns it.
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::{Durability, Limit, Semaphore};
    /// use std::time::Duration;
    ///
    /// let reboots = Semaphore::new(&session, "reboot/workers", Limit::Stored { default: 1 })?;
    /// // This machine may reboot; the slot survives the reboot and is released after it.
    /// let slot = reboots.acquire_as("node-17", Durability::Expires(Duration::from_secs(3600))).await?;
    /// println!("{} holds {} (token {})", slot.id(), slot.key(), slot.token());
    /// // … after the reboot, from the same or another process:
    /// reboots.release_as("node-17").await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire_as(&self, id: &str, durability: Durability) -> Result<DurableSlot> {
        self.durable(id, durability, true).await
    }

    /// Takes a durable slot for `id` if one is free now (or `id` already holds one), without
    /// waiting. This is what FleetLock's `pre-reboot` does.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] when all slots are taken (nothing is left in etcd); otherwise as
    /// [`acquire_as`](Self::acquire_as).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire_as`](Self::acquire_as).
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::{Durability, Error, Limit, Semaphore};
    ///
    /// let reboots = Semaphore::new(&session, "reboot/workers", Limit::Stored { default: 1 })?;
    /// match reboots.try_acquire_as("node-17", Durability::UntilReleased).await {
    ///     Ok(_) => println!("go ahead and reboot"),
    ///     Err(Error::WouldBlock { .. }) => println!("another machine is rebooting"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire_as(&self, id: &str, durability: Durability) -> Result<DurableSlot> {
        self.durable(id, durability, false).await
    }

    async fn durable(&self, id: &str, durability: Durability, wait: bool) -> Result<DurableSlot> {
        validate_segment(id)?;
        if let Durability::Expires(ttl) = durability {
            if ttl.is_zero() || ttl.subsec_nanos() != 0 {
                return Err(CoreError::InvalidConfig {
                    field: "expiry",
                    reason: format!("{ttl:?}: must be a whole, non-zero number of seconds"),
                }
                .into());
            }
        }
        self.session.check_alive()?;
        let key = self.durable_key(id);
        let own = wait.then(|| KeyWatch::open(self.session.client(), key.clone()));
        let mut entry = Entry::enqueue_reading(
            &self.session,
            key.clone(),
            Record::new(id, false, self.taken_by.as_deref()).encode(),
            self.enqueue_reads(),
        );
        let enqueued = entry.settle().await?;
        let ownership = Ownership::new(key.clone(), enqueued.revision);
        let already_held = enqueued
            .existing_value
            .as_deref()
            .and_then(Record::decode)
            .is_some_and(|r| r.held);
        // Only the caller that queued the key removes it when giving up.
        if already_held || !enqueued.created {
            entry.forget();
        }
        if already_held {
            return Ok(DurableSlot {
                id: id.to_owned(),
                ownership,
            });
        }
        let lease = KeyLease::Durable(durability);
        // `own` is there exactly when the caller waits.
        match (self.place_at_enqueue(&enqueued, &ownership), own) {
            // A durable grant always writes: it moves the key off the waiter's session.
            (Some(Place::Granted), _) => self.mark_held(&ownership, id, lease).await?,
            (place, Some(own)) => {
                self.wait_for_grant(&ownership, id, lease, place, own)
                    .await?
            }
            (place, None) => {
                let granted = match place {
                    Some(_) => false,
                    None => matches!(
                        self.evaluate(&ownership, id, lease, None).await?,
                        Place::Granted
                    ),
                };
                if !granted {
                    let _ = entry.remove().await;
                    return Err(Error::WouldBlock {
                        name: self.prefix.clone(),
                    });
                }
            }
        }
        entry.forget();
        Ok(DurableSlot {
            id: id.to_owned(),
            ownership,
        })
    }

    /// Releases `id`'s durable slot (or its waiting entry); as [`SemaphoreAdmin::release_as`].
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidName`] for an invalid id; transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the delete either happened or not; call again.
    pub async fn release_as(&self, id: &str) -> Result<()> {
        self.admin().release_as(id).await
    }

    /// Operator override: removes the holder or waiter `id`; as [`SemaphoreAdmin::force_release`].
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidName`] for an invalid id; transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn force_release(&self, id: &str) -> Result<bool> {
        self.admin().force_release(id).await
    }

    /// The current limit; as [`SemaphoreAdmin::limit`].
    ///
    /// # Errors
    ///
    /// Transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn limit(&self) -> Result<u32> {
        self.admin().limit().await
    }

    /// Changes the stored limit; as [`SemaphoreAdmin::set_limit`].
    ///
    /// # Errors
    ///
    /// As [`SemaphoreAdmin::set_limit`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the write either happened or not.
    pub async fn set_limit(&self, limit: u32) -> Result<()> {
        self.admin().set_limit(limit).await
    }

    /// Everyone in the queue, holders first, in order; as [`SemaphoreAdmin::queue`].
    ///
    /// # Errors
    ///
    /// Transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn queue(&self) -> Result<Vec<HolderInfo>> {
        self.admin().queue().await
    }

    /// The holders (granted entries), oldest first; as [`SemaphoreAdmin::holders`].
    ///
    /// # Errors
    ///
    /// Transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn holders(&self) -> Result<Vec<HolderInfo>> {
        self.admin().holders().await
    }

    fn durable_key(&self, id: &str) -> String {
        format!("{}{DURABLE_MARK}{id}", self.prefix)
    }

    /// Evaluates and waits until granted. Wake-up rule: docs/design/semaphore.md §2–3. `own` is the
    /// watch on the entry's own key, opened before its enqueue: hand-offs mark that key.
    async fn wait_for_grant(
        &self,
        ownership: &Ownership,
        holder: &str,
        lease: KeyLease,
        mut known: Option<Place>,
        mut own: KeyWatch,
    ) -> Result<()> {
        let client = self.session.client();
        let expect_handoff = Handoff::expected(self.limit);
        // The first evaluation (of a key that already existed) follows no wake-up: nobody is
        // about to hand off to it.
        let mut waited = known.is_some();
        loop {
            let place = match known.take() {
                Some(place) => place,
                None => tokio::select! {
                    biased;
                    _ = self.session.ended() => return Err(session_end_error(&self.session).into()),
                    place = self.evaluate(ownership, holder, lease, waited.then_some(&mut own)) => place?,
                },
            };
            waited = true;
            let woken = match place {
                Place::Granted => return Ok(()),
                Place::First {
                    read_revision,
                    own_from,
                    inferred,
                } => {
                    // A releaser hands off by marking this key; a delete (or limit change) nobody
                    // hands off is seen on the prefix (and limit) watch.
                    let confirm = async {
                        if inferred {
                            tokio::time::sleep(GRACE).await;
                        } else {
                            std::future::pending::<()>().await;
                        }
                    };
                    let limit_changed = async {
                        match self.limit {
                            Limit::Stored { .. } => {
                                wait_changed(client, self.limit_key.clone(), read_revision + 1)
                                    .await
                            }
                            Limit::Fixed(_) => std::future::pending().await,
                        }
                    };
                    let older_deleted = wait_older_deleted(
                        client,
                        self.prefix.clone(),
                        ownership.token().revision(),
                        read_revision + 1,
                    );
                    let trigger = tokio::select! {
                        biased;
                        _ = self.session.ended() => return Err(session_end_error(&self.session).into()),
                        change = own.changed_since(own_from + 1) => {
                            match self.own_change(change, ownership, holder, lease).await? {
                                true => return Ok(()),
                                false => continue,
                            }
                        }
                        r = older_deleted => r.map(|certain| certain.is_some()),
                        r = limit_changed => r.map(|_| false),
                        // Nothing came: read where this entry stands.
                        () = confirm => continue,
                    };
                    let certain = match trigger {
                        Ok(certain) => certain,
                        Err(CoreError::Compacted { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    // With a fixed limit the first waiter's rank was at most the limit, and
                    // nothing older can appear: one older key gone means a free permit, now. Its
                    // releaser's hand-off marks this key (waking the waiter behind); if none
                    // comes, the mark is written here, in the background.
                    if certain && !self.marks_every_grant() && !lease.changes_on_grant() {
                        if expect_handoff {
                            self.mark_unless_handed_off(ownership, holder, own, own_from + 1);
                        } else {
                            self.mark_held(ownership, holder, lease).await?;
                        }
                        return Ok(());
                    }
                    // That may have freed a permit for this key: give its releaser a moment to
                    // hand it off before writing the mark here (one write instead of two).
                    if expect_handoff {
                        tokio::select! {
                            biased;
                            _ = self.session.ended() => return Err(session_end_error(&self.session).into()),
                            change = own.changed_since(own_from + 1) => {
                                match self.own_change(change, ownership, holder, lease).await? {
                                    true => return Ok(()),
                                    false => continue,
                                }
                            }
                            () = tokio::time::sleep(GRACE) => {}
                        }
                    }
                    if certain && !self.marks_every_grant() {
                        self.mark_held(ownership, holder, lease).await?;
                        return Ok(());
                    }
                    Ok(0)
                }
                Place::Behind {
                    predecessor,
                    predecessor_revision,
                    read_revision,
                } => {
                    let change = tokio::select! {
                        biased;
                        _ = self.session.ended() => return Err(session_end_error(&self.session).into()),
                        // A hand-off can reach this key before its predecessor's mark is seen
                        // (concurrent releases mark successive waiters).
                        change = own.changed_since(read_revision + 1) => {
                            match self.own_change(change, ownership, holder, lease).await? {
                                true => return Ok(()),
                                false => continue,
                            }
                        }
                        // From history: no read per wait. A mark in the wait's first ~100 ms may
                        // be seen that much later; the hand-off to this key, on its own watch, is
                        // not delayed (semaphore.md §2).
                        r = wait_changed_value_from_history(client, predecessor, read_revision + 1) => r,
                    };
                    match change {
                        // The predecessor was granted, so its rank is below the limit and this
                        // entry's at most the limit: it is the first waiter (or already eligible,
                        // which a hand-off or the confirming read settles), without a read.
                        Ok((revision, Some(kv)))
                            if kv.create_revision() == predecessor_revision
                                && Record::decode(kv.value()).is_some_and(|r| r.held) =>
                        {
                            known = Some(Place::First {
                                read_revision: revision,
                                own_from: read_revision,
                                inferred: true,
                            });
                            continue;
                        }
                        other => other.map(|(revision, _)| revision),
                    }
                }
            };
            match woken {
                Ok(_) | Err(CoreError::Compacted { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes the "held" mark of a key granted without one, unless a releaser's hand-off marks it
    /// within [`GRACE`]; in the background, so that the grant returns at once. The mark is what
    /// wakes the waiter behind. `own` is the entry's watch on its own key (so the hand-off is seen
    /// without a read), `from` the revision the wait for it started at.
    fn mark_unless_handed_off(
        &self,
        ownership: &Ownership,
        holder: &str,
        mut own: KeyWatch,
        from: i64,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.session.client().clone();
        let ownership = ownership.clone();
        let record = Record::new(holder, true, self.taken_by.as_deref()).encode();
        runtime.spawn(async move {
            // Marked by the hand-off, or no longer this entry's key: nothing to write. Anything
            // else (no change within the grace period, a compaction, a failed watch): the
            // guarded mark below, which is harmless if the hand-off's mark lands too.
            if let Ok(Ok((_, kv))) = tokio::time::timeout(GRACE, own.changed_since(from)).await {
                let handed_off = kv.is_none_or(|kv| {
                    kv.create_revision() != ownership.token().revision()
                        || Record::decode(kv.value()).is_some_and(|r| r.held)
                });
                if handed_off {
                    return;
                }
            }
            let txn = Txn::new().when([ownership.compare()]).and_then([TxnOp::put(
                ownership.key().to_vec(),
                record,
                Some(PutOptions::new().with_ignore_lease()),
            )]);
            if let Err(error) = client.txn(txn).await {
                tracing::debug!(%error, key = ?ownership.key_str(), "semaphore mark failed");
            }
        });
    }

    /// What a change of this entry's own key means: `true` when it is a hand-off (the key marked
    /// held; a durable slot then moves its key off the session), `false` for anything else worth
    /// a fresh evaluation; an error when the key is gone.
    async fn own_change(
        &self,
        change: coord_core::Result<(i64, Option<KeyValue>)>,
        ownership: &Ownership,
        holder: &str,
        lease: KeyLease,
    ) -> Result<bool> {
        let kv = match change {
            Ok((_, kv)) => kv,
            Err(CoreError::Compacted { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let Some(kv) = kv.filter(|kv| kv.create_revision() == ownership.token().revision()) else {
            return Err(crate::gone_or_removed(&self.session, ownership).await);
        };
        if !Record::decode(kv.value()).is_some_and(|r| r.held) {
            return Ok(false);
        }
        if lease.changes_on_grant() {
            self.mark_held(ownership, holder, lease).await?;
        }
        Ok(true)
    }

    /// Whether every grant writes a "held" mark. With a stored limit it must: the limit can be
    /// lowered under existing holders, so rank alone cannot tell a holder from a waiter and waiters
    /// decide by the marks. With a fixed limit a key of rank ≥ limit is never a holder, waiters
    /// decide by rank, and only grants after a wait write (to wake the waiter behind);
    /// docs/design/semaphore.md §2.
    fn marks_every_grant(&self) -> bool {
        matches!(self.limit, Limit::Stored { .. })
    }

    /// How many older keys a decision reads: `limit + 1` with a fixed limit (to tell "first
    /// waiter" from "behind another waiter" by rank), `limit` with a stored one.
    fn window(&self, limit: u32) -> u32 {
        if self.marks_every_grant() {
            limit
        } else {
            limit.saturating_add(1)
        }
    }

    fn initial_limit(&self) -> u32 {
        match self.limit {
            Limit::Fixed(n) | Limit::Stored { default: n } => n,
        }
    }

    fn current_limit(&self, stored: Option<&[u8]>) -> u32 {
        match self.limit {
            Limit::Fixed(n) => n,
            Limit::Stored { default } => parse_limit(stored, default),
        }
    }

    /// The reads sent with the enqueue put, so that a free permit is granted in one request: the
    /// newest keys (the new one first, it is the newest) and the stored limit.
    fn enqueue_reads(&self) -> Vec<TxnOp> {
        let window = self.window(self.initial_limit()).saturating_add(1);
        vec![
            TxnOp::get(
                self.prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Descend)
                        .with_limit(i64::from(window)),
                ),
            ),
            TxnOp::get(self.limit_key.clone(), None),
        ]
    }

    /// The place the enqueue transaction's reads show, when they suffice (a freshly created key).
    fn place_at_enqueue(&self, enqueued: &Enqueued, ownership: &Ownership) -> Option<Place> {
        if !enqueued.created {
            return None;
        }
        let [newest, stored] = enqueued.reads.as_slice() else {
            return None;
        };
        let read_revision = enqueued.revision;
        let older: Vec<&KeyValue> = newest
            .kvs()
            .iter()
            .filter(|kv| kv.key() != ownership.key())
            .collect();
        let limit = self.current_limit(stored.kvs().first().map(|kv| kv.value()));
        self.decide(
            &older,
            self.window(self.initial_limit()),
            limit,
            read_revision,
        )
    }

    /// The decision rule (docs/design/semaphore.md §2) from the newest older keys (newest first,
    /// at most `window` of them). `None` when the window was too small for the limit read.
    fn decide(
        &self,
        older: &[&KeyValue],
        window: u32,
        limit: u32,
        read_revision: i64,
    ) -> Option<Place> {
        let seen = u32::try_from(older.len()).unwrap_or(u32::MAX);
        if seen >= window && self.window(limit) > window {
            return None;
        }
        if seen < limit {
            return Some(Place::Granted);
        }
        let predecessor = older.first()?;
        let behind = if self.marks_every_grant() {
            Record::decode(predecessor.value()).is_some_and(|r| !r.held)
        } else {
            seen > limit
        };
        Some(if behind {
            Place::Behind {
                predecessor: predecessor.key().to_vec(),
                predecessor_revision: predecessor.create_revision(),
                read_revision,
            }
        } else {
            Place::First {
                read_revision,
                own_from: read_revision,
                inferred: false,
            }
        })
    }

    /// One read of everything the decision needs (own key, the newest older keys, stored limit),
    /// and, when granted, one guarded write marking the key held (which wakes the waiter behind).
    ///
    /// `waited`: the evaluation follows a wake-up, so a releaser may be handing this key its
    /// permit; a grant then first waits up to [`GRACE`] for that mark, on this watch of the key.
    async fn evaluate(
        &self,
        ownership: &Ownership,
        holder: &str,
        lease: KeyLease,
        waited: Option<&mut KeyWatch>,
    ) -> Result<Place> {
        let client = self.session.client();
        let key = ownership.key().to_vec();
        let revision = ownership.token().revision();
        // etcd's Range `count` ignores the create-revision filter, so the rank is read as a window
        // of the newest older keys (semaphore.md §2).
        let mut window = self.window(self.initial_limit());
        loop {
            let read = Txn::new().and_then([
                TxnOp::get(key.clone(), None),
                TxnOp::get(self.prefix.clone(), Some(older_window(revision, window))),
                TxnOp::get(self.limit_key.clone(), None),
            ]);
            let resp = read_retry()
                .retry(|| client.txn_with(|| read.clone()))
                .await?;
            let read_revision = resp.header().map_or(0, |h| h.revision());
            let gets: Vec<_> = resp
                .op_responses()
                .into_iter()
                .filter_map(|r| match r {
                    TxnOpResponse::Get(get) => Some(get),
                    _ => None,
                })
                .collect();
            let [mine, older, stored] = gets.as_slice() else {
                return Err(CoreError::UnexpectedResponse {
                    operation: "semaphore read",
                }
                .into());
            };
            let Some(me) = mine
                .kvs()
                .first()
                .filter(|kv| kv.create_revision() == revision)
            else {
                // Our key is gone: the session expired, or an operator removed it.
                return Err(crate::gone_or_removed(&self.session, ownership).await);
            };
            let limit = self.current_limit(stored.kvs().first().map(|kv| kv.value()));
            let older: Vec<&KeyValue> = older.kvs().iter().collect();
            let Some(place) = self.decide(&older, window, limit, read_revision) else {
                // The stored limit is larger than the window read: read a window that large.
                window = self.window(limit);
                continue;
            };
            if let Place::Granted = place {
                let marked = Record::decode(me.value()).is_some_and(|r| r.held);
                if marked && !lease.changes_on_grant() {
                    return Ok(place);
                }
                if let (false, Some(own), true) = (marked, waited, Handoff::expected(self.limit)) {
                    let own = own.changed_since(read_revision + 1);
                    if let Ok(change) = tokio::time::timeout(GRACE, own).await {
                        if self.own_change(change, ownership, holder, lease).await? {
                            return Ok(place);
                        }
                    }
                }
                self.mark_held(ownership, holder, lease).await?;
            }
            return Ok(place);
        }
    }

    /// Marks the key held, guarded by its create revision: the write that wakes the waiter behind.
    async fn mark_held(&self, ownership: &Ownership, holder: &str, lease: KeyLease) -> Result<()> {
        let client = self.session.client();
        let options = match lease {
            KeyLease::Keep => PutOptions::new().with_ignore_lease(),
            KeyLease::Durable(Durability::UntilReleased) => PutOptions::new(),
            KeyLease::Durable(Durability::Expires(ttl)) => {
                let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
                PutOptions::new().with_lease(client.lease_grant(ttl).await?.id())
            }
        };
        let txn = Txn::new().when([ownership.compare()]).and_then([TxnOp::put(
            ownership.key().to_vec(),
            Record::new(holder, true, self.taken_by.as_deref()).encode(),
            Some(options),
        )]);
        if client.txn(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(crate::gone_or_removed(&self.session, ownership).await)
        }
    }
}

/// A session-free handle on a [`Semaphore`]: the limit, the queue and its holders, and operator
/// writes (set the limit, release a durable holder, force a release). For tools and servers that
/// inspect or administer semaphores without holding anything — no lease is granted.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_lock::Result<()> {
/// use coord_lock::{Limit, SemaphoreAdmin};
///
/// let reboots = SemaphoreAdmin::new(&client, "reboot/workers", Limit::Stored { default: 1 })?;
/// println!("{} slots, {} held", reboots.limit().await?, reboots.holders().await?.len());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SemaphoreAdmin {
    client: Client,
    name: String,
    prefix: String,
    limit_key: String,
    limit: Limit,
    handoff: Arc<Handoff>,
}

impl SemaphoreAdmin {
    /// A handle on the semaphore `name` (under the client's namespace). `limit` must be what the
    /// semaphore's users give: it tells a fixed limit from a stored one (and its default).
    ///
    /// # Errors
    ///
    /// As [`Semaphore::new`].
    pub fn new(client: &Client, name: &str, limit: Limit) -> Result<SemaphoreAdmin> {
        let namespace = client.namespace();
        validate_name(namespace, name)?;
        match limit {
            Limit::Fixed(n) | Limit::Stored { default: n } => Limit::validate(n)?,
        };
        let prefix = queue_prefix(namespace, name);
        let limit_key = format!("{namespace}{name}");
        Ok(SemaphoreAdmin {
            client: client.clone(),
            name: name.to_owned(),
            handoff: Handoff::new(&prefix, &limit_key, limit),
            prefix,
            limit_key,
            limit,
        })
    }

    /// The queue prefix: `namespace + name + "/"`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key holding the stored limit: `namespace + name`.
    pub fn limit_key(&self) -> &str {
        &self.limit_key
    }

    /// Releases `id`'s durable slot (or its waiting entry). Releasing an id that holds nothing
    /// succeeds.
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidName`] for an invalid id; transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the delete either happened or not; call again.
    pub async fn release_as(&self, id: &str) -> Result<()> {
        validate_segment(id)?;
        self.delete_handing_off(self.durable_key(id)).await?;
        Ok(())
    }

    /// Deletes `key` and, if it existed, hands the permit it may have held to the next waiter
    /// (docs/design/semaphore.md §3). Returns whether the key existed.
    async fn delete_handing_off(&self, key: String) -> Result<bool> {
        let mut then = vec![TxnOp::delete(key, None)];
        then.extend(self.handoff.reads());
        let mut responses = self
            .client
            .txn(Txn::new().and_then(then))
            .await?
            .op_responses();
        let deleted = match responses.first() {
            Some(TxnOpResponse::Delete(delete)) => delete.deleted() > 0,
            _ => false,
        };
        if deleted {
            responses.remove(0);
            self.handoff.hand_off_from(&self.client, responses).await;
        }
        Ok(deleted)
    }

    /// Operator override: removes the holder or waiter `id` — a durable id, or a session-bound
    /// holder's lease in hex — whatever it is doing. The removed holder's `owns()` compares fail
    /// from then on. Returns whether something was removed.
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidName`] for an invalid id; transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_lock::Result<()> {
    /// use coord_lock::{Limit, SemaphoreAdmin};
    ///
    /// let reboots = SemaphoreAdmin::new(&client, "reboot/workers", Limit::Stored { default: 1 })?;
    /// for holder in reboots.holders().await? {
    ///     println!("{} since {:?} (token {})", holder.id, holder.since, holder.token);
    /// }
    /// // node-3 died mid-reboot and will not come back:
    /// reboots.force_release("node-3").await?;
    /// # Ok(()) }
    /// ```
    pub async fn force_release(&self, id: &str) -> Result<bool> {
        validate_segment(id)?;
        if self.delete_handing_off(self.durable_key(id)).await? {
            return Ok(true);
        }
        let session_key = format!("{}{id}", self.prefix);
        self.delete_handing_off(session_key).await
    }

    /// The current limit: the stored one (or its default), or the fixed one.
    ///
    /// # Errors
    ///
    /// Transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn limit(&self) -> Result<u32> {
        match self.limit {
            Limit::Fixed(n) => Ok(n),
            Limit::Stored { default } => {
                let read = self.client.get(self.limit_key.clone(), None).await?;
                Ok(parse_limit(
                    read.kvs().first().map(|kv| kv.value()),
                    default,
                ))
            }
        }
    }

    /// Changes the stored limit. Lowering it never evicts holders; it only stops new grants until
    /// enough have released. Raising it wakes waiters at once.
    ///
    /// # Errors
    ///
    /// [`coord_core::Error::InvalidConfig`] for 0, a value over [`MAX_LIMIT`], or a semaphore whose
    /// limit is [`Limit::Fixed`]; transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the write either happened or not.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_lock::Result<()> {
    /// use coord_lock::{Limit, SemaphoreAdmin};
    ///
    /// let reboots = SemaphoreAdmin::new(&client, "reboot/workers", Limit::Stored { default: 1 })?;
    /// reboots.set_limit(3).await?; // a maintenance window: three at a time
    /// assert_eq!(reboots.limit().await?, 3);
    /// # Ok(()) }
    /// ```
    pub async fn set_limit(&self, limit: u32) -> Result<()> {
        let limit = Limit::validate(limit)?;
        if let Limit::Fixed(_) = self.limit {
            return Err(CoreError::InvalidConfig {
                field: "limit",
                reason: format!(
                    "semaphore {} has a fixed limit; use Limit::Stored",
                    self.name
                ),
            }
            .into());
        }
        // A raised limit frees permits: hand them to the waiters at once.
        let mut then = vec![TxnOp::put(self.limit_key.clone(), limit.to_string(), None)];
        then.extend(self.handoff.reads());
        let mut responses = self
            .client
            .txn(Txn::new().and_then(then))
            .await?
            .op_responses();
        if !responses.is_empty() {
            responses.remove(0);
        }
        self.handoff.hand_off_from(&self.client, responses).await;
        Ok(())
    }

    /// Everyone in the queue, holders first, in order.
    ///
    /// # Errors
    ///
    /// Transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn queue(&self) -> Result<Vec<HolderInfo>> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let read = self.client.get(self.prefix.clone(), Some(options)).await?;
        let limit = usize::try_from(self.limit().await?).unwrap_or(usize::MAX);
        let durable_prefix = format!("{}{DURABLE_MARK}", self.prefix);
        Ok(read
            .kvs()
            .iter()
            .enumerate()
            .map(|(position, kv)| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let record = Record::decode(kv.value());
                let durable = key.starts_with(&durable_prefix);
                let fallback_id = key.rsplit('/').next().unwrap_or_default().to_owned();
                HolderInfo {
                    id: record.as_ref().map_or(fallback_id, |r| r.holder.clone()),
                    token: FencingToken::new(kv.create_revision()),
                    // The first `limit` hold; beyond them, holders marked before the limit was
                    // lowered.
                    held: position < limit || record.as_ref().is_some_and(|r| r.held),
                    durable,
                    since: UNIX_EPOCH
                        + Duration::from_millis(record.as_ref().map_or(0, |r| r.since_ms)),
                    lease: kv.lease(),
                    taken_by: record.as_ref().and_then(|r| r.by.clone()),
                    key,
                }
            })
            .collect())
    }

    /// The holders (granted entries), oldest first.
    ///
    /// # Errors
    ///
    /// Transport errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn holders(&self) -> Result<Vec<HolderInfo>> {
        Ok(self.queue().await?.into_iter().filter(|h| h.held).collect())
    }

    fn durable_key(&self, id: &str) -> String {
        format!("{}{DURABLE_MARK}{id}", self.prefix)
    }
}

/// Durable holder keys are `prefix + DURABLE_MARK + id`; session keys are lowercase hex, which can
/// never start with this mark.
const DURABLE_MARK: &str = "id-";

#[derive(Debug, Clone, Copy)]
enum KeyLease {
    /// A session-bound permit keeps the session's lease.
    Keep,
    /// A durable slot leaves the waiter's session on grant.
    Durable(Durability),
}

impl KeyLease {
    fn changes_on_grant(self) -> bool {
        matches!(self, KeyLease::Durable(_))
    }
}

/// The newest `n` keys created before `revision`, newest first.
fn older_window(revision: i64, n: u32) -> GetOptions {
    GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_max_create_revision(revision - 1)
        .with_limit(i64::from(n))
}

pub(crate) fn parse_limit(value: Option<&[u8]>, default: u32) -> u32 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|&n| (1..=MAX_LIMIT).contains(&n))
        .unwrap_or(default)
}

/// A session-bound permit of a [`Semaphore`]. Dropping it releases the permit in the background;
/// prefer [`release`](Self::release), which reports errors.
#[must_use = "dropping the permit releases it at once"]
pub struct Permit {
    held: Held,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &self.held.key())
            .field("token", &self.held.ownership.token())
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The permit's key.
    pub fn key(&self) -> &str {
        self.held.key()
    }

    /// The fencing token (create revision of the key).
    pub fn token(&self) -> FencingToken {
        self.held.ownership.token()
    }

    /// `create_revision(key) == token`: true exactly while this permit is held.
    pub fn owns(&self) -> Compare {
        self.held.ownership.compare()
    }

    /// The ownership proof.
    pub fn ownership(&self) -> &Ownership {
        &self.held.ownership
    }

    /// The session the permit is bound to.
    pub fn session(&self) -> &Session {
        &self.held.session
    }

    /// Resolves when the permit is lost (session ended, or the key was removed, e.g. by
    /// [`Semaphore::force_release`]); at once after a stall past the session's deadline
    /// ([`Session::state`] reads the clock). An early warning; fence writes with
    /// [`owns`](Self::owns).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> coord_lock::Result<()> {
    /// use coord_lock::{Limit, Semaphore};
    ///
    /// let permit = Semaphore::new(&session, "exports", Limit::Fixed(2))?.acquire().await?;
    /// tokio::select! {
    ///     _ = permit.lost() => eprintln!("permit lost: stop exporting"),
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => permit.release().await?,
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        key_lost(&self.held.session, &self.held.ownership).await;
    }

    /// Releases the permit, only if the key is still this permit's, and hands it to the waiter
    /// the release makes eligible (docs/design/semaphore.md, "Hand-off").
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] when the permit had been lost already; transport errors (the release is
    /// then retried in the background).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the release continues in the background.
    pub async fn release(mut self) -> Result<()> {
        self.held.release().await
    }
}

/// A durable slot granted to an id by [`Semaphore::acquire_as`]. It is information, not a guard:
/// dropping it changes nothing; release with [`Semaphore::release_as`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableSlot {
    id: String,
    ownership: Ownership,
}

impl DurableSlot {
    /// The holder id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The slot's key.
    pub fn key(&self) -> &str {
        self.ownership.key_str().unwrap_or_default()
    }

    /// The fencing token (create revision of the key).
    pub fn token(&self) -> FencingToken {
        self.ownership.token()
    }

    /// `create_revision(key) == token`: true while this slot is held.
    pub fn owns(&self) -> Compare {
        self.ownership.compare()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_outside_the_sane_range_are_rejected() {
        assert!(Limit::validate(0).is_err());
        assert!(Limit::validate(MAX_LIMIT + 1).is_err());
        assert_eq!(Limit::validate(10).unwrap(), 10);
    }

    #[test]
    fn stored_limits_fall_back_to_the_default_when_unreadable() {
        assert_eq!(parse_limit(Some(b"7"), 3), 7);
        assert_eq!(parse_limit(Some(b" 7\n"), 3), 7);
        assert_eq!(parse_limit(Some(b"0"), 3), 3);
        assert_eq!(parse_limit(Some(b"many"), 3), 3);
        assert_eq!(parse_limit(None, 3), 3);
    }

    #[test]
    fn records_round_trip_and_foreign_values_are_not_records() {
        let record = Record::new("node-1", true, Some("fleetlock@gw"));
        assert_eq!(Record::decode(&record.encode()), Some(record));
        assert_eq!(Record::decode(b""), None);
        assert_eq!(Record::decode(b"{\"Op\":0}"), None);
    }

    #[test]
    fn durable_keys_cannot_collide_with_lease_keys() {
        // Lease keys are lowercase hex; the mark contains 'i', which is not a hex digit.
        assert!(DURABLE_MARK.chars().any(|c| !c.is_ascii_hexdigit()));
    }
}
