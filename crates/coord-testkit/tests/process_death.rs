//! etcd processes never outlive the test process, even when it is SIGKILLed.
#![cfg(target_os = "linux")]
// Helpers outside #[test] functions may unwrap like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Set in the re-executed copy of this test binary, which plays the doomed test process.
const DOOMED_ENV: &str = "COORD_TESTKIT_DOOMED_TEST_PROCESS";

/// Whether `pid` no longer runs (gone, or a zombie nobody reaped yet).
fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Kills the doomed process if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn etcd_dies_when_the_test_process_is_sigkilled() {
    if std::env::var_os(DOOMED_ENV).is_some() {
        return play_the_doomed_test_process();
    }

    let doomed = Command::new(std::env::current_exe().unwrap())
        .env(DOOMED_ENV, "1")
        .args([
            "--exact",
            "etcd_dies_when_the_test_process_is_sigkilled",
            "--nocapture",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut doomed = KillOnDrop(doomed);
    let stdout = BufReader::new(doomed.0.stdout.take().unwrap());
    // The doomed process prints the pids once its servers are up, then blocks forever.
    let pids: Vec<u32> = stdout
        .lines()
        .map(Result::unwrap)
        .find_map(|line| {
            line.strip_prefix("ETCD_PIDS=")
                .map(|pids| pids.split(',').map(|p| p.parse().unwrap()).collect())
        })
        .expect("the doomed test process exited without printing its etcd pids");
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&pid| !process_is_gone(pid)));

    doomed.0.kill().unwrap(); // SIGKILL: no destructor, no panic handler runs
    doomed.0.wait().unwrap();

    // The kernel delivers PDEATHSIG asynchronously; poll for that external event.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|&pid| process_is_gone(pid)) {
        assert!(
            Instant::now() < deadline,
            "etcd {pids:?} still runs 10 s after its test process was SIGKILLed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn play_the_doomed_test_process() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The shared server is never dropped; an own server would be, but never gets the chance.
        let shared = coord_testkit::shared().await.unwrap();
        let own = coord_testkit::Etcd::start().await.unwrap();
        println!("ETCD_PIDS={},{}", shared.pid().unwrap(), own.pid().unwrap());
        std::future::pending::<()>().await;
    });
}
