//! Real etcd servers for tests, with fault injection.
//!
//! `coord-testkit` starts actual etcd processes (the etcd 3.7 binary vendored by
//! `etcd-bin-vendored`, or one you name) on free loopback ports in temporary
//! directories, waits until they are healthy, and cleans up after them. No mocks:
//! your code talks gRPC to a real server.
//!
//! # One shared server per test binary: [`shared`]
//!
//! Most tests only need *a* server. [`shared()`] starts one on first use and hands
//! the same one to every test of the binary; each test keeps to its own key prefix
//! from [`unique_namespace`].
//!
//! ```no_run
//! #[tokio::test]
//! async fn a_put_is_visible_to_a_get() {
//!     let etcd = coord_testkit::shared().await.unwrap();
//!     let ns = coord_testkit::unique_namespace("a_put_is_visible_to_a_get");
//!     let mut client = etcd.client().await.unwrap();
//!     client.put(format!("{ns}key"), "value", None).await.unwrap();
//!     let reply = client.get(format!("{ns}key"), None).await.unwrap();
//!     assert_eq!(reply.kvs()[0].value(), b"value");
//! }
//! ```
//!
//! # An own server: [`Etcd`]
//!
//! Start an own server for anything server-wide: killing and restarting it,
//! compaction, TLS, authentication, extra etcd flags ([`EtcdBuilder`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut etcd = coord_testkit::Etcd::start().await?;
//! let mut client = etcd.client().await?;
//! client.put("k", "v", None).await?;
//! etcd.kill(); // SIGKILL, like a crash
//! etcd.restart().await?; // same ports, same data
//! assert_eq!(client.get("k", None).await?.kvs()[0].value(), b"v");
//! # Ok(()) }
//! ```
//!
//! With TLS ([`TestCerts`] are generated for you; [`Etcd::client`] trusts them):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let etcd = coord_testkit::Etcd::builder().tls(true).client_cert_auth(true).start().await?;
//! let mut client = etcd.client().await?; // presents the CN=root client certificate
//! client.put("k", "v", None).await?;
//! # Ok(()) }
//! ```
//!
//! # A cluster: [`EtcdCluster`]
//!
//! For failover: kill the leader, watch the others elect a new one, bring it back.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cluster = coord_testkit::EtcdCluster::start(3).await?;
//! let leader = cluster.leader().await?;
//! cluster.kill(leader)?;
//! assert_ne!(cluster.leader().await?, leader);
//! cluster.restart(leader).await?;
//! # Ok(()) }
//! ```
//!
//! # Network faults: [`FaultProxy`]
//!
//! A TCP proxy between client and server that can partition ([`FaultProxy::blackhole`]),
//! slow down ([`FaultProxy::delay`]) or reset ([`FaultProxy::cut`]) the connection.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let etcd = coord_testkit::Etcd::start().await?;
//! let proxy = coord_testkit::FaultProxy::start(etcd.client_addr()).await?;
//! let mut client = etcd_client::Client::connect([proxy.endpoint()], None).await?;
//! client.put("k", "v", None).await?;
//! proxy.cut(); // every connection through the proxy is reset
//! # Ok(()) }
//! ```
//!
//! # Which etcd
//!
//! [`etcd_binary`] picks `$COORD_ETCD_BIN` (a path or a name on `PATH`, e.g.
//! `COORD_ETCD_BIN=etcd` for the system etcd) and falls back to the vendored etcd.
//! [`etcdctl_binary`] finds an etcdctl for interop tests, if there is one.
//!
//! # Cleanup guarantees
//!
//! - Dropping an [`Etcd`] or [`EtcdCluster`] SIGKILLs and reaps its processes and
//!   removes its directory.
//! - On Linux every etcd is started with `PR_SET_PDEATHSIG = SIGKILL` from a
//!   dedicated long-lived thread, so it dies with the test process however that ends
//!   (panic, abort, SIGKILL), including the never-dropped [`shared`] server. Other
//!   platforms get no such guarantee.
//! - Directories are named `$TMPDIR/coord-testkit-<pid>-*`; the first start in a
//!   process removes those of processes that no longer run.
//!
//! # Runtimes
//!
//! Every async function works under current-thread and multi-thread tokio runtimes
//! and never blocks the runtime for long. Servers and proxies hold nothing tied to the
//! runtime that created them.

mod auth;
pub mod bench;
mod binary;
mod certs;
mod cluster;
mod error;
mod health;
mod member;
mod namespace;
mod ports;
mod process;
mod proxy;
mod server;
mod shared;
mod tempdir;
mod wait;

pub use auth::{User, enable_auth};
pub use binary::{ETCD_BIN_ENV, ETCDCTL_BIN_ENV, etcd_binary, etcdctl_binary};
pub use certs::{CertFiles, TestCerts};
pub use cluster::{EtcdCluster, EtcdClusterBuilder};
pub use error::Error;
pub use namespace::unique_namespace;
pub use proxy::FaultProxy;
pub use server::{Etcd, EtcdBuilder};
pub use shared::shared;
pub use wait::wait_for_key_count;
