//! Service registration and discovery, readable and writable by etcd's Go `naming/endpoints`
//! (and so by grpc-go's etcd resolver).
//!
//! | piece | what it is for |
//! |---|---|
//! | [`Instance<T>`], [`Status`] | what a process announces: id, address, health status, zone/weight/version, and your typed metadata `T` |
//! | [`register`] → [`Registration<T>`] | the instance's key bound to a session's lease: status and metadata updates, automatic re-registration with the latest value after session loss, deregistration (also on drop) |
//! | [`Discovery<T>`] → [`ServiceSet<T>`] of [`Endpoint<T>`] | the live set of a service's instances as `watch` snapshots (filters by status and by predicate), its [`Changes`] as `Insert`/`Update`/`Remove`, exact across reconnects, etcd restarts and compaction; entries of Go's `naming/endpoints` included, unusable entries skipped and reported |
//! | [`ServiceError`] | what went wrong, typed: bad names, conflicting ids, etcd trouble |
//!
//! Layout (`docs/wire-format.md`, "Service registry"): key `namespace + service + "/" + id`,
//! value `{"Op":0,"Addr":"host:port","Metadata":{"coord":1,"status":"healthy",…,"payload":…}}`,
//! attached to the session's lease.
//!
//! ```no_run
//! # async fn demo() -> Result<(), coord_discovery::service::ServiceError> {
//! use coord_core::{ClientConfig, Session};
//! use coord_discovery::service::{Instance, Status, register};
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
//! struct Api { grpc: bool }
//!
//! let client = ClientConfig::new(["http://127.0.0.1:2379"]).with_namespace("myapp/").connect().await?;
//! let session = Session::new(client.clone(), Duration::from_secs(10)).await?;
//!
//! // Announce this process …
//! let registration = register(&session, "api", Instance::new("api-1", "10.0.0.1:8080", Api { grpc: true })).await?;
//!
//! // … and leave gracefully.
//! registration.set_status(Status::Draining).await?;
//! registration.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! Elsewhere, the live set of healthy instances:
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
//! use coord_discovery::service::{Change, Discovery, Status};
//!
//! #[derive(serde::Deserialize, Debug)]
//! struct Api { grpc: bool }
//!
//! let mut api = Discovery::<Api>::builder(&client, "api").statuses([Status::Healthy]).start()?;
//! let set = api.wait_ready().await?;
//! println!("{} healthy instances at revision {}", set.len(), set.revision);
//!
//! let mut changes = api.changes();
//! while let Ok(change) = changes.next().await {
//!     match change {
//!         Change::Insert(e) => println!("+ {} at {} ({:?})", e.id, e.addr, e.metadata),
//!         Change::Remove(e) => println!("- {}", e.id),
//!         other => println!("~ {}", other.id()),
//!     }
//! }
//! # Ok(()) }
//! ```

mod discovery;
mod error;
mod finite;
mod instance;
mod registration;
mod wire;

pub use discovery::{
    Change, Changes, Discovery, DiscoveryBuilder, Endpoint, MalformedEntry, ServiceSet,
};
pub use error::ServiceError;
pub use instance::{Instance, Status};
pub use registration::{
    Registration, RegistrationBuilder, RegistrationState, SessionFuture, register,
};
pub use wire::Origin;

/// The persistent ordered map of [`ServiceSet::endpoints`] (from the `imbl` crate): reads like a
/// `BTreeMap`, and a clone or a changed copy shares the unchanged parts.
///
/// ```
/// let mut map: coord_discovery::service::OrdMap<String, u32> = Default::default();
/// map.insert("a".to_owned(), 1);
/// let before = map.clone();
/// map.insert("b".to_owned(), 2);
/// assert_eq!((before.len(), map.len()), (1, 2));
/// ```
pub use imbl::OrdMap;
