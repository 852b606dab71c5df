//! # coord-discovery — service registration, discovery and typed config over etcd
//!
//! | module | what it is for |
//! |---|---|
//! | [`config`] | typed config values: [`Config<T>`](config::Config) follows one key (default while absent, last good value kept when a new one is bad, changes in revision order) and updates it with compare-and-set; [`ConfigMap<T>`](config::ConfigMap) does the same for every key under a prefix |
//! | [`service`] | lease-bound service registration ([`register`](service::register) → [`Registration<T>`](service::Registration), re-registered with the latest metadata after session loss) and live discovery ([`Discovery<T>`](service::Discovery) → [`ServiceSet<T>`](service::ServiceSet) snapshots and [`Changes`](service::Changes)), in etcd's Go `naming/endpoints` format |
//! | [`balance`] | picking an instance: [`Balancer`](balance::Balancer) with round-robin, weighted random, power-of-two-choices on load and consistent hashing, plus a client-side down-instance policy ([`report_error`](balance::Balancer::report_error)) |
//! | [`integrations`] | a `tower::discover::Discover` of a service's instances (feature `tower`) and a tonic `Channel` that balances over them (feature `tonic`) |
//!
//! Everything stands on [`coord_core`] (client, watch engine, errors, retry policy).
//!
//! ```no_run
//! # async fn demo() -> Result<(), coord_discovery::config::ConfigError> {
//! let client = coord_core::ClientConfig::new(["http://127.0.0.1:2379"]).with_namespace("myapp/").connect().await?;
//! let mut workers = coord_discovery::config::Config::new(&client, "workers", 4u32)?;
//! println!("{} workers", workers.wait_ready().await?.value);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod balance;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod integrations;
pub mod service;

pub use coord_core;
