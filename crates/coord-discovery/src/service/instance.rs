//! What a process registers: an instance of a service, its address, health status and metadata.

use std::fmt;

use coord_core::keys::{MAX_KEY_LEN, NameError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::ServiceError;

/// The health status an instance announces. Stored as a lowercase string (`"healthy"`, …).
///
/// Liveness is the lease's business (an instance whose process dies disappears); the status is
/// what a *live* instance says about itself, e.g. `Draining` while it finishes its requests before
/// a shutdown. Entries written by other tools (Go's `naming/endpoints`) carry no status and are
/// discovered as [`Healthy`](Status::Healthy).
///
/// ```
/// use coord_discovery::service::Status;
///
/// assert_eq!(Status::Draining.as_str(), "draining");
/// assert_eq!("healthy".parse::<Status>(), Ok(Status::Healthy));
/// assert_eq!("maintenance".parse::<Status>(), Ok(Status::Unknown)); // written by a newer version
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum Status {
    /// Starting up: registered, but not ready for traffic yet.
    Starting,
    /// Serving.
    #[default]
    Healthy,
    /// Finishing its work before it leaves: send it no new work.
    Draining,
    /// Alive but failing its own health checks.
    Unhealthy,
    /// A status this version does not know (written by a newer one). Never written by this one.
    Unknown,
}

impl Status {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Healthy => "healthy",
            Status::Draining => "draining",
            Status::Unhealthy => "unhealthy",
            Status::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = std::convert::Infallible;

    /// Never fails: an unknown string is [`Status::Unknown`].
    fn from_str(s: &str) -> Result<Status, Self::Err> {
        Ok(match s {
            "starting" => Status::Starting,
            "healthy" => Status::Healthy,
            "draining" => Status::Draining,
            "unhealthy" => Status::Unhealthy,
            _ => Status::Unknown,
        })
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Status, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(s.parse().unwrap_or(Status::Unknown))
    }
}

/// An instance of a service, as its process registers it.
///
/// `metadata` is your own payload (any `Serialize` type; `()` for none). `zone`, `weight` and
/// `version` are optional well-known fields that balancers and pickers can use without knowing
/// your payload type. Layout in etcd: `docs/wire-format.md`, "Service registry".
///
/// ```
/// use coord_discovery::service::{Instance, Status};
///
/// #[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
/// struct Api { grpc: bool }
///
/// let instance = Instance::new("api-7", "10.0.0.7:8080", Api { grpc: true })
///     .with_status(Status::Starting)
///     .with_zone("eu-west-1a")
///     .with_weight(200)
///     .with_version("1.4.2");
/// assert_eq!(instance.id, "api-7");
/// assert_eq!(instance.weight, Some(200));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Instance<T> {
    /// The instance id, unique within the service: one key segment (no `/`).
    pub id: String,
    /// Where to reach it, usually `host:port` (what gRPC resolvers dial).
    pub addr: String,
    /// Its health status ([`Status::Healthy`] unless set).
    pub status: Status,
    /// Its zone (availability zone, rack, region…), if it says.
    pub zone: Option<String>,
    /// Its relative weight for load balancing, if it says.
    pub weight: Option<u32>,
    /// Its software version, if it says.
    pub version: Option<String>,
    /// The user payload.
    pub metadata: T,
}

impl<T> Instance<T> {
    /// A healthy instance `id` at `addr` with `metadata` and no zone, weight or version.
    pub fn new(id: impl Into<String>, addr: impl Into<String>, metadata: T) -> Instance<T> {
        Instance {
            id: id.into(),
            addr: addr.into(),
            status: Status::Healthy,
            zone: None,
            weight: None,
            version: None,
            metadata,
        }
    }

    /// Sets the status.
    #[must_use = "builder methods return the modified instance"]
    pub fn with_status(mut self, status: Status) -> Instance<T> {
        self.status = status;
        self
    }

