//! `build`: a service of 10,000 instances, cached by a fresh `Discovery`.
//!
//! - **Time** (in this process, interleaved rounds): `Discovery::start` → `wait_ready` with all
//!   10,000, against a raw etcd-client prefix range read of the same keys on its own connection,
//!   and against that read decoded into a map of typed records (a hand-written typed cache).
//! - **Memory** (one child process of this binary per measurement, so that every figure starts
//!   from a fresh heap): the resident set size growth (`/proc/self/statm`) and the live heap
//!   growth (a counting global allocator) while a ready `Discovery` is held, per instance, against
//!   the stored bytes (keys + values) per instance; and the same figures for a raw range response
//!   held, and for the typed map.
//! - **One change with 10,000 cached**: a put of a new instance, seen by a `Discovery` holding the
//!   10,000 and by a raw prefix watch, both in this process, compared with the same on a service
//!   of 10 instances: the cost of a new snapshot per change.
//!
//! The 10,000 instances are written in bulk (transactions of 100 puts, attached to one lease), as
//! the exact bytes `register` writes: `record::check_encoding` verifies that first.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_core::etcd_client::{EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use coord_core::{Client, ClientConfig};
use coord_discovery::service::{Discovery, Endpoint, Status};
use coord_testkit::bench::report::{Ratio, Report, Target};
use coord_testkit::bench::rounds::{Tally, median, order, percentile, rounded};
use serde::Deserialize;

use crate::{Bench, Meta, alloc, ms, record, resident_bytes};

const INSTANCES: u64 = 10_000;
const SERVICE: &str = "build";
/// Timed builds (or reads) per variant and round; the round's figure is their median.
const PER_ROUND: usize = 5;
/// Changes measured with the 10,000 cached.
const CHANGES: u64 = 200;
/// The small service the per-change cost is compared with.
const SMALL: &str = "small";
const SMALL_INSTANCES: u64 = 10;
const BOUND: Duration = Duration::from_secs(60);

const CHILD_ENV: &str = "COORD_DISCOVERY_BENCH_CHILD";
const ENDPOINT_ENV: &str = "COORD_DISCOVERY_BENCH_ENDPOINT";
const NAMESPACE_ENV: &str = "COORD_DISCOVERY_BENCH_NAMESPACE";

/// Whether this process is a memory-measuring child (see [`child_main`]).
pub(crate) fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// What a child measured.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    rss: f64,
    heap: f64,
    heap_peak: f64,
    ms: f64,
}

/// The variants, in the order of the rounds.
const VARIANTS: [&str; 3] = ["raw", "typed", "coord"];

fn label(variant: &str) -> &'static str {
    match variant {
        "raw" => "raw prefix range read",
        "typed" => "raw read + typed decode into a map",
        _ => "coord Discovery start → ready",
    }
}

