//! `coord-reboot demo` as a process, in its short mode, on its own embedded etcd: every node
//! reboots and the summary measured from etcd keeps each group within its limit.
#![cfg(feature = "demo")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::time::Duration;

/// Failure bound; never a timing assertion.
const BOUND: Duration = Duration::from_secs(120);

const BIN: &str = env!("CARGO_BIN_EXE_coord-reboot");

/// The `max N` of the summary line of `group`.
fn max_of(stdout: &str, group: &str) -> u32 {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("group {group}: max ")))
        .unwrap_or_else(|| panic!("no summary for {group}:\n{stdout}"));
    line.split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

#[tokio::test]
async fn the_short_demo_reboots_every_node_within_the_group_limits() {
    let run = tokio::process::Command::new(BIN)
        .args(["demo", "--nodes", "4", "--fast"])
        .env_remove("COORD_ENDPOINTS")
        .env_remove("ETCDCTL_ENDPOINTS")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BOUND, run)
        .await
        .expect("the demo did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");

    assert!(
        stdout.contains("group workers: max ") && stdout.contains("of 2 slot(s): ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("group db: max 1 concurrent of 1 slot(s): ok"),
        "{stdout}"
    );
    let workers = max_of(&stdout, "workers");
    assert!((1..=2).contains(&workers), "{stdout}");
    assert!(
        stdout.contains("4 of 4 nodes rebooted and released their slot"),
        "{stdout}"
    );
    // Every node took a slot and gave it back, as etcd saw it.
    for node in ["w1", "w2", "w3", "db1"] {
        for event in ["takes a slot of", "released its slot of"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.contains(&format!(" {node} ")) && l.contains(event)),
                "{node} {event}:\n{stdout}"
            );
        }
    }
}
