//! Writes: an unconditional put, and compare-and-set on the key's mod revision with retries on
//! conflict (design.md §3, "Config").

use coord_core::etcd_client::{Compare, CompareOp, Txn, TxnOp};
use coord_core::{Client, RetryPolicy};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::Codec;
use super::error::ConfigError;

/// The result of a successful write.
///
/// ```no_run
/// # async fn demo(config: coord_discovery::config::Config<u64>) -> Result<(), coord_discovery::config::ConfigError> {
/// let written = config.update(|n| n + 1).await?;
/// println!("{} written at revision {}", written.value, written.revision);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Written<T> {
    /// The value written.
    pub value: T,
    /// The revision of the write (the key's new mod revision).
    pub revision: i64,
}

/// The default retry policy of compare-and-set: conflicts are short-lived, so start small.
pub(crate) fn conflict_policy() -> RetryPolicy {
    RetryPolicy::new()
        .with_min_delay(std::time::Duration::from_millis(2))
        .with_max_delay(std::time::Duration::from_millis(200))
}

pub(crate) async fn put<T: Serialize + DeserializeOwned>(
    client: &Client,
    codec: &Codec<T>,
    key: &str,
    value: T,
) -> Result<Written<T>, ConfigError> {
    let bytes = codec.prepare(key, &value)?;
    let put = client.put(key, bytes, None).await?;
    let revision = put.header().map_or(0, |h| h.revision());
    Ok(Written { value, revision })
}

/// Read, compute, write if unchanged (`mod_revision == seen`, or `create_revision == 0` for an
/// absent key); on conflict back off and start over. A failed txn is not retried: it may have
/// been applied, and retrying would apply `f` twice.
pub(crate) async fn compare_and_set<T, F>(
    client: &Client,
    codec: &Codec<T>,
    retry: &RetryPolicy,
    key: &str,
    mut f: F,
) -> Result<Written<T>, ConfigError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> T,
{
    let mut backoff = retry.backoff();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let read = client.get(key, None).await?;
        let (new, compare) = match read.kvs().first() {
            Some(kv) => {
                let old = codec.accept(key, kv.value(), kv.mod_revision())?;
                let compare = Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision());
                (f(Some(old)), compare)
            }
            None => (f(None), Compare::create_revision(key, CompareOp::Equal, 0)),
        };
        let bytes = codec.prepare(key, &new)?;
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, bytes, None)]);
        let resp = client.txn(txn).await?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            return Ok(Written {
                value: new,
                revision,
            });
        }
        let Some(delay) = backoff.next() else {
            return Err(ConfigError::Conflict {
                key: key.to_owned(),
                attempts,
            });
        };
        tracing::debug!(
            key,
            attempts,
            ?delay,
            "config: update lost a compare-and-set; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}
