//! Entry points for the fuzz targets under `fuzz/` (docs/fuzzing.md). **Not a stable API**:
//! hidden from the docs, may change or go away in any release; do not call it from other code.
//!
//! Every function takes arbitrary bytes, never panics by contract, and returns `Err` with a
//! description when a checked property does not hold (the fuzz target turns that into a crash).
//! The tests at the bottom run the committed corpus (`fuzz/corpus/<target>/`) through the same
//! checks, so a plain `cargo test` exercises them without cargo-fuzz.
//!
//! The decoders live in modules private to `service` and `config`; rather than widen their
//! visibility, this module compiles the very same source files (`service/wire.rs`,
//! `config/codec.rs`) a second time, with the `super::` items they import provided below. A change
//! to what those files import shows up here as a build error, never as a silently stale copy.

use std::collections::BTreeMap;
use std::sync::Arc;

use coord_core::fuzzing::Input;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{ConfigError, Format};
use crate::service::{Instance, Status};

/// What `service/wire.rs` imports from its parent.
mod instance {
    pub(crate) use crate::service::{Instance, Status};
}
/// What `config/codec.rs` imports from its parent.
mod error {
    pub(crate) use crate::config::{BoxError, ConfigError};
}
/// What `config/codec.rs` imports from its parent.
mod format {
    pub(crate) use crate::config::Format;
}

/// What `service/wire.rs` calls in its parent (the same file, compiled again).
#[path = "service/finite.rs"]
#[allow(clippy::duplicate_mod)]
mod finite;

/// `service/wire.rs`, compiled again so that its crate-private decoder can be called.
#[path = "service/wire.rs"]
#[allow(clippy::duplicate_mod)]
pub mod wire;

/// `config/codec.rs`, compiled again so that its crate-private codec can be called.
#[path = "config/codec.rs"]
#[allow(clippy::duplicate_mod)]
mod codec;

use codec::{Codec, error_chain};
use wire::{Decoded, Origin, decode, encode};

/// A violated property, described.
pub type Violation = String;

/// A typed payload, as a service would declare it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payload {
    grpc: bool,
    #[serde(default)]
    shard: u32,
    #[serde(default)]
    tags: Vec<String>,
}

/// Service registry entries (`{"Op":0,"Addr":…,"Metadata":…}`, docs/wire-format.md): decoding
/// any bytes never panics; a value that decodes with a typed payload also decodes with a
/// `serde_json::Value` payload, with the same fields; a decoded coord entry re-encodes (as a
/// registration would write it) and decodes to the same; a decoded foreign entry written back the
/// way Go's `endpoints.Manager` writes it decodes to the same; an empty address is never accepted.
/// Then the input is read as an instance (address, status, zone, weight, version, payload) and
/// coord's own encoding of it must decode to the same instance.
///
/// # Errors
///
/// A description of the violated property.
pub fn service_entry(data: &[u8]) -> Result<(), Violation> {
    let text = String::from_utf8_lossy(data);
    let loose = decode::<Value>(data);
    let typed = decode::<Payload>(data);
    for decoded in [
        loose.as_ref().ok().map(header),
        typed.as_ref().ok().map(header),
    ]
    .into_iter()
    .flatten()
    {
        if decoded.0.is_empty() {
            return Err(format!("{text:?} decoded with an empty address"));
        }
    }
    match (&loose, &typed) {
        (Err(_), Ok(_)) => {
            return Err(format!(
                "{text:?} decodes with a typed payload but not with a JSON value"
            ));
        }
        (Ok(l), Ok(t)) if header(l) != header(t) => {
            return Err(format!(
                "{text:?}: {:?} as a JSON value, {:?} typed",
                header(l),
                header(t)
            ));
        }
        _ => {}
    }
    if let Ok(decoded) = loose {
        round_trip(&text, decoded)?;
    }
    if let Ok(decoded) = typed {
        round_trip(&text, decoded)?;
    }
    our_encoding_decodes(data)
}

/// The fields of a decoded entry other than the payload.
type Header = (
    String,
    Origin,
    Status,
    Option<String>,
    Option<u32>,
    Option<String>,
);

fn header<T>(decoded: &Decoded<T>) -> Header {
    (
        decoded.addr.clone(),
        decoded.origin,
        decoded.status,
        decoded.zone.clone(),
        decoded.weight,
        decoded.version.clone(),
    )
}

