//! Interop with Go: the etcd server's Campaign/Proclaim/Resign/Leader RPCs run Go's
//! `concurrency.Election`, and `etcdctl elect` (when one is on PATH, or named by
//! `COORD_ETCDCTL_BIN`) is a real Go client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{BOUND, queue, queue_len_becomes, session, shared_client, still_waiting};
use coord_core::etcd_client::{ProclaimOptions, ResignOptions};
use coord_core::keys::lease_key;
use coord_leader::{Election, Error};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

#[tokio::test]
async fn a_go_leader_blocks_our_campaign_until_it_resigns() {
    let client = shared_client("interop_go_first").await;
    let (go_session, ours) = (session(&client).await, session(&client).await);
    let election = Election::new(&ours, "e").unwrap();

    let mut go = client.etcd().election_client();
    let go_leader = go
        .campaign(client.key("e"), "go", go_session.lease_id().get())
        .await
        .unwrap();
    let go_key = go_leader.leader().unwrap().clone();
    assert_eq!(
        go_key.key(),
        lease_key(client.namespace(), "e", go_session.lease_id()).as_bytes()
    );

    let waiting = tokio::spawn({
        let election = election.clone();
        async move { election.campaign("ours").await }
    });
    queue_len_becomes(&client, election.prefix(), 2).await;
    still_waiting(&waiting, Duration::from_millis(200)).await;
    let info = election.leader().await.unwrap().unwrap();
    assert_eq!(
        (info.key.as_bytes(), info.value.as_slice()),
        (go_key.key(), b"go".as_slice())
    );

    go.resign(Some(ResignOptions::new().with_leader(go_key)))
        .await
        .unwrap();
    let leadership = tokio::time::timeout(BOUND, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(leadership.key(), election.key());
}

#[tokio::test]
async fn our_leader_blocks_a_go_campaign_until_we_resign() {
    let client = shared_client("interop_ours_first").await;
    let (go_session, ours) = (session(&client).await, session(&client).await);
    let election = Election::new(&ours, "e").unwrap();
    let leadership = election.campaign("ours").await.unwrap();

    let (name, lease) = (client.key("e"), go_session.lease_id().get());
    let mut go = client.etcd().election_client();
    let go_wait = tokio::spawn(async move { go.campaign(name, "go", lease).await });
    queue_len_becomes(&client, election.prefix(), 2).await;
    still_waiting(&go_wait, Duration::from_millis(200)).await;

    // The server's Leader RPC (Go's Election.Leader) sees our candidate and value.
    let mut go = client.etcd().election_client();
    let seen = go.leader(client.key("e")).await.unwrap();
    let kv = seen.kv().unwrap();
    assert_eq!(
        (kv.key(), kv.value()),
        (election.key().as_bytes(), b"ours".as_slice())
    );

    leadership.resign().await.unwrap();
    let go_leader = tokio::time::timeout(BOUND, go_wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        go_leader.leader().unwrap().key(),
        lease_key(client.namespace(), "e", go_session.lease_id()).as_bytes()
    );
}

#[tokio::test]
async fn go_sees_our_proclaim_and_we_see_gos() {
    let client = shared_client("interop_proclaim").await;
    let (go_session, ours) = (session(&client).await, session(&client).await);

    let leadership = Election::new(&ours, "ours")
        .unwrap()
        .campaign("v1")
        .await
        .unwrap();
    leadership.proclaim("v2").await.unwrap();
    let mut go = client.etcd().election_client();
    let seen = go.leader(client.key("ours")).await.unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"v2");

    let go_leader = go
        .campaign(client.key("go"), "g1", go_session.lease_id().get())
        .await
        .unwrap();
    let mut observed = coord_leader::observe(&client, "go").await.unwrap();
    assert_eq!(observed.borrow().as_ref().unwrap().value, b"g1");
    go.proclaim(
        "g2",
        Some(ProclaimOptions::new().with_leader(go_leader.leader().unwrap().clone())),
    )
    .await
    .unwrap();
    let now = tokio::time::timeout(
        BOUND,
        observed.wait_for(|l| l.as_ref().is_some_and(|l| l.value == b"g2")),
    )
    .await
    .expect("our observer missed Go's proclaim")
    .unwrap()
    .clone()
    .unwrap();
    assert_eq!(now.token.revision(), go_leader.leader().unwrap().rev());
}

