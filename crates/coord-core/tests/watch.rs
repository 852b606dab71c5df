//! `watch::wait_deleted` against a real etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{client_of, shared_client};
use coord_core::watch::wait_deleted;
use coord_core::{ClientConfig, Error};
use coord_testkit::{Etcd, FaultProxy};

const BOUND: Duration = Duration::from_secs(20); // failure bound only

#[tokio::test]
async fn returns_the_revision_of_the_delete_and_ignores_puts() {
    let client = shared_client("wait_deleted").await;
    let key = client.key("k");
    let rev = client
        .put(key.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let waiter = tokio::spawn({
        let (client, key) = (client.clone(), key.clone());
        async move { wait_deleted(&client, key, rev + 1).await }
    });
    client.put(key.clone(), "2", None).await.unwrap();
    let deleted = client
        .delete(key, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let got = tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, deleted);
}

#[tokio::test]
async fn a_delete_before_the_wait_started_is_still_seen() {
    let client = shared_client("wait_deleted_past").await;
    let key = client.key("k");
    let rev = client
        .put(key.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let deleted = client
        .delete(key.clone(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let got = tokio::time::timeout(BOUND, wait_deleted(&client, key, rev + 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, deleted);
}

#[tokio::test]
async fn a_compacted_start_revision_is_reported() {
    let etcd = Etcd::start().await.unwrap();
    let client = client_of(&etcd, "compacted").await;
    let key = client.key("k");
    let rev = client
        .put(key.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.put(client.key("other"), "x", None).await.unwrap();
    client.put(client.key("other"), "y", None).await.unwrap();
    etcd.compact().await.unwrap();

    let err = tokio::time::timeout(BOUND, wait_deleted(&client, key, rev + 1))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, Error::Compacted { requested, .. } if requested == rev + 1),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_wait_survives_a_reset_connection() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = client_of(&etcd, "reset").await;
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(direct.namespace())
        .connect()
        .await
        .unwrap();
    let key = direct.key("k");
    let rev = direct
        .put(key.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let waiter = tokio::spawn({
        let key = key.clone();
        async move { wait_deleted(&via_proxy, key, rev + 1).await }
    });
    // Let the watch be established through the proxy before cutting it.
    let established = async {
        while proxy.connections() == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(BOUND, established).await.unwrap();
    proxy.cut();
    let deleted = direct
        .delete(key, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let got = tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, deleted);
}