fn round_trip<T>(text: &str, decoded: Decoded<T>) -> Result<(), Violation>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let first = header(&decoded);
    match decoded.origin {
        Origin::Coord => {
            let Some(metadata) = decoded.metadata else {
                return Err(format!("{text:?}: a coord entry without metadata"));
            };
            if decoded.raw_metadata.is_some() {
                return Err(format!("{text:?}: a coord entry with raw metadata"));
            }
            let instance = instance_of(&decoded.addr, first.clone(), metadata);
            let bytes = encode(&instance, &instance.metadata)
                .map_err(|e| format!("{text:?}: re-encoding failed: {e}"))?;
            let again = decode::<T>(&bytes).map_err(|e| {
                format!(
                    "{text:?} re-encoded as {:?} does not decode: {e}",
                    String::from_utf8_lossy(&bytes)
                )
            })?;
            if header(&again) != first || again.metadata.as_ref() != Some(&instance.metadata) {
                return Err(format!(
                    "{text:?} re-encoded as {:?} decodes to {:?} / {:?}, not {first:?} / {:?}",
                    String::from_utf8_lossy(&bytes),
                    header(&again),
                    again.metadata,
                    instance.metadata
                ));
            }
        }
        Origin::Foreign => {
            if decoded.metadata.is_some() || first.2 != Status::Healthy {
                return Err(format!("{text:?}: a foreign entry with coord's fields"));
            }
            if decoded.raw_metadata == Some(Value::Null) {
                return Err(format!("{text:?}: raw metadata null instead of none"));
            }
            // Go's json.Marshal of endpoints.Update.
            let go = serde_json::json!({
                "Op": 0,
                "Addr": decoded.addr,
                "Metadata": decoded.raw_metadata.clone().unwrap_or(Value::Null),
            });
            let bytes = serde_json::to_vec(&go).map_err(|e| e.to_string())?;
            let again = decode::<T>(&bytes).map_err(|e| {
                format!(
                    "{text:?} written as Go does, {:?}, does not decode: {e}",
                    String::from_utf8_lossy(&bytes)
                )
            })?;
            if header(&again) != first || again.raw_metadata != decoded.raw_metadata {
                return Err(format!(
                    "{text:?} written as Go does, {:?}, decodes to {:?} / {:?}",
                    String::from_utf8_lossy(&bytes),
                    header(&again),
                    again.raw_metadata
                ));
            }
        }
    }
    Ok(())
}

fn instance_of<T>(addr: &str, header: Header, metadata: T) -> Instance<T> {
    let (_, _, status, zone, weight, version) = header;
    let mut instance = Instance::new("fuzz", addr, metadata).with_status(status);
    if let Some(zone) = zone {
        instance = instance.with_zone(zone);
    }
    if let Some(weight) = weight {
        instance = instance.with_weight(weight);
    }
    if let Some(version) = version {
        instance = instance.with_version(version);
    }
    instance
}

/// The input read as an instance: coord's encoding of it decodes to the same.
fn our_encoding_decodes(data: &[u8]) -> Result<(), Violation> {
    let mut input = Input::new(data);
    let flags = input.byte();
    let status = [
        Status::Starting,
        Status::Healthy,
        Status::Draining,
        Status::Unhealthy,
        Status::Unknown,
    ][usize::from(flags % 5)];
    let weight = u32::from_be_bytes(input.array());
    let addr = input.string();
    let zone = input.string();
    let version = input.string();
    let payload = Payload {
        grpc: flags & 0x80 != 0,
        shard: weight.rotate_left(16),
        tags: (0..input.byte() % 4).map(|_| input.string()).collect(),
    };
    let expected: Header = (
        addr.clone(),
        Origin::Coord,
        status,
        (flags & 0x08 != 0).then_some(zone),
        (flags & 0x10 != 0).then_some(weight),
        (flags & 0x20 != 0).then_some(version),
    );
    let instance = instance_of(&addr, expected.clone(), payload);
    let bytes =
        encode(&instance, &instance.metadata).map_err(|e| format!("encoding failed: {e}"))?;
    let shown = String::from_utf8_lossy(&bytes);
    match decode::<Payload>(&bytes) {
        Ok(_) if addr.is_empty() => Err(format!("{shown:?}: an empty address decoded")),
        Err(_) if addr.is_empty() => Ok(()),
        Ok(decoded)
            if header(&decoded) == expected && decoded.metadata == Some(instance.metadata) =>
        {
            Ok(())
        }
        Ok(decoded) => Err(format!(
            "{shown:?} decodes to {:?} / {:?}, not {expected:?}",
            header(&decoded),
            decoded.metadata
        )),
        Err(e) => Err(format!(
            "{shown:?}, coord's own encoding, does not decode: {e}"
        )),
    }
}

