//! Reboot groups in etcd: a group is a `coord_lock::Semaphore` named `reboot/<group>` with
//! durable holders, whose ids are the FleetLock client ids and whose limit (the group's slots) is
//! stored in etcd.
//!
//! This is the part shared by the FleetLock server and the operator commands.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use coord_core::etcd_client::GetOptions;
use coord_core::{Client, Error as CoreError, LeaseId, Session};
use coord_lock::{Durability, Error as LockError, Limit, Semaphore};
use serde::Serialize;
use tokio::sync::Mutex;

/// The semaphore names of reboot groups start with this.
pub const GROUP_PREFIX: &str = "reboot/";

/// The slots of a group while none is stored in etcd.
pub const DEFAULT_SLOTS: u32 = 1;

/// The longest group name or holder id accepted, in bytes.
pub const MAX_NAME_LEN: usize = 253;

/// The TTL of the session the waiting keys of `lock` are bound to (a `lock` never waits; the key
/// only lives for the duration of one request, and goes with the session if the process dies
/// during it).
const SESSION_TTL: Duration = Duration::from_secs(10);

/// A FleetLock group name: non-empty, at most [`MAX_NAME_LEN`] bytes of `[a-zA-Z0-9.-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GroupName(String);

/// A group name outside FleetLock's alphabet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("group {shown:?} does not match ^[a-zA-Z0-9.-]+$ (at most {MAX_NAME_LEN} bytes)")]
pub struct InvalidGroupName {
    shown: String,
}

