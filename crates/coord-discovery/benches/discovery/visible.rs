//! `visible`: how long a new registration takes to reach 100 watchers of the service.
//!
//! Variants (interleaved rounds, each as many registrations as fit in a round, one at a time):
//! - **raw floor**: a plain etcd-client `put` with a lease (the same key layout and value bytes),
//!   observed by 100 raw etcd-client prefix watches, one per connection; then a `delete`.
//! - **coord, own connections**: `register` on a session, observed by 100 `Discovery` handles,
//!   each on its own client connection (100 processes); then `deregister`.
//! - **coord, one shared client**: the same with all 100 `Discovery` handles on one client (one
//!   connection, one shared watch stream).
//!
//! A sample is one watcher × one registration: the time from the start of the write until that
//! watcher's task holds a snapshot (coord) or event (raw) with the new instance. Watchers take the
//! time as soon as their receiver wakes; nothing polls.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use coord_core::Session;
use coord_core::etcd_client::{EventType, PutOptions, WatchOptions};
use coord_discovery::service::{Discovery, Registration, register};
use coord_testkit::bench::report::{Ratio, Report, Target};
use coord_testkit::bench::rounds::{Tally, median, order, percentile, rounded};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{Bench, Meta, ms, record};

const WATCHERS: usize = 100;
/// Registrations per variant before the rounds, not measured.
const WARM_UP: u64 = 20;
/// A failure bound only.
const BOUND: Duration = Duration::from_secs(30);

/// A watcher saw instance `seq` appear (`insert`) or disappear.
#[derive(Debug)]
struct Seen {
    seq: u64,
    insert: bool,
    at: Instant,
}

enum Writer {
    Raw {
        client: Box<coord_core::etcd_client::Client>,
        lease: i64,
        /// The full key prefix of the service (`namespace + service + "/"`).
        prefix: String,
    },
    Coord {
        session: Session,
        service: String,
    },
}

struct Variant {
    name: &'static str,
    writer: Writer,
    seen: mpsc::UnboundedReceiver<Seen>,
    watchers: Vec<JoinHandle<()>>,
    /// Every watcher × registration sample of a round, ms (write start → seen).
    visible: Vec<Vec<f64>>,
    /// Per registration of a round: ms until the last of the 100 watchers saw it.
    all_seen: Vec<Vec<f64>>,
    /// Every watcher × deregistration sample, ms (delete start → gone), all rounds.
    removed: Vec<f64>,
    /// The write call itself (put / register), ms, all rounds.
    write: Vec<f64>,
    /// CPU seconds over all rounds: this process (writer and watchers), and etcd.
    cpu_client: f64,
    cpu_etcd: f64,
    tally: Tally,
}

impl Variant {
    fn new(name: &'static str, writer: Writer) -> (Variant, mpsc::UnboundedSender<Seen>) {
        let (tx, seen) = mpsc::unbounded_channel();
        let variant = Variant {
            name,
            writer,
            seen,
            watchers: Vec::new(),
            visible: Vec::new(),
            all_seen: Vec::new(),
            removed: Vec::new(),
            write: Vec::new(),
            cpu_client: 0.0,
            cpu_etcd: 0.0,
            tally: Tally::default(),
        };
        (variant, tx)
    }

    /// One registration and its deregistration, each waited for until every watcher saw it.
    /// Returns (per-watcher visibility ms, per-watcher removal ms, write ms).
    async fn cycle(&mut self, seq: u64) -> (Vec<f64>, Vec<f64>, f64) {
        let id = format!("r-{seq}");
        let instance = record::instance(&id, seq);
        let start = Instant::now();
        let registration: Option<Registration<Meta>> = match &mut self.writer {
            Writer::Raw {
                client,
                lease,
                prefix,
            } => {
                let value = record::encode(&instance);
                client
                    .put(
                        format!("{prefix}{id}"),
                        value,
                        Some(PutOptions::new().with_lease(*lease)),
                    )
                    .await
                    .expect("put");
                None
            }
            Writer::Coord { session, service } => Some(
                register(session, service, instance)
                    .await
                    .expect("register"),
            ),
        };
        let write = crate::ms(start.elapsed());
        let visible = self.collect(seq, true, start).await;
        let start = Instant::now();
        match (&mut self.writer, registration) {
            (Writer::Raw { client, prefix, .. }, _) => {
                client
                    .delete(format!("{prefix}{id}"), None)
                    .await
                    .expect("delete");
            }
            (Writer::Coord { .. }, Some(registration)) => {
                registration.deregister().await.expect("deregister");
            }
            (Writer::Coord { .. }, None) => unreachable!("coord writes register"),
        }
        let removed = self.collect(seq, false, start).await;
        (visible, removed, write)
    }

