//! The fault proxy: forwarding, partitions, resets, latency.
// Helpers outside #[test] functions may unwrap like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use coord_testkit::{FaultProxy, shared, unique_namespace};
use etcd_client::Client;

/// Long enough that a forwarded request would have completed, short enough to keep the suite fast.
const WOULD_HAVE_COMPLETED: Duration = Duration::from_millis(300);

async fn client_through(proxy: &FaultProxy) -> Client {
    Client::connect([proxy.endpoint()], None).await.unwrap()
}

#[tokio::test]
async fn requests_through_the_proxy_reach_the_server() {
    let etcd = shared().await.unwrap();
    let ns = unique_namespace("proxy_forwards");
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    assert_eq!(proxy.upstream(), etcd.client_addr());

    let mut via_proxy = client_through(&proxy).await;
    via_proxy.put(format!("{ns}k"), "v", None).await.unwrap();

    let mut direct = etcd.client().await.unwrap();
    let reply = direct.get(format!("{ns}k"), None).await.unwrap();
    assert_eq!(reply.kvs()[0].value(), b"v");
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn a_blackhole_holds_a_request_and_heal_lets_that_same_request_complete() {
    let etcd = shared().await.unwrap();
    let ns = unique_namespace("proxy_blackhole");
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let mut client = client_through(&proxy).await;
    client.put(format!("{ns}k"), "v", None).await.unwrap();

    proxy.blackhole();
    let get = client.get(format!("{ns}k"), None);
    tokio::pin!(get);
    assert!(
        tokio::time::timeout(WOULD_HAVE_COMPLETED, &mut get)
            .await
            .is_err(),
        "a request went through a blackhole"
    );

    proxy.heal();
    let reply = get.await.unwrap();
    assert_eq!(reply.kvs()[0].value(), b"v");
}

#[tokio::test]
async fn a_connection_opened_during_a_blackhole_reaches_the_server_only_after_heal() {
    let etcd = shared().await.unwrap();
    let ns = unique_namespace("proxy_blackhole_new");
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    proxy.blackhole();

    let mut client = client_through(&proxy).await;
    let put = client.put(format!("{ns}k"), "v", None);
    tokio::pin!(put);
    assert!(
        tokio::time::timeout(WOULD_HAVE_COMPLETED, &mut put)
            .await
            .is_err()
    );
    assert_eq!(
        proxy.connections(),
        1,
        "the connection is accepted and held"
    );

    proxy.heal();
    put.await.unwrap();
}

#[tokio::test]
async fn cut_resets_every_connection() {
    let etcd = shared().await.unwrap();
    let ns = unique_namespace("proxy_cut");
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let mut client = client_through(&proxy).await;
    let mut watch = client.watch(format!("{ns}k"), None).await.unwrap();
    assert!(watch.message().await.unwrap().unwrap().created());
    assert_eq!(proxy.connections(), 1);

    proxy.cut();

    assert_eq!(proxy.connections(), 0);
    let next = watch.message().await;
    assert!(next.is_err(), "the watch survived a reset: {next:?}");
}

#[tokio::test]
async fn after_a_cut_new_connections_are_forwarded() {
    let etcd = shared().await.unwrap();
    let ns = unique_namespace("proxy_after_cut");
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    client_through(&proxy)
        .await
        .put(format!("{ns}k"), "1", None)
        .await
        .unwrap();

    proxy.cut();

    let mut client = client_through(&proxy).await;
    client.put(format!("{ns}k"), "2", None).await.unwrap();
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn delay_adds_at_least_the_delay_to_a_round_trip() {
    let etcd = shared().await.unwrap();
    let ns = unique_namespace("proxy_delay");
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let mut client = client_through(&proxy).await;
    client.put(format!("{ns}k"), "v", None).await.unwrap();

    let delay = Duration::from_millis(200);
    proxy.delay(delay);
    let started = Instant::now();
    client.get(format!("{ns}k"), None).await.unwrap();
    assert!(started.elapsed() >= delay, "took {:?}", started.elapsed());
}

#[test]
fn the_proxy_outlives_the_runtime_that_started_it() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (proxy, ns) = first.block_on(async {
        let etcd = shared().await.unwrap();
        (
            FaultProxy::start(etcd.client_addr()).await.unwrap(),
            unique_namespace("proxy_runtimes"),
        )
    });
    drop(first);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let mut client = client_through(&proxy).await;
        client.put(format!("{ns}k"), "v", None).await.unwrap();
    });
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let etcd = shared().await.unwrap();
    let ns = unique_namespace("proxy_drop");
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let mut client = client_through(&proxy).await;
    let mut watch = client.watch(format!("{ns}k"), None).await.unwrap();
    assert!(watch.message().await.unwrap().unwrap().created());

    drop(proxy);

    let next = watch.message().await;
    assert!(!matches!(next, Ok(Some(_))), "the watch survived: {next:?}");
}