    /// Sets the zone.
    #[must_use = "builder methods return the modified instance"]
    pub fn with_zone(mut self, zone: impl Into<String>) -> Instance<T> {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the weight.
    #[must_use = "builder methods return the modified instance"]
    pub fn with_weight(mut self, weight: u32) -> Instance<T> {
        self.weight = Some(weight);
        self
    }

    /// Sets the version.
    #[must_use = "builder methods return the modified instance"]
    pub fn with_version(mut self, version: impl Into<String>) -> Instance<T> {
        self.version = Some(version.into());
        self
    }
}

/// The full key of an instance: `namespace + service + "/" + id` (Go's `target + "/" + id`),
/// after checking the service name, the id and the resulting length.
pub(crate) fn instance_key(
    namespace: &str,
    service: &str,
    id: &str,
) -> Result<String, ServiceError> {
    check_service(namespace, service)?;
    let id_error = |reason| ServiceError::InvalidInstanceId {
        id: shorten(id),
        reason,
    };
    match coord_core::keys::validate_segment(id) {
        Ok(()) => {}
        Err(coord_core::Error::InvalidName { reason, .. }) => return Err(id_error(reason)),
        Err(other) => return Err(other.into()),
    }
    let key = format!("{namespace}{service}/{id}");
    if key.len() > MAX_KEY_LEN {
        return Err(id_error(NameError::TooLong {
            len: key.len(),
            max: MAX_KEY_LEN,
        }));
    }
    Ok(key)
}

/// Checks a service name (as a coord primitive name: may contain `/`, no trailing `/`).
pub(crate) fn check_service(namespace: &str, service: &str) -> Result<(), ServiceError> {
    match coord_core::keys::validate_name(namespace, service) {
        Ok(()) => Ok(()),
        Err(coord_core::Error::InvalidName { reason, .. }) => Err(ServiceError::InvalidService {
            name: shorten(service),
            reason,
        }),
        Err(other) => Err(other.into()),
    }
}

/// Checks an address: non-empty, no whitespace or control characters (it ends up in a dialer).
pub(crate) fn check_addr(addr: &str) -> Result<(), ServiceError> {
    let reason = if addr.is_empty() {
        "the address is empty"
    } else if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "the address contains whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(ServiceError::InvalidAddr {
        addr: shorten(addr),
        reason,
    })
}

fn shorten(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.len() <= SHOWN {
        return s.to_owned();
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_namespace_service_slash_id() {
        assert_eq!(
            instance_key("ns/", "svc/api", "i-1").ok(),
            Some("ns/svc/api/i-1".to_owned())
        );
    }

    #[test]
    fn ids_are_single_segments() {
        assert!(matches!(
            instance_key("", "svc", "a/b"),
            Err(ServiceError::InvalidInstanceId {
                reason: NameError::Slash { offset: 1 },
                ..
            })
        ));
        assert!(matches!(
            instance_key("", "svc", ""),
            Err(ServiceError::InvalidInstanceId {
                reason: NameError::Empty,
                ..
            })
        ));
    }

    #[test]
    fn service_names_follow_the_primitive_rules() {
        for bad in ["", "svc/", "s\0vc"] {
            assert!(
                matches!(
                    instance_key("", bad, "i"),
                    Err(ServiceError::InvalidService { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn overlong_ids_are_rejected() {
        let id = "x".repeat(MAX_KEY_LEN);
        assert!(matches!(
            instance_key("", "svc", &id),
            Err(ServiceError::InvalidInstanceId {
                reason: NameError::TooLong { .. },
                ..
            })
        ));
    }

    #[test]
    fn addresses_must_be_dialable_text() {
        assert!(check_addr("10.0.0.1:80").is_ok());
        assert!(check_addr("").is_err());
        assert!(check_addr("a b:80").is_err());
        assert!(check_addr("a\n:80").is_err());
    }

    #[test]
    fn unknown_statuses_decode_as_unknown() {
        let s: Status = serde_json::from_str("\"rebooting\"").unwrap_or(Status::Healthy);
        assert_eq!(s, Status::Unknown);
        assert_eq!(
            serde_json::to_string(&Status::Draining).ok().as_deref(),
            Some("\"draining\"")
        );
    }
}