pub(crate) async fn run(bench: &Bench, report: &mut Report) {
    let rounds = bench.plan(1.0, 5).rounds;
    println!(
        "  {rounds} rounds, interleaved; per round and variant {PER_ROUND} timed builds/reads in this process and one memory measurement in a child process"
    );
    println!(
        "  size_of::<Endpoint<Meta>>() = {} B, size_of::<Entry>() = {} B",
        std::mem::size_of::<Endpoint<Meta>>(),
        std::mem::size_of::<coord_core::stream::Entry>()
    );
    let namespace = coord_testkit::unique_namespace("discovery_build");
    let client = bench.client(&namespace).await;
    record::check_encoding(&client, "check").await;

    // 10,000 instances as `register` writes them, in bulk, on one lease; and a small service.
    let mut writer = bench.raw().await;
    let lease = writer.lease_grant(3_600, None).await.expect("lease").id();
    let prefix = client.key(&format!("{SERVICE}/"));
    let started = Instant::now();
    let stored_bytes = write_instances(&mut writer, &prefix, INSTANCES, lease).await;
    let per_stored = stored_bytes as f64 / INSTANCES as f64;
    println!(
        "  wrote {INSTANCES} instances in {:.0} ms: {stored_bytes} bytes of keys + values ({per_stored:.0} B per instance)",
        ms(started.elapsed())
    );
    let small_prefix = client.key(&format!("{SMALL}/"));
    write_instances(&mut writer, &small_prefix, SMALL_INSTANCES, lease).await;

    let mut raw_reader = bench.raw().await;
    let mut tallies: Vec<Tally> = VARIANTS.iter().map(|_| Tally::default()).collect();
    let mut memory: Vec<Vec<Footprint>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    // Warm-up: one of each.
    read_raw(&mut raw_reader, &prefix).await;
    read_typed(&mut raw_reader, &prefix).await;
    build_coord(&client).await;
    for round in 0..rounds {
        for index in order(round, VARIANTS.len()) {
            let variant = VARIANTS[index];
            let (times, window) = bench
                .metered(async {
                    let mut times = Vec::new();
                    for _ in 0..PER_ROUND {
                        times.push(match variant {
                            "raw" => read_raw(&mut raw_reader, &prefix).await,
                            "typed" => read_typed(&mut raw_reader, &prefix).await,
                            _ => build_coord(&client).await,
                        });
                    }
                    times
                })
                .await;
            tallies[index].record(median(&times), PER_ROUND as u64, &window);
            memory[index].push(child(bench, variant, &namespace).await);
        }
    }

    let (small_raw, small_coord) = one_change(bench, &client, SMALL, SMALL_INSTANCES, lease).await;
    let (large_raw, large_coord) = one_change(bench, &client, SERVICE, INSTANCES, lease).await;

    let per_instance = |footprints: &[Footprint], f: fn(&Footprint) -> f64| -> Vec<f64> {
        footprints.iter().map(|x| f(x) / INSTANCES as f64).collect()
    };
    println!("  in this process, per round (ms, median of {PER_ROUND}):");
    for (variant, tally) in VARIANTS.iter().zip(&tallies) {
        println!("    {:<40} {:?}", label(variant), rounded(&tally.per_round));
    }
    println!("  child processes (fresh heap), per round, per instance:");
    for (variant, footprints) in VARIANTS.iter().zip(&memory) {
        println!(
            "    {:<40} RSS growth {:?} B, live heap {:?} B, heap peak {:?} B; ms {:?}",
            label(variant),
            rounded(&per_instance(footprints, |f| f.rss)),
            rounded(&per_instance(footprints, |f| f.heap)),
            rounded(&per_instance(footprints, |f| f.heap_peak)),
            rounded(&footprints.iter().map(|f| f.ms).collect::<Vec<_>>()),
        );
    }
    for (name, count, raw, coord) in [
        (SMALL, SMALL_INSTANCES, &small_raw, &small_coord),
        (SERVICE, INSTANCES, &large_raw, &large_coord),
    ] {
        println!(
            "  one change with {count} cached ({name}, {CHANGES} puts, ms): raw watch p50 {:.3} p99 {:.3}; Discovery snapshot p50 {:.3} p99 {:.3}",
            percentile(raw, 50.0),
            percentile(raw, 99.0),
            percentile(coord, 50.0),
            percentile(coord, 99.0)
        );
    }

    let (raw, typed, coord) = (&tallies[0], &tallies[1], &tallies[2]);
    report.compare(
        &format!("build: fresh Discovery ready with {INSTANCES} instances (median per round)"),
        format!("raw prefix range read {:.1} ms", raw.median()),
        format!("{:.1} ms", coord.median()),
        Ratio::Time(coord.median_ratio_to(raw)),
        Target::None,
    );
    report.compare(
        &format!("build: fresh Discovery ready with {INSTANCES} instances (median per round)"),
        format!("raw read + typed decode {:.1} ms", typed.median()),
        format!("{:.1} ms", coord.median()),
        Ratio::Time(coord.median_ratio_to(typed)),
        Target::None,
    );
    for p in [50.0, 99.0] {
        for (count, raw, coord) in [
            (SMALL_INSTANCES, &small_raw, &small_coord),
            (INSTANCES, &large_raw, &large_coord),
        ] {
            let (base, cand) = (percentile(raw, p), percentile(coord, p));
            report.compare(
                &format!("build: one new instance seen by one watcher with {count} cached, p{p}"),
                format!("raw watch {base:.2} ms"),
                format!("Discovery snapshot {cand:.2} ms"),
                Ratio::Time(cand / base),
                Target::None,
            );
        }
    }
    for (variant, tally) in VARIANTS.iter().zip(&tallies) {
        report.requests(
            &format!("build: {}", label(variant)),
            tally.ops,
            tally.requests_per_op(),
            None,
        );
    }

    // Memory: its own table (the report's ratios are of times and rates).
    let rss: Vec<f64> = memory
        .iter()
        .map(|m| median(&per_instance(m, |f| f.rss)))
        .collect();
    let heap: Vec<f64> = memory
        .iter()
        .map(|m| median(&per_instance(m, |f| f.heap)))
        .collect();
    let peak: Vec<f64> = memory
        .iter()
        .map(|m| median(&per_instance(m, |f| f.heap_peak)))
        .collect();
    println!(
        "\n  memory per instance ({INSTANCES} instances; medians over {rounds} child processes per variant)\n"
    );
    println!(
        "  | held | RSS growth | ratio to stored {per_stored:.0} B | live heap | ratio to stored | heap peak while loading |"
    );
    println!("  |---|---:|---:|---:|---:|---:|");
    for (index, variant) in VARIANTS.iter().enumerate() {
        println!(
            "  | {} | {:.0} B | {:.2}× | {:.0} B | {:.2}× | {:.0} B |",
            match *variant {
                "raw" => "raw range response",
                "typed" => "typed map from a raw read",
                _ => "coord Discovery (ready)",
            },
            rss[index],
            rss[index] / per_stored,
            heap[index],
            heap[index] / per_stored,
            peak[index]
        );
    }
    report.note(format!(
        "build: memory per cached instance — coord Discovery RSS growth {:.0} B = {:.2}× the stored {per_stored:.0} B (live heap {:.0} B = {:.2}×); a raw range response held: RSS {:.0} B; a typed map: RSS {:.0} B (medians over {rounds} child processes each)",
        rss[2],
        rss[2] / per_stored,
        heap[2],
        heap[2] / per_stored,
        rss[0],
        rss[1]
    ));
    writer.lease_revoke(lease).await.expect("revoke");
}

