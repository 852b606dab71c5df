//! Names, keys and lease ids: validation and the key layout shared with etcd's Go recipes.
//!
//! Every primitive stores its keys under `namespace + name + "/"`; a session-bound holder's key is that
//! prefix followed by its lease id in lowercase hex without padding, exactly as Go's
//! `concurrency.Mutex` and `concurrency.Election` write it (see `docs/wire-format.md`).

use std::fmt;

/// The largest key coord accepts, in bytes.
///
/// etcd rejects requests over `--max-request-bytes` (1.5 MiB by default) with "request is too large".
/// A coord transaction carries a key up to eight times (compares, put, range start and end of the
/// queue reads), so keys are capped at one eighth of that limit: any valid key fits in any request.
pub const MAX_KEY_LEN: usize = (3 * 1024 * 1024 / 2) / 8;

/// Why a name or key was rejected. Nothing is written to etcd for a rejected name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name contains a NUL byte (Go's recipes use `"\x00"` as a "no key" marker).
    #[error("the name contains a NUL byte at offset {offset}")]
    NulByte {
        /// Byte offset of the first NUL.
        offset: usize,
    },
    /// The name ends with `/`, which would produce keys with an empty path segment (`name//id`).
    #[error("the name ends with '/'")]
    TrailingSlash,
    /// The name contains a `/` where the caller's component must be a single path segment
    /// (a holder id, for example).
    #[error("the name contains '/' at offset {offset}")]
    Slash {
        /// Byte offset of the first `/`.
        offset: usize,
    },
    /// The resulting key would be longer than [`MAX_KEY_LEN`].
    #[error("the key would be {len} bytes long, over the limit of {max} bytes")]
    TooLong {
        /// Length of the key that would result.
        len: usize,
        /// The limit, [`MAX_KEY_LEN`].
        max: usize,
    },
}

/// Checks a primitive's name (a lock, semaphore, election or service name).
///
/// A valid name is non-empty, has no NUL byte, does not end with `/`, and together with
/// `namespace` and a holder suffix stays within [`MAX_KEY_LEN`]. Names may contain `/` to form
/// hierarchies (`"jobs/nightly"`).
///
/// # Errors
///
/// [`crate::Error::InvalidName`] naming the problem.
///
/// ```
/// use coord_core::keys::validate_name;
///
/// assert!(validate_name("app/", "jobs/nightly").is_ok());
/// assert!(validate_name("app/", "").is_err());
/// assert!(validate_name("app/", "jobs/").is_err());
/// assert!(validate_name("app/", "a\0b").is_err());
/// ```
pub fn validate_name(namespace: &str, name: &str) -> crate::Result<()> {
    check_name(namespace, name).map_err(|reason| invalid(name, reason))
}

/// Checks a single path segment such as a holder id: like [`validate_name`], and without `/`.
///
/// # Errors
///
/// [`crate::Error::InvalidName`] naming the problem.
///
/// ```
/// use coord_core::keys::validate_segment;
///
/// assert!(validate_segment("node-17").is_ok());
/// assert!(validate_segment("a/b").is_err());
/// ```
pub fn validate_segment(segment: &str) -> crate::Result<()> {
    let result = match segment.find('/') {
        Some(offset) => Err(NameError::Slash { offset }),
        None => check_name("", segment),
    };
    result.map_err(|reason| invalid(segment, reason))
}

