//! Election behaviour against a real etcd (one shared server for this binary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::{Duration, Instant};

use common::{BOUND, median, queue, queue_len_becomes, session, shared_client, still_waiting};
use coord_core::etcd_client::{GetOptions, Txn, TxnOp};
use coord_core::keys::lease_key;
use coord_core::{Error as CoreError, NameError};
use coord_leader::{Election, Error, Leadership};

async fn campaign_in_background(
    election: &Election,
    value: &'static str,
) -> tokio::task::JoinHandle<coord_leader::Result<Leadership>> {
    let election = election.clone();
    tokio::spawn(async move { election.campaign(value).await })
}

async fn joined(
    task: tokio::task::JoinHandle<coord_leader::Result<Leadership>>,
) -> coord_leader::Result<Leadership> {
    tokio::time::timeout(BOUND, task)
        .await
        .expect("campaign did not finish")
        .unwrap()
}

#[tokio::test]
async fn campaign_writes_the_go_key_with_the_value_and_the_lease() {
    let client = shared_client("election_key").await;
    let s = session(&client).await;
    let leadership = Election::new(&s, "sched")
        .unwrap()
        .campaign("node-1")
        .await
        .unwrap();

    let expected = lease_key(client.namespace(), "sched", s.lease_id());
    assert_eq!(leadership.key(), expected);
    let kv = client.get(expected.clone(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.value(), b"node-1");
    assert_eq!(kv.lease(), s.lease_id().get());
    assert_eq!(leadership.token().revision(), kv.create_revision());
}

#[tokio::test]
async fn resign_removes_the_key_and_the_next_candidate_leads() {
    let client = shared_client("election_resign").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let first = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
    let standby = Election::new(&b, "e").unwrap();
    let waiting = campaign_in_background(&standby, "b").await;
    queue_len_becomes(&client, standby.prefix(), 2).await;
    still_waiting(&waiting, Duration::from_millis(200)).await;

    let first_key = first.key().to_owned();
    first.resign().await.unwrap();
    let second = joined(waiting).await.unwrap();
    assert_eq!(second.key(), standby.key());
    assert_eq!(queue(&client, standby.prefix()).await, vec![second.key()]);
    assert!(client.get(first_key, None).await.unwrap().kvs().is_empty());
}

/// The hand-off after a resign is one delete, one watch event and the new leader's own-key read:
/// it must not wait for etcd's 100 ms unsynced-watcher loop, let alone a TTL.
#[tokio::test]
async fn a_standby_leads_within_a_round_trip_of_the_resign() {
    let client = shared_client("election_handoff").await;
    let mut rtts = Vec::new();
    for _ in 0..11 {
        let start = Instant::now();
        client.get(client.key("rtt"), None).await.unwrap();
        rtts.push(start.elapsed());
    }
    let rtt = median(rtts);

    let mut handoffs = Vec::new();
    for _ in 0..5 {
        let (a, b) = (session(&client).await, session(&client).await);
        let leader = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
        let standby = Election::new(&b, "e").unwrap();
        let waiting = campaign_in_background(&standby, "b").await;
        queue_len_becomes(&client, standby.prefix(), 2).await;
        still_waiting(&waiting, Duration::from_millis(150)).await;

        leader.resign().await.unwrap();
        let resigned = Instant::now();
        let next = joined(waiting).await.unwrap();
        handoffs.push(resigned.elapsed());
        next.resign().await.unwrap();
        a.close().await.unwrap();
        b.close().await.unwrap();
    }
    let handoff = median(handoffs.clone());
    eprintln!("round trip {rtt:?}; hand-offs after the resign returned: {handoffs:?}");
    assert!(
        handoff < rtt * 3 + Duration::from_millis(15),
        "median hand-off {handoff:?} vs round trip {rtt:?}"
    );
}

#[tokio::test]
async fn leadership_passes_in_campaign_order() {
    let client = shared_client("election_fifo").await;
    let (a, b, c) = (
        session(&client).await,
        session(&client).await,
        session(&client).await,
    );
    let leader = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
    let (eb, ec) = (
        Election::new(&b, "e").unwrap(),
        Election::new(&c, "e").unwrap(),
    );
    let b_wait = campaign_in_background(&eb, "b").await;
    queue_len_becomes(&client, eb.prefix(), 2).await;
    let c_wait = campaign_in_background(&ec, "c").await;
    queue_len_becomes(&client, eb.prefix(), 3).await;

    leader.resign().await.unwrap();
    let b_leads = joined(b_wait).await.unwrap();
    assert_eq!(b_leads.session().lease_id(), b.lease_id());
    still_waiting(&c_wait, Duration::from_millis(200)).await;
    b_leads.resign().await.unwrap();
    let c_leads = joined(c_wait).await.unwrap();
    assert_eq!(c_leads.session().lease_id(), c.lease_id());
}

#[tokio::test]
async fn tokens_increase_with_every_term() {
    let client = shared_client("election_tokens").await;
    let s = session(&client).await;
    let election = Election::new(&s, "e").unwrap();
    let mut last = None;
    for _ in 0..3 {
        let leadership = election.campaign("x").await.unwrap();
        if let Some(last) = last {
            assert!(leadership.token() > last);
        }
        last = Some(leadership.token());
        leadership.resign().await.unwrap();
    }
}

#[tokio::test]
async fn leader_reports_the_lowest_create_revision_and_none_when_empty() {
    let client = shared_client("election_leader").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let ea = Election::new(&a, "e").unwrap();
    assert_eq!(ea.leader().await.unwrap(), None);
    assert_eq!(coord_leader::leader(&client, "e").await.unwrap(), None);

    let leadership = ea.campaign("a").await.unwrap();
    let eb = Election::new(&b, "e").unwrap();
    let _waiting = campaign_in_background(&eb, "b").await;
    queue_len_becomes(&client, eb.prefix(), 2).await;

    let info = coord_leader::leader(&client, "e").await.unwrap().unwrap();
    assert_eq!(info.key, leadership.key());
    assert_eq!(info.value_str(), Some("a"));
    assert_eq!(info.token, leadership.token());
    assert_eq!(info.lease, a.lease_id());
    assert!(info.since >= info.token.revision());
}

#[tokio::test]
async fn a_dropped_campaign_removes_its_key() {
    let client = shared_client("election_cancel").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let leader = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
    let standby = Election::new(&b, "e").unwrap();
    let waiting = campaign_in_background(&standby, "b").await;
    queue_len_becomes(&client, standby.prefix(), 2).await;

    waiting.abort();
    queue_len_becomes(&client, standby.prefix(), 1).await;
    assert_eq!(
        queue(&client, standby.prefix()).await,
        vec![leader.key().to_owned()]
    );
    assert!(b.is_alive());
}

#[tokio::test]
async fn a_campaign_aborts_when_its_own_session_expires() {
    let client = shared_client("election_waiter_lost").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let leader = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
    let standby = Election::new(&b, "e").unwrap();
    let waiting = campaign_in_background(&standby, "b").await;
    queue_len_becomes(&client, standby.prefix(), 2).await;

    // The standby's lease expires behind its back; the leader keeps leading all along. Go's
    // Campaign would keep waiting and then return a phantom leadership (etcd #19597).
    client.lease_revoke(b.lease_id()).await.unwrap();
    let err = joined(waiting).await.unwrap_err();
    assert!(err.is_session_lost(), "{err:?}");
    assert_eq!(
        queue(&client, standby.prefix()).await,
        vec![leader.key().to_owned()]
    );
}

#[tokio::test]
async fn a_candidate_whose_key_was_removed_never_becomes_a_phantom_leader() {
    let client = shared_client("election_phantom").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let leader = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
    let standby = Election::new(&b, "e").unwrap();
    let waiting = campaign_in_background(&standby, "b").await;
    queue_len_becomes(&client, standby.prefix(), 2).await;

    // An operator removes the waiting candidate; then the leader resigns.
    client.delete(standby.key(), None).await.unwrap();
    leader.resign().await.unwrap();
    let err = joined(waiting).await.unwrap_err();
    assert!(matches!(err, Error::NotLeader { .. }), "{err:?}");
    assert!(b.is_alive());
    assert!(queue(&client, standby.prefix()).await.is_empty());
}

#[tokio::test]
async fn campaigning_again_with_another_value_keeps_the_place_and_proclaims_it() {
    let client = shared_client("election_again").await;
    let s = session(&client).await;
    // The same lease campaigned before from Go (the server's Campaign RPC).
    let mut go = client.etcd().election_client();
    let go_leader = go
        .campaign(client.key("e"), "old", s.lease_id().get())
        .await
        .unwrap();
    let go_rev = go_leader.leader().unwrap().rev();

    let leadership = Election::new(&s, "e")
        .unwrap()
        .campaign("new")
        .await
        .unwrap();
    assert_eq!(leadership.token().revision(), go_rev);
    let kv = client.get(leadership.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.create_revision()),
        (b"new".as_slice(), go_rev)
    );
}