    /// Waits until every watcher reported `seq`'s appearance (`insert`) or disappearance, and
    /// returns the ms from `start` to each report.
    async fn collect(&mut self, seq: u64, insert: bool, start: Instant) -> Vec<f64> {
        let mut times = Vec::with_capacity(WATCHERS);
        while times.len() < WATCHERS {
            let seen = tokio::time::timeout(BOUND, self.seen.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: {} of {WATCHERS} watchers saw r-{seq} {} within {BOUND:?}",
                        self.name,
                        times.len(),
                        if insert { "appear" } else { "go" }
                    )
                })
                .expect("watchers gone");
            assert!(
                seen.seq == seq && seen.insert == insert,
                "{}: unexpected report {seen:?} while waiting for r-{seq} (insert: {insert})",
                self.name
            );
            times.push(ms(seen.at.saturating_duration_since(start)));
        }
        times
    }
}

/// The sequence number of an instance id `r-<seq>`.
fn seq_of(id: &[u8]) -> u64 {
    std::str::from_utf8(id)
        .ok()
        .and_then(|id| id.strip_prefix("r-"))
        .and_then(|seq| seq.parse().ok())
        .unwrap_or_else(|| panic!("unexpected key {:?}", String::from_utf8_lossy(id)))
}

/// A raw prefix watch on its own connection, reporting every put and delete under `prefix`.
async fn raw_watcher(
    bench: &Bench,
    prefix: &str,
    tx: mpsc::UnboundedSender<Seen>,
) -> JoinHandle<()> {
    let mut client = bench.raw().await;
    let mut stream = client
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .expect("raw watch");
    let prefix_len = prefix.len();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(Some(response)) = stream.message().await {
            let at = Instant::now();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let seen = Seen {
                    seq: seq_of(&kv.key()[prefix_len..]),
                    insert: event.event_type() == EventType::Put,
                    at,
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        }
    })
}

