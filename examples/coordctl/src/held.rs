//! Something held in etcd on the command's session — a lock, a semaphore permit, a leadership —
//! and how a command keeps it: until a stop signal, or while a child command runs.

use coord_core::FencingToken;
use coord_leader::Leadership;
use coord_lock::{MutexGuard, Permit};

use crate::Error;
use crate::signals::{Signals, Stop};

/// What a command holds.
#[derive(Debug)]
pub(crate) enum Held {
    /// A `lock`.
    Lock(MutexGuard),
    /// A session-bound `sem acquire`.
    Permit(Permit),
    /// An `elect` campaign that won.
    Leadership(Leadership),
}

impl Held {
    pub(crate) fn key(&self) -> &str {
        match self {
            Held::Lock(guard) => guard.key(),
            Held::Permit(permit) => permit.key(),
            Held::Leadership(leadership) => leadership.key(),
        }
    }

    pub(crate) fn token(&self) -> FencingToken {
        match self {
            Held::Lock(guard) => guard.token(),
            Held::Permit(permit) => permit.token(),
            Held::Leadership(leadership) => leadership.token(),
        }
    }

    /// `lock KEY`, `permit KEY`, `leadership KEY`: for messages.
    pub(crate) fn describe(&self) -> String {
        let kind = match self {
            Held::Lock(_) => "lock",
            Held::Permit(_) => "permit",
            Held::Leadership(_) => "leadership",
        };
        format!("{kind} {}", self.key())
    }

    /// Resolves when it is lost: the session ended or the key was deleted. Cancel safe.
    pub(crate) async fn lost(&self) {
        match self {
            Held::Lock(guard) => guard.lost().await,
            Held::Permit(permit) => permit.lost().await,
            Held::Leadership(leadership) => leadership.lost().await,
        }
    }

    /// Unlocks, releases or resigns. A key that was already gone is [`Error::Lost`].
    pub(crate) async fn release(self) -> Result<(), Error> {
        let what = self.describe();
        let released: Result<(), Error> = match self {
            Held::Lock(guard) => guard.unlock().await.map_err(Error::from),
            Held::Permit(permit) => permit.release().await.map_err(Error::from),
            Held::Leadership(leadership) => leadership.resign().await.map_err(Error::from),
        };
        match released {
            Err(e) if e.exit_code() == crate::exit::LOST => Err(Error::Lost { what }),
            other => other,
        }
    }

    /// Holds until SIGINT or SIGTERM, then releases. Ends with [`Error::Lost`] if it is lost
    /// first.
    pub(crate) async fn hold_until_stopped(self, signals: &mut Signals) -> Result<Stop, Error> {
        let stop = tokio::select! {
            () = self.lost() => None,
            stop = signals.recv() => Some(stop),
        };
        match stop {
            Some(stop) => {
                tracing::debug!(?stop, held = %self.describe(), "stopping: releasing");
                self.release().await?;
                Ok(stop)
            }
            None => Err(Error::Lost {
                what: self.describe(),
            }),
        }
    }
}

/// Waits for `acquisition` (a lock, a permit, a campaign), giving up after `timeout` with
/// [`Error::NotAcquired`] and on a stop signal with [`Error::Interrupted`]. The acquisitions are
/// cancel safe: a dropped one removes its key (and the session's close revokes its lease anyway).
/// A "would block" answer of a try-once acquisition (`--timeout 0s`) is also `NotAcquired`.
pub(crate) async fn acquire<T>(
    what: &str,
    timeout: Option<std::time::Duration>,
    signals: &mut Signals,
    acquisition: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let bounded = async {
        match timeout {
            Some(after) if !after.is_zero() => tokio::time::timeout(after, acquisition)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::NotAcquired {
                        what: what.to_owned(),
                        after,
                    })
                }),
            _ => acquisition.await,
        }
    };
    let acquired = tokio::select! {
        acquired = bounded => acquired,
        stop = signals.recv() => Err(Error::Interrupted { signal: stop.number() }),
    };
    match acquired {
        Err(Error::Lock(coord_lock::Error::WouldBlock { .. })) => Err(Error::NotAcquired {
            what: what.to_owned(),
            after: std::time::Duration::ZERO,
        }),
        other => other,
    }
}