#[tokio::test]
async fn two_campaigns_on_one_session_are_serialised() {
    let client = shared_client("election_local").await;
    let s = session(&client).await;
    let first = Election::new(&s, "e").unwrap();
    let second = Election::new(&s, "e").unwrap();

    let leadership = first.campaign("one").await.unwrap();
    let waiting = campaign_in_background(&second, "two").await;
    still_waiting(&waiting, Duration::from_millis(300)).await;

    let first_token = leadership.token();
    leadership.resign().await.unwrap();
    let next = joined(waiting).await.unwrap();
    assert!(next.token() > first_token);
    let kv = client.get(next.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.value(), b"two");
}

#[tokio::test]
async fn proclaim_replaces_the_value_while_leading() {
    let client = shared_client("election_proclaim").await;
    let s = session(&client).await;
    let leadership = Election::new(&s, "e")
        .unwrap()
        .campaign("v1")
        .await
        .unwrap();
    leadership.proclaim("v2").await.unwrap();
    let kv = client.get(leadership.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.value(), b"v2");
    assert_eq!(kv.create_revision(), leadership.token().revision());
    assert_eq!(kv.lease(), s.lease_id().get());
}

#[tokio::test]
async fn proclaim_after_loss_reports_not_leader_and_writes_nothing() {
    let client = shared_client("election_proclaim_lost").await;
    let s = session(&client).await;
    let leadership = Election::new(&s, "e")
        .unwrap()
        .campaign("v1")
        .await
        .unwrap();
    client.delete(leadership.key(), None).await.unwrap();

    let err = leadership.proclaim("v2").await.unwrap_err();
    assert!(matches!(err, Error::NotLeader { .. }), "{err:?}");
    assert!(
        client
            .get(leadership.key(), None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );
}

#[tokio::test]
async fn a_stale_resign_never_deletes_a_newer_key_of_the_same_session() {
    let client = shared_client("election_stale_resign").await;
    let s = session(&client).await;
    let election = Election::new(&s, "e").unwrap();
    let old = election.campaign("old").await.unwrap();
    let key = old.key().to_owned();

    // The key vanishes and the same lease campaigns again from Go, re-creating the same key.
    client.delete(key.clone(), None).await.unwrap();
    let mut go = client.etcd().election_client();
    go.campaign(client.key("e"), "newer", s.lease_id().get())
        .await
        .unwrap();

    assert!(matches!(old.resign().await, Err(Error::NotLeader { .. })));
    assert_eq!(
        client.get(key, None).await.unwrap().kvs()[0].value(),
        b"newer",
        "the newer key was deleted"
    );
}

#[tokio::test]
async fn lost_resolves_when_the_key_is_deleted() {
    let client = shared_client("election_lost_key").await;
    let s = session(&client).await;
    let leadership = Election::new(&s, "e").unwrap().campaign("v").await.unwrap();
    {
        let lost = leadership.lost();
        tokio::pin!(lost);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut lost)
                .await
                .is_err()
        );
        client.delete(leadership.key(), None).await.unwrap();
        tokio::time::timeout(BOUND, lost)
            .await
            .expect("loss not reported");
    }
    assert!(matches!(
        leadership.resign().await,
        Err(Error::NotLeader { .. })
    ));
}