fn check_name(namespace: &str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(offset) = name.find('\0') {
        return Err(NameError::NulByte { offset });
    }
    if name.ends_with('/') {
        return Err(NameError::TrailingSlash);
    }
    // namespace + name + "/" + up to 16 hex digits of a lease id.
    let len = namespace.len() + name.len() + 1 + 16;
    if len > MAX_KEY_LEN {
        return Err(NameError::TooLong {
            len,
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

fn invalid(name: &str, reason: NameError) -> crate::Error {
    const SHOWN: usize = 64;
    let shown = if name.len() > SHOWN {
        let mut end = SHOWN;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &name[..end], name.len())
    } else {
        name.to_owned()
    };
    crate::Error::InvalidName {
        name: shown,
        reason,
    }
}

/// An etcd lease id.
///
/// Displayed (and used in keys) as lowercase hex without `0x` and without padding, as Go's
/// `fmt.Sprintf("%x", leaseID)` does.
///
/// ```
/// use coord_core::LeaseId;
///
/// assert_eq!(LeaseId::new(0x694d7a2b1c3e5f01).to_string(), "694d7a2b1c3e5f01");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(i64);

impl LeaseId {
    /// Wraps a raw lease id as etcd returns it.
    pub const fn new(id: i64) -> LeaseId {
        LeaseId(id)
    }

    /// The raw id, as etcd-client takes it.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl From<LeaseId> for i64 {
    fn from(id: LeaseId) -> i64 {
        id.0
    }
}

/// The queue prefix of a primitive: `namespace + name + "/"`.
///
/// All holders and waiters of the primitive live under this prefix.
///
/// ```
/// assert_eq!(coord_core::keys::queue_prefix("app/", "jobs"), "app/jobs/");
/// ```
pub fn queue_prefix(namespace: &str, name: &str) -> String {
    format!("{namespace}{name}/")
}

/// The key a session-bound holder writes: `namespace + name + "/" + hex(lease)`, the layout of Go's
/// `concurrency.Mutex` and `concurrency.Election`.
///
/// ```
/// use coord_core::{keys::lease_key, LeaseId};
///
/// assert_eq!(lease_key("", "mylock", LeaseId::new(0x694d7a2b1c3e5f01)), "mylock/694d7a2b1c3e5f01");
/// ```
pub fn lease_key(namespace: &str, name: &str, lease: LeaseId) -> String {
    format!("{namespace}{name}/{lease}")
}

/// The end of the key range covering every key that starts with `prefix`, as etcd's
/// `clientv3.GetPrefixRangeEnd` computes it: the prefix with its last byte below `0xff`
/// incremented and everything after it dropped; `[0]` (the whole keyspace) when no such byte exists.
///
/// ```
/// assert_eq!(coord_core::keys::prefix_range_end(b"a/"), b"a0".to_vec());
/// ```
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_lowercase_hex_without_padding() {
        assert_eq!(LeaseId::new(0x1).to_string(), "1");
        assert_eq!(
            LeaseId::new(0x7fff_ffff_ffff_ffff).to_string(),
            "7fffffffffffffff"
        );
        assert_eq!(LeaseId::new(0xABC).to_string(), "abc");
    }

    #[test]
    fn empty_name_is_rejected() {
        assert_eq!(check_name("", ""), Err(NameError::Empty));
    }

    #[test]
    fn nul_byte_is_rejected_with_its_offset() {
        assert_eq!(
            check_name("", "ab\0c"),
            Err(NameError::NulByte { offset: 2 })
        );
    }

    #[test]
    fn trailing_slash_is_rejected() {
        assert_eq!(check_name("", "a/b/"), Err(NameError::TrailingSlash));
        assert_eq!(check_name("", "/"), Err(NameError::TrailingSlash));
    }

    #[test]
    fn inner_and_leading_slashes_are_allowed_in_names() {
        assert!(check_name("ns/", "a/b").is_ok());
        assert!(check_name("", "/a").is_ok());
    }

    #[test]
    fn segments_reject_any_slash() {
        let err = validate_segment("a/b").unwrap_err();
        assert!(matches!(
            err,
            crate::Error::InvalidName {
                reason: NameError::Slash { offset: 1 },
                ..
            }
        ));
    }

    #[test]
    fn over_long_keys_are_rejected_counting_the_namespace() {
        let name = "x".repeat(MAX_KEY_LEN);
        assert!(matches!(
            check_name("", &name),
            Err(NameError::TooLong { .. })
        ));
        let fits = "x".repeat(MAX_KEY_LEN - 17 - 3);
        assert!(check_name("ns/", &fits).is_ok());
        assert!(matches!(
            check_name("ns/x", &fits),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn invalid_name_error_shortens_huge_names() {
        let name = "é".repeat(MAX_KEY_LEN);
        let err = validate_name("", &name).unwrap_err();
        let crate::Error::InvalidName { name: shown, .. } = err else {
            panic!("wrong variant")
        };
        assert!(shown.len() < 200, "{shown}");
    }

    #[test]
    fn prefix_range_end_matches_go() {
        assert_eq!(prefix_range_end(b"abc"), b"abd");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn keys_follow_the_go_layout() {
        assert_eq!(queue_prefix("", "l"), "l/");
        assert_eq!(lease_key("ns/", "l", LeaseId::new(255)), "ns/l/ff");
    }
}
