//! Service discovery: HTTP instances register themselves, a client calls them through discovery
//! while they come and go.
//!
//! Run it with `cargo run -p coord-examples --bin discovery`. It starts its own etcd unless
//! `COORD_ENDPOINTS` (or `ETCDCTL_ENDPOINTS`) points at one.
//!
//! Each instance is an HTTP server with its own etcd connection (through a fault proxy, so that
//! one can "lose its network"), registered with `coord_discovery::service::register`. The client
//! follows the healthy instances with a `Discovery`, picks one per call with a power-of-two-choices
//! `Balancer`, and reports failed calls (two in a row: the instance is left out).
//!
//! The script, from the moment three instances serve:
//! - 1 s: `i4` starts and registers;
//! - 2 s: `i2` drains (status `draining`: the client stops calling it at once), then deregisters;
//! - 3 s: `i3` crashes (its server and its etcd connection go dead, it deregisters nothing): the
//!   client's calls fail twice, it is left out, and etcd removes it when its lease expires;
//! - 7 s: the client stops and prints what served its calls.
//!
//! It exits with an error if a call picked the draining instance after the client's set had
//! dropped it, or if more calls failed than the down-instance policy allows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::get;
use coord_core::{ClientConfig, Session};
use coord_discovery::balance::{Balancer, DownPolicy, Strategy};
use coord_discovery::service::{Change, Discovery, Instance, Registration, Status, register};
use coord_testkit::FaultProxy;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const SERVICE: &str = "hello";
/// The instances' session TTL: how long a crashed instance stays registered.
const TTL: Duration = Duration::from_secs(3);

/// What each instance announces besides its address.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    started_ms: u128,
}

/// One running instance, as its own process would hold it.
struct Running {
    id: &'static str,
    addr: SocketAddr,
    server: JoinHandle<()>,
    proxy: FaultProxy,
    registration: Registration<Meta>,
    /// Set once the instance announced it is draining: it must not serve the client after that.
    draining: Arc<AtomicBool>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coord_examples::init_tracing();

    let (_embedded, endpoints) = coord_examples::etcd_from_env_or_embedded().await?;
    let namespace = format!("coord-discovery-demo/{}/", std::process::id());
    let client = ClientConfig::new(endpoints.clone())
        .with_namespace(namespace.clone())
        .connect()
        .await?;
    let upstream = upstream_of(&endpoints)?;

    let mut instances = BTreeMap::new();
    for id in ["i1", "i2", "i3"] {
        instances.insert(id, start_instance(id, upstream, &namespace).await?);
    }

    let discovery = Discovery::<Meta>::builder(&client, SERVICE)
        .statuses([Status::Healthy])
        .start()?;
    let ready = discovery.clone().wait_ready().await?;
    println!(
        "{} healthy instances of `{SERVICE}` at revision {}",
        ready.len(),
        ready.revision
    );
    let start = Instant::now();
    let changes = tokio::spawn(print_changes(discovery.clone(), start));

    let balancer =
        Balancer::new(&discovery, Strategy::PowerOfTwoChoices).with_down_policy(DownPolicy {
            threshold: 2,
            period: Duration::from_secs(30),
        });
    let caller = tokio::spawn(call_until(
        balancer.clone(),
        start + Duration::from_secs(7),
        instances
            .values()
            .map(|r| (r.id, r.draining.clone()))
            .collect(),
    ));

    at(start, 1).await;
    let i4 = start_instance("i4", upstream, &namespace).await?;
    println!("[{:>4} ms] i4 started at {}", ms(start), i4.addr);
    instances.insert("i4", i4);

    at(start, 2).await;
    if let Some(i2) = instances.remove("i2") {
        i2.registration.set_status(Status::Draining).await?;
        println!("[{:>4} ms] i2 drains", ms(start));
        // From the moment the client's set no longer has it, no call may pick it.
        discovery
            .receiver()
            .wait_for(|set| set.get("i2").is_none())
            .await?;
        i2.draining.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await; // in-flight requests finish
        i2.registration.deregister().await?;
        i2.server.abort();
        println!("[{:>4} ms] i2 deregistered and stopped", ms(start));
    }

    at(start, 3).await;
    if let Some(i3) = instances.get("i3") {
        i3.server.abort();
        i3.proxy.blackhole();
        println!(
            "[{:>4} ms] i3 crashes: server gone, etcd unreachable; its key stays until the lease expires",
            ms(start)
        );
    }

