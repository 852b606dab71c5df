//! The stored form of an instance: the JSON of etcd's Go `naming/endpoints` (and of grpc-go's
//! older `naming.Update`), with coord's typed metadata inside `Metadata`. See
//! `docs/wire-format.md`, "Service registry".

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::instance::{Instance, Status};

/// The version of coord's `Metadata` object, stored as its `"coord"` field.
pub(crate) const FORMAT: u32 = 1;

/// Go's `internal.Update` (`{"Op":0,"Addr":…,"Metadata":…}`), as written.
#[derive(Serialize)]
struct StoredRef<'a, P> {
    #[serde(rename = "Op")]
    op: u8,
    #[serde(rename = "Addr")]
    addr: &'a str,
    #[serde(rename = "Metadata")]
    metadata: MetadataRef<'a, P>,
}

/// coord's object inside `Metadata`, as written.
#[derive(Serialize)]
struct MetadataRef<'a, P> {
    coord: u32,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    payload: &'a P,
}

/// Encodes `instance` with `payload` as its metadata (so that a new payload can be encoded before
/// it replaces the instance's). A payload holding a NaN or infinite float is refused: JSON has
/// neither, and serde_json would write `null`, which no reader of the payload's type could decode.
pub(crate) fn encode<T, P: Serialize>(
    instance: &Instance<T>,
    payload: &P,
) -> Result<Vec<u8>, serde_json::Error> {
    if super::finite::has_non_finite_float(payload) {
        return Err(serde::ser::Error::custom(
            "the metadata holds a NaN or infinite float, which JSON cannot represent",
        ));
    }
    serde_json::to_vec(&StoredRef {
        op: 0, // Go's `Add`; readers ignore it
        addr: &instance.addr,
        metadata: MetadataRef {
            coord: FORMAT,
            status: instance.status,
            zone: instance.zone.as_deref(),
            weight: instance.weight,
            version: instance.version.as_deref(),
            payload,
        },
    })
}

/// Go's `internal.Update`, as read. `Op` is ignored, as Go's readers do (a put is an add). Go's
/// `encoding/json` matches field names case-insensitively; the lowercase spellings are accepted
/// too.
#[derive(Deserialize)]
struct Stored {
    #[serde(rename = "Addr", alias = "addr", default)]
    addr: Option<String>,
    #[serde(rename = "Metadata", alias = "metadata", default)]
    metadata: Value,
}

/// coord's object inside `Metadata`, as read (unknown fields are ignored: newer writers may add
/// some).
#[derive(Deserialize)]
struct MetadataIn {
    #[allow(dead_code)] // its presence is what marks coord's format
    coord: u32,
    #[serde(default)]
    status: Status,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    payload: Value,
}

/// Who wrote an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// coord: status, zone, weight, version and the typed metadata are known.
    Coord,
    /// Another writer of the same format (Go's `endpoints.Manager`, grpc-go's older naming,
    /// `etcdctl put`): only the address and the raw `Metadata` are known; the status counts as
    /// [`Status::Healthy`].
    Foreign,
}

/// An entry's value, decoded.
#[derive(Debug)]
pub(crate) struct Decoded<T> {
    pub(crate) addr: String,
    pub(crate) origin: Origin,
    pub(crate) status: Status,
    pub(crate) zone: Option<String>,
    pub(crate) weight: Option<u32>,
    pub(crate) version: Option<String>,
    pub(crate) metadata: Option<T>,
    pub(crate) raw_metadata: Option<Value>,
}

