//! Fencing: proving, inside a write, that you still own what you acquired.
//!
//! A lock's loss signal is only an early warning: a process can be paused (GC, swap, a stopped VM)
//! between checking that it holds a lock and writing, and wake up after another process took over.
//! The only guarantee that survives such pauses is to make the write itself conditional on
//! ownership, in the same etcd transaction (see `docs/architecture.md`, "Failure semantics").
//!
//! Every acquired thing in coord (lock guard, permit, leadership, registration) exposes an
//! [`Ownership`]: the key it wrote and that key's `create_revision`. The key exists with that
//! create revision exactly as long as the holder owns it; a re-created key (after expiry and a new
//! acquisition, even by the same process) gets a new, larger revision.

use etcd_client::{Compare, CompareOp};

/// A fencing token: the `create_revision` of the key that represents a holder.
///
/// Tokens of successive holders of the same lock strictly increase, so a downstream system that
/// remembers the largest token it has seen can reject writes from older holders.
///
/// ```
/// use coord_core::FencingToken;
///
/// let older = FencingToken::new(41);
/// let newer = FencingToken::new(57);
/// assert!(older < newer);
/// assert_eq!(newer.revision(), 57);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(i64);

impl FencingToken {
    /// Wraps a create revision.
    pub const fn new(revision: i64) -> FencingToken {
        FencingToken(revision)
    }

    /// The create revision.
    pub const fn revision(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The proof of ownership of an acquired key: the full key and its create revision.
///
/// Use [`Ownership::compare`] in your own transaction to make a write conditional on still owning:
///
/// ```no_run
/// # async fn demo(client: coord_core::Client, ownership: coord_core::Ownership) -> coord_core::Result<()> {
/// use etcd_client::{Txn, TxnOp};
///
/// let txn = Txn::new()
///     .when([ownership.compare()])
///     .and_then([TxnOp::put("jobs/last-run", "2026-11-28", None)]);
/// let resp = client.txn(txn).await?;
/// if !resp.succeeded() {
///     // Someone else owns it now: the write was not applied.
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ownership {
    key: Vec<u8>,
    token: FencingToken,
}

impl Ownership {
    /// Ownership of `key` as created at `create_revision`.
    pub fn new(key: impl Into<Vec<u8>>, create_revision: i64) -> Ownership {
        Ownership {
            key: key.into(),
            token: FencingToken(create_revision),
        }
    }

    /// The full key (namespace included).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The key as text, when it is UTF-8 (coord's own keys always are).
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }

    /// The fencing token.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// `create_revision(key) == token`: true exactly while this holder still owns the key.
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.token.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_keeps_key_and_token() {
        let o = Ownership::new("ns/lock/abc", 12);
        assert_eq!(o.key(), b"ns/lock/abc");
        assert_eq!(o.key_str(), Some("ns/lock/abc"));
        assert_eq!(o.token(), FencingToken::new(12));
    }
}
