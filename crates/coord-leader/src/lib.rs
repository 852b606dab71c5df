//! # coord-leader — leader election over etcd
//!
//! | item | what it is for |
//! |---|---|
//! | [`Election`] → [`Leadership`] | campaign, lead, proclaim, resign; wire-compatible with etcd's Go `concurrency.Election` (so with `etcdctl elect` and the server's Campaign RPC) |
//! | [`leader`] | who leads now (one read) |
//! | [`observe`] → `watch::Receiver<Option<LeaderInfo>>` | follow every leader change, including "no leader"; one etcd watch per process and election |
//! | [`Runner`] → [`Term`], [`Health`] | embedded leader election: run work only while leading, cancel it on loss, re-campaign with a fresh session, resign on shutdown so a standby takes over at once |
//!
//! The key layout and the differences from Go are in `docs/design/election.md`, together with the
//! timing model: how long a crashed leader blocks failover and how fast a graceful hand-off is.
//!
//! ## Campaign, lead, resign
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use coord_core::{ClientConfig, Session};
//! use coord_leader::Election;
//! use std::time::Duration;
//!
//! let client = ClientConfig::new(["http://127.0.0.1:2379"]).connect().await?;
//! let session = Session::new(client.clone(), Duration::from_secs(10)).await?;
//! let election = Election::new(&session, "scheduler")?;
//!
//! let leadership = election.campaign("node-1").await?; // waits until this candidate leads
//! leadership.proclaim("node-1 (busy)").await?;         // observers see the new value
//! leadership.resign().await?;                           // the next candidate leads at once
//! # Ok(()) }
//! ```
//!
//! ## Safety: fence the leader's writes
//!
//! Leadership is a lease. A leader that pauses (GC, swap, a stopped VM) can wake up after its
//! session expired and a standby took over; [`Leadership::lost`] and the session's state are only
//! early warnings. The guarantee is to make each write that only the leader may do conditional on
//! [`Leadership::owns`], in the same etcd transaction:
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client, leadership: coord_leader::Leadership) -> coord_leader::Result<()> {
//! use coord_core::etcd_client::{Txn, TxnOp};
//!
//! let write = Txn::new().when([leadership.owns()]).and_then([TxnOp::put("jobs/plan", "…", None)]);
//! if !client.txn(write).await?.succeeded() {
//!     eprintln!("no longer leader; nothing was written");
//! }
//! # Ok(()) }
//! ```
//!
//! The fencing token ([`Leadership::token`], the key's create revision) grows with every term, so
//! systems outside etcd can reject writes from older leaders too.
//!
//! ## Who leads
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_leader::Result<()> {
//! if let Some(info) = coord_leader::leader(&client, "scheduler").await? {
//!     println!("{} leads with token {}", info.value_str().unwrap_or("?"), info.token);
//! }
//! # Ok(()) }
//! ```
//!
//! ## Observe
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> coord_leader::Result<()> {
//! let mut leader = coord_leader::observe(&client, "scheduler").await?;
//! // Wait until someone leads.
//! let info = leader.wait_for(|l| l.is_some()).await.ok().and_then(|l| l.clone());
//! println!("leader: {:?}", info.map(|l| l.key));
//! # Ok(()) }
//! ```
//!
//! ## Run work while leading
//!
//! [`Runner`] is the "embedded leader election" loop: it campaigns, calls your closure with a
//! [`Term`] once elected, cancels the term when the leadership is lost (before the server can
//! expire the lease), campaigns again with a fresh session, and on shutdown waits for the work
//! (bounded) and resigns. [`Health`] exposes `is_leader`, the observed leader and counters.
//!
//! ```no_run
//! # async fn sigterm() {}
//! # async fn demo(client: coord_core::Client) -> coord_leader::Result<()> {
//! use coord_core::Session;
//! use coord_leader::{CancellationToken, Runner, Term};
//! use std::time::Duration;
//!
//! let runner = Runner::builder(Session::builder(client).ttl(Duration::from_secs(10)), "scheduler", "node-1")
//!     .shutdown_grace(Duration::from_secs(5))
//!     .build()?;
//! let health = runner.health();
//! let shutdown = CancellationToken::new();
//! tokio::spawn({
//!     let shutdown = shutdown.clone();
//!     async move {
//!         sigterm().await; // e.g. tokio::signal::ctrl_c()
//!         shutdown.cancel(); // the runner resigns; a standby leads at once
//!     }
//! });
//! runner
//!     .run(shutdown, |term: Term| async move {
//!         println!("leading, term {} (token {})", term.number(), term.token());
//!         term.cancelled().await; // real work: fenced writes with `term.owns()`
//!     })
//!     .await?;
//! println!("terms won: {}, lost: {}", health.terms_won(), health.losses());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod election;
mod error;
mod leader;
mod leadership;
mod observe;
mod runner;

pub use coord_core;
pub use election::{Election, MAX_REQUEST_BYTES};
pub use error::{Error, Result};
pub use leader::{LeaderInfo, leader};
pub use leadership::Leadership;
pub use observe::observe;
pub use runner::{Health, Role, Runner, RunnerBuilder, RunnerStatus, SessionFactory, Term};
/// Re-exported for [`Runner::run`]'s shutdown signal.
pub use tokio_util::sync::CancellationToken;
