//! Entry points for the fuzz targets under `fuzz/` (docs/fuzzing.md). **Not a stable API**:
//! hidden from the docs, may change or go away in any release; do not call it from other code.
//!
//! Every function takes arbitrary bytes, never panics by contract, and returns `Err` with a
//! description when a checked property does not hold (the fuzz target turns that into a crash).
//! The tests at the bottom run the committed corpus (`fuzz/corpus/<target>/`) through the same
//! checks, so a plain `cargo test` exercises them without cargo-fuzz.

use crate::keys::{
    MAX_KEY_LEN, NameError, lease_key, prefix_range_end, queue_prefix, validate_name,
    validate_segment,
};
use crate::{Error, LeaseId};

/// A violated property, described.
pub type Violation = String;

/// Names and keys: [`validate_name`] and [`validate_segment`] accept exactly the documented rules
/// (non-empty, no NUL, no trailing `/`, `namespace + name + "/" + 16 hex digits` within
/// [`MAX_KEY_LEN`]; a segment also has no `/`), report a reason that applies, and their error text
/// never panics whatever the name; the key builders agree with the layout (`queue_prefix + hex`);
/// [`prefix_range_end`] bounds exactly the keys under the prefix (the namespace's raw bytes, probed
/// with the name's).
///
/// Input layout: byte 0 = namespace length (taken from the rest), bytes 1–2 = a big-endian padding
/// count (`4 ×` that many `x` are added to the namespace, so the length limit can be reached),
/// bytes 3–10 = a lease id, then namespace and name (lossy UTF-8).
///
/// # Errors
///
/// A description of the violated property.
pub fn keys(data: &[u8]) -> Result<(), Violation> {
    let mut input = Input::new(data);
    let ns_len = usize::from(input.byte());
    let pad = usize::from(input.u16()) * 4;
    let lease = LeaseId::new(i64::from_be_bytes(input.array()));
    let ns_bytes = input.take(ns_len);
    let mut namespace = String::from_utf8_lossy(ns_bytes).into_owned();
    namespace.push_str(&"x".repeat(pad));
    let name = String::from_utf8_lossy(input.rest()).into_owned();

    // validate_name: the documented rules, exactly.
    let expected = name_rules(&namespace, &name);
    check_verdict(
        "validate_name",
        &name,
        validate_name(&namespace, &name),
        &expected,
    )?;

    // validate_segment: the same with no namespace, and no '/'.
    let mut expected = name_rules("", &name);
    if let Some(offset) = name.find('/') {
        expected.push(NameError::Slash { offset });
    }
    check_verdict(
        "validate_segment",
        &name,
        validate_segment(&name),
        &expected,
    )?;

    // The key layout.
    let prefix = queue_prefix(&namespace, &name);
    if prefix != format!("{namespace}{name}/") {
        return Err(format!(
            "queue_prefix({namespace:?}, {name:?}) = {prefix:?}"
        ));
    }
    let key = lease_key(&namespace, &name, lease);
    let hex = format!("{:x}", lease.get());
    if key != format!("{prefix}{hex}") || hex.len() > 16 {
        return Err(format!("lease_key = {key:?} for lease {}", lease.get()));
    }
    match u64::from_str_radix(&hex, 16) {
        // `{:x}` of an i64 is its two's complement, as Go's `%x` of the int64 lease id is not;
        // etcd never grants negative ids, so only the round trip matters here.
        Ok(back) if back.to_ne_bytes() == lease.get().to_ne_bytes() => {}
        other => return Err(format!("lease hex {hex:?} reads back as {other:?}")),
    }

    // prefix_range_end: [prefix, end) holds exactly the keys that start with prefix; the whole
    // keyspace (`[0]`) only for a prefix of 0xff bytes (or none).
    let raw_prefix = ns_bytes;
    let end = prefix_range_end(raw_prefix);
    let probe = name.as_bytes();
    let whole_keyspace = end == [0];
    let in_range = probe >= raw_prefix && (whole_keyspace || probe < end.as_slice());
    if probe.starts_with(raw_prefix) != in_range {
        return Err(format!(
            "prefix_range_end({raw_prefix:?}) = {end:?}: key {probe:?} in range: {in_range}"
        ));
    }
    if whole_keyspace != raw_prefix.iter().all(|&b| b == 0xff) {
        return Err(format!("prefix_range_end({raw_prefix:?}) = {end:?}"));
    }
    Ok(())
}

