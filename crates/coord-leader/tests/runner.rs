//! The leadership runner against a real etcd (one shared server for this binary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{BOUND, Rng, shared_client};
use coord_core::etcd_client::{GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use coord_core::queue::first_by_create;
use coord_core::{Client, Error as CoreError, FencingToken, Session};
use coord_leader::{CancellationToken, Error, Health, Role, Runner, RunnerStatus, Term};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Sessions of `ttl` on `client`.
fn sessions(
    client: &Client,
    ttl: Duration,
) -> impl Fn()
    -> std::pin::Pin<Box<dyn std::future::Future<Output = coord_core::Result<Session>> + Send>>
+ Send
+ Sync
+ 'static {
    let client = client.clone();
    move || {
        let client = client.clone();
        Box::pin(async move { Session::new(client, ttl).await })
    }
}

/// What a test's work reports about each term it was given.
#[derive(Debug)]
enum Event {
    Started(Term, Instant),
    Stopped(u64, Instant),
}

/// Work that reports its start, waits until its term is cancelled, and reports its stop.
fn reporting_work(
    events: mpsc::UnboundedSender<Event>,
) -> impl FnMut(Term) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send {
    move |term: Term| {
        let events = events.clone();
        Box::pin(async move {
            let number = term.number();
            let _ = events.send(Event::Started(term.clone(), Instant::now()));
            term.cancelled().await;
            let _ = events.send(Event::Stopped(number, Instant::now()));
        })
    }
}

struct Running {
    health: Health,
    shutdown: CancellationToken,
    task: JoinHandle<coord_leader::Result<()>>,
    events: mpsc::UnboundedReceiver<Event>,
}

fn start(client: &Client, identity: &str, ttl: Duration) -> Running {
    let runner = Runner::builder(sessions(client, ttl), "e", identity)
        .shutdown_grace(Duration::from_secs(5))
        .build()
        .unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let health = runner.health();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone(), reporting_work(tx)));
    Running {
        health,
        shutdown,
        task,
        events,
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(BOUND, events.recv())
        .await
        .expect("no event from the work")
        .expect("the work's channel closed")
}

async fn started(events: &mut mpsc::UnboundedReceiver<Event>) -> (Term, Instant) {
    match next_event(events).await {
        Event::Started(term, at) => (term, at),
        other => panic!("expected a term to start, got {other:?}"),
    }
}

async fn stopped(events: &mut mpsc::UnboundedReceiver<Event>) -> (u64, Instant) {
    match next_event(events).await {
        Event::Stopped(number, at) => (number, at),
        other => panic!("expected a term to stop, got {other:?}"),
    }
}

async fn status_becomes(health: &Health, what: &str, f: impl FnMut(&RunnerStatus) -> bool) {
    let mut status = health.subscribe();
    tokio::time::timeout(BOUND, status.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("the runner never became {what}: {:?}", health.status()))
        .unwrap();
}

async fn fenced_put(term: &Term, key: &str, value: &str) -> bool {
    let txn = Txn::new()
        .when([term.owns()])
        .and_then([TxnOp::put(key, value, None)]);
    term.client().txn(txn).await.unwrap().succeeded()
}

