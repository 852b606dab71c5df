//! The instances the bench registers, and their stored form written without coord (for the raw
//! baselines and the bulk set-up), checked byte for byte against what `register` writes.

use coord_core::etcd_client::GetOptions;
use coord_core::{Client, Session};
use coord_discovery::service::{Instance, Status, register};
use serde::Serialize;

use crate::Meta;

/// Instance `i`: an address, a zone, a weight and a small typed payload, as a real service has.
pub(crate) fn instance(id: &str, i: u64) -> Instance<Meta> {
    Instance::new(
        id,
        format!(
            "10.{}.{}.{}:8080",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        ),
        Meta {
            shard: (i % 64) as u32,
            grpc: true,
        },
    )
    .with_zone(format!("zone-{}", i % 3))
    .with_weight(100)
}

/// Go's `naming/endpoints` record with coord's metadata object inside, field for field in the
/// order `coord_discovery::service`'s encoder writes them (`docs/wire-format.md`).
#[derive(Serialize)]
struct Stored<'a> {
    #[serde(rename = "Op")]
    op: u8,
    #[serde(rename = "Addr")]
    addr: &'a str,
    #[serde(rename = "Metadata")]
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    coord: u32,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    payload: &'a Meta,
}

/// The value `register` stores for `instance`.
pub(crate) fn encode(instance: &Instance<Meta>) -> Vec<u8> {
    serde_json::to_vec(&Stored {
        op: 0,
        addr: &instance.addr,
        metadata: Metadata {
            coord: 1,
            status: instance.status,
            zone: instance.zone.as_deref(),
            weight: instance.weight,
            version: instance.version.as_deref(),
            payload: &instance.metadata,
        },
    })
    .expect("encode")
}

/// Registers a few instances with `register` under `service` and checks that [`encode`] writes
/// exactly the same bytes; panics otherwise.
pub(crate) async fn check_encoding(client: &Client, service: &str) {
    let session = Session::new(client.clone(), std::time::Duration::from_secs(30))
        .await
        .expect("session");
    for i in [0u64, 1, 4_097, 9_999] {
        let id = format!("check-{i}");
        let registration = register(&session, service, instance(&id, i))
            .await
            .expect("register");
        let stored = client
            .get(registration.key(), None)
            .await
            .expect("read back");
        let kv = stored.kvs().first().expect("registered key");
        assert_eq!(
            String::from_utf8_lossy(kv.value()),
            String::from_utf8_lossy(&encode(&instance(&id, i))),
            "the bench's encoding differs from register's"
        );
        assert_eq!(
            kv.lease(),
            session.lease_id().get(),
            "register attaches the lease"
        );
        registration.deregister().await.expect("deregister");
    }
    let left = client
        .get(
            client.key(&format!("{service}/")),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!(left.count(), 0);
    session.close().await.expect("close session");
}
