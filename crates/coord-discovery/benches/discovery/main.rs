//! Benchmarks of coord-discovery's service registry (issue #6), each against a raw etcd-client
//! baseline measured in the same run on one etcd started by coord-testkit. Results and their
//! interpretation: `BENCHMARKS.md` at the workspace root, section "Discovery".
//!
//! ```text
//! cargo bench -p coord-discovery --bench discovery                 # every scenario
//! cargo bench -p coord-discovery --bench discovery -- build        # some scenarios
//! COORD_BENCH_SECS=3 COORD_BENCH_ROUNDS=6 cargo bench -p coord-discovery --bench discovery
//! ```
//!
//! Scenarios:
//! - `visible`: a registration seen by 100 `Discovery` watchers (own connection each; and all on
//!   one shared client), against a raw put with a lease seen by 100 raw prefix watches.
//! - `build`: a fresh `Discovery` of 10,000 instances until ready, against a raw prefix range
//!   read; and its memory (measured in child processes of this binary), against the stored bytes.
//! - `pick`: a `Balancer` pick with 10 and 10,000 instances, against taking the next instance
//!   from a `Vec`.
//!
//! `COORD_BENCH_SECS` (or `--secs=N`) sets the length of a `visible` round, `COORD_BENCH_ROUNDS`
//! (or `--rounds=N`) the rounds of every scenario.
// A bench binary: a failed set-up or request must stop the run loudly, never be papered over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod alloc;
mod build;
mod pick;
mod record;
mod visible;

use std::future::Future;
use std::time::Duration;

use coord_core::{Client, ClientConfig};
use coord_testkit::Etcd;
use coord_testkit::bench::metrics::{Scrape, Window};
use coord_testkit::bench::options::{Options, cpu_model};
use coord_testkit::bench::report::Report;
use coord_testkit::bench::rounds::Plan;
use serde::{Deserialize, Serialize};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

const SCENARIOS: [&str; 3] = ["visible", "build", "pick"];

/// How long to wait after a round before reading `/metrics`, so that background clean-ups are
/// counted in the round that caused them.
const SETTLE: Duration = Duration::from_millis(200);

/// The typed metadata every instance of the bench carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Meta {
    shard: u32,
    grpc: bool,
}

/// What every scenario works with: the server and the run's settings.
pub(crate) struct Bench {
    etcd: Etcd,
    secs: Option<f64>,
    rounds: Option<usize>,
}

impl Bench {
    /// The scenario's plan: its defaults, unless overridden.
    pub(crate) fn plan(&self, default_secs: f64, default_rounds: usize) -> Plan {
        Plan {
            round: Duration::from_secs_f64(self.secs.unwrap_or(default_secs)),
            rounds: self.rounds.unwrap_or(default_rounds),
        }
    }

    /// A coord client with its own connection, in `namespace`.
    pub(crate) async fn client(&self, namespace: &str) -> Client {
        ClientConfig::new(self.etcd.endpoints())
            .with_namespace(namespace)
            .connect()
            .await
            .expect("connect")
    }

    /// A raw etcd-client with its own connection (no namespace).
    pub(crate) async fn raw(&self) -> coord_core::etcd_client::Client {
        self.etcd.client().await.expect("connect raw")
    }

    async fn scrape(&self) -> Scrape {
        Scrape::parse(&self.etcd.metrics().await.expect("/metrics"))
    }

    /// Runs `round` and returns its outcome with the `/metrics` diff over it.
    pub(crate) async fn metered<T>(&self, round: impl Future<Output = T>) -> (T, Window) {
        let before = self.scrape().await;
        let outcome = round.await;
        tokio::time::sleep(SETTLE).await;
        let after = self.scrape().await;
        let diff = after.since(&before);
        (
            outcome,
            Window {
                diff,
                unsynced: Vec::new(),
            },
        )
    }
}

fn main() {
    if build::is_child() {
        build::child_main();
        return;
    }
    let options = match Options::parse(&SCENARIOS) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(options));
}

async fn run(options: Options) {
    let etcd = Etcd::builder()
        .arg("--metrics=extensive")
        .start()
        .await
        .expect("start etcd");
    let version = etcd.version().await.expect("etcd version");
    println!("# coord-discovery benchmarks");
    println!(
        "etcd {version} ({}), {} CPUs ({}), tokio multi-thread runtime (2 workers)",
        etcd.endpoint(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let bench = Bench {
        etcd,
        secs: options.secs,
        rounds: options.rounds,
    };
    let mut report = Report::per(
        "visible: one registration + one deregistration; build: one read or one Discovery start → ready",
    );
    for scenario in &options.scenarios {
        println!("\n{scenario}");
        match *scenario {
            "visible" => visible::run(&bench, &mut report).await,
            "build" => build::run(&bench, &mut report).await,
            "pick" => pick::run(&bench, &mut report).await,
            _ => unreachable!("scenario names are checked when parsing"),
        }
    }
    report.print();
    // Dropping `bench` kills etcd.
}

/// The process's resident set size in bytes (`/proc/self/statm`, field 2, in pages).
pub(crate) fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU seconds (user + system) used so far by process `pid` (`"self"` for this one), from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks of 1/100 s, Linux's `USER_HZ`).
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / 100.0
}

/// Milliseconds of a duration.
pub(crate) fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
