//! The negative control of the chaos run: the same workload and nemesis, but holders write
//! without the `owns()` compare. Writes after GC pauses then land after the next holder's, and
//! the checkers must say so — a clean report here would mean they cannot see what they claim to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::time::Duration;

use coord_chaos::Options;

const SEED: u64 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fencing_the_checkers_find_violations() {
    let seed = std::env::var("COORD_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("COORD_CHAOS_SEED is a number"))
        .unwrap_or(SEED);
    eprintln!("chaos_unfenced: seed {seed} (replay: COORD_CHAOS_SEED={seed})");
    let mut options = Options::new(Duration::from_secs(25), seed);
    options.fencing = false;

    let report = coord_chaos::run(&options).await.unwrap();
    println!("{report}");

    assert!(
        !report.violations.is_empty(),
        "unfenced writes after pauses and partitions must be reported:\n{report}"
    );
}
