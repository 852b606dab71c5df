//! Helpers for benchmarks against a testkit etcd, so that every number is a ratio to a baseline
//! measured in the same run: etcd's `/metrics` scraped and diffed per round ([`metrics`]),
//! interleaved rounds with medians and percentiles ([`rounds`]), the client's and the server's CPU
//! time ([`cpu`]), and Markdown result tables ([`report`]).
//!
//! coord's own benches (`cargo bench -p coord-lock --bench lock`, `cargo bench -p coord-leader
//! --bench election`) are built on it; the methods are described in BENCHMARKS.md.
//!
//! ```no_run
//! # async fn demo(etcd: &coord_testkit::Etcd) -> Result<(), coord_testkit::Error> {
//! use coord_testkit::bench::metrics::{Requests, Scrape};
//!
//! let before = Scrape::parse(&etcd.metrics().await?);
//! // … run one variant …
//! let after = Scrape::parse(&etcd.metrics().await?);
//! let requests = Requests::from_diff(&after.since(&before));
//! println!("{} requests", requests.total());
//! # Ok(()) }
//! ```

pub mod cpu;
pub mod metrics;
pub mod options;
pub mod report;
pub mod rounds;
