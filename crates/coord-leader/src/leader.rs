//! Who leads an election: the key with the lowest create revision under its prefix.

use coord_core::etcd_client::KeyValue;
use coord_core::keys::{queue_prefix, validate_name};
use coord_core::queue::first_by_create;
use coord_core::{Client, FencingToken, LeaseId, Ownership};

use crate::Result;

/// The leader of an election, as read by [`leader`] or reported by an observer
/// ([`observe`](crate::observe)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaderInfo {
    /// The leader's key: `namespace + name + "/" + lease hex`.
    pub key: String,
    /// The leader's proposal (the campaign value, or the last proclaimed one).
    pub value: Vec<u8>,
    /// The leader's fencing token: its key's create revision. Tokens of successive leaders
    /// strictly increase.
    pub token: FencingToken,
    /// The lease the leader's key is attached to.
    pub lease: LeaseId,
    /// The etcd revision from which this report holds: the revision of the change that produced
    /// it (the key's creation, its predecessor's removal, or a proclaim) when the observer saw that
    /// change happen; otherwise the revision of the read that found it (a [`leader`] call, an
    /// observer's start, or its re-read after a compaction).
    pub since: i64,
}

impl LeaderInfo {
    pub(crate) fn from_kv(kv: &KeyValue, since: i64) -> LeaderInfo {
        LeaderInfo {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            token: FencingToken::new(kv.create_revision()),
            lease: LeaseId::new(kv.lease()),
            since,
        }
    }

    /// The value as text, when it is UTF-8.
    ///
    /// ```
    /// # fn demo(info: coord_leader::LeaderInfo) {
    /// println!("led by {}", info.value_str().unwrap_or("<binary>"));
    /// # }
    /// ```
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// The leader's ownership (key and token): its `compare()` holds exactly while this leader's
    /// term lasts. Useful to fence a write *on behalf of* an observed leader.
    pub fn ownership(&self) -> Ownership {
        Ownership::new(self.key.clone(), self.token.revision())
    }

    /// The same leader with the same value (`since` aside).
    pub(crate) fn same_state(&self, other: &LeaderInfo) -> bool {
        self.key == other.key && self.token == other.token && self.value == other.value
    }
}

/// The current leader of election `name` (under the client's namespace), or `None` when nobody
/// campaigns. This is one linearizable read; to follow changes, use [`observe`](crate::observe).
///
/// The leader is the key with the lowest create revision under `namespace + name + "/"`, the
/// rule of Go's `Election.Leader` (which reports "no leader" as an error instead).
///
/// # Errors
///
/// [`coord_core::Error::InvalidName`] for an invalid name; transport errors.
///
/// # Cancel safety
///
/// Cancel safe (a read).
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_leader::Result<()> {
/// match coord_leader::leader(&client, "scheduler").await? {
///     Some(info) => println!("{} leads (token {})", info.value_str().unwrap_or("?"), info.token),
///     None => println!("no leader"),
/// }
/// # Ok(()) }
/// ```
pub async fn leader(client: &Client, name: &str) -> Result<Option<LeaderInfo>> {
    validate_name(client.namespace(), name)?;
    read_leader(client, &queue_prefix(client.namespace(), name)).await
}

pub(crate) async fn read_leader(client: &Client, prefix: &str) -> Result<Option<LeaderInfo>> {
    let resp = client.get(prefix, Some(first_by_create())).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    Ok(resp
        .kvs()
        .first()
        .map(|kv| LeaderInfo::from_kv(kv, revision)))
}