/// The config type of the `config_value` target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Limits {
    max_jobs: u32,
    #[serde(default)]
    name: String,
    #[serde(default)]
    ratio: f64,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    per_queue: BTreeMap<String, i64>,
}

/// The validation rule of the `config_value` target: `max_jobs` in `1..=1000`.
fn limits_rule(limits: &Limits) -> Result<(), crate::config::BoxError> {
    if (1..=1000).contains(&limits.max_jobs) {
        Ok(())
    } else {
        Err(format!("max_jobs {} is outside 1..=1000", limits.max_jobs).into())
    }
}

/// The formats built in (JSON always; TOML and YAML with their features).
fn formats() -> Vec<Format> {
    #[allow(unused_mut)]
    let mut formats = vec![Format::Json];
    #[cfg(feature = "toml")]
    formats.push(Format::Toml);
    #[cfg(feature = "yaml")]
    formats.push(Format::Yaml);
    formats
}

/// Config values (`config::Format` plus the validation hook, as `Config` and `ConfigMap` read
/// them): byte 0 picks the format (`j`, `t`, `y`, else by its value; TOML and YAML need their
/// features), the rest is the stored document. Reading never panics; with a hook, a value is
/// accepted exactly when it decodes and the hook accepts it, and the error says which of the two
/// failed; a value read (typed, and as a generic `serde_json::Value`) is written back and read again
/// as the same value, as `Config::update` with an unchanged value does. Then the document's bytes
/// are read as a typed value whose encoding must read back as the same value.
///
/// # Errors
///
/// A description of the violated property.
pub fn config_value(data: &[u8]) -> Result<(), Violation> {
    let all = formats();
    let (format, document) = match data.split_first() {
        None => return Ok(()),
        Some((b'j', rest)) => (Format::Json, rest),
        Some((b't', rest)) => match all.get(1) {
            Some(&format) if cfg!(feature = "toml") => (format, rest),
            _ => return Ok(()),
        },
        Some((b'y', rest)) => match all.last() {
            Some(&format) if cfg!(feature = "yaml") => (format, rest),
            _ => return Ok(()),
        },
        Some((&byte, rest)) => (all[usize::from(byte) % all.len()], rest),
    };
    let key = "fuzz/config";
    let shown = String::from_utf8_lossy(document);

    // Decode and validate: accepted exactly when both pass; the error tells which failed.
    let hooked = Codec::<Limits> {
        format,
        validate: Some(Arc::new(limits_rule)),
    };
    let plain = Codec::<Limits> {
        format,
        validate: None,
    };
    let decoded = plain.accept(key, document, 7);
    match (&decoded, hooked.accept(key, document, 7)) {
        (Ok(value), Ok(accepted)) if limits_rule(value).is_ok() && same(value, &accepted) => {}
        (
            Ok(value),
            Err(ConfigError::Invalid {
                mod_revision: 7, ..
            }),
        ) if limits_rule(value).is_err() => {}
        (
            Err(ConfigError::Decode {
                mod_revision: 7, ..
            }),
            Err(ConfigError::Decode { .. }),
        ) => {}
        (plain, hooked) => {
            return Err(format!(
                "{format:?} {shown:?}: without the hook {}, with it {}",
                describe(plain.as_ref().map(|_| ())),
                describe(hooked.as_ref().map(|_| ()))
            ));
        }
    }

    // What was read is written back and read again as the same.
    if let Ok(value) = &decoded {
        rewrite(&plain, &shown, value, same)?;
    }
    let generic = Codec::<Value> {
        format,
        validate: None,
    };
    if let Ok(value) = generic.accept(key, document, 7) {
        rewrite(&generic, &shown, &value, |a, b| a == b)?;
    }

    // Our encoding of any value reads back.
    let mut input = Input::new(document);
    let max_jobs = u32::from_be_bytes(input.array());
    let ratio = f64::from_bits(u64::from_be_bytes(input.array()));
    let name = input.string();
    let tags = (0..input.byte() % 4).map(|_| input.string()).collect();
    let per_queue = (0..input.byte() % 4)
        .map(|_| (input.string(), i64::from_be_bytes(input.array())))
        .collect();
    let value = Limits {
        max_jobs,
        name,
        ratio,
        tags,
        per_queue,
    };
    if format == Format::Json && !value.ratio.is_finite() {
        // Finding F1 (docs/fuzzing.md, fixed): JSON has no NaN or infinity (serde_json writes
        // `null`, which does not read back), so such a value must be refused before writing.
        return match plain.prepare("fuzz/config", &value) {
            Err(ConfigError::Encode { .. }) => Ok(()),
            other => Err(format!(
                "JSON {value:?}: a non-finite float must be refused as an Encode error, got {other:?}"
            )),
        };
    }
    // Finding F2 (docs/fuzzing.md, fixed by serde_json's `float_roundtrip`): floats read back
    // exactly.
    rewrite(&plain, "(built from the input)", &value, same)
}