/// Writes `count` instances under `prefix` in transactions of 100 puts on `lease`, exactly as
/// `register` would; returns the bytes of keys and values.
pub(crate) async fn write_instances(
    writer: &mut coord_core::etcd_client::Client,
    prefix: &str,
    count: u64,
    lease: i64,
) -> usize {
    let mut stored_bytes = 0usize;
    let ids: Vec<u64> = (0..count).collect();
    for chunk in ids.chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| {
                let id = format!("instance-{i:05}");
                let key = format!("{prefix}{id}");
                let value = record::encode(&record::instance(&id, i));
                stored_bytes += key.len() + value.len();
                TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))
            })
            .collect();
        writer
            .txn(Txn::new().and_then(ops))
            .await
            .expect("bulk txn");
    }
    stored_bytes
}

/// Go's record with coord's metadata, decoded straight into types: what a hand-written typed
/// cache of the service would hold per instance.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // held for its memory
struct Typed {
    #[serde(rename = "Addr")]
    addr: String,
    #[serde(rename = "Metadata")]
    metadata: TypedMeta,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)] // held for its memory
struct TypedMeta {
    coord: u32,
    status: Status,
    zone: Option<String>,
    weight: Option<u32>,
    version: Option<String>,
    payload: Meta,
}

/// The service as a map of instance id → typed record, from one raw range response.
fn typed_map(
    read: &coord_core::etcd_client::GetResponse,
    prefix_len: usize,
) -> BTreeMap<String, Typed> {
    read.kvs()
        .iter()
        .map(|kv| {
            let id = String::from_utf8_lossy(&kv.key()[prefix_len..]).into_owned();
            (
                id,
                serde_json::from_slice(kv.value()).expect("typed decode"),
            )
        })
        .collect()
}

