//! A three-member cluster: leader discovery, failover, restart.
// Helpers outside #[test] functions may unwrap like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use coord_testkit::EtcdCluster;

#[tokio::test]
async fn a_killed_leader_is_replaced_and_comes_back_with_the_data() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.endpoints().len(), 3);
    let mut client = cluster.client().await.unwrap();
    client
        .put("k", "written before the failover", None)
        .await
        .unwrap();

    let old = cluster.leader().await.unwrap();
    assert!(old < 3);

    cluster.kill(old).unwrap();
    assert_eq!(cluster.pid(old), None);
    let new = cluster.leader().await.unwrap();
    assert_ne!(new, old);

    cluster.restart(old).await.unwrap();
    let health = health_of(&cluster, old).await;
    assert!(health.contains(r#""health":"true""#), "{health}");

    // Read from the restarted member itself.
    let mut restarted = etcd_client::Client::connect([cluster.endpoint(old).unwrap()], None)
        .await
        .unwrap();
    let reply = restarted.get("k", None).await.unwrap();
    assert_eq!(reply.kvs()[0].value(), b"written before the failover");
}

#[tokio::test]
async fn a_paused_leader_is_replaced_and_catches_up_when_resumed() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let mut client = cluster.client().await.unwrap();
    client.put("k", "before the pause", None).await.unwrap();
    let old = cluster.leader().await.unwrap();
    let pid = cluster.pid(old);

    cluster.pause(old).unwrap();
    // Still there, but silent: its /health does not answer.
    assert_eq!(cluster.pid(old), pid);
    let silent = tokio::time::timeout(Duration::from_secs(1), health_of(&cluster, old)).await;
    assert!(silent.is_err(), "a paused member answered: {silent:?}");
    let new = cluster.leader().await.unwrap();
    assert_ne!(new, old);
    let mut survivor = etcd_client::Client::connect([cluster.endpoint(new).unwrap()], None)
        .await
        .unwrap();
    survivor.put("k", "during the pause", None).await.unwrap();

    cluster.resume(old).await.unwrap();
    // The old leader answers again, as a follower that has caught up.
    let mut resumed = etcd_client::Client::connect([cluster.endpoint(old).unwrap()], None)
        .await
        .unwrap();
    let read = resumed.get("k", None).await.unwrap();
    assert_eq!(read.kvs()[0].value(), b"during the pause");
}

#[tokio::test]
async fn members_restarted_together_regain_a_quorum() {
    let mut cluster = EtcdCluster::builder(3).start().await.unwrap();
    for i in 0..3 {
        cluster.kill(i).unwrap();
    }
    // Alone, member 0 would never become healthy; together with member 1 it has a quorum.
    cluster.restart_without_waiting(0).await.unwrap();
    cluster.restart(1).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    assert!(leader == 0 || leader == 1, "leader {leader}");
}

#[tokio::test]
async fn restarting_a_member_out_of_range_is_an_error() {
    let mut cluster = EtcdCluster::start(1).await.unwrap();
    assert_eq!(cluster.leader().await.unwrap(), 0);
    let error = cluster.restart(5).await.unwrap_err();
    assert!(
        matches!(
            error,
            coord_testkit::Error::NoSuchMember { index: 5, len: 1 }
        ),
        "{error:?}"
    );
}

/// The raw `/health` body of member `i`.
async fn health_of(cluster: &EtcdCluster, i: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = cluster.metrics_url(i).unwrap();
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
