//! Benchmarks of coord-lock's Mutex and Semaphore, each against baselines measured in the same run
//! on one etcd started by coord-testkit. Results and their interpretation: `BENCHMARKS.md` at the
//! workspace root.
//!
//! ```text
//! cargo bench -p coord-lock --bench lock                       # every scenario
//! cargo bench -p coord-lock --bench lock -- mutex-contended    # some scenarios
//! COORD_BENCH_SECS=5 COORD_BENCH_ROUNDS=6 cargo bench -p coord-lock --bench lock
//! ```
//!
//! Scenarios: `mutex-uncontended`, `mutex-contended`, `semaphore`, `semaphore-format` (a
//! projection for a format decision, see its module). `COORD_BENCH_SECS` (or
//! `--secs=N`) sets the length of every round, `COORD_BENCH_ROUNDS` (or `--rounds=N`) the rounds per
//! variant; each scenario has its own defaults, chosen so that the whole run takes about four
//! minutes.
// A bench binary: a failed set-up or request must stop the run loudly, never be papered over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cas_semaphore;
mod contended;
mod format;
mod semaphore;
mod uncontended;

use std::future::Future;
use std::time::Duration;

use coord_core::{Client, ClientConfig};
use coord_testkit::Etcd;

use coord_testkit::bench::metrics::{Scrape, Window};
use coord_testkit::bench::options::{Options, cpu_model};
use coord_testkit::bench::report::Report;
use coord_testkit::bench::rounds::Plan;

const SCENARIOS: [&str; 4] = [
    "mutex-uncontended",
    "mutex-contended",
    "semaphore",
    "semaphore-format",
];

/// How long to wait after a round before reading `/metrics`, so that background clean-ups of
/// cancelled waiters are counted in the round that caused them.
const SETTLE: Duration = Duration::from_millis(200);

/// How often the unsynced-watcher gauge is sampled during contended rounds.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What every scenario works with: the server and the run's settings.
pub(crate) struct Bench {
    etcd: Etcd,
    secs: Option<f64>,
    rounds: Option<usize>,
}

impl Bench {
    /// The scenario's plan: its defaults, unless overridden.
    pub(crate) fn plan(&self, default_secs: f64, default_rounds: usize) -> Plan {
        let plan = Plan {
            round: Duration::from_secs_f64(self.secs.unwrap_or(default_secs)),
            rounds: self.rounds.unwrap_or(default_rounds),
        };
        println!(
            "  {} rounds of {:.1} s per variant, interleaved",
            plan.rounds,
            plan.round.as_secs_f64()
        );
        plan
    }

    /// The etcd server's process id, for its CPU time.
    pub(crate) fn etcd_pid(&self) -> Option<u32> {
        self.etcd.pid()
    }

    /// A plain etcd-client with its own connection on etcd-client's own channel (tonic's), with
    /// etcd-client's defaults: what an application without coord would use.
    pub(crate) async fn etcd_client(&self) -> coord_core::etcd_client::Client {
        coord_core::etcd_client::Client::connect(self.etcd.endpoints(), None)
            .await
            .expect("connect etcd-client")
    }

    /// A client with its own connection (on coord's transport), in `namespace`.
    pub(crate) async fn client(&self, namespace: &str) -> Client {
        ClientConfig::new(self.etcd.endpoints())
            .with_namespace(namespace)
            .connect()
            .await
            .expect("connect")
    }

    async fn scrape(&self) -> Scrape {
        Scrape::parse(&self.etcd.metrics().await.expect("/metrics"))
    }

    /// Runs `round` and returns its outcome with the `/metrics` diff over it; with `sample`, also
    /// samples the unsynced-watcher gauge during the round (scraping costs etcd a little CPU, so
    /// the latency scenario does without).
    pub(crate) async fn metered<T>(
        &self,
        round: impl Future<Output = T>,
        sample: bool,
    ) -> (T, Window) {
        let before = self.scrape().await;
        let mut unsynced = Vec::new();
        let outcome = if sample {
            let sampling = async {
                loop {
                    tokio::time::sleep(SAMPLE_EVERY).await;
                    let gauge = self
                        .scrape()
                        .await
                        .sum(coord_testkit::bench::metrics::UNSYNCED_WATCHERS, &[]);
                    unsynced.push(gauge);
                }
            };
            tokio::select! {
                outcome = round => outcome,
                never = sampling => never,
            }
        } else {
            round.await
        };
        tokio::time::sleep(SETTLE).await;
        let after = self.scrape().await;
        let diff = after.since(&before);
        (outcome, Window { diff, unsynced })
    }
}

fn main() {
    let options = match Options::parse(&SCENARIOS) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
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
    println!("# coord-lock benchmarks");
    println!(
        "etcd {version} ({}), {} CPUs ({}), tokio multi-thread runtime",
        etcd.endpoint(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let bench = Bench {
        etcd,
        secs: options.secs,
        rounds: options.rounds,
    };
    let mut report = Report::per("one acquire + one release");
    for scenario in &options.scenarios {
        println!("\n{scenario}");
        match *scenario {
            "mutex-uncontended" => uncontended::run(&bench, &mut report).await,
            "mutex-contended" => contended::run(&bench, &mut report).await,
            "semaphore" => semaphore::run(&bench, &mut report).await,
            "semaphore-format" => format::run(&bench, &mut report).await,
            _ => unreachable!("scenario names are checked when parsing"),
        }
    }
    report.print();
    // Dropping `bench` kills etcd.
}
