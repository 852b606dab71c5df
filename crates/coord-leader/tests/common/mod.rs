//! Shared set-up of coord-leader's integration tests.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::time::Duration;

use coord_core::etcd_client::{GetOptions, SortOrder, SortTarget};
use coord_core::{Client, ClientConfig, Session};

/// Failure bound for waits on events; never a timing assertion.
pub const BOUND: Duration = Duration::from_secs(20);

/// A client of the per-binary shared etcd, in a namespace of its own.
pub async fn shared_client(label: &str) -> Client {
    let etcd = coord_testkit::shared().await.expect("shared etcd");
    ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace(label))
        .connect()
        .await
        .expect("connect")
}

pub async fn session(client: &Client) -> Session {
    Session::new(client.clone(), Duration::from_secs(10))
        .await
        .expect("session")
}

/// Waits, by watching the prefix, until exactly `n` keys are under it.
pub async fn queue_len_becomes(client: &Client, prefix: &str, n: usize) {
    coord_testkit::wait_for_key_count(client.etcd(), prefix, n, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Keys under the prefix in create order.
pub async fn queue(client: &Client, prefix: &str) -> Vec<String> {
    let read = client
        .get(
            prefix,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend),
            ),
        )
        .await
        .unwrap();
    read.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// Asserts that `task` does not finish within `d` (the behaviour under test is that it waits).
pub async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>, d: Duration) {
    let finished = tokio::time::timeout(d, async {
        while !task.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok();
    assert!(!finished, "the task finished while it should still wait");
}

/// The median of some durations.
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// A small deterministic generator (xorshift64*) for randomized schedules; the seed is printed so
/// a failing schedule can be replayed with `COORD_TEST_SEED`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_time() -> Rng {
        let seed = std::env::var("COORD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("randomized schedule: COORD_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
