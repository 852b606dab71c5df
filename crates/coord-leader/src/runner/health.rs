//! A runner's state and counters, for health checks and metrics.

use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use coord_core::FencingToken;
use tokio::sync::watch;

use crate::LeaderInfo;

/// What a [`Runner`](crate::Runner) is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Starting a session (before the first campaign, after a loss, after a failure).
    Starting,
    /// Campaigning: waiting to lead.
    Campaigning,
    /// Leading: the work runs.
    Leading {
        /// The term's number among the terms this runner won (1 for the first).
        term: u64,
        /// The term's fencing token.
        token: FencingToken,
    },
    /// Shutting down: the work was cancelled; waiting for it, then resigning.
    Stopping,
    /// [`Runner::run`](crate::Runner::run) has returned (or has not started).
    Stopped,
}

/// A snapshot of a runner's role and counters.
///
/// The counters only grow, so they map directly onto Prometheus-style counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunnerStatus {
    /// What the runner is doing.
    pub role: Role,
    /// Terms won (campaigns that ended in leadership).
    pub terms_won: u64,
    /// Terms that ended because the leadership was lost (session lost or key deleted).
    pub losses: u64,
    /// Terms that ended with a resign (shutdown, or the work returned by itself).
    pub resignations: u64,
    /// Failed attempts: a session that could not be started, a campaign that failed for another
    /// reason than the session's end. Each is retried after a backoff.
    pub failures: u64,
}

/// A cheap, cloneable view of a runner's state, for health endpoints and metrics; from
/// [`Runner::health`](crate::Runner::health).
///
/// ```no_run
/// # async fn demo(health: coord_leader::Health) {
/// let status = health.status();
/// println!(
///     "leader: {} (terms won {}, losses {}); current leader: {:?}",
///     health.is_leader(),
///     status.terms_won,
///     status.losses,
///     health.leader().map(|l| l.value_str().unwrap_or("?").to_owned()),
/// );
/// # }
/// ```
#[derive(Clone)]
pub struct Health {
    shared: Arc<Shared>,
}

struct Shared {
    status: watch::Sender<RunnerStatus>,
    /// The election's observer, once the runner had a session to start it with.
    leader: StdMutex<Option<watch::Receiver<Option<LeaderInfo>>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Health {
    pub(crate) fn new() -> Health {
        Health {
            shared: Arc::new(Shared {
                status: watch::Sender::new(RunnerStatus {
                    role: Role::Stopped,
                    terms_won: 0,
                    losses: 0,
                    resignations: 0,
                    failures: 0,
                }),
                leader: StdMutex::new(None),
            }),
        }
    }

    /// Whether this runner leads (its work runs). This is the runner's own belief: fence writes
    /// with [`Term::owns`](crate::Term::owns).
    pub fn is_leader(&self) -> bool {
        matches!(self.shared.status.borrow().role, Role::Leading { .. })
    }

    /// The election's current leader (this runner or another candidate), as its observer last
    /// reported it; `None` when nobody leads, or before the runner's first session.
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.shared
            .leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|observed| observed.borrow().clone())
    }

    /// Terms won so far.
    pub fn terms_won(&self) -> u64 {
        self.shared.status.borrow().terms_won
    }

    /// Terms lost so far (session lost or key deleted while leading).
    pub fn losses(&self) -> u64 {
        self.shared.status.borrow().losses
    }

    /// The role and every counter.
    pub fn status(&self) -> RunnerStatus {
        self.shared.status.borrow().clone()
    }

    /// Every change of [`status`](Self::status), as a [`watch`] channel.
    ///
    /// ```no_run
    /// # async fn demo(health: coord_leader::Health) {
    /// use coord_leader::Role;
    ///
    /// let mut status = health.subscribe();
    /// let _ = status.wait_for(|s| matches!(s.role, Role::Leading { .. })).await;
    /// println!("leading now");
    /// # }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<RunnerStatus> {
        self.shared.status.subscribe()
    }

    pub(crate) fn set_role(&self, role: Role) {
        self.shared.status.send_if_modified(|status| {
            let changed = status.role != role;
            status.role = role;
            changed
        });
    }

    /// A term was won: returns its number.
    pub(crate) fn won(&self, token: FencingToken) -> u64 {
        let mut term = 0;
        self.shared.status.send_modify(|status| {
            status.terms_won += 1;
            term = status.terms_won;
            status.role = Role::Leading { term, token };
        });
        term
    }

    pub(crate) fn lost(&self) {
        self.shared.status.send_modify(|status| {
            status.losses += 1;
            status.role = Role::Starting;
        });
    }

    pub(crate) fn resigned(&self, then: Role) {
        self.shared.status.send_modify(|status| {
            status.resignations += 1;
            status.role = then;
        });
    }

    pub(crate) fn failed(&self) {
        self.shared.status.send_modify(|status| {
            status.failures += 1;
            status.role = Role::Starting;
        });
    }

    pub(crate) fn has_observer(&self) -> bool {
        self.shared
            .leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub(crate) fn set_observer(&self, observed: Option<watch::Receiver<Option<LeaderInfo>>>) {
        *self
            .shared
            .leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = observed;
    }
}
