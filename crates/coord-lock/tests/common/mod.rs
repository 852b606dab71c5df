//! Shared set-up of coord-lock's integration tests.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::time::Duration;

use coord_core::etcd_client::GetOptions;
use coord_core::{Client, ClientConfig, Session};

/// Failure bound for waits on events; never a timing assertion.
pub const BOUND: Duration = Duration::from_secs(20);

/// A client of the per-binary shared etcd, in a namespace of its own.
pub async fn shared_client(label: &str) -> Client {
    let etcd = coord_testkit::shared().await.expect("shared etcd");
    ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace(label))
        .connect()
        .await
        .expect("connect")
}

pub async fn session(client: &Client) -> Session {
    Session::new(client.clone(), Duration::from_secs(10))
        .await
        .expect("session")
}

/// Waits, by watching the prefix, until exactly `n` keys are under it.
pub async fn queue_len_becomes(client: &Client, prefix: &str, n: usize) {
    coord_testkit::wait_for_key_count(client.etcd(), prefix, n, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Keys under the prefix in create order.
pub async fn queue(client: &Client, prefix: &str) -> Vec<String> {
    let read = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_sort(
                coord_core::etcd_client::SortTarget::Create,
                coord_core::etcd_client::SortOrder::Ascend,
            )),
        )
        .await
        .unwrap();
    read.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}
