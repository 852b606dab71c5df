//! Entry points for the fuzz targets under `fuzz/` (docs/fuzzing.md). **Not a stable API**:
//! hidden from the docs, may change or go away in any release; do not call it from other code.
//!
//! Every function takes arbitrary bytes, never panics by contract, and returns `Err` with a
//! description when a checked property does not hold (the fuzz target turns that into a crash).
//! The tests at the bottom run the committed corpus (`fuzz/corpus/<target>/`) through the same
//! checks, so a plain `cargo test` exercises them without cargo-fuzz.

use crate::MAX_LIMIT;
use crate::semaphore::{Record, parse_limit};

/// A violated property, described.
pub type Violation = String;

/// Semaphore metadata other writers control: a holder key's value (`Record::decode`: anything
/// that is not a record is `None`, i.e. counted as a holder) and the stored limit
/// (`parse_limit`: a decimal in `1..=MAX_LIMIT`, surrounding blanks allowed, anything else the
/// default).
///
/// Checks: neither panics; a decoded record re-encodes to a value that decodes to the same
/// record; the limit is the default exactly when the text is not such a decimal, else that
/// number; a record built from the input's text (holder, `by`) round-trips.
///
/// # Errors
///
/// A description of the violated property.
pub fn semaphore_metadata(data: &[u8]) -> Result<(), Violation> {
    if let Some(record) = Record::decode(data) {
        let again = Record::decode(&record.encode());
        if again.as_ref() != Some(&record) {
            return Err(format!(
                "{record:?} re-encodes as {:?}, which decodes to {again:?}",
                String::from_utf8_lossy(&record.encode())
            ));
        }
    }

    let default = 7;
    let limit = parse_limit(Some(data), default);
    let expected = std::str::from_utf8(data)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'+'))
        .and_then(|t| t.parse::<u32>().ok())
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .unwrap_or(default);
    if limit != expected {
        return Err(format!(
            "limit {:?} parsed as {limit}, expected {expected}",
            String::from_utf8_lossy(data)
        ));
    }
    if parse_limit(None, default) != default {
        return Err("no stored limit must give the default".to_owned());
    }

    let text = String::from_utf8_lossy(data);
    let (holder, by) = text.split_once('\n').unwrap_or((&text, ""));
    let by = (!by.is_empty()).then_some(by);
    let record = Record::new(holder, data.first().is_some_and(|b| b & 1 == 1), by);
    match Record::decode(&record.encode()) {
        Some(again) if again == record => Ok(()),
        other => Err(format!("{record:?} does not round-trip: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn the_semaphore_metadata_corpus_passes() {
        for (path, data) in coord_core::fuzzing::corpus("semaphore_metadata").unwrap() {
            semaphore_metadata(&data).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    #[test]
    fn the_checks_catch_what_they_should() {
        assert_eq!(parse_limit(Some(b" 3\n"), 1), 3);
        assert_eq!(parse_limit(Some(b"0"), 1), 1);
        assert_eq!(parse_limit(Some(b"100001"), 1), 1);
        assert!(Record::decode(b"lease-hex-value").is_none());
        assert!(
            semaphore_metadata(br#"{"holder":"n","held":true,"since_ms":1,"by":"gw"}"#).is_ok()
        );
    }
}
