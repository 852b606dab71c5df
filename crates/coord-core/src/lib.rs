//! # coord-core — the foundation of coord's coordination primitives over etcd v3
//!
//! coord gives Rust services what Go gets from etcd's `concurrency` package: locks, semaphores,
//! elections, service discovery — correct under lease loss, compaction and etcd restarts. This
//! crate holds what every primitive stands on:
//!
//! | piece | what it is for |
//! |---|---|
//! | [`ClientConfig`] → [`Client`] | endpoints, key namespace, user/password, TLS, connect and per-request timeouts, keep-alives |
//! | [`Session`] | one lease per process, kept alive, with a loss signal that fires *before* the server can expire the lease |
//! | [`Ownership`], [`FencingToken`] | proving ownership inside your own writes: `Txn::new().when([guard.compare()])` |
//! | [`keys`] | name validation and the key layout shared with Go's recipes |
//! | [`queue`] | the create-revision-ordered key queue under every lock, semaphore and election |
//! | [`watch`] | waits that survive disconnects and compaction |
//! | [`stream`] | the watch engine: every change of a key or prefix, exactly once, with a resync after compaction |
//! | [`cache`] | a prefix decoded from JSON as a consistent `(revision, map)` snapshot, one etcd watch per process |
//! | [`Error`], [`RetryPolicy`] | typed errors that say whether retrying helps; backoff built on `backon` |
//!
//! The primitives live in `coord-lock` (Mutex, Semaphore), `coord-leader` (Election) and
//! `coord-discovery`; `coord-testkit` starts real etcd servers for tests.
//!
//! ## A session
//!
//! ```no_run
//! # async fn demo() -> coord_core::Result<()> {
//! use coord_core::{ClientConfig, Session, SessionState};
//! use std::time::Duration;
//!
//! let client = ClientConfig::new(["http://127.0.0.1:2379"]).with_namespace("myapp/").connect().await?;
//! let session = Session::builder(client.clone()).ttl(Duration::from_secs(10)).start().await?;
//!
//! // Keys put with the session's lease vanish when the session ends.
//! let key = client.key("members/worker-1");
//! client.put(key, "up", Some(etcd_client::PutOptions::new().with_lease(session.lease_id().get()))).await?;
//!
//! // React to loss: the state is a watch channel; a cancellation token fires with it.
//! let mut state = session.subscribe();
//! tokio::spawn(async move {
//!     if state.wait_for(|s| !s.is_alive()).await.is_ok() {
//!         eprintln!("session ended");
//!     }
//! });
//!
//! session.close().await?; // revokes: the member key is gone now
//! # Ok(()) }
//! ```
//!
//! ## Guarded writes
//!
//! The loss signal is an early warning; the guarantee is a compare in the write itself. Every
//! acquired thing in coord hands out an [`Ownership`]:
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client, ownership: coord_core::Ownership) -> coord_core::Result<()> {
//! use etcd_client::{Txn, TxnOp};
//!
//! let resp = client
//!     .txn(Txn::new().when([ownership.compare()]).and_then([TxnOp::put("counter", "42", None)]))
//!     .await?;
//! assert!(resp.succeeded(), "we no longer own the lock; nothing was written");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod cache;
mod client;
mod config;
mod error;
mod fencing;
#[doc(hidden)]
pub mod fuzzing;
mod hub;
pub mod keys;
pub mod queue;
mod retry;
pub mod session;
pub mod stream;
mod transport;
pub mod watch;

pub use client::{Client, ServerInfo};
pub use config::{ClientConfig, TlsConfig};
pub use error::{Error, EtcdError, Result};
pub use fencing::{FencingToken, Ownership};
pub use keys::{LeaseId, NameError};
pub use retry::RetryPolicy;
pub use session::{LossReason, Session, SessionBuilder, SessionState};

/// The etcd-client version coord builds on, re-exported so users can build transactions with the
/// exact types coord accepts.
pub use etcd_client;
