//! Waits across reconnects and compaction. Each test owns its etcd and a fault proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{BOUND, queue_len_becomes};
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
