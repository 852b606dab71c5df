//! Key prefixes that keep tests sharing one server out of each other's way.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// A key prefix no other call (in this or any other process) returns:
/// `coord-test/<label>/<pid>-<counter>-<random>/`.
///
/// Tests that share a server (see [`shared`](crate::shared())) put all their keys
/// under their own namespace, so they can run concurrently and leave nothing a
/// later test could trip over. Characters of `label` other than ASCII letters,
/// digits, `-`, `_` and `.` are replaced by `_`, so the label is always exactly
/// one path segment. The result always ends with `/`.
///
/// # Examples
///
/// ```
/// let a = coord_testkit::unique_namespace("lock");
/// let b = coord_testkit::unique_namespace("lock");
/// assert!(a.starts_with("coord-test/lock/") && a.ends_with('/'));
/// assert_ne!(a, b);
/// ```
pub fn unique_namespace(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "coord-test/{label}/{}-{counter}-{:08x}/",
        std::process::id(),
        random_u32()
    )
}

/// Randomness without a dependency: std's per-instance random hasher keys, mixed with the clock.
/// The pid and counter already make the prefix unique; this guards against pid reuse across runs
/// against a long-lived server.
fn random_u32() -> u32 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_is_always_one_segment() {
        let ns = unique_namespace("a/b c");
        assert!(ns.starts_with("coord-test/a_b_c/"), "{ns}");
        assert_eq!(ns.matches('/').count(), 3, "{ns}");
    }
}