/// The documented reasons `name` is invalid under `namespace` (empty: valid).
fn name_rules(namespace: &str, name: &str) -> Vec<NameError> {
    let mut reasons = Vec::new();
    if name.is_empty() {
        reasons.push(NameError::Empty);
    }
    if let Some(offset) = name.find('\0') {
        reasons.push(NameError::NulByte { offset });
    }
    if name.ends_with('/') {
        reasons.push(NameError::TrailingSlash);
    }
    let len = namespace.len() + name.len() + 1 + 16;
    if len > MAX_KEY_LEN {
        reasons.push(NameError::TooLong {
            len,
            max: MAX_KEY_LEN,
        });
    }
    reasons
}

fn check_verdict(
    what: &str,
    name: &str,
    verdict: crate::Result<()>,
    expected: &[NameError],
) -> Result<(), Violation> {
    match verdict {
        Ok(()) if expected.is_empty() => Ok(()),
        Ok(()) => Err(format!("{what} accepted {name:?}, expected {expected:?}")),
        Err(Error::InvalidName {
            name: shown,
            reason,
        }) => {
            if !expected.contains(&reason) {
                return Err(format!(
                    "{what} rejected {name:?} with {reason:?}, expected one of {expected:?}"
                ));
            }
            // The name shown in the error is the name, or, past 64 bytes, its longest prefix of
            // at most 64 bytes that ends on a char boundary, "…" and its length.
            let cut = (0..=64.min(name.len()))
                .rev()
                .find(|&end| name.is_char_boundary(end))
                .unwrap_or(0);
            let shortened = if name.len() > 64 {
                shown
                    == format!(
                        "{}… ({} bytes)",
                        name.get(..cut).unwrap_or_default(),
                        name.len()
                    )
            } else {
                shown == name
            };
            if !shortened {
                return Err(format!("{what}: the error shows {shown:?} for {name:?}"));
            }
            let _ = Error::InvalidName {
                name: shown,
                reason,
            }
            .to_string();
            Ok(())
        }
        Err(other) => Err(format!("{what} rejected {name:?} with {other:?}")),
    }
}

/// Reads fields from the front of fuzz input, padding with zeros once it runs out; shared by the
/// fuzz entry points of every crate.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// The next `n` bytes, or fewer once the input runs out.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// The next byte, 0 past the end.
    pub fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    /// The next `N` bytes, zero-padded.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        for (slot, byte) in out.iter_mut().zip(self.take(N)) {
            *slot = *byte;
        }
        out
    }

    /// A length byte, then that many bytes as (lossy) UTF-8.
    pub fn string(&mut self) -> String {
        let len = usize::from(self.byte());
        String::from_utf8_lossy(self.take(len)).into_owned()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// Every file of the committed corpus `fuzz/corpus/<target>/` (path, bytes), sorted by path, for
/// the corpus tests of the crates with fuzz targets.
///
/// # Errors
///
/// When the directory cannot be read or is empty.
pub fn corpus(target: &str) -> Result<Vec<(String, Vec<u8>)>, Violation> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push((path.display().to_string(), data));
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("{} is empty", dir.display()));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_corpus_passes() {
        for (path, data) in corpus("keys").unwrap() {
            keys(&data).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    #[test]
    fn edge_cases_pass() {
        let mut long = vec![0, 0xff, 0xff];
        long.extend([0; 8]);
        long.extend("é".repeat(40).as_bytes());
        for data in [
            &b""[..],
            b"\x00",
            b"\x02\x00\x00",
            &long,
            b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff",
        ] {
            keys(data).unwrap_or_else(|e| panic!("{data:?}: {e}"));
        }
    }
}
