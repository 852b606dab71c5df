//! Interop with Go: the etcd server's Lock RPC runs Go's `concurrency.Mutex`, and `etcdctl lock`
//! (when one is on PATH, or named by `COORD_ETCDCTL_BIN`) is a real Go client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{BOUND, queue, queue_len_becomes, session, shared_client};
use coord_core::etcd_client::LockOptions;
use coord_lock::{Error, Mutex};

#[tokio::test]
async fn a_go_holder_excludes_ours_until_it_unlocks() {
    let client = shared_client("interop_go_first").await;
    let (go_session, ours) = (session(&client).await, session(&client).await);
    let mutex = Mutex::new(&ours, "shared").unwrap();

    let mut go = client.etcd().lock_client();
    let go_lock = go
        .lock(
            client.key("shared"),
            Some(LockOptions::new().with_lease(go_session.lease_id().get())),
        )
        .await
        .unwrap();

    assert!(matches!(
        mutex.try_lock().await,
        Err(Error::WouldBlock { .. })
    ));
    let waiting = tokio::spawn({
        let mutex = mutex.clone();
        async move { mutex.lock().await }
    });
    queue_len_becomes(&client, mutex.prefix(), 2).await;
    assert!(!waiting.is_finished());

    go.unlock(go_lock.key()).await.unwrap();
    let guard = tokio::time::timeout(BOUND, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(guard.key(), mutex.key());
    guard.unlock().await.unwrap();
}

#[tokio::test]
async fn our_holder_excludes_a_go_waiter_until_we_unlock() {
    let client = shared_client("interop_ours_first").await;
    let (go_session, ours) = (session(&client).await, session(&client).await);
    let mutex = Mutex::new(&ours, "shared").unwrap();
    let guard = mutex.lock().await.unwrap();

    let name = client.key("shared");
    let lease = go_session.lease_id().get();
    let mut go = client.etcd().lock_client();
    let go_wait = tokio::spawn(async move {
        go.lock(name, Some(LockOptions::new().with_lease(lease)))
            .await
    });
    queue_len_becomes(&client, mutex.prefix(), 2).await;
    assert!(!go_wait.is_finished(), "Go took a lock we hold");
    assert_eq!(queue(&client, mutex.prefix()).await[0], mutex.key());

    guard.unlock().await.unwrap();
    let go_lock = tokio::time::timeout(BOUND, go_wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        std::str::from_utf8(go_lock.key()).unwrap(),
        coord_core::keys::lease_key(client.namespace(), "shared", go_session.lease_id())
    );
}

/// `etcdctl lock <name> <cmd>` runs `cmd` while holding the lock (Go client, session TTL 10 s).
#[tokio::test]
async fn etcdctl_lock_and_ours_exclude_each_other() {
    let Some(etcdctl) = coord_testkit::etcdctl_binary() else {
        eprintln!(
            "etcdctl not found (PATH or COORD_ETCDCTL_BIN): skipping the etcdctl interop check"
        );
        return;
    };
    let etcd = coord_testkit::shared().await.unwrap();
    let client = shared_client("interop_etcdctl").await;
    let ours = session(&client).await;
    let mutex = Mutex::new(&ours, "shared").unwrap();
    let guard = mutex.lock().await.unwrap();

    // etcdctl queues behind us and runs `true` once it holds the lock.
    let mut child = tokio::process::Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoints().join(",")))
        .arg("lock")
        .arg(client.key("shared"))
        .arg("true")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    queue_len_becomes(&client, mutex.prefix(), 2).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "etcdctl got a lock we hold"
    );

    guard.unlock().await.unwrap();
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());

    // And the other way round: while etcdctl holds the lock, ours cannot have it. Its command
    // finishes by creating a marker file; etcdctl unlocks only after the command has exited.
    let marker = std::env::temp_dir().join(format!("coord-etcdctl-marker-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let mut holder = tokio::process::Command::new(coord_testkit::etcdctl_binary().unwrap())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoints().join(",")))
        .arg("lock")
        .arg(client.key("shared"))
        .args([
            "--",
            "sh",
            "-c",
            &format!("sleep 1; touch {}", marker.display()),
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    queue_len_becomes(&client, mutex.prefix(), 1).await;
    assert!(matches!(
        mutex.try_lock().await,
        Err(Error::WouldBlock { .. })
    ));
    let guard = tokio::time::timeout(BOUND, mutex.lock())
        .await
        .unwrap()
        .unwrap();
    assert!(
        marker.exists(),
        "we got the lock before etcdctl's command had finished"
    );
    guard.unlock().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), holder.wait()).await;
    let _ = std::fs::remove_file(&marker);
}
