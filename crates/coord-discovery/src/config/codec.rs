//! Turning stored bytes into accepted values and back: the format plus the validation hook,
//! shared by [`Config`](super::Config) and [`ConfigMap`](super::ConfigMap).

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{BoxError, ConfigError};
use super::format::Format;

pub(crate) type Validator<T> = Arc<dyn Fn(&T) -> Result<(), BoxError> + Send + Sync>;

pub(crate) struct Codec<T> {
    pub(crate) format: Format,
    pub(crate) validate: Option<Validator<T>>,
}

impl<T> Clone for Codec<T> {
    fn clone(&self) -> Codec<T> {
        Codec {
            format: self.format,
            validate: self.validate.clone(),
        }
    }
}

impl<T> Codec<T> {
    /// Runs the validation hook; `mod_revision` is 0 for a value about to be written.
    pub(crate) fn check(&self, key: &str, value: &T, mod_revision: i64) -> Result<(), ConfigError> {
        match &self.validate {
            Some(hook) => hook(value).map_err(|source| ConfigError::Invalid {
                key: key.to_owned(),
                mod_revision,
                source,
            }),
            None => Ok(()),
        }
    }
}

impl<T: DeserializeOwned> Codec<T> {
    /// Decodes and validates a stored value.
    pub(crate) fn accept(
        &self,
        key: &str,
        bytes: &[u8],
        mod_revision: i64,
    ) -> Result<T, ConfigError> {
        let value = self
            .format
            .decode::<T>(bytes)
            .map_err(|source| ConfigError::Decode {
                key: key.to_owned(),
                mod_revision,
                source,
            })?;
        self.check(key, &value, mod_revision)?;
        Ok(value)
    }
}

impl<T: Serialize + DeserializeOwned> Codec<T> {
    /// Validates and encodes a value about to be written, and checks that the encoding reads
    /// back: a value every reader would reject is refused here instead (JSON, for one, writes a
    /// NaN or infinite float as `null`, which no float field accepts — found by fuzzing).
    pub(crate) fn prepare(&self, key: &str, value: &T) -> Result<Vec<u8>, ConfigError> {
        self.check(key, value, 0)?;
        let encode_error = |source| ConfigError::Encode {
            key: key.to_owned(),
            source,
        };
        let bytes = self.format.encode(value).map_err(encode_error)?;
        if let Err(error) = self.format.decode::<T>(&bytes) {
            return Err(encode_error(
                format!("the {:?} encoding does not read back: {error}", self.format).into(),
            ));
        }
        Ok(bytes)
    }
}

/// The error and its causes on one line, for logs.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        text.push_str(": ");
        text.push_str(&e.to_string());
        current = e.source();
    }
    text
}
