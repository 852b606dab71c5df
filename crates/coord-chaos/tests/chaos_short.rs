//! The short form of the chaos run, for CI: 45 s of nemesis (about 60–90 s in all) with a fixed
//! seed, printed so a failure can be replayed:
//! `COORD_CHAOS_SEED=<seed> cargo test -p coord-chaos --test chaos_short -- --nocapture`, or
//! `cargo run --release -p coord-chaos -- --duration 45s --seed <seed>`.
//! `COORD_CHAOS_DURATION` (e.g. `2m`) lengthens it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::time::Duration;

use coord_chaos::history::{FaultKind, OpKind};
use coord_chaos::{Options, parse_duration};

const SEED: u64 = 20_261_130;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_finds_no_violation() {
    let seed = std::env::var("COORD_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("COORD_CHAOS_SEED is a number"))
        .unwrap_or(SEED);
    let duration = std::env::var("COORD_CHAOS_DURATION")
        .ok()
        .map(|s| parse_duration(&s).expect("COORD_CHAOS_DURATION is a duration"))
        .unwrap_or(Duration::from_secs(45));
    eprintln!(
        "chaos_short: seed {seed}, nemesis for {duration:?} (replay: COORD_CHAOS_SEED={seed})"
    );

    let report = coord_chaos::run(&Options::new(duration, seed))
        .await
        .unwrap();
    println!("{report}");

    assert!(report.violations.is_empty(), "violations found:\n{report}");
    // The run must have exercised what it claims to check.
    for kind in [
        OpKind::MutexIncrement,
        OpKind::SemaphoreWrite,
        OpKind::LeaderWrite,
        OpKind::ConfigUpdate,
    ] {
        assert!(
            report.operations.get(&kind).is_some_and(|c| c.ok > 0),
            "no successful {kind:?}:\n{report}"
        );
    }
    assert!(
        report.fenced.counter > 0 && report.fenced.terms > 1,
        "{report}"
    );
    assert!(
        report.fenced.semaphore_writes > 0 && report.fenced.stored_writes > 0,
        "{report}"
    );
    let faults: u64 = report.faults.values().sum();
    assert!(faults >= 5, "only {faults} faults injected:\n{report}");
    assert!(
        report.faults.contains_key(&FaultKind::PauseClient),
        "no holder was paused:\n{report}"
    );
    assert!(
        report.faults.contains_key(&FaultKind::KillMember)
            || report.faults.contains_key(&FaultKind::KillLeader),
        "no member was killed:\n{report}"
    );
    assert!(
        report.faults.contains_key(&FaultKind::FreezeClient),
        "no client process was frozen:\n{report}"
    );
}
