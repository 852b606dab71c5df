//! Campaigns, observers and runners across reconnects, compaction and partitions. Each test owns
//! its etcd and a fault proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::{Duration, Instant};

use common::{BOUND, queue_len_becomes, still_waiting};
use coord_core::etcd_client::{Txn, TxnOp};
use coord_core::{Client, ClientConfig, Session};
use coord_leader::{CancellationToken, Election, Runner, Term};
use coord_testkit::{Etcd, FaultProxy};
use tokio::sync::mpsc;

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

/// The observer's stream breaks while the leader changes; with `compact` the revision it would
/// resume from is compacted too. Either way it ends up reporting the new leader.
async fn observer_follows_a_change_made_while_it_was_cut_off(compact: bool) {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let (direct, via_proxy) = clients(&etcd, &proxy).await;
    let (a, b) = (
        Session::new(direct.clone(), Duration::from_secs(10))
            .await
            .unwrap(),
        Session::new(direct.clone(), Duration::from_secs(10))
            .await
            .unwrap(),
    );
    let first = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
    let mut observed = coord_leader::observe(&via_proxy, "e").await.unwrap();
    assert_eq!(
        observed.borrow().as_ref().map(|l| l.key.clone()),
        Some(first.key().to_owned())
    );

    proxy.blackhole();
    proxy.cut();
    let standby = Election::new(&b, "e").unwrap();
    let waiting = tokio::spawn({
        let standby = standby.clone();
        async move { standby.campaign("b").await }
    });
    queue_len_becomes(&direct, standby.prefix(), 2).await;
    first.resign().await.unwrap();
    let second = tokio::time::timeout(BOUND, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    if compact {
        etcd.compact().await.unwrap();
    }
    // Cut off, the observer cannot know yet.
    assert!(!observed.has_changed().unwrap());
    proxy.heal();

    let now = tokio::time::timeout(
        BOUND,
        observed.wait_for(|l| l.as_ref().is_some_and(|l| l.key == second.key())),
    )
    .await
    .expect("the observer never caught up")
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(now.token, second.token());

    // And it keeps following: the last candidate leaves.
    second.resign().await.unwrap();
    tokio::time::timeout(BOUND, observed.wait_for(Option::is_none))
        .await
        .expect("no-leader not reported after the reconnect")
        .unwrap();
}

#[tokio::test]
async fn an_observer_resumes_after_a_reconnect() {
    observer_follows_a_change_made_while_it_was_cut_off(false).await;
}

#[tokio::test]
async fn an_observer_reads_again_after_compaction() {
    observer_follows_a_change_made_while_it_was_cut_off(true).await;
}

/// The leader's process is cut off from etcd (its connection blackholed: a crash, as far as etcd
/// can tell). Its runner cancels the work when the session declares loss — before the server can
/// expire the lease — and the standby leads once the server has expired it: within the TTL plus
/// etcd's expiry tick and a hand-off.
#[tokio::test]
async fn a_cut_off_leaders_work_is_cancelled_before_the_standbys_first_fenced_write() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let (direct, via_proxy) = clients(&etcd, &proxy).await;
    let ttl = Duration::from_secs(3);
    let (events, mut seen) = mpsc::unbounded_channel();
    let target = direct.key("fenced");
    let spawn_runner = |client: &Client, identity: &'static str| {
        let runner = Runner::builder(Session::builder(client.clone()).ttl(ttl), "e", identity)
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        let (events, target) = (events.clone(), target.clone());
        let task = tokio::spawn(runner.run(shutdown.clone(), move |term: Term| {
            let (events, target) = (events.clone(), target.clone());
            async move {
                let write = Txn::new()
                    .when([term.owns()])
                    .and_then([TxnOp::put(target, identity, None)]);
                if term.client().txn(write).await.is_ok_and(|r| r.succeeded()) {
                    let _ = events.send((identity, "wrote", Instant::now()));
                }
                term.cancelled().await;
                let _ = events.send((identity, "cancelled", Instant::now()));
            }
        }));
        (shutdown, task)
    };
    let (leader_shutdown, leader) = spawn_runner(&via_proxy, "leader");
    assert_eq!(next_event(&mut seen).await.0, "leader");
    let (standby_shutdown, standby) = spawn_runner(&direct, "standby");
    queue_len_becomes(&direct, &direct.key("e/"), 2).await;

    let cut = Instant::now();
    proxy.blackhole();
    let (who, what, cancelled_at) = next_event(&mut seen).await;
    assert_eq!((who, what), ("leader", "cancelled"));
    let (who, what, wrote_at) = next_event(&mut seen).await;
    assert_eq!((who, what), ("standby", "wrote"));
    assert!(cancelled_at < wrote_at);
    let failover = wrote_at - cut;
    eprintln!(
        "TTL {ttl:?}: leader cancelled {:?} after the cut, standby wrote {failover:?} after it",
        cancelled_at - cut
    );
    assert!(
        failover <= ttl + Duration::from_secs(2),
        "failover took {failover:?}"
    );
    assert_eq!(
        direct.get(target.clone(), None).await.unwrap().kvs()[0].value(),
        b"standby"
    );

    proxy.heal();
    for (shutdown, task) in [(leader_shutdown, leader), (standby_shutdown, standby)] {
        shutdown.cancel();
        tokio::time::timeout(BOUND, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

type Event = (&'static str, &'static str, Instant);

async fn next_event(seen: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(BOUND, seen.recv())
        .await
        .expect("no event")
        .expect("channel closed")
}
