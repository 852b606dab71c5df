//! One run: set up, run the workload under the nemesis, heal, recover, converge, stop, check.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_core::Client;
use coord_core::etcd_client::GetOptions;
use coord_discovery::service::Registration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::actors::registry::{self, Caches};
use crate::actors::{self, Ctx};
use crate::history::{History, OpKind, Outcome};
use crate::lab::Lab;
use crate::report::{Report, Stats};
use crate::rng::Rng;
use crate::{Error, Options, check, nemesis};

/// Runs the chaos test described by `options` and reports what it measured and found.
///
/// # Errors
///
/// When the cluster or the clients cannot be set up, or etcd's final state cannot be read.
/// Invariant violations are not errors: they are listed in [`Report::violations`].
///
/// # Cancel safety
///
/// Dropping the future kills the cluster (its processes die with it).
pub async fn run(options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let lab = Arc::new(Lab::start(options.clients, options.ttl).await?);
    let history = History::new();
    let root = Rng::new(options.seed);
    let mut report = Report {
        seed: options.seed,
        clients: options.clients,
        duration_s: options.duration.as_secs(),
        ttl_s: options.ttl.as_secs(),
        semaphore_limit: options.semaphore_limit,
        fencing: options.fencing,
        ..Report::default()
    };
    let mut violations = Vec::new();

    let mut caches = Vec::with_capacity(lab.nodes.len());
    for node in &lab.nodes {
        // In the client's process: its caches' tasks freeze with it.
        let client = node.client.clone();
        let started = node.spawn(async move { Caches::start(&client).await });
        caches.push(
            started
                .await
                .map_err(|e| Error::Setup(format!("starting the caches: {e}")))??,
        );
    }

    // The workload.
    let stop_actors = CancellationToken::new();
    let mut workers: Vec<(usize, &'static str, JoinHandle<()>)> = Vec::new();
    let mut registries: Vec<JoinHandle<Option<Registration<u64>>>> = Vec::new();
    for node in &lab.nodes {
        let ctx = |stream: u64| Ctx {
            node: Arc::clone(node),
            history: history.clone(),
            observer: lab.observer.clone(),
            stop: stop_actors.clone(),
            rng: root.fork(node.index as u64 * 16 + stream),
            ttl: options.ttl,
            fencing: options.fencing,
        };
        workers.push((node.index, "mutex", node.spawn(actors::mutex::run(ctx(1)))));
        workers.push((
            node.index,
            "semaphore",
            node.spawn(actors::semaphore::run(ctx(2), options.semaphore_limit)),
        ));
        workers.push((
            node.index,
            "semaphore-stored",
            node.spawn(actors::semaphore::run_stored(
                ctx(5),
                options.semaphore_limit,
            )),
        ));
        workers.push((
            node.index,
            "election",
            node.spawn(actors::election::run(ctx(3))),
        ));
        registries.push(node.spawn(registry::run(ctx(4))));
    }

    // The nemesis.
    let stop_nemesis = CancellationToken::new();
    let nemeses = [
        tokio::spawn(nemesis::members(
            Arc::clone(&lab),
            history.clone(),
            root.fork(1 << 40),
            stop_nemesis.clone(),
            options.ttl,
        )),
        tokio::spawn(nemesis::clients(
            Arc::clone(&lab),
            history.clone(),
            root.fork(2 << 40),
            stop_nemesis.clone(),
            options.ttl,
        )),
    ];
    tracing::info!(seed = options.seed, duration = ?options.duration, "nemesis started");
    tokio::time::sleep(options.duration).await; // the length of the schedule, not a synchronisation
    stop_nemesis.cancel();
    for nemesis in nemeses {
        if let Err(e) = nemesis.await {
            violations.push(format!("the nemesis failed: {e}"));
        }
    }
    for node in &lab.nodes {
        node.heal_all();
        node.take_pause();
    }
    let healed = history.now();
    tracing::info!(at = ?healed, "nemesis stopped, everything healed");

    // Liveness: every client completes a fenced write of every primitive again.
    let primitives = [
        OpKind::MutexIncrement,
        OpKind::SemaphoreWrite,
        OpKind::LeaderWrite,
    ];
    let clients = lab.nodes.len();
    let recovered = |ops: &[crate::history::Op]| {
        let mut first = BTreeMap::new();
        for op in ops {
            if op.at >= healed && op.outcome == Outcome::Ok && primitives.contains(&op.kind) {
                first.entry((op.client, op.kind)).or_insert(op.at - healed);
            }
        }
        first
    };
    let _ = tokio::time::timeout(
        options.recovery_bound,
        history.wait_until(|ops| recovered(ops).len() == clients * primitives.len()),
    )
    .await;
    let first = recovered(&history.ops());
    for client in 0..clients {
        for kind in primitives {
            if !first.contains_key(&(client, kind)) {
                violations.push(format!(
                    "liveness: client {client} applied no {kind:?} within {:?} after the nemesis stopped",
                    options.recovery_bound
                ));
            }
        }
    }
    report.recovery_after_nemesis = Stats::of(&first.values().copied().collect::<Vec<_>>());

    // Stop the workload: holders release, waiters are dropped (their keys must go).
    stop_actors.cancel();
    let stop_bound = options.ttl * 3 + Duration::from_secs(10);
    for (client, what, handle) in workers {
        let abort = handle.abort_handle();
        match tokio::time::timeout(stop_bound, handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => violations.push(format!("client {client}: the {what} actor failed: {e}")),
            Err(_) => {
                abort.abort();
                violations.push(format!(
                    "client {client}: the {what} actor did not stop within {stop_bound:?}"
                ));
            }
        }
    }
    let mut registrations = Vec::new();
    for (client, handle) in registries.into_iter().enumerate() {
        match tokio::time::timeout(stop_bound, handle).await {
            Ok(Ok(Some(registration))) => registrations.push(registration),
            Ok(Ok(None)) => violations.push(format!("client {client} never registered")),
            Ok(Err(e)) => {
                violations.push(format!("client {client}: the registry actor failed: {e}"))
            }
            Err(_) => violations.push(format!("client {client}: the registry actor did not stop")),
        }
    }

    // Nothing left in the queues: live sessions must hold no key now.
    let cleanup_bound = options.ttl * 3 + Duration::from_secs(5);
    let mut cleanup = Vec::new();
    for name in [
        actors::mutex::NAME,
        actors::semaphore::NAME,
        actors::semaphore::STORED_NAME,
        actors::election::NAME,
    ] {
        match prefix_empties(&lab.observer, &format!("{name}/"), cleanup_bound).await {
            Ok(took) => cleanup.push(took),
            Err(left) => violations.push(format!("keys left behind under {name}/: {left}")),
        }
    }

    // Caches equal etcd.
    let converge_bound = options.recovery_bound;
    for registration in &registrations {
        let mut state = registration.subscribe();
        if tokio::time::timeout(converge_bound, state.wait_for(|s| s.is_registered()))
            .await
            .is_err()
        {
            violations.push(format!(
                "{} not registered again within {converge_bound:?}",
                registration.id()
            ));
        }
    }
    report.cache_convergence = converge(
        &lab.observer,
        &mut caches,
        clients,
        converge_bound,
        &mut violations,
    )
    .await?;

    // Close everything; then no service key may be left either.
    for registration in registrations {
        if let Err(e) = registration.deregister().await {
            tracing::warn!(error = %e, "deregister");
        }
    }
    drop(caches);
    for node in &lab.nodes {
        node.close_session().await;
    }
    match prefix_empties(
        &lab.observer,
        &format!("{}/", registry::SERVICE),
        cleanup_bound,
    )
    .await
    {
        Ok(took) => cleanup.push(took),
        Err(left) => violations.push(format!(
            "keys left behind under {}/: {left}",
            registry::SERVICE
        )),
    }
    report.cleanup = Stats::of(&cleanup);

    // The fenced writes, against etcd's final state.
    let mutex_log = check::read_log(&lab.observer, actors::mutex::LOG)
        .await
        .map_err(Error::Setup)?;
    let sem_log = check::read_log(&lab.observer, actors::semaphore::LOG)
        .await
        .map_err(Error::Setup)?;
    let stored_log = check::read_log(&lab.observer, actors::semaphore::STORED_LOG)
        .await
        .map_err(Error::Setup)?;
    let leader_log = check::read_log(&lab.observer, actors::election::LOG)
        .await
        .map_err(Error::Setup)?;
    let counter = read_counter(&lab.observer).await?;
    let holders = check::exclusive("mutex", &mutex_log, &mut violations);
    check::counter(&mutex_log, counter, &mut violations);
    let overlap = check::limited(&sem_log, options.semaphore_limit, &mut violations);
    let permits: HashSet<i64> = sem_log.iter().map(|e| e.record.token).collect();
    // The stored limit moves between the limit and one more; lowering it never evicts.
    let stored_overlap = check::limited(&stored_log, options.semaphore_limit + 1, &mut violations);
    let stored_holders: HashSet<i64> = stored_log.iter().map(|e| e.record.token).collect();
    let terms = check::exclusive("election", &leader_log, &mut violations);
    let applied: HashSet<String> = mutex_log
        .iter()
        .chain(&sem_log)
        .chain(&stored_log)
        .chain(&leader_log)
        .map(|e| e.key.clone())
        .collect();
    let ops = history.ops();
    check::acknowledged(&ops, &applied, &mut violations);

    report.fenced = crate::report::Fenced {
        mutex_increments: mutex_log.len(),
        counter,
        mutex_holders: holders.terms,
        semaphore_writes: sem_log.len(),
        semaphore_permits: permits.len(),
        semaphore_max_overlap: overlap,
        stored_writes: stored_log.len(),
        stored_holders: stored_holders.len(),
        stored_max_overlap: stored_overlap,
        leader_writes: leader_log.len(),
        terms: terms.terms,
    };
    report.count_ops(&ops);
    let faults = history.faults();
    for fault in &faults {
        *report.faults.entry(fault.kind).or_default() += 1;
    }
    report.recovery_after_fault = recovery_after_faults(&faults, &ops, clients);
    report.violations = violations;
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// For each healed fault: the time from its heal to the next successful operation of each
/// affected client (all clients for member faults).
fn recovery_after_faults(
    faults: &[crate::history::Fault],
    ops: &[crate::history::Op],
    clients: usize,
) -> BTreeMap<crate::history::FaultKind, Stats> {
    let mut samples: BTreeMap<_, Vec<Duration>> = BTreeMap::new();
    for fault in faults {
        let Some(healed) = fault.healed else { continue };
        let affected: Vec<usize> = match fault.client {
            Some(client) => vec![client],
            None => (0..clients).collect(),
        };
        for client in affected {
            if let Some(op) = ops
                .iter()
                .find(|op| op.client == client && op.at >= healed && op.outcome == Outcome::Ok)
            {
                samples.entry(fault.kind).or_default().push(op.at - healed);
            }
        }
    }
    samples
        .into_iter()
        .map(|(kind, s)| (kind, Stats::of(&s)))
        .collect()
}

/// Waits (event-driven, bounded) until no key is left under `prefix`; returns how long it took,
/// or the keys left (with their leases).
async fn prefix_empties(
    observer: &Client,
    prefix: &str,
    bound: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let full = observer.key(prefix);
    let wait = async {
        loop {
            let read = match observer
                .get(
                    full.clone(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
            {
                Ok(read) => read,
                Err(e) => {
                    tracing::debug!(error = %e, "reading {full}");
                    tokio::time::sleep(Duration::from_millis(100)).await; // retry backoff
                    continue;
                }
            };
            if read.kvs().is_empty() {
                return;
            }
            let from = read.header().map_or(0, |h| h.revision()) + 1;
            if let Err(e) =
                coord_core::watch::wait_prefix_deleted(observer, full.clone(), from).await
            {
                tracing::debug!(error = %e, "watching {full}");
            }
        }
    };
    if tokio::time::timeout(bound, wait).await.is_ok() {
        return Ok(started.elapsed());
    }
    let left = match observer
        .get(full.clone(), Some(GetOptions::new().with_prefix()))
        .await
    {
        Ok(read) => read
            .kvs()
            .iter()
            .map(|kv| {
                format!(
                    "{} (lease {:x}, created at {})",
                    String::from_utf8_lossy(kv.key()),
                    kv.lease(),
                    kv.create_revision()
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("(cannot read: {e})"),
    };
    Err(format!("after {bound:?}: {left}"))
}

async fn read_counter(observer: &Client) -> Result<u64, Error> {
    let read = observer
        .get(observer.key(actors::mutex::COUNTER), None)
        .await?;
    Ok(read
        .kvs()
        .first()
        .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok())
        .unwrap_or(0))
}

/// Reads the service, the config and the leader once, linearizably, then waits until every
/// client's caches show exactly that; returns the time each client took from the read.
async fn converge(
    observer: &Client,
    caches: &mut [Caches],
    clients: usize,
    bound: Duration,
    violations: &mut Vec<String>,
) -> Result<Stats, Error> {
    let services = observer
        .get(
            format!("{}/", observer.key(registry::SERVICE)),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let service_revision = services.header().map_or(0, |h| h.revision());
    let expected: BTreeMap<String, i64> = services
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            (
                key.rsplit('/').next().unwrap_or_default().to_owned(),
                kv.mod_revision(),
            )
        })
        .collect();
    if expected.len() != clients {
        violations.push(format!(
            "{} of {clients} instances registered at the end: {:?}",
            expected.len(),
            expected.keys()
        ));
    }
    let config = observer.get(observer.key(registry::CONFIG), None).await?;
    let (config_value, config_mod) = config.kvs().first().map_or((0, 0), |kv| {
        (
            serde_json::from_slice::<u64>(kv.value()).unwrap_or(u64::MAX),
            kv.mod_revision(),
        )
    });
    let leader = coord_leader::leader(observer, actors::election::NAME)
        .await
        .map_err(|e| Error::Setup(format!("reading the leader: {e}")))?
        .map(|l| l.key);
    let read_at = Instant::now();
    let deadline = tokio::time::Instant::now() + bound;
    let mut took = Vec::new();
    for (client, cache) in caches.iter_mut().enumerate() {
        let mut discovery = cache.discovery.receiver();
        let mut config = cache.config.receiver();
        let leader = leader.clone();
        let converged = async {
            // A snapshot's revision moves only when its content changes, so compare content;
            // mod revisions make that exact (nothing writes these keys any more).
            let services = discovery.wait_for(|set| {
                set.endpoints.len() == expected.len()
                    && set
                        .iter()
                        .all(|e| expected.get(&e.id) == Some(&e.mod_revision))
            });
            let config =
                config.wait_for(|s| s.mod_revision == config_mod && *s.value == config_value);
            let leader = cache
                .leader
                .wait_for(|l| l.as_ref().map(|l| &l.key) == leader.as_ref());
            let (a, b, c) = tokio::join!(services, config, leader);
            a.is_ok() && b.is_ok() && c.is_ok()
        };
        match tokio::time::timeout_at(deadline, converged).await {
            Ok(true) => took.push(read_at.elapsed()),
            Ok(false) => {
                violations.push(format!("client {client}: a cache ended before converging"))
            }
            Err(_) => {
                let set = cache.discovery.snapshot();
                let snapshot = cache.config.borrow().clone();
                violations.push(format!(
                    "client {client}: caches differ from etcd {bound:?} after the final read: discovery at revision {} has {:?} (etcd at {service_revision}: {expected:?}); config at revision {} = {} mod {} (etcd: {config_value} mod {config_mod}); leader {:?} (etcd: {leader:?})",
                    set.revision,
                    set.iter().map(|e| (e.id.clone(), e.mod_revision)).collect::<Vec<_>>(),
                    snapshot.revision,
                    snapshot.value,
                    snapshot.mod_revision,
                    cache.leader.borrow().as_ref().map(|l| l.key.clone()),
                ));
            }
        }
    }
    Ok(Stats::of(&took))
}
