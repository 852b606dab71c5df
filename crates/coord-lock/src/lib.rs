//! # coord-lock — distributed locks over etcd
//!
//! - [`Mutex`]: mutual exclusion, wire-compatible with etcd's Go `concurrency.Mutex` (and so with
//!   `etcdctl lock` and the etcd server's Lock RPC): FIFO, one watch per waiter on its predecessor,
//!   fencing tokens, cancel-safe waits, waits that abort when their own session is lost.
//!
//! - [`Semaphore`]: at most `limit` holders, FIFO, with session-bound [`Permit`]s and durable
//!   holders by id ([`Semaphore::acquire_as`]) for slots that outlive a process (reboot slots);
//!   the limit is fixed by the caller or stored in etcd and changeable at run time. A release
//!   hands its permit straight to the waiter it makes eligible, whatever the queue length, and
//!   releases at once hand off in parallel (docs/design/semaphore.md).
//!
//! ## Safety: fence your writes
//!
//! A lock in a distributed system is a lease: a process that pauses (GC, swap, a stopped VM) can
//! wake up after its session expired and another process took the lock. The guard's
//! [`lost`](MutexGuard::lost) future and the session's state are early warnings; the guarantee is
//! to make writes conditional on ownership in the same etcd transaction, with
//! [`MutexGuard::owns`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use coord_core::{ClientConfig, Session};
//! use coord_core::etcd_client::{Txn, TxnOp};
//! use coord_lock::Mutex;
//! use std::time::Duration;
//!
//! let client = ClientConfig::new(["http://127.0.0.1:2379"]).connect().await?;
//! let session = Session::new(client.clone(), Duration::from_secs(10)).await?;
//! let guard = Mutex::new(&session, "reports")?.lock().await?;
//!
//! let write = Txn::new().when([guard.owns()]).and_then([TxnOp::put("reports/latest", "…", None)]);
//! if !client.txn(write).await?.succeeded() {
//!     eprintln!("lost the lock before writing; nothing was written");
//! }
//! guard.unlock().await?;
//! # Ok(()) }
//! ```
//!
//! The key layout is described in `docs/wire-format.md`.
#![forbid(unsafe_code)]

mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handoff;
mod held;
mod mutex;
mod semaphore;

pub use coord_core;
pub use error::{Error, Result};
pub use mutex::{Holder, Mutex, MutexGuard};
pub use semaphore::{
    Durability, DurableSlot, HolderInfo, Limit, MAX_LIMIT, MAX_TAKEN_BY, Permit, Semaphore,
    SemaphoreAdmin,
};

/// A holder's key vanished: an expired session (the lease is gone on the server, even if the
/// keep-alive task has not noticed yet) is `SessionLost`; otherwise an operator removed it.
async fn gone_or_removed(
    session: &coord_core::Session,
    ownership: &coord_core::Ownership,
) -> Error {
    if coord_core::queue::lease_gone(session).await {
        coord_core::queue::session_end_error(session).into()
    } else {
        Error::NotHeld {
            key: ownership.key_str().unwrap_or_default().to_owned(),
        }
    }
}
