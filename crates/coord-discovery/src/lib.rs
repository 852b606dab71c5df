//! # coord-discovery — service registration, discovery and typed config over etcd
//!
//! This crate will hold lease-bound service registration compatible with etcd's Go `naming/endpoints`
//! format, a live discovery cache with pickers and tower/tonic adapters, and typed config watches.
//!
//! Nothing is implemented yet; it stands on [`coord_core`] (sessions, fencing, errors), which is usable
//! today.
#![forbid(unsafe_code)]

pub use coord_core;