/// A task following `discovery`'s snapshots, reporting instances that appear and disappear.
async fn coord_watcher(
    mut discovery: Discovery<Meta>,
    tx: mpsc::UnboundedSender<Seen>,
) -> JoinHandle<()> {
    let ready = discovery.wait_ready().await.expect("discovery ready");
    assert!(ready.is_empty(), "the service starts empty");
    tokio::spawn(async move {
        let mut receiver = discovery.receiver();
        drop(discovery);
        let mut known: BTreeSet<String> = receiver
            .borrow_and_update()
            .endpoints
            .keys()
            .cloned()
            .collect();
        while receiver.changed().await.is_ok() {
            let at = Instant::now();
            let set = receiver.borrow_and_update().clone();
            let now: BTreeSet<String> = set.endpoints.keys().cloned().collect();
            let appeared = now.difference(&known).map(|id| (id, true));
            let gone = known.difference(&now).map(|id| (id, false));
            for (id, insert) in appeared.chain(gone) {
                let seen = Seen {
                    seq: seq_of(id.as_bytes()),
                    insert,
                    at,
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
            known = now;
        }
    })
}

pub(crate) async fn run(bench: &Bench, report: &mut Report) {
    let plan = bench.plan(2.0, 4);
    println!(
        "  {} rounds of {:.1} s per variant, interleaved; {WATCHERS} watchers per variant",
        plan.rounds,
        plan.round.as_secs_f64()
    );
    let namespace = coord_testkit::unique_namespace("discovery_visible");
    let writer_client = bench.client(&namespace).await;

    // Raw floor: a lease like a session's, 100 raw watches on their own connections.
    let mut raw_client = bench.raw().await;
    let lease = raw_client.lease_grant(600, None).await.expect("lease").id();
    let raw_prefix = writer_client.key("raw/");
    let (mut raw, tx) = Variant::new(
        "raw floor (put + 100 raw watches)",
        Writer::Raw {
            client: Box::new(raw_client.clone()),
            lease,
            prefix: raw_prefix.clone(),
        },
    );
    for _ in 0..WATCHERS {
        raw.watchers
            .push(raw_watcher(bench, &raw_prefix, tx.clone()).await);
    }
    drop(tx);

    // coord, one connection per watcher.
    let session = Session::new(writer_client.clone(), Duration::from_secs(60))
        .await
        .expect("session");
    let (mut own, tx) = Variant::new(
        "coord Discovery × 100 connections",
        Writer::Coord {
            session: session.clone(),
            service: "own".to_owned(),
        },
    );
    let mut clients = Vec::new();
    for _ in 0..WATCHERS {
        let client = bench.client(&namespace).await;
        let discovery = Discovery::<Meta>::builder(&client, "own")
            .start()
            .expect("start");
        own.watchers
            .push(coord_watcher(discovery, tx.clone()).await);
        clients.push(client);
    }
    drop(tx);

    // coord, one shared client.
    let shared_client = bench.client(&namespace).await;
    let (mut shared, tx) = Variant::new(
        "coord Discovery × 100 on one client",
        Writer::Coord {
            session: session.clone(),
            service: "shared".to_owned(),
        },
    );
    for _ in 0..WATCHERS {
        let discovery = Discovery::<Meta>::builder(&shared_client, "shared")
            .start()
            .expect("start");
        shared
            .watchers
            .push(coord_watcher(discovery, tx.clone()).await);
    }
    drop(tx);

    let mut variants = [raw, own, shared];
    let etcd_pid = bench.etcd.pid().expect("etcd runs").to_string();
    let mut seq = 0u64;
    for variant in &mut variants {
        for _ in 0..WARM_UP {
            seq += 1;
            variant.cycle(seq).await;
        }
    }

    for round in 0..plan.rounds {
        for index in order(round, variants.len()) {
            let variant = &mut variants[index];
            let deadline = Instant::now() + plan.round;
            let cpu = (crate::cpu_seconds("self"), crate::cpu_seconds(&etcd_pid));
            let ((visible, all_seen, cycles), window) = bench
                .metered(async {
                    let (mut visible, mut all_seen, mut cycles) = (Vec::new(), Vec::new(), 0u64);
                    while Instant::now() < deadline {
                        seq += 1;
                        let (seen, removed, write) = variant.cycle(seq).await;
                        all_seen.push(seen.iter().copied().fold(0.0, f64::max));
                        visible.extend(seen);
                        variant.removed.extend(removed);
                        variant.write.push(write);
                        cycles += 1;
                    }
                    let cpu_client = crate::cpu_seconds("self") - cpu.0;
                    let cpu_etcd = crate::cpu_seconds(&etcd_pid) - cpu.1;
                    variant.cpu_client += cpu_client;
                    variant.cpu_etcd += cpu_etcd;
                    (visible, all_seen, cycles)
                })
                .await;
            variant
                .tally
                .record(percentile(&visible, 99.0), cycles, &window);
            variant.visible.push(visible);
            variant.all_seen.push(all_seen);
        }
    }

    print_rounds(&variants);
    let [raw, own, shared] = &variants;
    for (candidate, label) in [(own, "100 connections"), (shared, "one shared client")] {
        for p in [50.0, 99.0] {
            let ratios: Vec<f64> = candidate
                .visible
                .iter()
                .zip(&raw.visible)
                .map(|(c, r)| percentile(c, p) / percentile(r, p))
                .collect();
            let (base, cand) = (pooled(raw, p), pooled(candidate, p));
            report.compare(
                &format!("visible: registration → seen by each of {WATCHERS} watchers, p{p}, coord on {label}"),
                format!("raw put + watch {base:.2} ms"),
                format!("{cand:.2} ms"),
                Ratio::Time(median(&ratios)),
                Target::None,
            );
        }
    }
    for variant in &variants {
        report.requests(
            &format!("visible: {}", variant.name),
            variant.tally.ops,
            variant.tally.requests_per_op(),
            None,
        );
    }
    for variant in &variants {
        let all: Vec<f64> = variant.visible.concat();
        let last: Vec<f64> = variant.all_seen.concat();
        report.note(format!(
            "visible: {} — {} registrations × {WATCHERS} watchers = {} samples, all rounds pooled: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; until the last watcher saw it: p50 {:.2} ms, p99 {:.2} ms; the write call (put / register) p50 {:.2} ms; deregistration seen p50 {:.2} ms, p99 {:.2} ms; CPU per registration + deregistration: this process {:.2} ms, etcd {:.2} ms",
            variant.name,
            variant.tally.ops,
            all.len(),
            percentile(&all, 50.0),
            percentile(&all, 99.0),
            percentile(&all, 100.0),
            percentile(&last, 50.0),
            percentile(&last, 99.0),
            percentile(&variant.write, 50.0),
            percentile(&variant.removed, 50.0),
            percentile(&variant.removed, 99.0),
            variant.cpu_client * 1000.0 / variant.tally.ops.max(1) as f64,
            variant.cpu_etcd * 1000.0 / variant.tally.ops.max(1) as f64,
        ));
    }
    for variant in &variants {
        for watcher in &variant.watchers {
            watcher.abort();
        }
    }
    drop(clients);
    session.close().await.expect("close session");
}

/// A percentile over all rounds of a variant.
fn pooled(variant: &Variant, p: f64) -> f64 {
    percentile(&variant.visible.concat(), p)
}

fn print_rounds(variants: &[Variant]) {
    for variant in variants {
        let p50: Vec<f64> = variant
            .visible
            .iter()
            .map(|v| percentile(v, 50.0))
            .collect();
        let p99: Vec<f64> = variant
            .visible
            .iter()
            .map(|v| percentile(v, 99.0))
            .collect();
        let counts: Vec<usize> = variant.all_seen.iter().map(Vec::len).collect();
        println!("  {}", variant.name);
        println!("    registrations per round: {counts:?}");
        println!("    p50 per round (ms): {:?}", rounded(&p50));
        println!("    p99 per round (ms): {:?}", rounded(&p99));
    }
}