#[tokio::test]
async fn a_go_resign_of_our_key_ends_our_leadership() {
    let client = shared_client("interop_go_resigns").await;
    let ours = session(&client).await;
    let leadership = Election::new(&ours, "e")
        .unwrap()
        .campaign("v")
        .await
        .unwrap();

    // Go's Resign with our leader key (name, key, rev, lease), as another tool would send it.
    let key = coord_core::etcd_client::LeaderKey::new()
        .with_name(client.key("e"))
        .with_key(leadership.key())
        .with_rev(leadership.token().revision())
        .with_lease(ours.lease_id().get());
    let mut go = client.etcd().election_client();
    go.resign(Some(ResignOptions::new().with_leader(key)))
        .await
        .unwrap();

    tokio::time::timeout(BOUND, leadership.lost())
        .await
        .expect("loss not reported");
    assert!(matches!(
        leadership.resign().await,
        Err(Error::NotLeader { .. })
    ));
}

fn etcdctl(endpoints: &[String]) -> Option<Command> {
    let Some(binary) = coord_testkit::etcdctl_binary() else {
        eprintln!(
            "etcdctl not found (PATH or COORD_ETCDCTL_BIN): skipping the etcdctl interop check"
        );
        return None;
    };
    let mut command = Command::new(binary);
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    Some(command)
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(BOUND, lines.next_line())
        .await
        .expect("etcdctl printed nothing")
        .unwrap()
        .expect("etcdctl's output ended")
}

async fn terminate(child: &Child) {
    let pid = child.id().expect("etcdctl still running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

/// `etcdctl elect <name> <proposal>` campaigns, prints the leader key and value once elected, and
/// resigns on SIGTERM.
#[tokio::test]
async fn etcdctl_elect_and_our_candidates_take_turns() {
    let etcd = coord_testkit::shared().await.unwrap();
    let Some(mut command) = etcdctl(&etcd.endpoints()) else {
        return;
    };
    let client = shared_client("interop_etcdctl_elect").await;
    let ours = session(&client).await;
    let election = Election::new(&ours, "e").unwrap();
    let leadership = election.campaign("ours").await.unwrap();

    let mut child = command
        .arg("elect")
        .arg(client.key("e"))
        .arg("from-etcdctl")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    queue_len_becomes(&client, election.prefix(), 2).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lines.next_line())
            .await
            .is_err(),
        "etcdctl claimed leadership while we lead"
    );

    leadership.resign().await.unwrap();
    let key = next_line(&mut lines).await;
    assert_eq!(next_line(&mut lines).await, "from-etcdctl");
    assert_eq!(queue(&client, election.prefix()).await, vec![key.clone()]);
    assert!(key.starts_with(election.prefix()));

    // Now we wait behind etcdctl; its SIGTERM handler resigns, so we lead long before its
    // session's 60 s TTL could run out.
    let waiting = tokio::spawn({
        let election = election.clone();
        async move { election.campaign("ours again").await }
    });
    queue_len_becomes(&client, election.prefix(), 2).await;
    still_waiting(&waiting, Duration::from_millis(200)).await;
    terminate(&child).await;
    let leadership = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("etcdctl did not resign")
        .unwrap()
        .unwrap();
    assert_eq!(leadership.key(), election.key());
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `etcdctl elect -l <name>` prints the key and value of each leader Go's Observe reports.
#[tokio::test]
async fn etcdctl_elect_listen_sees_our_leader_and_proclaims() {
    let etcd = coord_testkit::shared().await.unwrap();
    let Some(mut command) = etcdctl(&etcd.endpoints()) else {
        return;
    };
    let client = shared_client("interop_etcdctl_listen").await;
    let ours = session(&client).await;
    let leadership = Election::new(&ours, "e")
        .unwrap()
        .campaign("v1")
        .await
        .unwrap();

    let mut child = command
        .args(["elect", "-l"])
        .arg(client.key("e"))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut lines).await, leadership.key());
    assert_eq!(next_line(&mut lines).await, "v1");

    leadership.proclaim("v2").await.unwrap();
    assert_eq!(next_line(&mut lines).await, leadership.key());
    assert_eq!(next_line(&mut lines).await, "v2");
    drop(child);
}
