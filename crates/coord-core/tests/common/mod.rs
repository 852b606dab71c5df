//! Shared set-up of coord-core's integration tests.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::time::Duration;

use coord_core::{Client, ClientConfig};
use coord_testkit::Etcd;
use etcd_client::{EventType, WatchOptions};

/// A client of the per-binary shared etcd, in a namespace of its own.
pub async fn shared_client(label: &str) -> Client {
    let etcd = coord_testkit::shared().await.expect("shared etcd");
    client_of(etcd, label).await
}

/// A client of `etcd`, in a namespace of its own.
pub async fn client_of(etcd: &Etcd, label: &str) -> Client {
    ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace(label))
        .connect()
        .await
        .expect("connect")
}

/// Waits (bounded by `within`, a failure bound only) for `key` to be deleted, watching from
/// `after_revision + 1`.
pub async fn wait_deleted(client: &Client, key: &str, after_revision: i64, within: Duration) {
    let mut watch = client.etcd().watch_client();
    let mut stream = watch
        .watch(
            key,
            Some(WatchOptions::new().with_start_revision(after_revision + 1)),
        )
        .await
        .expect("watch");
    let deleted = async {
        while let Some(resp) = stream.message().await.expect("watch stream") {
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return;
            }
        }
        panic!("watch ended before the delete");
    };
    tokio::time::timeout(within, deleted)
        .await
        .expect("key was not deleted in time");
}
