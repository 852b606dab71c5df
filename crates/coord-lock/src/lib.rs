//! # coord-lock — distributed locks over etcd
//!
//! This crate will hold a `Mutex` wire-compatible with etcd's Go `concurrency.Mutex` (and so with
//! `etcdctl lock` and the server's Lock RPC) and a counting `Semaphore` with session-bound and durable
//! holders, each with fencing tokens. The key layout they use is described in `docs/wire-format.md`.
//!
//! Nothing is implemented yet; it stands on [`coord_core`] (sessions, fencing, errors), which is usable
//! today.
#![forbid(unsafe_code)]

pub use coord_core;
