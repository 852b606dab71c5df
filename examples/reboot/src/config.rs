//! The server's TOML configuration: where to listen, which etcd, which reboot groups.
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:9090"
//! request_timeout = "10s"
//! max_body_bytes = 4096
//!
//! [etcd]
//! endpoints = ["https://etcd-1:2379", "https://etcd-2:2379"]
//! namespace = "coord/"
//! username = "reboot"
//! password_file = "/etc/coord-reboot/etcd-password"
//! [etcd.tls]
//! ca_file = "/etc/coord-reboot/ca.pem"
//! cert_file = "/etc/coord-reboot/client.pem"
//! key_file = "/etc/coord-reboot/client-key.pem"
//!
//! [groups.default]
//! slots = 1
//!
//! [groups.workers]
//! slots = 3
//! holder_ttl = "2h"
//! ```
//!
//! Unknown keys are errors (a misspelt `slot = 3` must not silently mean "1 slot").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coord_core::{ClientConfig, TlsConfig};
use serde::Deserialize;

use crate::groups::{GroupName, InvalidGroupName};

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file (or a file it names) could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML for this configuration (syntax, unknown key, wrong type).
    #[error("invalid configuration: {0}")]
    Toml(#[from] toml::de::Error),
    /// A group name does not match FleetLock's `^[a-zA-Z0-9.-]+$`.
    #[error("invalid group in the configuration")]
    Group(#[from] InvalidGroupName),
    /// A value is out of range or two settings contradict each other.
    #[error("invalid configuration: {field}: {reason}")]
    Invalid {
        /// The setting.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The HTTP side.
    #[serde(default)]
    pub server: ServerSettings,
    /// The etcd cluster holding the reboot groups.
    pub etcd: EtcdSettings,
    /// The reboot groups this server serves, by FleetLock group name. Requests for any other group
    /// are answered `unknown_group`.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSettings>,
}

/// `[server]`: the HTTP listener and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ServerSettings {
    /// The address to listen on. Default `0.0.0.0:9090`. Not changed by a reload.
    pub listen: SocketAddr,
    /// The longest a FleetLock request may take, reading the body and talking to etcd included;
    /// past it the answer is `etcd_unavailable` (503) or `request_timeout` (408). A client that
    /// has not sent a request's complete headers within it is disconnected. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The largest request body accepted; larger ones get `payload_too_large` (413). Default 4096.
    pub max_body_bytes: usize,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 4096,
        }
    }
}

/// `[etcd]`: how to reach etcd. Its `Debug` output never shows the password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdSettings {
    /// `http://host:2379`, `https://host:2379` or `host:2379`.
    pub endpoints: Vec<String>,
    /// A prefix for every key (for example `"coord/"`). Default: none.
    #[serde(default)]
    pub namespace: String,
    /// User for etcd's simple auth.
    #[serde(default)]
    pub username: Option<String>,
    /// Password, inline. Prefer `password_file`.
    #[serde(default)]
    pub password: Option<String>,
    /// A file whose content (trailing newline removed) is the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS towards etcd.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .finish()
    }
}

/// `[etcd.tls]` (and `[agent.fleetlock.tls]`): certificates for etcd or a FleetLock server
/// (every file is PEM; any subset may be given, a CA alone included).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsSettings {
    /// CA certificate(s) to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate, for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Check the servers' certificates against this name instead of the endpoint's host.
    #[serde(default)]
    pub domain: Option<String>,
}

/// `[groups.<name>]`: one reboot group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GroupSettings {
    /// How many machines of the group may reboot at once. When set, the server writes it to etcd
    /// at start and on every reload, so etcd always has the configured value. Leave it out to
    /// manage the value with `coord-reboot set-max` instead (1 until one is set).
    #[serde(default)]
    pub slots: Option<u32>,
    /// When set, a slot is released on its own this long after it was taken, so a machine that
    /// never comes back does not block the group for ever. Whole seconds (`"90s"`, `"2h"`).
    #[serde(default, with = "humantime_serde")]
    pub holder_ttl: Option<Duration>,
}

