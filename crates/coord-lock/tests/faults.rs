//! Waits across reconnects and compaction. Each test owns its etcd and a fault proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{BOUND, queue, queue_len_becomes};
use coord_core::{Client, ClientConfig, Session};
use coord_lock::{Limit, Mutex, Semaphore};
use coord_testkit::{Etcd, FaultProxy};

async fn clients(etcd: &Etcd, proxy: &FaultProxy) -> (Client, Client) {
    let ns = coord_testkit::unique_namespace("lock_faults");
    let direct = ClientConfig::new(etcd.endpoints())
        .with_namespace(ns.clone())
        .connect()
        .await
        .unwrap();
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(ns)
        .connect()
        .await
        .unwrap();
    (direct, via_proxy)
}

/// Cuts the waiter's connections, and while it cannot reconnect, writes and compacts past the
/// revision its watch would resume from; then lets it reconnect.
async fn reconnect_after_compaction(etcd: &Etcd, proxy: &FaultProxy, direct: &Client) {
    proxy.blackhole();
    proxy.cut();
    for i in 0..5 {
        direct
            .put(direct.key("noise"), i.to_string(), None)
            .await
            .unwrap();
    }
    etcd.compact().await.unwrap();
    proxy.heal();
}

#[tokio::test]
async fn a_mutex_waiter_rederives_its_predecessor_after_compaction() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let (direct, via_proxy) = clients(&etcd, &proxy).await;
    let holder = Session::new(direct.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let waiter = Session::new(via_proxy.clone(), Duration::from_secs(10))
        .await
        .unwrap();

    let guard = Mutex::new(&holder, "l").unwrap().lock().await.unwrap();
    let mutex = Mutex::new(&waiter, "l").unwrap();
    let prefix = mutex.prefix().to_owned();
    let waiting = tokio::spawn(async move { mutex.lock().await });
    queue_len_becomes(&direct, &prefix, 2).await;

    reconnect_after_compaction(&etcd, &proxy, &direct).await;
    // The holder still holds: the waiter must not have been let in by the reconnect.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), async {
            while !waiting.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_err()
    );

    guard.unlock().await.unwrap();
    let got = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("waiter lost after compaction")
        .unwrap();
    got.unwrap().unlock().await.unwrap();
    assert!(waiter.is_alive());
}

#[tokio::test]
async fn a_semaphore_waiter_survives_reconnects_and_compaction() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let (direct, via_proxy) = clients(&etcd, &proxy).await;
    let holder = Session::new(direct.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let waiter = Session::new(via_proxy.clone(), Duration::from_secs(10))
        .await
        .unwrap();

    let permit = Semaphore::new(&holder, "s", Limit::Fixed(1))
        .unwrap()
        .acquire()
        .await
        .unwrap();
    let sem = Semaphore::new(&waiter, "s", Limit::Fixed(1)).unwrap();
    let prefix = sem.prefix().to_owned();
    let waiting = tokio::spawn(async move { sem.acquire().await });
    queue_len_becomes(&direct, &prefix, 2).await;

    reconnect_after_compaction(&etcd, &proxy, &direct).await;
    permit.release().await.unwrap();
    let got = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("waiter lost after compaction")
        .unwrap();
    got.unwrap().release().await.unwrap();
}

