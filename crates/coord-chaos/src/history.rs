//! The history of a run: every client operation and every fault, time-stamped from the start of
//! the run, appended by the actors and the nemesis and read by the checkers and the report.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

/// What a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `Mutex::lock` (or `lock_timeout`).
    MutexLock,
    /// A fenced counter increment under the mutex.
    MutexIncrement,
    /// `MutexGuard::unlock`.
    MutexUnlock,
    /// `Semaphore::acquire` (or `acquire_timeout`).
    SemaphoreAcquire,
    /// A fenced write while holding a permit.
    SemaphoreWrite,
    /// `Permit::release`.
    SemaphoreRelease,
    /// `Election::campaign`.
    Campaign,
    /// A fenced write while leading.
    LeaderWrite,
    /// `Leadership::resign`.
    Resign,
    /// `Registration::update` of the instance's metadata.
    RegistrationUpdate,
    /// `Config::update` (compare-and-set increment).
    ConfigUpdate,
    /// A fenced write attempted after a simulated GC pause that outlasted the session: it must
    /// be rejected ([`Outcome::Rejected`]); accepted is a violation.
    StaleWrite,
    /// A simulated pause after which the holder's key still existed (etcd extends leases across
    /// its own leader changes), so the write after it was legitimately accepted.
    PauseLeaseSurvived,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded (a fenced write: applied).
    Ok,
    /// A fenced write whose compare failed: nothing written.
    Rejected,
    /// An error (transport, timeout, session lost…): for a write, the outcome is unknown.
    Failed,
    /// Given up on purpose (a bounded wait that expired, or a wait dropped).
    Cancelled,
}

/// One operation of one client.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    /// When it ended, since the start of the run.
    pub at: Duration,
    /// The client.
    pub client: usize,
    /// What it was.
    pub kind: OpKind,
    /// How it ended.
    pub outcome: Outcome,
    /// For fenced writes: the log key written (the checkers find it in etcd).
    pub key: Option<String>,
    /// For failures: the error.
    pub error: Option<String>,
}

/// A fault the nemesis injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A member SIGKILLed, restarted later with its data.
    KillMember,
    /// The raft leader SIGKILLed, restarted later with its data.
    KillLeader,
    /// A member SIGSTOPped (a stalled VM, a long GC pause: its connections stay open and nothing
    /// answers), SIGCONTed later.
    PauseMember,
    /// The raft leader SIGSTOPped, SIGCONTed later (by then a follower).
    PauseLeader,
    /// Every connection of one client reset.
    CutClient,
    /// One client partitioned from every member for a while.
    BlackholeClient,
    /// One client's traffic delayed for a while.
    DelayClient,
    /// One client process frozen (every task of it stops, as under `SIGSTOP`; its connections
    /// stay open), for up to twice the TTL.
    FreezeClient,
    /// One client "GC-paused" while holding: partitioned until its lease expired, then it
    /// resumes and attempts its fenced write.
    PauseClient,
    /// The key-value history compacted at the current revision.
    Compact,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// What it was.
    pub kind: FaultKind,
    /// When it started, since the start of the run.
    pub at: Duration,
    /// When it was healed (a member running and healthy again, a proxy forwarding again);
    /// the reset itself for a cut; `None` for a compaction.
    pub healed: Option<Duration>,
    /// The affected client, if one.
    pub client: Option<usize>,
    /// The affected member, if one.
    pub member: Option<usize>,
}

#[derive(Debug, Default)]
struct Entries {
    ops: Vec<Op>,
    faults: Vec<Fault>,
}

/// The shared, append-only history. Cheap to clone.
#[derive(Debug, Clone)]
pub struct History {
    start: Instant,
    entries: Arc<Mutex<Entries>>,
    appended: Arc<watch::Sender<u64>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            entries: Arc::default(),
            appended: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Time since the start of the run.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an operation.
    pub fn op(&self, client: usize, kind: OpKind, outcome: Outcome, key: Option<String>) {
        self.push(Op {
            at: self.now(),
            client,
            kind,
            outcome,
            key,
            error: None,
        });
    }

    /// Records a failed operation with its error.
    pub fn failed(
        &self,
        client: usize,
        kind: OpKind,
        key: Option<String>,
        error: &dyn std::fmt::Display,
    ) {
        self.push(Op {
            at: self.now(),
            client,
            kind,
            outcome: Outcome::Failed,
            key,
            error: Some(error.to_string()),
        });
    }

    fn push(&self, op: Op) {
        tracing::trace!(?op, "op");
        self.entries().ops.push(op);
        self.appended.send_modify(|n| *n += 1);
    }

    /// Records a fault that starts now; returns its index for [`healed`](Self::healed).
    pub fn fault(&self, kind: FaultKind, client: Option<usize>, member: Option<usize>) -> usize {
        tracing::info!(?kind, ?client, ?member, at = ?self.now(), "fault");
        let mut entries = self.entries();
        entries.faults.push(Fault {
            kind,
            at: self.now(),
            healed: None,
            client,
            member,
        });
        entries.faults.len() - 1
    }

    /// Marks fault `index` healed now.
    pub fn healed(&self, index: usize) {
        let now = self.now();
        if let Some(fault) = self.entries().faults.get_mut(index) {
            fault.healed = Some(now);
        }
    }

    /// A copy of every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        self.entries().ops.clone()
    }

    /// A copy of every fault so far.
    pub fn faults(&self) -> Vec<Fault> {
        self.entries().faults.clone()
    }

    /// Waits until `done` holds for the operations, re-checking after every append.
    pub async fn wait_until(&self, mut done: impl FnMut(&[Op]) -> bool) {
        let mut appended = self.appended.subscribe();
        loop {
            if done(&self.entries().ops) {
                return;
            }
            if appended.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Default for History {
    fn default() -> History {
        History::new()
    }
}
