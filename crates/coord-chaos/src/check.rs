//! The invariant checkers. They read etcd's final state through the unfaulted observer (the log
//! keys every accepted fenced write left, the counter) and compare it with the history (what
//! clients were told). Every finding is a human-readable violation.

use std::collections::{BTreeMap, HashSet};

use coord_core::Client;
use coord_core::etcd_client::GetOptions;

use crate::actors::LogRecord;
use crate::history::{Op, OpKind, Outcome};

/// One log key found in etcd: a fenced write that etcd applied.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key (without the namespace).
    pub key: String,
    /// The revision of the write (each log key is written once).
    pub revision: i64,
    /// What was written.
    pub record: LogRecord,
}

/// Reads every log key under `prefix` (below the namespace), in revision order.
///
/// # Errors
///
/// When etcd cannot be read, or a value is not a [`LogRecord`].
pub async fn read_log(observer: &Client, prefix: &str) -> Result<Vec<Entry>, String> {
    let full = observer.key(prefix);
    let read = observer
        .get(full.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("reading {full}: {e}"))?;
    let mut entries = Vec::with_capacity(read.kvs().len());
    for kv in read.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let key = key
            .strip_prefix(observer.namespace())
            .unwrap_or(&key)
            .to_owned();
        let record: LogRecord = serde_json::from_slice(kv.value())
            .map_err(|e| format!("{key}: not a log record: {e}"))?;
        if kv.version() != 1 {
            return Err(format!("{key} was written {} times", kv.version()));
        }
        entries.push(Entry {
            key,
            revision: kv.mod_revision(),
            record,
        });
    }
    entries.sort_by_key(|e| e.revision);
    Ok(entries)
}

/// What the exclusive check found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terms {
    /// Distinct tokens (holders, terms) with at least one applied write.
    pub terms: usize,
    /// The most writes of one term.
    pub max_writes_per_term: usize,
}

/// Exclusive ownership (Mutex, Election): in revision order the tokens of applied writes never
/// decrease — a holder's writes are never interleaved with another's, and a newer holder's
/// write is never followed by an older one's — and every token belongs to one client.
pub fn exclusive(what: &str, entries: &[Entry], violations: &mut Vec<String>) -> Terms {
    let mut owner: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
    for pair in entries.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.record.token < before.record.token {
            violations.push(format!(
                "{what}: {} (token {}, client {}) applied at revision {} after {} (token {}, client {}) at revision {}: two holders' writes interleave",
                after.key, after.record.token, after.record.client, after.revision,
                before.key, before.record.token, before.record.client, before.revision,
            ));
        }
    }
    for entry in entries {
        let slot = owner
            .entry(entry.record.token)
            .or_insert((entry.record.client, 0));
        slot.1 += 1;
        if slot.0 != entry.record.client {
            violations.push(format!(
                "{what}: token {} used by clients {} and {}",
                entry.record.token, slot.0, entry.record.client
            ));
        }
    }
    Terms {
        terms: owner.len(),
        max_writes_per_term: owner.values().map(|(_, n)| *n).max().unwrap_or(0),
    }
}

/// The fenced counter: the values written, in revision order, are exactly 1, 2, …, n (an
/// overlap of two holders would write one value twice and lose an increment), and the counter
/// in etcd is n.
pub fn counter(entries: &[Entry], stored: u64, violations: &mut Vec<String>) {
    for (i, entry) in entries.iter().enumerate() {
        let expected = i as u64 + 1;
        if entry.record.value != Some(expected) {
            violations.push(format!(
                "mutex: {} at revision {} wrote counter {:?}, expected {expected} (lost or doubled increment)",
                entry.key, entry.revision, entry.record.value
            ));
            break;
        }
    }
    if stored != entries.len() as u64 {
        violations.push(format!(
            "mutex: the counter is {stored} but {} fenced increments were applied",
            entries.len()
        ));
    }
}