/// The empty-queue transaction's answer is lost after etcd applied it: the retry finds the queue
/// busy (with the caller's own key), Go's transaction finds that key as this call's own, and the
/// lock is taken with it — one key, no second entry, and nothing left after the unlock.
#[tokio::test]
async fn a_lock_whose_empty_queue_answer_is_lost_takes_it_with_its_one_key() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let (direct, via_proxy) = clients(&etcd, &proxy).await;
    let session = Session::new(via_proxy.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let mutex = Mutex::new(&session, "l").unwrap();
    let prefix = mutex.prefix().to_owned();

    proxy.delay(Duration::from_millis(500));
    let locking = tokio::spawn({
        let mutex = mutex.clone();
        async move { mutex.lock().await }
    });
    // The put is applied; its answer waits in the proxy until the connection is reset.
    queue_len_becomes(&direct, &prefix, 1).await;
    proxy.cut();
    proxy.heal();

    let guard = tokio::time::timeout(BOUND, locking)
        .await
        .expect("lock after a lost answer")
        .unwrap()
        .unwrap();
    assert_eq!(queue(&direct, &prefix).await, vec![mutex.key().to_owned()]);
    let kv = direct.get(mutex.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(guard.token().revision(), kv.create_revision());
    guard.unlock().await.unwrap();
    queue_len_becomes(&direct, &prefix, 0).await;
    assert!(session.is_alive());
}

/// Storage-level range operations of an isolated server, where nothing else reads: a
/// transaction's compares and reads count here, during the apply, so before its answer (etcd's
/// proposal gauges are set after the answer, and a scrape can miss the last write).
async fn ranges(etcd: &Etcd) -> f64 {
    let scrape = coord_testkit::bench::metrics::Scrape::parse(&etcd.metrics().await.unwrap());
    match scrape.sum("etcd_mvcc_range_total", &[]) {
        0.0 => scrape.sum("etcd_debugging_mvcc_range_total", &[]),
        n => n,
    }
}

/// The empty-queue transaction costs a request (and a raft proposal) when it fails; the process
/// remembers a busy queue, so that `Mutex::new(..)?.try_lock()` on a held lock pays that once,
/// not every time, and an idle lock is taken without the read again once it is found empty.
#[tokio::test]
async fn a_busy_queue_costs_the_empty_queue_attempt_once() {
    let etcd = Etcd::start().await.unwrap();
    let client = ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace("lock_busy"))
        .connect()
        .await
        .unwrap();
    let (holder, other) = (
        Session::new(client.clone(), Duration::from_secs(10))
            .await
            .unwrap(),
        Session::new(client.clone(), Duration::from_secs(10))
            .await
            .unwrap(),
    );
    let held = Mutex::new(&holder, "l").unwrap().lock().await.unwrap();

    // First try on the busy lock: the empty-queue attempt (fails; its compare is 1 range), Go's
    // transaction (compare and read, 2 ranges), the guarded removal (1 range).
    let before = ranges(&etcd).await;
    let refused = Mutex::new(&other, "l").unwrap().try_lock().await;
    assert!(matches!(refused, Err(coord_lock::Error::WouldBlock { .. })));
    assert_eq!(ranges(&etcd).await - before, 4.0);
    // Later tries, through new `Mutex` values: Go's transaction and the removal only.
    for _ in 0..2 {
        let before = ranges(&etcd).await;
        let refused = Mutex::new(&other, "l").unwrap().try_lock().await;
        assert!(matches!(refused, Err(coord_lock::Error::WouldBlock { .. })));
        assert_eq!(ranges(&etcd).await - before, 3.0);
    }

    // Free again: Go's transaction finds the queue empty (2 ranges), and from then on the
    // empty-queue transaction takes it (1 range); each unlock's guard is 1 range.
    held.unlock().await.unwrap();
    for expected in [3.0, 2.0, 2.0] {
        let before = ranges(&etcd).await;
        let guard = Mutex::new(&other, "l").unwrap().lock().await.unwrap();
        guard.unlock().await.unwrap();
        assert_eq!(ranges(&etcd).await - before, expected);
    }
}

/// Range requests an isolated server has answered (the unary `Range` RPC only: transactions,
/// watches and their catch-ups are not counted).
async fn range_requests(etcd: &Etcd) -> f64 {
    let scrape = coord_testkit::bench::metrics::Scrape::parse(&etcd.metrics().await.unwrap());
    scrape.sum("grpc_server_handled_total", &[("grpc_method", "Range")])
}

/// A semaphore's waits make no read request (docs/design/semaphore.md §2): a first waiter and a
/// waiter behind it, each granted in turn by a hand-off, with no `Range` RPC from their enqueue to
/// their release. Before, a wait read the key it watched whenever a write had landed between its
/// start revision and its watch's creation (here: once; under load, on almost every wait).
#[tokio::test]
async fn semaphore_waits_send_no_read_requests() {
    let etcd = Etcd::builder()
        .arg("--metrics=extensive")
        .start()
        .await
        .unwrap();
    let client = ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace("sem_no_reads"))
        .connect()
        .await
        .unwrap();
    let session = || Session::new(client.clone(), Duration::from_secs(10));
    let (a, b, c) = (
        session().await.unwrap(),
        session().await.unwrap(),
        session().await.unwrap(),
    );
    let semaphore = |s: &Session| Semaphore::new(s, "s", Limit::Fixed(1)).unwrap();
    let prefix = semaphore(&a).prefix().to_owned();
    let held = semaphore(&a).acquire().await.unwrap();
    let first = tokio::spawn({
        let s = semaphore(&b);
        async move { s.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 2).await;
    let behind = tokio::spawn({
        let s = semaphore(&c);
        async move { s.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 3).await;

    let before = range_requests(&etcd).await;
    held.release().await.unwrap();
    let granted = tokio::time::timeout(BOUND, first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    granted.release().await.unwrap();
    let last = tokio::time::timeout(BOUND, behind)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    last.release().await.unwrap();
    assert_eq!(range_requests(&etcd).await - before, 0.0);
}
