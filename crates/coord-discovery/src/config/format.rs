//! How values are stored: JSON by default, TOML behind the `toml` feature.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::BoxError;

/// The encoding of stored values.
///
/// JSON ([`Format::Json`]) is the default and what etcdctl users expect. TOML (`Format::Toml`,
/// feature `toml`) can store only tables (structs and maps), not bare numbers or strings. There
/// is no YAML: `serde_yaml` is unmaintained (archived in 2024) and its forks were too young to
/// depend on when this was written.
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
}

impl Format {
    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, BoxError> {
        match self {
            Format::Json => Ok(serde_json::from_slice(bytes)?),
            #[cfg(feature = "toml")]
            Format::Toml => Ok(toml::from_str(std::str::from_utf8(bytes)?)?),
        }
    }

    pub(crate) fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, BoxError> {
        match self {
            Format::Json => Ok(serde_json::to_vec(value)?),
            #[cfg(feature = "toml")]
            Format::Toml => Ok(toml::to_string(value)?.into_bytes()),
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
}
