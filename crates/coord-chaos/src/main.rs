//! `coord-chaos`: runs the chaos harness and prints its report; exits 1 on any violation.
//!
//! ```text
//! cargo run --release -p coord-chaos -- --duration 10m --seed 42
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Chaos test of coord's primitives on a 3-member etcd cluster, with invariant checking.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// How long the nemesis injects faults (e.g. 90s, 10m, 1h).
    #[arg(long, default_value = "60s", value_parser = coord_chaos::parse_duration)]
    duration: Duration,
    /// Seed of every random choice; random when omitted (printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Client processes.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Session TTL in seconds (etcd's minimum is 2).
    #[arg(long, default_value_t = 3)]
    ttl: u64,
    /// Semaphore limit.
    #[arg(long, default_value_t = 2)]
    limit: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Negative control: holders write without the `owns()` compare. The checkers must report
    /// violations (exit 1); a clean report would mean they cannot see what they claim to.
    #[arg(long)]
    unfenced: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    eprintln!("coord-chaos: seed {seed} (replay with --seed {seed})");
    let mut options = coord_chaos::Options::new(args.duration, seed);
    options.clients = args.clients.max(1);
    options.ttl = Duration::from_secs(args.ttl.max(2));
    options.semaphore_limit = args.limit.max(1);
    options.fencing = !args.unfenced;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("coord-chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(coord_chaos::run(&options)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("coord-chaos: the run failed: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("coord-chaos: cannot encode the report: {e}"),
        }
    } else {
        print!("{report}");
    }
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
