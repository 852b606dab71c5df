//! Cache benchmark: how fast an update reaches every in-process subscriber, and what a cached entry
//! costs in memory. Run with `cargo bench -p coord-core --bench cache`.
//!
//! Every figure is a ratio to a baseline measured in the same run against the same etcd:
//! - fan-out: the time until all 1,000 subscribers of one cache see an update, against the time
//!   until a single subscriber sees it, and against the writer's own round trip (the put);
//! - memory: the process's resident memory per cached entry, against the entry's payload (key and
//!   value bytes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench: failing loudly is the point

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coord_core::cache::Cache;
use coord_core::etcd_client::{Txn, TxnOp};
use coord_core::{Client, ClientConfig};
use coord_testkit::bench::rounds::percentile;
use tokio::sync::Notify;

const SUBSCRIBERS: usize = 1_000;
const UPDATES: u64 = 200;
const ENTRIES: usize = 50_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let etcd = coord_testkit::Etcd::start().await.unwrap();
    let client = ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace("cache_bench"))
        .connect()
        .await
        .unwrap();
    println!("# coord-core cache benchmark\n");
    println!(
        "etcd {} ({}), tokio multi-thread runtime (2 workers)\n",
        etcd.version().await.unwrap(),
        etcd.endpoint()
    );

    let one = fan_out(&client, "fanout-1/", 1).await;
    let many = fan_out(&client, "fanout-1000/", SUBSCRIBERS).await;
    let (rss_per_entry, payload_per_entry) = memory(&client).await;

    println!("| scenario | baseline | candidate | ratio |");
    println!("|---|---|---|---|");
    for (name, p) in [("p50", 50.0), ("p99", 99.0)] {
        let (base, cand) = (percentile(&one.seen, p), percentile(&many.seen, p));
        println!(
            "| update seen by all subscribers, {name} | 1 subscriber {:.2} ms | {SUBSCRIBERS} subscribers {:.2} ms | {:.2}× |",
            base,
            cand,
            cand / base
        );
    }
    for (name, p) in [("p50", 50.0), ("p99", 99.0)] {
        let (base, cand) = (percentile(&many.put, p), percentile(&many.seen, p));
        println!(
            "| {SUBSCRIBERS} subscribers vs the writer's put round trip, {name} | put {:.2} ms | all seen {:.2} ms | {:.2}× |",
            base,
            cand,
            cand / base
        );
    }
    println!(
        "| memory per cached entry ({ENTRIES} entries) | payload {payload_per_entry:.0} B | resident {rss_per_entry:.0} B | {:.2}× |",
        rss_per_entry / payload_per_entry
    );
}

struct FanOut {
    /// Per update: ms from the start of the put until the last subscriber saw it.
    seen: Vec<f64>,
    /// Per update: ms of the put itself.
    put: Vec<f64>,
}

async fn fan_out(client: &Client, prefix: &str, subscribers: usize) -> FanOut {
    let key = client.key(&format!("{prefix}value"));
    client.put(key.clone(), "0", None).await.unwrap();
    let seen_count = Arc::new(AtomicUsize::new(0));
    let all_seen = Arc::new(Notify::new());
    let target = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut cache = Cache::<u64>::new(client, prefix).unwrap();
        cache.wait_ready().await.unwrap();
        let (seen_count, all_seen, target) = (seen_count.clone(), all_seen.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            while cache.changed().await.is_ok() {
                let value = cache
                    .borrow_and_update()
                    .entries
                    .get("value")
                    .copied()
                    .unwrap_or(0);
                if value > last && value == target.load(Ordering::SeqCst) {
                    last = value;
                    if seen_count.fetch_add(1, Ordering::SeqCst) + 1 == subscribers {
                        all_seen.notify_one();
                    }
                }
            }
        }));
    }
    let mut result = FanOut {
        seen: Vec::new(),
        put: Vec::new(),
    };
    for i in 1..=UPDATES {
        seen_count.store(0, Ordering::SeqCst);
        target.store(i, Ordering::SeqCst);
        let notified = all_seen.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let start = Instant::now();
        client.put(key.clone(), i.to_string(), None).await.unwrap();
        result.put.push(start.elapsed().as_secs_f64() * 1000.0);
        tokio::time::timeout(Duration::from_secs(30), notified)
            .await
            .expect("an update was never seen by all");
        result.seen.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    for task in tasks {
        task.abort();
    }
    result
}

/// Resident memory per entry of a cache of `ENTRIES` small JSON entries, and the payload per entry.
async fn memory(client: &Client) -> (f64, f64) {
    let prefix = "memory/";
    let value = r#"{"zone":"eu-west-1a","weight":100,"healthy":true}"#;
    let mut payload = 0usize;
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                let key = client.key(&format!("{prefix}instance-{i:06}"));
                payload += key.len() + value.len();
                TxnOp::put(key, value, None)
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let before = resident_bytes();
    let mut cache = Cache::<serde_json::Value>::new(client, prefix).unwrap();
    let entries = cache.wait_ready().await.unwrap().entries.len();
    assert_eq!(entries, ENTRIES);
    let after = resident_bytes();
    drop(cache);
    (
        (after.saturating_sub(before)) as f64 / ENTRIES as f64,
        payload as f64 / ENTRIES as f64,
    )
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