#[tokio::test]
async fn lost_resolves_when_the_session_ends() {
    let client = shared_client("election_lost_session").await;
    let s = session(&client).await;
    let leadership = Election::new(&s, "e").unwrap().campaign("v").await.unwrap();
    client.lease_revoke(s.lease_id()).await.unwrap();
    tokio::time::timeout(BOUND, leadership.lost())
        .await
        .expect("loss not reported");
}

#[tokio::test]
async fn dropping_a_leadership_resigns() {
    let client = shared_client("election_drop").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let leadership = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
    let standby = Election::new(&b, "e").unwrap();
    let waiting = campaign_in_background(&standby, "b").await;
    queue_len_becomes(&client, standby.prefix(), 2).await;

    drop(leadership);
    let next = joined(waiting).await.unwrap();
    assert_eq!(next.key(), standby.key());
    assert!(a.is_alive());
}

#[tokio::test]
async fn a_paused_leaders_fenced_write_is_rejected_while_the_new_leaders_succeeds() {
    let client = shared_client("election_fencing").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let target = client.key("protected");
    let fenced_put = |leadership: &Leadership, value: &'static str| {
        Txn::new()
            .when([leadership.owns()])
            .and_then([TxnOp::put(target.clone(), value, None)])
    };

    let paused = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
    let standby = Election::new(&b, "e").unwrap();
    let waiting = campaign_in_background(&standby, "b").await;

    // "a" stalls long enough for its lease to expire (simulated by revoking it) …
    client.lease_revoke(a.lease_id()).await.unwrap();
    let new_leader = joined(waiting).await.unwrap();
    assert!(new_leader.token() > paused.token());

    // … then wakes up, still "leading", and writes: rejected.
    let stale = client.txn(fenced_put(&paused, "from a")).await.unwrap();
    assert!(!stale.succeeded());
    let fresh = client.txn(fenced_put(&new_leader, "from b")).await.unwrap();
    assert!(fresh.succeeded());
    assert_eq!(
        client.get(target, None).await.unwrap().kvs()[0].value(),
        b"from b"
    );
}