#[tokio::test]
async fn the_work_runs_while_leading_with_the_terms_fencing_token() {
    let client = shared_client("runner_leads").await;
    let mut running = start(&client, "node-1", Duration::from_secs(10));
    let (term, _) = started(&mut running.events).await;

    assert_eq!(term.number(), 1);
    assert!(running.health.is_leader());
    assert_eq!(running.health.terms_won(), 1);
    let leader = coord_leader::leader(&client, "e").await.unwrap().unwrap();
    assert_eq!(
        (leader.token, leader.value.as_slice()),
        (term.token(), b"node-1".as_slice())
    );
    assert_eq!(
        running.health.status().role,
        Role::Leading {
            term: 1,
            token: term.token()
        }
    );
    assert!(fenced_put(&term, &client.key("out"), "written").await);
    // The runner's health follows the election through the process's shared observer.
    let mut observed = coord_leader::observe(&client, "e").await.unwrap();
    tokio::time::timeout(
        BOUND,
        observed.wait_for(|l| l.as_ref().is_some_and(|l| l.token == term.token())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(running.health.leader().map(|l| l.token), Some(term.token()));

    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
    assert_eq!(running.health.status().role, Role::Stopped);
}

#[tokio::test]
async fn a_standby_takes_over_at_once_when_the_leader_shuts_down() {
    let client = shared_client("runner_handover").await;
    // Long TTLs: if the leader did not resign, the standby would wait a minute.
    let mut leader = start(&client, "leader", Duration::from_secs(60));
    let (first, _) = started(&mut leader.events).await;
    let mut standby = start(&client, "standby", Duration::from_secs(60));
    status_becomes(&standby.health, "a candidate", |s| {
        s.role == Role::Campaigning
    })
    .await;
    assert_eq!(
        standby.health.leader().map(|l| l.value),
        Some(b"leader".to_vec()),
        "the standby's health names the leader"
    );

    leader.shutdown.cancel();
    let (_, old_work_stopped) = stopped(&mut leader.events).await;
    let (second, new_work_started) = started(&mut standby.events).await;
    assert!(
        old_work_stopped < new_work_started,
        "the standby's work started before the leader's had stopped"
    );
    assert!(second.token() > first.token());
    tokio::time::timeout(BOUND, leader.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let status = leader.health.status();
    assert_eq!((status.role, status.resignations), (Role::Stopped, 1));
    // The old leader's fenced writes are refused now; the new leader's pass.
    assert!(!fenced_put(&first, &client.key("out"), "old").await);
    assert!(fenced_put(&second, &client.key("out"), "new").await);
    standby.shutdown.cancel();
    standby.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_lost_term_cancels_the_work_and_the_runner_campaigns_again_with_a_fresh_session() {
    let client = shared_client("runner_loss").await;
    let mut running = start(&client, "node-1", Duration::from_secs(10));
    let (first, _) = started(&mut running.events).await;

    // The session's lease is revoked behind the runner's back (as if it had expired).
    client
        .lease_revoke(first.session().lease_id())
        .await
        .unwrap();
    let (number, _) = stopped(&mut running.events).await;
    assert_eq!(number, 1);
    assert!(!fenced_put(&first, &client.key("out"), "stale").await);

    let (second, _) = started(&mut running.events).await;
    assert_eq!(second.number(), 2);
    assert!(second.token() > first.token());
    assert_ne!(second.session().lease_id(), first.session().lease_id());
    let status = running.health.status();
    assert_eq!((status.terms_won, status.losses), (2, 1));
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_operator_deleting_the_leader_key_ends_the_term() {
    let client = shared_client("runner_key_deleted").await;
    let mut running = start(&client, "node-1", Duration::from_secs(10));
    let (first, _) = started(&mut running.events).await;

    client.delete(first.ownership().key(), None).await.unwrap();
    stopped(&mut running.events).await;
    let (second, _) = started(&mut running.events).await;
    assert!(second.token() > first.token());
    assert_eq!(running.health.losses(), 1);
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn work_that_returns_resigns_lets_a_standby_lead_and_campaigns_again() {
    let client = shared_client("runner_returns").await;
    // The first term's work returns when told to; later terms wait for cancellation.
    let (tx, mut terms) = mpsc::unbounded_channel();
    let (quit, quit_now) = tokio::sync::oneshot::channel::<()>();
    let quit_now = Arc::new(tokio::sync::Mutex::new(Some(quit_now)));
    let runner = Runner::builder(sessions(&client, Duration::from_secs(60)), "e", "quitter")
        .build()
        .unwrap();
    let health = runner.health();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone(), move |term: Term| {
        let (tx, quit_now) = (tx.clone(), quit_now.clone());
        async move {
            let _ = tx.send(term.number());
            match quit_now.lock().await.take() {
                Some(quit_now) => drop(quit_now.await),
                None => term.cancelled().await,
            }
        }
    }));
    assert_eq!(
        tokio::time::timeout(BOUND, terms.recv()).await.unwrap(),
        Some(1)
    );
    let mut standby = start(&client, "standby", Duration::from_secs(60));
    status_becomes(&standby.health, "a candidate", |s| {
        s.role == Role::Campaigning
    })
    .await;

    quit.send(()).unwrap();
    let (term, _) = started(&mut standby.events).await;
    let leader = coord_leader::leader(&client, "e").await.unwrap().unwrap();
    assert_eq!(leader.token, term.token());
    // The quitter queues again, behind the standby.
    status_becomes(&health, "a candidate again", |s| {
        s.role == Role::Campaigning && s.resignations == 1
    })
    .await;
    common::queue_len_becomes(&client, &client.key("e/"), 2).await;

    standby.shutdown.cancel();
    standby.task.await.unwrap().unwrap();
    assert_eq!(
        tokio::time::timeout(BOUND, terms.recv()).await.unwrap(),
        Some(2)
    );
    assert_eq!(health.terms_won(), 2);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn work_that_ignores_cancellation_is_abandoned_after_the_grace_and_the_runner_resigns() {
    let client = shared_client("runner_stubborn").await;
    let ignored_cancel = Arc::new(AtomicBool::new(false));
    let runner = Runner::builder(sessions(&client, Duration::from_secs(60)), "e", "stubborn")
        .shutdown_grace(Duration::from_millis(200))
        .build()
        .unwrap();
    let health = runner.health();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone(), {
        let ignored_cancel = ignored_cancel.clone();
        move |term: Term| {
            let ignored_cancel = ignored_cancel.clone();
            async move {
                term.cancelled().await;
                ignored_cancel.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
        }
    }));
    status_becomes(&health, "leader", |s| {
        matches!(s.role, Role::Leading { .. })
    })
    .await;

    let asked = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(BOUND, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ignored_cancel.load(Ordering::SeqCst));
    assert!(
        asked.elapsed() >= Duration::from_millis(200),
        "did not wait for the grace"
    );
    assert_eq!(coord_leader::leader(&client, "e").await.unwrap(), None);
}

#[tokio::test]
async fn a_runner_shut_down_while_campaigning_leaves_no_key() {
    let client = shared_client("runner_campaign_shutdown").await;
    let mut leader = start(&client, "leader", Duration::from_secs(60));
    started(&mut leader.events).await;
    let standby = start(&client, "standby", Duration::from_secs(60));
    status_becomes(&standby.health, "a candidate", |s| {
        s.role == Role::Campaigning
    })
    .await;
    common::queue_len_becomes(&client, &client.key("e/"), 2).await;

    standby.shutdown.cancel();
    standby.task.await.unwrap().unwrap();
    common::queue_len_becomes(&client, &client.key("e/"), 1).await;
    leader.shutdown.cancel();
    leader.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_names_and_identities_are_rejected_when_building() {
    let client = shared_client("runner_bad_input").await;
    let build = |name: &str, identity: Vec<u8>| {
        Runner::builder(sessions(&client, Duration::from_secs(10)), name, identity).build()
    };
    assert!(matches!(build("e", Vec::new()), Err(Error::EmptyIdentity)));
    assert!(matches!(
        build("", b"id".to_vec()),
        Err(Error::Core(CoreError::InvalidName { .. }))
    ));
    assert!(matches!(
        build("e", vec![b'x'; coord_leader::MAX_REQUEST_BYTES]),
        Err(Error::ValueTooLarge { .. })
    ));
}

#[tokio::test]
async fn a_session_factory_error_that_retrying_cannot_fix_ends_the_run() {
    let client = shared_client("runner_bad_factory").await;
    let runner = Runner::builder(
        Session::builder(client.clone()).ttl(Duration::ZERO),
        "e",
        "id",
    )
    .build()
    .unwrap();
    let err = tokio::time::timeout(
        BOUND,
        runner.run(CancellationToken::new(), |_term: Term| async {}),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Core(CoreError::InvalidConfig { field: "ttl", .. })
        ),
        "{err:?}"
    );
}

/// Several runners; random leader crashes (lease revoked), operator deletes of the leader key and
/// runner restarts. Every leader writes fenced records as fast as it can. Afterwards, in etcd's
/// history: every accepted write was made by the leader of its revision, and writes of different
/// terms never interleave — at most one term's writes are accepted at any time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_of_different_terms_never_interleave_under_a_random_schedule() {
    let client = shared_client("runner_random").await;
    let log = client.key("log/");
    let spawn_runner = |i: usize| {
        let runner = Runner::builder(
            sessions(&client, Duration::from_secs(10)),
            "e",
            format!("r{i}"),
        )
        .shutdown_grace(Duration::from_secs(2))
        .build()
        .unwrap();
        let shutdown = CancellationToken::new();
        let log = log.clone();
        let task = tokio::spawn(runner.run(shutdown.clone(), move |term: Term| {
            let log = log.clone();
            async move {
                let mut seq = 0u64;
                while !term.is_cancelled() {
                    let key = format!("{log}{:020}-{seq:06}", term.token().revision());
                    let txn = Txn::new().when([term.owns()]).and_then([TxnOp::put(
                        key,
                        term.token().to_string(),
                        None,
                    )]);
                    match term.client().txn(txn).await {
                        Ok(resp) if resp.succeeded() => seq += 1,
                        _ => term.cancelled().await,
                    }
                    tokio::task::yield_now().await;
                }
            }
        }));
        (shutdown, task)
    };
    let mut runners: Vec<_> = (0..3).map(spawn_runner).collect();
    let mut next_id = runners.len();

    let mut rng = Rng::from_env_or_time();
    let until = Instant::now() + Duration::from_secs(4);
    let mut actions = [0; 3];
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20 + rng.below(150))).await;
        let Some(leader) = coord_leader::leader(&client, "e").await.unwrap() else {
            continue;
        };
        let action = rng.below(3) as usize;
        actions[action] += 1;
        match action {
            // The leader crashes: its lease is gone.
            0 => {
                let _ = client.lease_revoke(leader.lease).await;
            }
            // An operator deletes the leader's key.
            1 => {
                client.delete(leader.key.as_bytes(), None).await.unwrap();
            }
            // A runner is shut down and replaced.
            _ => {
                let (shutdown, task) = runners.remove(rng.below(runners.len() as u64) as usize);
                shutdown.cancel();
                tokio::time::timeout(BOUND, task)
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                runners.push(spawn_runner(next_id));
                next_id += 1;
            }
        }
    }
    for (shutdown, task) in runners {
        shutdown.cancel();
        tokio::time::timeout(BOUND, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    let writes = client
        .get(
            log.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend),
            ),
        )
        .await
        .unwrap();
    let mut last: Option<FencingToken> = None;
    let mut terms = 0;
    for kv in writes.kvs() {
        let token = FencingToken::new(std::str::from_utf8(kv.value()).unwrap().parse().unwrap());
        assert!(
            last <= Some(token),
            "a write of an older term was accepted after a newer one"
        );
        if last != Some(token) {
            terms += 1;
            // The writer led at the revision of its first write of the term.
            let at = client
                .get(
                    client.key("e/"),
                    Some(first_by_create().with_revision(kv.create_revision())),
                )
                .await
                .unwrap();
            assert_eq!(
                at.kvs().first().map(|l| l.create_revision()),
                Some(token.revision()),
                "a write was accepted from a candidate that did not lead"
            );
        }
        last = Some(token);
    }
    eprintln!(
        "{} fenced writes in {terms} terms; crashes/deletes/restarts: {actions:?}",
        writes.kvs().len()
    );
    assert!(terms >= 3, "only {terms} terms wrote");
}

/// A leader whose process stalls past its session's deadline (SIGSTOP, a frozen VM, a blocked
/// runtime; here the only thread of the test's runtime sleeps) sees its term ended the moment it
/// looks, before the runner or the keep-alive task has run: the work's `while !term.is_cancelled()`
/// loop stops instead of doing one more round as leader.
#[tokio::test(flavor = "current_thread")]
async fn a_term_is_over_the_moment_a_stalled_leader_looks() {
    let client = shared_client("runner_stalled").await;
    let mut running = start(&client, "node-1", Duration::from_secs(2));
    let (term, _) = started(&mut running.events).await;
    assert!(!term.is_cancelled());

    // The fault: the whole runtime stalls until the session's local deadline has passed.
    let deadline = term.session().deadline().into_std();
    std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));

    assert!(
        term.is_cancelled(),
        "the term still looked alive after the stall"
    );
    // The runner then ends the term for its work too, and campaigns again with a new session.
    assert_eq!(stopped(&mut running.events).await.0, 1);
    let (second, _) = started(&mut running.events).await;
    assert_eq!(second.number(), 2);
    assert!(second.token() > term.token());
    assert!(!fenced_put(&term, &client.key("out"), "stale").await);

    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}
