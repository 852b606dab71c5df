//! # coord-chaos — a chaos harness with invariant checking
//!
//! One [`run`] starts a 3-member etcd cluster, `clients` client "processes" (each with its own
//! runtime thread, `Client`, one session shared by its primitives, and a
//! [`FaultProxy`](coord_testkit::FaultProxy) per member), and lets every client use the Mutex, a
//! Semaphore, an Election, service registration with discovery, and a config value at once, while
//! a seeded nemesis kills, pauses and restarts members, cuts, partitions, delays and freezes
//! clients, pauses holders past their TTL and compacts. Then it heals everything, waits (bounded) for every client to work again and for the
//! caches to converge, stops the clients, and checks:
//!
//! | invariant | how |
//! |---|---|
//! | mutual exclusion | each holder reads `counter` and writes `counter = read + 1` guarded only by `owns()`, logging the write in the same txn: the values applied are exactly 1…n in revision order, the final counter is n, and the tokens of applied writes never decrease (no interleaving) |
//! | semaphore | the revision spans of each permit's applied writes never overlap more than `limit` deep; every client acquires again after the nemesis |
//! | election | tokens (terms) of applied leader writes never decrease and each belongs to one client; every client leads again after the nemesis |
//! | pauses | a fenced write after a pause that outlived the holder's key is rejected |
//! | acknowledgements | every write a client was told succeeded is in etcd; no rejected one is |
//! | caches | every client's discovery, config and leader caches equal a final linearizable read, within the bound |
//! | cleanup | once the clients stopped, no lock, semaphore or election key is left (cancelled waiters, expired sessions); once they closed, no service key |
//!
//! The [`Report`] counts operations, faults, stale writes rejected, recovery times and
//! violations (which must be none). The `coord-chaos` binary runs it from the command line
//! (`--duration 10m` for a soak); `tests/chaos_short.rs` runs a short form in CI.
//! docs/reliability.md has the figures.
//!
//! | module | |
//! |---|---|
//! | [`lab`] | the cluster, the client nodes and their proxies, the observer |
//! | [`actors`] | the workload |
//! | [`nemesis`] | the faults |
//! | [`history`] | what happened, when |
//! | [`check`] | the invariants over etcd's final state and the history |
//! | [`report`] | the figures |
#![forbid(unsafe_code)]

pub mod actors;
pub mod check;
pub mod history;
pub mod lab;
pub mod nemesis;
mod options;
pub mod report;
pub mod rng;
mod run;

pub use options::{Options, parse_duration};
pub use report::Report;
pub use run::run;

/// Why a run could not be carried out (as opposed to violations, which are in the [`Report`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// etcd or a fault proxy could not be started.
    #[error("test cluster: {0}")]
    Testkit(#[from] coord_testkit::Error),
    /// A client could not be built or etcd could not be read.
    #[error(transparent)]
    Core(#[from] coord_core::Error),
    /// Something else needed to set up or check the run failed.
    #[error("{0}")]
    Setup(String),
}
