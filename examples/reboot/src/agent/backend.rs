//! Where an agent takes its slot: a FleetLock server (the node needs no etcd credentials) or
//! etcd directly (the same reboot groups the server uses).

use std::time::Duration;

use super::client::{ClientError, FleetLockClient};
use super::plan::SlotState;
use crate::groups::{GroupError, GroupName, HolderId, RebootGroups};

/// The slot backend.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per agent: the size does not matter
#[non_exhaustive]
pub enum Backend {
    /// Through a FleetLock server.
    FleetLock(FleetLockClient),
    /// Directly in etcd, with an optional holder TTL for the slots taken.
    Etcd {
        /// The groups.
        groups: RebootGroups,
        /// The TTL of a slot taken (as a server's `holder_ttl`).
        holder_ttl: Option<Duration>,
    },
}

/// A backend call's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// From the FleetLock server.
    #[error(transparent)]
    FleetLock(#[from] ClientError),
    /// From etcd.
    #[error(transparent)]
    Etcd(#[from] GroupError),
}

impl BackendError {
    /// Whether every slot is taken by others.
    pub fn is_full(&self) -> bool {
        match self {
            BackendError::FleetLock(e) => e.is_full(),
            BackendError::Etcd(e) => matches!(e, GroupError::Full { .. }),
        }
    }

    /// Whether trying again later may succeed (full, unavailable, timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::FleetLock(e) => e.is_transient(),
            BackendError::Etcd(e) => {
                matches!(e, GroupError::Full { .. } | GroupError::Unavailable(_))
            }
        }
    }
}

impl Backend {
    /// Whether `id` holds a slot of `group`: [`SlotState::Unknown`] through FleetLock, which
    /// cannot tell.
    ///
    /// # Errors
    ///
    /// etcd errors.
    pub async fn slot(&self, group: &GroupName, id: &HolderId) -> Result<SlotState, BackendError> {
        match self {
            Backend::FleetLock(_) => Ok(SlotState::Unknown),
            Backend::Etcd { groups, .. } => {
                let status = groups.status(group).await?;
                let held = status.holders.iter().any(|h| h.id == id.as_str());
                Ok(if held {
                    SlotState::Held
                } else {
                    SlotState::Free
                })
            }
        }
    }

    /// Takes a slot (recursive).
    ///
    /// # Errors
    ///
    /// [`BackendError::is_full`] when the group is full; others.
    pub async fn lock(&self, group: &GroupName, id: &HolderId) -> Result<(), BackendError> {
        match self {
            Backend::FleetLock(client) => Ok(client.pre_reboot(group, id).await?),
            Backend::Etcd { groups, holder_ttl } => {
                groups.lock(group, id, *holder_ttl).await?;
                Ok(())
            }
        }
    }

    /// Gives the slot back (succeeds when none is held).
    ///
    /// # Errors
    ///
    /// Backend errors.
    pub async fn unlock(&self, group: &GroupName, id: &HolderId) -> Result<(), BackendError> {
        match self {
            Backend::FleetLock(client) => Ok(client.steady_state(group, id).await?),
            Backend::Etcd { groups, .. } => Ok(groups.unlock(group, id).await?),
        }
    }

    /// Waits until something changes in `group` in etcd (a holder released) or `bound` passes;
    /// through FleetLock, where nothing can be watched, just `bound`.
    pub(crate) async fn wait_for_change(&self, group: &GroupName, bound: Duration) {
        match self {
            Backend::FleetLock(_) => tokio::time::sleep(bound).await,
            Backend::Etcd { groups, .. } => {
                let client = groups.client();
                let prefix = client.key(&format!("{}/", group.semaphore_name()));
                let mut watcher = coord_core::stream::Watcher::prefix(client, prefix);
                let changed = async {
                    // The first event is the current state; the second is a change.
                    let _ = watcher.next().await;
                    let _ = watcher.next().await;
                };
                let _ = tokio::time::timeout(bound, changed).await;
            }
        }
    }

    /// Closes what the backend holds open (the etcd session).
    pub(crate) async fn close(&self) {
        if let Backend::Etcd { groups, .. } = self {
            let _ = groups.close().await;
        }
    }
}
