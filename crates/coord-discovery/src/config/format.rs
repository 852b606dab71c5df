//! How values are stored: JSON by default, TOML and YAML behind the `toml` and `yaml` features.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::BoxError;

/// The encoding of stored values.
///
/// JSON ([`Format::Json`]) is the default and what etcdctl users expect. TOML (`Format::Toml`,
/// feature `toml`) can store only tables (structs and maps), not bare numbers or strings. YAML
/// (`Format::Yaml`, feature `yaml`) uses `serde_yaml_ng`, the maintained fork of the archived
/// `serde_yaml`.
///
/// ```
/// use coord_discovery::config::Format;
///
/// assert_eq!(Format::default(), Format::Json);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// `serde_json`.
    #[default]
    Json,
    /// The `toml` crate (feature `toml`); top-level values must be tables.
    #[cfg(feature = "toml")]
    Toml,
    /// The `serde_yaml_ng` crate (feature `yaml`).
    #[cfg(feature = "yaml")]
    Yaml,
}

impl Format {
    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, BoxError> {
        match self {
            Format::Json => Ok(serde_json::from_slice(bytes)?),
            #[cfg(feature = "toml")]
            Format::Toml => Ok(toml::from_str(std::str::from_utf8(bytes)?)?),
            #[cfg(feature = "yaml")]
            Format::Yaml => Ok(serde_yaml_ng::from_slice(bytes)?),
        }
    }

    pub(crate) fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, BoxError> {
        match self {
            Format::Json => Ok(serde_json::to_vec(value)?),
            #[cfg(feature = "toml")]
            Format::Toml => Ok(toml::to_string(value)?.into_bytes()),
            #[cfg(feature = "yaml")]
            Format::Yaml => Ok(serde_yaml_ng::to_string(value)?.into_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_round_trips() {
        let bytes = Format::Json.encode(&vec![1, 2]).unwrap();
        assert_eq!(Format::Json.decode::<Vec<i32>>(&bytes).unwrap(), [1, 2]);
    }

    #[cfg(feature = "toml")]
    #[test]
    fn toml_round_trips_tables() {
        let value = std::collections::BTreeMap::from([("max".to_owned(), 3)]);
        let bytes = Format::Toml.encode(&value).unwrap();
        assert_eq!(
            Format::Toml
                .decode::<std::collections::BTreeMap<String, i32>>(&bytes)
                .unwrap(),
            value
        );
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn yaml_round_trips() {
        let value = std::collections::BTreeMap::from([("max".to_owned(), vec![1, 2])]);
        let bytes = Format::Yaml.encode(&value).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "max:\n- 1\n- 2\n"
        );
        assert_eq!(
            Format::Yaml
                .decode::<std::collections::BTreeMap<String, Vec<i32>>>(&bytes)
                .unwrap(),
            value
        );
    }
}