/// One raw range read decoded into a typed map; ms.
async fn read_typed(raw: &mut coord_core::etcd_client::Client, prefix: &str) -> f64 {
    let start = Instant::now();
    let read = raw
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("range read");
    let map = typed_map(&read, prefix.len());
    drop(read);
    let elapsed = ms(start.elapsed());
    assert_eq!(map.len() as u64, INSTANCES);
    elapsed
}

/// One raw prefix range read of the service; ms.
async fn read_raw(raw: &mut coord_core::etcd_client::Client, prefix: &str) -> f64 {
    let start = Instant::now();
    let read = raw
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("range read");
    let elapsed = ms(start.elapsed());
    assert_eq!(read.kvs().len() as u64, INSTANCES);
    elapsed
}

/// One fresh Discovery until ready with every instance; ms.
async fn build_coord(client: &Client) -> f64 {
    let start = Instant::now();
    let mut discovery = Discovery::<Meta>::builder(client, SERVICE)
        .start()
        .expect("start");
    let set = discovery.wait_ready().await.expect("ready");
    let elapsed = ms(start.elapsed());
    assert_eq!(set.len() as u64, INSTANCES);
    assert!(set.malformed.is_empty(), "{:?}", set.malformed.first());
    elapsed
}

/// Runs this binary as a child measuring one footprint (`mode`: "raw" or "coord").
async fn child(bench: &Bench, mode: &str, namespace: &str) -> Footprint {
    let exe = std::env::current_exe().expect("current exe");
    let mut command = Command::new(exe);
    command
        .env(CHILD_ENV, mode)
        .env(ENDPOINT_ENV, bench.etcd.endpoint())
        .env(NAMESPACE_ENV, namespace);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child {mode} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|line| line.starts_with("footprint "))
        .unwrap_or_else(|| panic!("child {mode} printed no footprint: {stdout}"));
    let mut footprint = Footprint::default();
    for pair in line.split_whitespace().skip(1) {
        let (name, value) = pair.split_once('=').expect("name=value");
        let value: f64 = value.parse().expect("number");
        match name {
            "rss" => footprint.rss = value,
            "heap" => footprint.heap = value,
            "heap_peak" => footprint.heap_peak = value,
            "ms" => footprint.ms = value,
            _ => {}
        }
    }
    footprint
}