/// `value` encodes, and the encoding decodes to the same (by `eq`).
fn rewrite<T>(
    codec: &Codec<T>,
    origin: &str,
    value: &T,
    eq: fn(&T, &T) -> bool,
) -> Result<(), Violation>
where
    T: Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let format = codec.format;
    let bytes = codec.prepare("fuzz/config", value).map_err(|e| {
        format!(
            "{format:?} {origin:?}: {value:?} does not encode: {}",
            error_chain(&e)
        )
    })?;
    let shown = String::from_utf8_lossy(&bytes);
    match codec.accept("fuzz/config", &bytes, 0) {
        Ok(again) if eq(value, &again) => Ok(()),
        Ok(again) => Err(format!(
            "{format:?} {origin:?}: {value:?} encodes as {shown:?}, which reads back as {again:?}"
        )),
        Err(e) => Err(format!(
            "{format:?} {origin:?}: {value:?} encodes as {shown:?}, which does not read back: {}",
            error_chain(&e)
        )),
    }
}

/// Equal, floats compared by value (NaN equal to NaN: a NaN written is a NaN read).
fn same(a: &Limits, b: &Limits) -> bool {
    let ratio = a.ratio == b.ratio || (a.ratio.is_nan() && b.ratio.is_nan());
    ratio
        && (a.max_jobs, &a.name, &a.tags, &a.per_queue)
            == (b.max_jobs, &b.name, &b.tags, &b.per_queue)
}

fn describe(result: Result<(), &ConfigError>) -> String {
    match result {
        Ok(()) => "accepted".to_owned(),
        Err(e) => format!("{e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_entry_corpus_passes() {
        for (path, data) in coord_core::fuzzing::corpus("service_entry").unwrap() {
            service_entry(&data).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    #[test]
    fn the_config_value_corpus_passes() {
        for (path, data) in coord_core::fuzzing::corpus("config_value").unwrap() {
            config_value(&data).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    /// Finding F1 of the first fuzzing run (docs/fuzzing.md): a JSON config value with a NaN or
    /// infinite float was written (as `null`) but never read back, so every reader reported a
    /// decode error. Now the write is refused.
    #[test]
    fn json_non_finite_floats_are_refused_before_writing() {
        let codec = Codec::<Limits> {
            format: Format::Json,
            validate: None,
        };
        for ratio in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let value = Limits {
                max_jobs: 1,
                name: String::new(),
                ratio,
                tags: Vec::new(),
                per_queue: BTreeMap::new(),
            };
            let err = codec.prepare("F1", &value).unwrap_err();
            assert!(matches!(err, ConfigError::Encode { .. }), "{err:?}");
        }
    }

    /// Finding F2 of the first fuzzing run (docs/fuzzing.md): a JSON config value with a float
    /// such as 7.5293041751068905e-143 reads back one ulp off (7.529304175106891e-143), or
    /// -1.5494739391785505e231 as -1.5494739391785502e231 (three ulps), because
    /// serde_json parses floats exactly only with its `float_roundtrip` feature (now on for the
    /// workspace).
    #[test]
    fn json_floats_read_back_exactly() {
        let codec = Codec::<Limits> {
            format: Format::Json,
            validate: None,
        };
        let value = Limits {
            max_jobs: 1,
            name: String::new(),
            ratio: 7.529_304_175_106_890_5e-143,
            tags: Vec::new(),
            per_queue: BTreeMap::new(),
        };
        rewrite(&codec, "F2", &value, same).unwrap();
    }

    #[test]
    fn the_checks_catch_what_they_should() {
        // A hook that rejects is told apart from a decode failure.
        assert!(config_value(br#"j{"max_jobs":0}"#).is_ok());
        assert!(config_value(br#"j{"max_jobs":"x"}"#).is_ok());
        assert!(service_entry(br#"{"Addr":""}"#).is_ok());
    }
}
