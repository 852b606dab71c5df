//! The discovery example runs its script on an embedded etcd and checks its own invariants (no
//! call picks a drained instance once the client's set dropped it; failed calls within the
//! down-instance policy); this test runs it as a process and reads its summary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::process::Command;

#[test]
fn the_discovery_example_serves_through_churn_and_leaves_the_crashed_instance_out() {
    let output = Command::new(env!("CARGO_BIN_EXE_discovery"))
        .env_remove("COORD_ENDPOINTS")
        .env_remove("ETCDCTL_ENDPOINTS")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // i4 joined and served; i3 crashed, was reported down and then removed by its lease.
    assert!(stdout.contains("+ i4 at"), "{stdout}");
    assert!(stdout.contains("- i2"), "{stdout}");
    assert!(stdout.contains("- i3"), "{stdout}");
    assert!(
        stdout.contains("i3 reported down: true; still registered now: false"),
        "{stdout}"
    );
    let served = stdout
        .lines()
        .find(|l| l.starts_with("calls served per instance:"))
        .unwrap();
    for id in ["i1", "i2", "i3", "i4"] {
        assert!(served.contains(&format!("\"{id}\"")), "{served}");
    }
}