/// The child: connects, then holds either a raw range response or a ready Discovery of the
/// service, and prints what that added to the process (`footprint rss=… heap=… heap_peak=… ms=…`).
pub(crate) fn child_main() {
    let mode = std::env::var(CHILD_ENV).expect("mode");
    let endpoint = std::env::var(ENDPOINT_ENV).expect("endpoint");
    let namespace = std::env::var(NAMESPACE_ENV).expect("namespace");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let client = ClientConfig::new([endpoint.clone()])
            .with_namespace(&namespace)
            .connect()
            .await
            .expect("connect");
        let mut raw = client.etcd().clone();
        let prefix = client.key(&format!("{SERVICE}/"));
        // Warm the connection and the runtime up with a small read of each kind.
        client
            .get(client.key("warm-up"), None)
            .await
            .expect("warm up");
        raw.get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_limit(1)),
        )
        .await
        .expect("warm up");
        let mut warm = Discovery::<Meta>::builder(&client, "warm-up")
            .start()
            .expect("start");
        warm.wait_ready().await.expect("ready");
        tokio::time::sleep(Duration::from_millis(100)).await;

        let (rss, heap) = (resident_bytes(), alloc::live());
        alloc::reset_peak();
        let start = Instant::now();
        let held: Box<dyn std::any::Any> = match mode.as_str() {
            "raw" => {
                let read = raw
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
                    .expect("range read");
                assert_eq!(read.kvs().len() as u64, INSTANCES);
                Box::new(read)
            }
            "typed" => {
                let read = raw
                    .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                    .await
                    .expect("range read");
                let map = typed_map(&read, prefix.len());
                drop(read);
                assert_eq!(map.len() as u64, INSTANCES);
                Box::new(map)
            }
            "coord" => {
                let mut discovery = Discovery::<Meta>::builder(&client, SERVICE)
                    .start()
                    .expect("start");
                let set = discovery.wait_ready().await.expect("ready");
                assert_eq!(set.len() as u64, INSTANCES);
                drop(set);
                Box::new(discovery)
            }
            other => panic!("unknown child mode {other}"),
        };
        let elapsed = ms(start.elapsed());
        // Let the discovery's task finish with the read (nothing is polled meanwhile).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rss_after, heap_after, peak) = (resident_bytes(), alloc::live(), alloc::peak());
        println!(
            "footprint rss={} heap={} heap_peak={} ms={elapsed:.3}",
            rss_after.saturating_sub(rss),
            heap_after.saturating_sub(heap),
            peak.saturating_sub(heap)
        );
        drop(held);
        drop(warm);
    });
}

/// With a Discovery holding the `count` instances of `service` and a raw prefix watch on it (own
/// connection each), writes `CHANGES` new instances one at a time (raw put with the lease, then
/// delete) and returns the ms until each saw the put: (raw watch, Discovery snapshot).
async fn one_change(
    bench: &Bench,
    client: &Client,
    service: &str,
    count: u64,
    lease: i64,
) -> (Vec<f64>, Vec<f64>) {
    let prefix = client.key(&format!("{service}/"));
    let own = bench.client(client.namespace()).await;
    let mut discovery = Discovery::<Meta>::builder(&own, service)
        .start()
        .expect("start");
    assert_eq!(
        discovery.wait_ready().await.expect("ready").len() as u64,
        count
    );
    let mut watcher_client = bench.raw().await;
    let mut stream = watcher_client
        .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let raw_task = tokio::spawn(async move {
        let _client = watcher_client;
        while let Ok(Some(response)) = stream.message().await {
            let at = Instant::now();
            for event in response.events() {
                if event.event_type() == EventType::Put {
                    let _ = tx.send(at);
                }
            }
        }
    });
    let mut writer = bench.raw().await;
    let (mut raw_times, mut coord_times) = (Vec::new(), Vec::new());
    for k in 0..CHANGES {
        let id: Arc<str> = format!("new-{k}").into();
        let mut receiver = discovery.receiver();
        let wanted = id.clone();
        let coord_wait = tokio::spawn(async move {
            receiver
                .wait_for(|set| set.get(&wanted).is_some())
                .await
                .expect("discovery gone");
            Instant::now()
        });
        tokio::task::yield_now().await;
        let key = format!("{prefix}{id}");
        let value = record::encode(&record::instance(&id, INSTANCES + k));
        let start = Instant::now();
        writer
            .put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .expect("put");
        let raw_at = tokio::time::timeout(BOUND, rx.recv())
            .await
            .expect("raw watch saw the put")
            .expect("raw watch gone");
        let coord_at = tokio::time::timeout(BOUND, coord_wait)
            .await
            .expect("discovery saw the put")
            .expect("join");
        raw_times.push(ms(raw_at.saturating_duration_since(start)));
        coord_times.push(ms(coord_at.saturating_duration_since(start)));
        writer.delete(key, None).await.expect("delete");
        let mut receiver = discovery.receiver();
        tokio::time::timeout(BOUND, receiver.wait_for(|set| set.get(&id).is_none()))
            .await
            .expect("discovery saw the delete")
            .expect("discovery gone");
    }
    raw_task.abort();
    drop(discovery);
    (raw_times, coord_times)
}