async fn nothing_written(client: &coord_core::Client) {
    let everything = client
        .get(
            client.namespace(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(everything.count(), 0);
}

#[tokio::test]
async fn invalid_names_are_rejected_before_anything_is_written() {
    let client = shared_client("election_names").await;
    let s = session(&client).await;
    for (name, expected) in [
        ("", NameError::Empty),
        ("a\0b", NameError::NulByte { offset: 1 }),
        ("jobs/", NameError::TrailingSlash),
    ] {
        match Election::new(&s, name) {
            Err(Error::Core(CoreError::InvalidName { reason, .. })) => assert_eq!(reason, expected),
            other => panic!("{name:?}: expected InvalidName, got {other:?}"),
        }
        assert!(matches!(
            coord_leader::leader(&client, name).await,
            Err(Error::Core(CoreError::InvalidName { .. }))
        ));
        assert!(matches!(
            coord_leader::observe(&client, name).await,
            Err(Error::Core(CoreError::InvalidName { .. }))
        ));
    }
    nothing_written(&client).await;
}

#[tokio::test]
async fn values_over_the_limit_are_rejected_before_anything_is_written() {
    let client = shared_client("election_too_large").await;
    let s = session(&client).await;
    let election = Election::new(&s, "e").unwrap();
    let max = election.max_value_len();
    match election.campaign(vec![b'x'; max + 1]).await {
        Err(Error::ValueTooLarge { len, max: reported }) => {
            assert_eq!((len, reported), (max + 1, max));
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    nothing_written(&client).await;

    let leadership = election.campaign("small").await.unwrap();
    assert!(matches!(
        leadership.proclaim(vec![b'x'; max + 1]).await,
        Err(Error::ValueTooLarge { .. })
    ));
    let kv = client.get(leadership.key(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.value(), b"small");
}

#[tokio::test]
async fn a_value_of_the_maximum_length_is_accepted_by_etcd() {
    let client = shared_client("election_max_value").await;
    let s = session(&client).await;
    let election = Election::new(&s, "e").unwrap();
    let value = vec![b'x'; election.max_value_len()];
    let leadership = election.campaign(value.clone()).await.unwrap();
    leadership.proclaim(value.clone()).await.unwrap();
    let info = election.leader().await.unwrap().unwrap();
    assert_eq!(info.value.len(), value.len());
}
