//! Typed config values stored in etcd and watched: always the latest *good* value, and writes
//! that never lose a concurrent update.
//!
//! | piece | what it is for |
//! |---|---|
//! | [`Config<T>`] | one key: the value in use as a [`Snapshot`] in a `watch` channel (default while absent, last good value kept when a new one fails to decode or validate), and compare-and-set writes ([`Config::update`]) |
//! | [`ConfigMap<T>`] | every key under a prefix as a map of such values, the same rules entry by entry, with per-entry defaults and compare-and-set |
//! | [`Format`] | JSON by default; TOML and YAML behind the `toml` and `yaml` features |
//! | [`ConfigError`] | what went wrong, including why a stored value is not in use |
//!
//! Layout: design.md §3, "Config": the value is stored at `namespace + name`, written with
//! compare-and-set on its `mod_revision`. Any tool can write it (`etcdctl put`); a value that
//! does not decode or validate is reported, never used.
//!
//! ```no_run
//! # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::config::ConfigError> {
//! use coord_discovery::config::{Config, Source};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug)]
//! struct Limits { max_jobs: u32 }
//!
//! let mut limits = Config::builder(&client, "limits", Limits { max_jobs: 8 })
//!     .validate(|l: &Limits| if l.max_jobs == 0 { Err("max_jobs must be positive") } else { Ok(()) })
//!     .start()?;
//! {
//!     let snapshot = limits.wait_ready().await?;
//!     if snapshot.source == Source::Default { println!("no limits stored yet"); }
//! }
//!
//! // Another process raises the limit; no increment is lost to concurrent writers.
//! limits.update(|old| Limits { max_jobs: old.max_jobs * 2 }).await?;
//!
//! loop {
//!     limits.changed().await?;
//!     let snapshot = limits.borrow_and_update();
//!     if let Some(error) = &snapshot.last_error {
//!         eprintln!("ignoring the stored limits: {error}");
//!     }
//!     println!("max_jobs = {} (revision {})", snapshot.value.max_jobs, snapshot.revision);
//! }
//! # }
//! ```

mod codec;
mod error;
mod format;
mod map;
mod value;
mod write;

pub use error::{BoxError, ConfigError};
pub use format::Format;
pub use map::{ConfigMap, ConfigMapBuilder, MapEntry, MapSnapshot};
pub use value::{Config, ConfigBuilder, Snapshot, Source};
pub use write::Written;
