//! # coord-reboot — a FleetLock reboot coordinator over etcd
//!
//! Keeps at most N machines of a group rebooting at once, for Fedora CoreOS / Flatcar's Zincati
//! (FleetLock protocol) or any client that speaks it, with the state in etcd:
//!
//! | piece | what it is |
//! |---|---|
//! | [`Config`] | the TOML file: listen address, limits, etcd (endpoints, namespace, auth, TLS), groups with slots and an optional holder TTL |
//! | [`RebootGroups`] | the etcd side, shared by server and CLI: a group is a `coord_lock::Semaphore` named `reboot/<group>` with durable holders (the FleetLock ids) and its slots stored in etcd |
//! | [`Server`] | the FleetLock HTTP server as an axum `Router` (plus `/metrics`, `/healthz`, `/readyz`); stateless, so replicas can share one etcd |
//! | [`fleetlock`] | the protocol: request parsing, the fixed set of error kinds and their status codes |
//! | [`metrics`] | the Prometheus metrics |
//! | [`agent`] | the node agent (locksmith's role for hosts without Zincati): reboot signal, windows, a slot through FleetLock or etcd, hooks, release after boot once healthy |
//!
//! The `coord-reboot` binary serves (`serve --config FILE`), runs the node agent
//! (`agent --config FILE`), runs the demo (`demo`) and gives operators `status`, `set-max`,
//! `lock` and `unlock`. The HTTP contract, the agent and the demo are written down in
//! `docs/reboot-coordinator.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use coord_reboot::{Config, Server};
//!
//! let config = Config::from_toml(r#"
//!     [etcd]
//!     endpoints = ["http://127.0.0.1:2379"]
//!     [groups.workers]
//!     slots = 2
//!     holder_ttl = "2h"
//! "#)?;
//! let server = Server::start(&config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! tokio::spawn(server.serve(listener, std::future::pending()));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod agent;
mod config;
pub mod fleetlock;
mod groups;
pub mod metrics;
mod server;

pub use config::{Config, ConfigError, EtcdSettings, GroupSettings, ServerSettings, TlsSettings};
pub use groups::{
    DEFAULT_SLOTS, GROUP_PREFIX, GroupError, GroupName, GroupStatus, Holder, HolderId,
    InvalidGroupName, InvalidHolderId, MAX_NAME_LEN, RebootGroups, Slot,
};
pub use server::{Server, ServerError};