impl GroupName {
    /// Checks `name` against FleetLock's group pattern `^[a-zA-Z0-9.-]+$`.
    ///
    /// # Errors
    ///
    /// [`InvalidGroupName`] for an empty name, a longer one than [`MAX_NAME_LEN`], or any other
    /// character.
    ///
    /// ```
    /// use coord_reboot::GroupName;
    ///
    /// assert!(GroupName::new("workers.eu-1").is_ok());
    /// assert!(GroupName::new("workers/eu").is_err());
    /// assert!(GroupName::new("").is_err());
    /// ```
    pub fn new(name: &str) -> Result<GroupName, InvalidGroupName> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if valid {
            Ok(GroupName(name.to_owned()))
        } else {
            Err(InvalidGroupName {
                shown: shorten(name),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The semaphore's name: `reboot/<group>`.
    pub fn semaphore_name(&self) -> String {
        format!("{GROUP_PREFIX}{}", self.0)
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A holder id (FleetLock's `client_params.id`): non-empty, at most [`MAX_NAME_LEN`] bytes, no
/// `/` (it is one key segment) and no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct HolderId(String);

/// A holder id that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("id {shown:?} must be 1..={MAX_NAME_LEN} bytes without '/' or control characters")]
pub struct InvalidHolderId {
    shown: String,
}

impl HolderId {
    /// Checks a holder id.
    ///
    /// # Errors
    ///
    /// [`InvalidHolderId`] for an empty or too long id, or one with `/` or a control character.
    ///
    /// ```
    /// use coord_reboot::HolderId;
    ///
    /// assert!(HolderId::new("d8f4e1f5c2b04c9d8a2e0c1b7f3a6e91").is_ok());
    /// assert!(HolderId::new("").is_err());
    /// assert!(HolderId::new("a/b").is_err());
    /// ```
    pub fn new(id: &str) -> Result<HolderId, InvalidHolderId> {
        let valid = !id.is_empty()
            && id.len() <= MAX_NAME_LEN
            && !id.chars().any(|c| c == '/' || c.is_control())
            && coord_core::keys::validate_segment(id).is_ok();
        if valid {
            Ok(HolderId(id.to_owned()))
        } else {
            Err(InvalidHolderId { shown: shorten(id) })
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

/// What can go wrong with a group operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// Every slot of the group is taken (by other ids).
    #[error("all {slots} slot(s) of group {group} are taken")]
    Full {
        /// The group.
        group: GroupName,
        /// Its slots when the lock was refused (read just after).
        slots: u32,
    },
    /// etcd could not be reached in time (unavailable, timeout, session lost): retrying later may
    /// succeed.
    #[error("etcd unavailable")]
    Unavailable(#[source] LockError),
    /// etcd refused the operation for a reason retrying does not fix (permissions, auth, TLS,
    /// bad value).
    #[error("etcd refused the operation")]
    Etcd(#[source] LockError),
}

impl GroupError {
    fn from_lock(error: LockError) -> GroupError {
        let unavailable = match &error {
            LockError::Core(core) => {
                core.is_retryable()
                    || matches!(
                        core,
                        CoreError::Connect { .. }
                            | CoreError::SessionLost { .. }
                            | CoreError::SessionClosed { .. }
                            | CoreError::Shutdown
                    )
            }
            _ => error.is_retryable(),
        };
        if unavailable {
            GroupError::Unavailable(error)
        } else {
            GroupError::Etcd(error)
        }
    }
}

impl From<CoreError> for GroupError {
    fn from(error: CoreError) -> GroupError {
        GroupError::from_lock(error.into())
    }
}

/// A slot taken by [`RebootGroups::lock`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Slot {
    /// The group.
    pub group: GroupName,
    /// The holder.
    pub id: HolderId,
    /// The fencing token (the holder key's create revision): the same for a repeated lock.
    pub token: i64,
}

/// One holder of a group, from [`RebootGroups::status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Holder {
    /// The holder id (a FleetLock client id, or a session lease in hex for a holder that some
    /// other program took with a session-bound permit).
    pub id: String,
    /// The fencing token (create revision of the holder's key).
    pub token: i64,
    /// When it was taken, by the taker's clock.
    #[serde(with = "unix_ms")]
    pub since: SystemTime,
    /// Whether it outlives the process that took it (FleetLock holders always do).
    pub durable: bool,
    /// Time left before the slot expires on its own; `None` when it never does.
    pub expires_in: Option<Duration>,
}

/// A group's state, from [`RebootGroups::status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The group.
    pub group: GroupName,
    /// How many may hold at once (stored in etcd, [`DEFAULT_SLOTS`] when none is).
    pub slots: u32,
    /// The holders, oldest first.
    pub holders: Vec<Holder>,
    /// Ids waiting for a slot (none from FleetLock, which never waits).
    pub waiting: Vec<String>,
}

/// The reboot groups of one etcd (namespace): lock, unlock, set the slots, list.
///
/// Every method is one or a few etcd requests and keeps no state between calls, so any number of
/// processes (server replicas, operators) can use the same groups at once.
#[derive(Debug)]
pub struct RebootGroups {
    client: Client,
    /// The session for waiting keys and semaphore handles, created on first use and replaced
    /// when lost.
    session: Mutex<Option<Session>>,
}

impl RebootGroups {
    /// Groups in `client`'s etcd and namespace. Nothing is sent until a method is called.
    pub fn new(client: Client) -> RebootGroups {
        RebootGroups {
            client,
            session: Mutex::new(None),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Takes a slot of `group` for `id` if one is free, or returns the one `id` already holds
    /// (recursive: locking twice takes one slot). `ttl`: the slot is released on its own after
    /// that long (ignored when `id` already holds: the first lock's expiry stays).
    ///
    /// # Errors
    ///
    /// [`GroupError::Full`] when every slot is held by other ids (nothing is left in etcd);
    /// [`GroupError::Unavailable`] / [`GroupError::Etcd`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a lock dropped before its grant leaves nothing; after it, the slot is held
    /// and locking again returns it.
    pub async fn lock(
        &self,
        group: &GroupName,
        id: &HolderId,
        ttl: Option<Duration>,
    ) -> Result<Slot, GroupError> {
        let durability = ttl.map_or(Durability::UntilReleased, Durability::Expires);
        let taken = self
            .with_semaphore(group, |semaphore| async move {
                semaphore.try_acquire_as(id.as_str(), durability).await
            })
            .await;
        match taken {
            Ok(slot) => Ok(Slot {
                group: group.clone(),
                id: id.clone(),
                token: slot.token().revision(),
            }),
            Err(GroupError::Unavailable(LockError::WouldBlock { .. })) => Err(GroupError::Full {
                group: group.clone(),
                slots: self.slots(group).await.unwrap_or(0),
            }),
            Err(e) => Err(e),
        }
    }

    /// Releases `id`'s slot of `group`; releasing a slot that `id` does not hold succeeds and
    /// writes nothing.
    ///
    /// # Errors
    ///
    /// [`GroupError::Unavailable`] / [`GroupError::Etcd`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the delete happened or not; call again.
    pub async fn unlock(&self, group: &GroupName, id: &HolderId) -> Result<(), GroupError> {
        self.with_semaphore(group, |semaphore| async move {
            semaphore.release_as(id.as_str()).await
        })
        .await
    }

    /// Operator override: removes whatever `id` holds in `group`, a FleetLock slot or a
    /// session-bound holder (by its lease in hex). Returns whether something was removed.
    ///
    /// # Errors
    ///
    /// [`GroupError::Unavailable`] / [`GroupError::Etcd`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn force_unlock(&self, group: &GroupName, id: &HolderId) -> Result<bool, GroupError> {
        self.with_semaphore(group, |semaphore| async move {
            semaphore.force_release(id.as_str()).await
        })
        .await
    }

    /// The group's slots as stored in etcd ([`DEFAULT_SLOTS`] while none is).
    ///
    /// # Errors
    ///
    /// [`GroupError::Unavailable`] / [`GroupError::Etcd`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn slots(&self, group: &GroupName) -> Result<u32, GroupError> {
        self.with_semaphore(group, |semaphore| async move { semaphore.limit().await })
            .await
    }

    /// Stores the group's slots. Lowering them never evicts holders: no new slot is granted
    /// until enough have released. Writes only when the stored value differs; returns whether it
    /// wrote.
    ///
    /// # Errors
    ///
    /// [`GroupError::Etcd`] for 0 or more than [`coord_lock::MAX_LIMIT`] (nothing is written);
    /// [`GroupError::Unavailable`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the write happened or not.
    pub async fn set_slots(&self, group: &GroupName, slots: u32) -> Result<bool, GroupError> {
        self.with_semaphore(group, |semaphore| async move {
            let stored = self
                .client
                .get(semaphore.limit_key().to_owned(), None)
                .await?;
            let same = stored
                .kvs()
                .first()
                .is_some_and(|kv| kv.value() == slots.to_string().as_bytes());
            if same {
                return Ok(false);
            }
            semaphore.set_limit(slots).await?;
            Ok(true)
        })
        .await
    }

    /// The group's slots, holders and waiters.
    ///
    /// # Errors
    ///
    /// [`GroupError::Unavailable`] / [`GroupError::Etcd`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (reads).
    pub async fn status(&self, group: &GroupName) -> Result<GroupStatus, GroupError> {
        let (slots, queue) = self
            .with_semaphore(group, |semaphore| async move {
                Ok((semaphore.limit().await?, semaphore.queue().await?))
            })
            .await?;
        let mut holders = Vec::new();
        let mut waiting = Vec::new();
        for entry in queue {
            if !entry.held {
                waiting.push(entry.id);
                continue;
            }
            let expires_in = if entry.durable && entry.lease != 0 {
                let ttl = self
                    .client
                    .lease_time_to_live(LeaseId::new(entry.lease), false)
                    .await?;
                u64::try_from(ttl.ttl()).ok().map(Duration::from_secs)
            } else {
                None
            };
            holders.push(Holder {
                id: entry.id,
                token: entry.token.revision(),
                since: entry.since,
                durable: entry.durable,
                expires_in,
            });
        }
        Ok(GroupStatus {
            group: group.clone(),
            slots,
            holders,
            waiting,
        })
    }

    /// How many hold the group and how many may: the numbers `/metrics` reports.
    ///
    /// # Errors
    ///
    /// [`GroupError::Unavailable`] / [`GroupError::Etcd`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (reads).
    pub async fn holders_and_slots(&self, group: &GroupName) -> Result<(usize, u32), GroupError> {
        self.with_semaphore(group, |semaphore| async move {
            Ok((semaphore.holders().await?.len(), semaphore.limit().await?))
        })
        .await
    }

    /// The groups that exist in etcd (with stored slots or holders), by name.
    ///
    /// # Errors
    ///
    /// [`GroupError::Unavailable`] / [`GroupError::Etcd`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn list(&self) -> Result<Vec<GroupName>, GroupError> {
        let prefix = self.client.key(GROUP_PREFIX);
        let read = self
            .client
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let names: BTreeSet<GroupName> = read
            .kvs()
            .iter()
            .filter_map(|kv| kv.key().strip_prefix(prefix.as_bytes()))
            .filter_map(|rest| rest.split(|&b| b == b'/').next())
            .filter_map(|name| std::str::from_utf8(name).ok())
            .filter_map(|name| GroupName::new(name).ok())
            .collect();
        Ok(names.into_iter().collect())
    }

    /// Runs `operation` on the group's semaphore, on a live session; a session found lost is
    /// replaced and the operation tried once more.
    async fn with_semaphore<T, F, Fut>(
        &self,
        group: &GroupName,
        operation: F,
    ) -> Result<T, GroupError>
    where
        F: Fn(Semaphore) -> Fut,
        Fut: Future<Output = coord_lock::Result<T>>,
    {
        let mut retried = false;
        loop {
            let session = self.session().await?;
            let semaphore = Semaphore::new(
                &session,
                &group.semaphore_name(),
                Limit::Stored {
                    default: DEFAULT_SLOTS,
                },
            )
            .map_err(GroupError::from_lock)?;
            match operation(semaphore).await {
                Err(e) if e.is_session_lost() && !retried => {
                    retried = true;
                    self.forget_session(&session).await;
                }
                result => return result.map_err(GroupError::from_lock),
            }
        }
    }

    async fn session(&self) -> Result<Session, GroupError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref().filter(|s| s.is_alive()) {
            return Ok(session.clone());
        }
        let session = Session::new(self.client.clone(), SESSION_TTL).await?;
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn forget_session(&self, lost: &Session) {
        let mut slot = self.session.lock().await;
        if slot
            .as_ref()
            .is_some_and(|s| s.lease_id() == lost.lease_id())
        {
            *slot = None;
        }
    }

    /// Closes the session (revoking its lease) if one was opened.
    ///
    /// # Errors
    ///
    /// Transport errors of the revoke; the lease then expires on its own.
    pub async fn close(&self) -> Result<(), GroupError> {
        if let Some(session) = self.session.lock().await.take() {
            session.close().await?;
        }
        Ok(())
    }
}

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn serialize<S: serde::Serializer>(
        time: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        serializer.serialize_u64(ms)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn group_names_follow_the_fleetlock_pattern() {
        for good in [
            "default",
            "a",
            "workers.eu-1",
            "A9",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            assert!(GroupName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "a_b",
            "ü",
            "a\n",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(GroupName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn holder_ids_are_single_printable_segments() {
        for good in [
            "node-1",
            "d8f4e1f5c2b04c9d8a2e0c1b7f3a6e91",
            "host.example.com",
            "ü",
        ] {
            assert!(HolderId::new(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a\0b", "a\nb", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(HolderId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_semaphore_of_a_group_is_named_reboot_group() {
        assert_eq!(
            GroupName::new("workers").unwrap().semaphore_name(),
            "reboot/workers"
        );
    }
}