impl Config {
    /// Parses and validates a configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Toml`] for bad TOML or unknown keys, [`ConfigError::Group`] for a group
    /// name outside FleetLock's alphabet, [`ConfigError::Invalid`] for out-of-range values or no
    /// group at all.
    ///
    /// ```
    /// let config = coord_reboot::Config::from_toml(r#"
    ///     [etcd]
    ///     endpoints = ["http://127.0.0.1:2379"]
    ///     [groups.default]
    ///     slots = 2
    /// "#).unwrap();
    /// assert_eq!(config.groups["default"].slots, Some(2));
    /// ```
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a configuration file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`], or as [`from_toml`](Self::from_toml).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// The groups with their validated names.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Group`] for a name outside FleetLock's alphabet (never after
    /// [`from_toml`](Self::from_toml)).
    pub fn group_names(&self) -> Result<BTreeMap<GroupName, GroupSettings>, ConfigError> {
        self.groups
            .iter()
            .map(|(name, settings)| Ok((GroupName::new(name)?, settings.clone())))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.groups.is_empty() {
            return Err(invalid(
                "groups",
                "no group configured; add one, e.g. `[groups.default]` with `slots = 1`",
            ));
        }
        self.group_names()?;
        for (name, group) in &self.groups {
            if let Some(slots) = group.slots {
                if slots == 0 || slots > coord_lock::MAX_LIMIT {
                    return Err(invalid(
                        format!("groups.{name}.slots"),
                        format!("{slots} is outside 1..={}", coord_lock::MAX_LIMIT),
                    ));
                }
            }
            if let Some(ttl) = group.holder_ttl {
                if ttl.is_zero() || ttl.subsec_nanos() != 0 {
                    return Err(invalid(
                        format!("groups.{name}.holder_ttl"),
                        "must be a whole, non-zero number of seconds",
                    ));
                }
            }
        }
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be positive"));
        }
        if self.server.request_timeout.is_zero() {
            return Err(invalid("server.request_timeout", "must be positive"));
        }
        self.etcd.validate()
    }
}

impl EtcdSettings {
    /// Settings for these endpoints, with nothing else set.
    pub fn new<I, S>(endpoints: I) -> EtcdSettings
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdSettings {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            namespace: String::new(),
            username: None,
            password: None,
            password_file: None,
            tls: None,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid("etcd.endpoints", "at least one endpoint is needed"));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(invalid(
                "etcd.password",
                "give either password or password_file",
            ));
        }
        if self.username.is_none() && (self.password.is_some() || self.password_file.is_some()) {
            return Err(invalid("etcd.username", "a password needs a username"));
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(invalid("etcd.tls", "cert_file and key_file go together"));
            }
        }
        Ok(())
    }

    /// The coord client configuration, with the password and certificate files read.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] for a file that cannot be read; [`ConfigError::Invalid`] for
    /// contradicting settings.
    pub fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        self.validate()?;
        let mut config = ClientConfig::new(self.endpoints.clone()).with_namespace(&self.namespace);
        if let Some(user) = &self.username {
            let password = match (&self.password, &self.password_file) {
                (Some(password), _) => password.clone(),
                (None, Some(file)) => read(file)?.trim_end_matches(['\r', '\n']).to_owned(),
                (None, None) => String::new(),
            };
            config = config.with_user(user, password);
        }
        if let Some(settings) = &self.tls {
            let mut tls = TlsConfig::new();
            if let Some(ca) = &settings.ca_file {
                tls = tls.with_ca_pem(read(ca)?);
            }
            if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
                tls = tls.with_identity_pem(read(cert)?, read(key)?);
            }
            if let Some(domain) = &settings.domain {
                tls = tls.with_domain(domain);
            }
            config = config.with_tls(tls);
        }
        Ok(config)
    }
}

pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const MINIMAL: &str = "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";

    #[test]
    fn defaults_apply_to_a_minimal_file() {
        let config = Config::from_toml(&format!("{MINIMAL}[groups.default]\n")).unwrap();
        assert_eq!(config.server.listen, SocketAddr::from(([0, 0, 0, 0], 9090)));
        assert_eq!(config.server.request_timeout, Duration::from_secs(10));
        assert_eq!(config.groups["default"].slots, None);
        assert_eq!(config.groups["default"].holder_ttl, None);
    }

    #[test]
    fn durations_are_human_readable() {
        let config = Config::from_toml(&format!(
            "{MINIMAL}[groups.workers]\nslots = 3\nholder_ttl = \"2h\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.groups["workers"].holder_ttl,
            Some(Duration::from_secs(7200))
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let config = Config::from_toml(include_str!("../coord-reboot.example.toml")).unwrap();
        assert_eq!(config.groups.len(), 3);
        assert_eq!(config.groups["databases"].slots, None);
    }

    #[test]
    fn misspelt_keys_are_errors_not_defaults() {
        let err = Config::from_toml(&format!("{MINIMAL}[groups.default]\nslot = 3\n"));
        assert!(matches!(err, Err(ConfigError::Toml(_))), "{err:?}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            "[groups.default]\nslots = 0\n",
            "[groups.default]\nholder_ttl = \"1500ms\"\n",
            "[groups.\"bad/name\"]\n",
            "[groups.\"\"]\n",
        ] {
            assert!(
                Config::from_toml(&format!("{MINIMAL}{bad}")).is_err(),
                "accepted {bad}"
            );
        }
        assert!(Config::from_toml(MINIMAL).is_err(), "no group at all");
        assert!(Config::from_toml("[etcd]\nendpoints = []\n[groups.a]\n").is_err());
    }
}
