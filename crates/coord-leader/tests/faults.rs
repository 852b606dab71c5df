//! Campaigns across reconnects, compaction and partitions. Each test owns
//! its etcd and a fault proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{BOUND, queue_len_becomes, still_waiting};
use coord_core::{Client, ClientConfig, Session};
use coord_leader::Election;
use coord_testkit::{Etcd, FaultProxy};

async fn clients(etcd: &Etcd, proxy: &FaultProxy) -> (Client, Client) {
    let ns = coord_testkit::unique_namespace("leader_faults");
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

/// Cuts the proxied connections and, while they cannot reconnect, writes and compacts past the
/// revision their watches would resume from; then lets them reconnect.
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
async fn a_waiting_campaign_rederives_its_predecessor_after_compaction() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let (direct, via_proxy) = clients(&etcd, &proxy).await;
    let leader_session = Session::new(direct.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let standby_session = Session::new(via_proxy.clone(), Duration::from_secs(10))
        .await
        .unwrap();

    let leadership = Election::new(&leader_session, "e")
        .unwrap()
        .campaign("leader")
        .await
        .unwrap();
    let standby = Election::new(&standby_session, "e").unwrap();
    let prefix = standby.prefix().to_owned();
    let waiting = tokio::spawn(async move { standby.campaign("standby").await });
    queue_len_becomes(&direct, &prefix, 2).await;

    reconnect_after_compaction(&etcd, &proxy, &direct).await;
    // The leader still leads: the reconnect must not have let the standby in.
    still_waiting(&waiting, Duration::from_millis(500)).await;

    leadership.resign().await.unwrap();
    let next = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("standby lost after compaction")
        .unwrap()
        .unwrap();
    assert_eq!(next.session().lease_id(), standby_session.lease_id());
    assert!(standby_session.is_alive());
}