/// The semaphore: a permit's writes span `[first, last]` revision of its token; its key existed
/// over that whole span, so at no revision may more than `limit` spans overlap. Returns the
/// largest overlap.
pub fn limited(entries: &[Entry], limit: u32, violations: &mut Vec<String>) -> usize {
    let mut spans: BTreeMap<i64, (i64, i64, usize)> = BTreeMap::new();
    for entry in entries {
        let span = spans.entry(entry.record.token).or_insert((
            entry.revision,
            entry.revision,
            entry.record.client,
        ));
        span.0 = span.0.min(entry.revision);
        span.1 = span.1.max(entry.revision);
    }
    // Starts sort before ends at the same revision: spans are inclusive.
    let mut edges: Vec<(i64, i32, i64)> = Vec::new();
    for (token, (first, last, _)) in &spans {
        edges.push((*first, 0, *token));
        edges.push((*last, 1, *token));
    }
    edges.sort();
    let (mut open, mut max) = (HashSet::new(), 0usize);
    let mut reported = false;
    for (revision, edge, token) in edges {
        if edge == 0 {
            open.insert(token);
            max = max.max(open.len());
            if open.len() > limit as usize && !reported {
                reported = true;
                let mut holders: Vec<String> = open
                    .iter()
                    .map(|t| format!("token {t} (client {})", spans.get(t).map_or(0, |s| s.2)))
                    .collect();
                holders.sort();
                violations.push(format!(
                    "semaphore: {} permits wrote over revision {revision} with limit {limit}: {}",
                    open.len(),
                    holders.join(", ")
                ));
            }
        } else {
            open.remove(&token);
        }
    }
    max
}

/// What clients were told vs what etcd applied: an acknowledged write must be in etcd, a
/// rejected one must not, and a write after a pause that outlived the holder's key must not.
pub fn acknowledged(ops: &[Op], applied: &HashSet<String>, violations: &mut Vec<String>) {
    for op in ops {
        let Some(key) = &op.key else { continue };
        let present = applied.contains(key);
        match (op.kind, op.outcome) {
            (OpKind::StaleWrite, _) if present => violations.push(format!(
                "client {}: {key} was applied although written after a pause that outlived the holder's key (outcome {:?})",
                op.client, op.outcome
            )),
            (OpKind::StaleWrite, _) => {}
            (_, Outcome::Ok) if !present => violations.push(format!(
                "client {}: {key} ({:?}) was acknowledged but is not in etcd",
                op.client, op.kind
            )),
            (_, Outcome::Rejected) if present => violations.push(format!(
                "client {}: {key} ({:?}) was rejected but is in etcd",
                op.client, op.kind
            )),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(revision: i64, client: usize, token: i64, value: Option<u64>) -> Entry {
        Entry {
            key: format!("log/{revision}"),
            revision,
            record: LogRecord {
                client,
                token,
                value,
            },
        }
    }

    #[test]
    fn interleaved_holders_are_a_violation() {
        let mut v = Vec::new();
        exclusive(
            "x",
            &[
                entry(10, 0, 5, None),
                entry(11, 1, 8, None),
                entry(12, 0, 5, None),
            ],
            &mut v,
        );
        assert_eq!(v.len(), 1, "{v:?}");
        let mut v = Vec::new();
        let terms = exclusive(
            "x",
            &[
                entry(10, 0, 5, None),
                entry(11, 0, 5, None),
                entry(12, 1, 8, None),
            ],
            &mut v,
        );
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(terms.terms, 2);
    }

    #[test]
    fn a_doubled_increment_is_a_violation() {
        let mut v = Vec::new();
        counter(
            &[entry(10, 0, 5, Some(1)), entry(11, 1, 8, Some(1))],
            1,
            &mut v,
        );
        assert_eq!(v.len(), 2, "{v:?}");
        let mut v = Vec::new();
        counter(
            &[entry(10, 0, 5, Some(1)), entry(11, 1, 8, Some(2))],
            2,
            &mut v,
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn more_overlapping_permits_than_the_limit_is_a_violation() {
        let three = [
            entry(10, 0, 1, None),
            entry(11, 1, 2, None),
            entry(12, 2, 3, None),
            entry(13, 0, 1, None),
            entry(14, 1, 2, None),
        ];
        let mut v = Vec::new();
        assert_eq!(limited(&three, 2, &mut v), 3);
        assert_eq!(v.len(), 1, "{v:?}");
        let two = [
            entry(10, 0, 1, None),
            entry(11, 1, 2, None),
            entry(12, 0, 1, None),
            entry(13, 2, 3, None),
        ];
        let mut v = Vec::new();
        assert_eq!(limited(&two, 2, &mut v), 2);
        assert!(v.is_empty(), "{v:?}");
    }
}