    let summary = caller.await.context("the caller panicked")?;
    changes.abort();
    println!("\ncalls served per instance: {:?}", summary.served);
    println!("failed calls: {:?}", summary.failed);
    println!(
        "i3 reported down: {}; still registered now: {}",
        balancer.is_down("i3"),
        discovery.snapshot().get("i3").is_some()
    );
    if summary.picked_after_drain > 0 {
        bail!(
            "{} calls picked a draining instance after the client saw it go",
            summary.picked_after_drain
        );
    }
    let failed: usize = summary.failed.values().sum();
    if failed > 2 {
        bail!("{failed} failed calls; the down-instance policy allows 2");
    }
    for (_, running) in instances {
        running.server.abort();
        drop(running.registration);
    }
    println!("\ndone.");
    Ok(())
}

/// Starts an HTTP instance with its own etcd connection (through a fault proxy) and registers it.
async fn start_instance(
    id: &'static str,
    upstream: SocketAddr,
    namespace: &str,
) -> anyhow::Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let draining = Arc::new(AtomicBool::new(false));
    let app = Router::new().route("/", get(move || async move { id }));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let proxy = FaultProxy::start(upstream).await?;
    let client = ClientConfig::new([proxy.endpoint()])
        .with_namespace(namespace)
        .connect()
        .await?;
    let session = Session::new(client, TTL).await?;
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let registration = register(
        &session,
        SERVICE,
        Instance::new(id, addr.to_string(), Meta { started_ms }),
    )
    .await?;
    Ok(Running {
        id,
        addr,
        server,
        proxy,
        registration,
        draining,
    })
}

struct Summary {
    served: BTreeMap<String, usize>,
    failed: BTreeMap<String, usize>,
    /// Calls that picked an instance after the client's set had dropped it for draining.
    picked_after_drain: usize,
}

/// Calls the service through the balancer, one call at a time, until `deadline`.
async fn call_until(
    balancer: Balancer<Meta>,
    deadline: Instant,
    draining: BTreeMap<&'static str, Arc<AtomicBool>>,
) -> Summary {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap_or_default();
    let mut summary = Summary {
        served: BTreeMap::new(),
        failed: BTreeMap::new(),
        picked_after_drain: 0,
    };
    while Instant::now() < deadline {
        // Read before the pick: a flag set now was set after the set dropped the instance.
        let drained: Vec<&str> = draining
            .iter()
            .filter(|(_, flag)| flag.load(Ordering::SeqCst))
            .map(|(id, _)| *id)
            .collect();
        let Some(instance) = balancer.pick() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if drained.contains(&instance.id.as_str()) {
            summary.picked_after_drain += 1;
        }
        let url = format!("http://{}/", instance.addr);
        match http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
        {
            Ok(response) => {
                let name = response.text().await.unwrap_or_default();
                *summary.served.entry(name).or_default() += 1;
                instance.succeeded();
            }
            Err(error) => {
                println!("  call to {} failed: {error}", instance.id);
                *summary.failed.entry(instance.id.clone()).or_default() += 1;
                instance.failed();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    summary
}

/// Prints the changes of the healthy set as they happen.
async fn print_changes(discovery: Discovery<Meta>, start: Instant) {
    let mut changes = discovery.changes();
    while let Ok(change) = changes.next().await {
        match change {
            Change::Insert(e) => println!("[{:>4} ms] + {} at {}", ms(start), e.id, e.addr),
            Change::Update { new, .. } => {
                println!("[{:>4} ms] ~ {} {}", ms(start), new.id, new.status)
            }
            Change::Remove(e) => println!("[{:>4} ms] - {}", ms(start), e.id),
            _ => {}
        }
    }
}

async fn at(start: Instant, secs: u64) {
    tokio::time::sleep_until((start + Duration::from_secs(secs)).into()).await;
}

fn ms(start: Instant) -> u128 {
    start.elapsed().as_millis()
}

/// The socket address of the first endpoint (`http://host:port`), for the instances' proxies.
fn upstream_of(endpoints: &[String]) -> anyhow::Result<SocketAddr> {
    let first = endpoints.first().context("no etcd endpoint")?;
    let hostport = first
        .split("://")
        .last()
        .unwrap_or(first)
        .trim_end_matches('/');
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {first}"))
}
