//! # coord-leader — leader election over etcd
//!
//! This crate will hold an `Election` wire-compatible with etcd's Go `concurrency.Election` (and so with
//! `etcdctl elect` and the server's Campaign RPC), observers that also report "no leader", and a runner
//! that executes work only while this process is leader. The key layout is described in
//! `docs/wire-format.md`.
//!
//! Nothing is implemented yet; it stands on [`coord_core`] (sessions, fencing, errors), which is usable
//! today.
#![forbid(unsafe_code)]

pub use coord_core;