/// Decodes a stored value; the error says why it cannot be used.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Decoded<T>, String> {
    let stored: Stored = serde_json::from_slice(bytes)
        .map_err(|e| format!("not an endpoint record ({{\"Addr\":…,\"Metadata\":…}}): {e}"))?;
    let addr = match stored.addr {
        Some(addr) if !addr.is_empty() => addr,
        _ => return Err("no address (\"Addr\" is missing or empty)".to_owned()),
    };
    let ours = matches!(&stored.metadata, Value::Object(fields) if fields.contains_key("coord"));
    if !ours {
        return Ok(Decoded {
            addr,
            origin: Origin::Foreign,
            status: Status::Healthy,
            zone: None,
            weight: None,
            version: None,
            metadata: None,
            raw_metadata: (!stored.metadata.is_null()).then_some(stored.metadata),
        });
    }
    let meta: MetadataIn = serde_json::from_value(stored.metadata)
        .map_err(|e| format!("coord metadata does not decode: {e}"))?;
    let metadata = serde_json::from_value::<T>(meta.payload).map_err(|e| {
        format!(
            "the payload does not decode as {}: {e}",
            std::any::type_name::<T>()
        )
    })?;
    Ok(Decoded {
        addr,
        origin: Origin::Coord,
        status: meta.status,
        zone: meta.zone,
        weight: meta.weight,
        version: meta.version,
        metadata: Some(metadata),
        raw_metadata: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Meta {
        shard: u32,
    }

    #[test]
    fn the_stored_form_is_gos_update_with_coord_metadata_inside() {
        let instance = Instance::new("i-1", "10.0.0.1:80", Meta { shard: 3 })
            .with_status(Status::Draining)
            .with_zone("z1");
        let bytes = encode(&instance, &instance.metadata).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"coord":1,"status":"draining","zone":"z1","payload":{"shard":3}}}"#
        );
    }

    #[test]
    fn our_entries_round_trip() {
        let instance = Instance::new("i-1", "h:1", Meta { shard: 3 })
            .with_weight(7)
            .with_version("2.0");
        let decoded = decode::<Meta>(&encode(&instance, &instance.metadata).unwrap()).unwrap();
        assert_eq!(decoded.origin, Origin::Coord);
        assert_eq!(decoded.addr, "h:1");
        assert_eq!(decoded.status, Status::Healthy);
        assert_eq!(decoded.weight, Some(7));
        assert_eq!(decoded.version.as_deref(), Some("2.0"));
        assert_eq!(decoded.metadata, Some(Meta { shard: 3 }));
    }

    #[test]
    fn gos_entries_decode_without_metadata() {
        for (value, raw) in [
            (r#"{"Op":0,"Addr":"h:1","Metadata":null}"#, None),
            (r#"{"Addr":"h:1"}"#, None),
            (
                r#"{"Op":0,"Addr":"h:1","Metadata":{"region":"eu"}}"#,
                Some(serde_json::json!({"region":"eu"})),
            ),
            (
                r#"{"op":0,"addr":"h:1","metadata":"x"}"#,
                Some(serde_json::json!("x")),
            ),
        ] {
            let decoded = decode::<Meta>(value.as_bytes()).unwrap();
            assert_eq!(decoded.origin, Origin::Foreign, "{value}");
            assert_eq!(decoded.addr, "h:1");
            assert_eq!(decoded.status, Status::Healthy);
            assert_eq!(decoded.metadata, None);
            assert_eq!(decoded.raw_metadata, raw, "{value}");
        }
    }

    #[test]
    fn malformed_entries_are_errors() {
        for value in [
            "not json",
            "[1,2]",
            r#"{"Addr":5}"#,
            r#"{"Addr":""}"#,
            r#"{"Metadata":{}}"#,
            r#"{"Addr":"h:1","Metadata":{"coord":1,"status":"healthy","payload":{"shard":"x"}}}"#,
            r#"{"Addr":"h:1","Metadata":{"coord":"one"}}"#,
        ] {
            assert!(decode::<Meta>(value.as_bytes()).is_err(), "{value}");
        }
    }

    #[test]
    fn unknown_fields_and_statuses_from_newer_writers_are_accepted() {
        let value = r#"{"Op":0,"Addr":"h:1","Metadata":{"coord":2,"status":"maintenance","colour":"red","payload":{"shard":1}}}"#;
        let decoded = decode::<Meta>(value.as_bytes()).unwrap();
        assert_eq!(decoded.status, Status::Unknown);
        assert_eq!(decoded.metadata, Some(Meta { shard: 1 }));
    }
}
