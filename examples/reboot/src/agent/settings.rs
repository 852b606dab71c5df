//! The agent's TOML configuration: an `[agent]` section, and either `[agent.fleetlock]` (take
//! slots through a FleetLock server) or `[etcd]` (take them in etcd directly, as the server does).
//!
//! ```toml
//! [agent]
//! # id = "node-17"                # default: /etc/machine-id, else the hostname
//! group = "workers"               # default "default"
//! signal_file = "/var/run/reboot-required"    # the default signal
//! # signal_command = "needs-reboot"           # instead: exit 0 means a reboot is needed
//! check_interval = "5m"
//! pre_reboot = "kubectl drain --ignore-daemonsets $(hostname)"
//! pre_reboot_timeout = "1h"
//! reboot = "systemctl reboot"     # the default
//! health = "curl -fsS http://127.0.0.1:8080/healthz"
//! health_timeout = "5m"
//! retry_min = "5s"                # backoff between refused or failed attempts
//! retry_max = "5m"
//!
//! [[agent.windows]]               # none: any time
//! days = ["sat", "sun"]           # default: every day
//! start = "02:00"
//! length = "3h"
//! time_zone = "Europe/Berlin"     # default: the system's
//!
//! [agent.fleetlock]
//! url = "http://coordinator:9090/"   # or https://…: checked against the system's CAs
//! timeout = "30s"
//!
//! # [agent.fleetlock.tls]          # only with https://
//! # ca_file = "/etc/coord-reboot/ca.pem"       # CAs to trust besides the system's
//! # cert_file = "/etc/coord-reboot/node.pem"   # a client certificate, if the server asks
//! # key_file = "/etc/coord-reboot/node-key.pem"
//! ```
//!
//! Unknown keys are errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::command::CommandLine;
use super::window::{Schedule, Window};
use crate::config::{ConfigError, EtcdSettings, TlsSettings};
use crate::groups::{GroupName, HolderId};

/// The signal file checked when no signal is configured.
pub const DEFAULT_SIGNAL_FILE: &str = "/var/run/reboot-required";

/// The whole agent configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AgentConfig {
    /// `[agent]`.
    pub agent: AgentSettings,
    /// `[etcd]`: take slots in etcd directly (instead of `[agent.fleetlock]`).
    #[serde(default)]
    pub etcd: Option<EtcdSettings>,
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AgentSettings {
    /// The node's id (FleetLock's `client_params.id`). Default: `/etc/machine-id`, else the
    /// hostname.
    #[serde(default)]
    pub id: Option<String>,
    /// The reboot group. Default `default`.
    #[serde(default = "default_group")]
    pub group: String,
    /// A file whose presence means a reboot is needed. Default
    /// [`DEFAULT_SIGNAL_FILE`] unless `signal_command` is set.
    #[serde(default)]
    pub signal_file: Option<PathBuf>,
    /// A command whose success (exit 0) means a reboot is needed.
    #[serde(default)]
    pub signal_command: Option<CommandLine>,
    /// How often the signal is checked, and the longest sleep before the schedule is looked at
    /// again. Default `5m`.
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    /// When a slot may be taken; none: any time.
    #[serde(default)]
    pub windows: Vec<WindowSettings>,
    /// Run with the slot held, before the reboot (drain the node…). Its failure gives the slot
    /// back and stops the agent.
    #[serde(default)]
    pub pre_reboot: Option<CommandLine>,
    /// How long the pre-reboot hook may run. Default `1h`.
    #[serde(default = "default_pre_reboot_timeout", with = "humantime_serde")]
    pub pre_reboot_timeout: Duration,
    /// The reboot. Default `systemctl reboot`. If it returns successfully (a harmless command in
    /// tests), the agent stops; if it fails, the agent stops with an error and keeps the slot.
    #[serde(default = "default_reboot")]
    pub reboot: CommandLine,
    /// After boot, the slot is given back once this passes (exit 0); tried again with backoff
    /// while it fails, the slot kept meanwhile. None: healthy at once.
    #[serde(default)]
    pub health: Option<CommandLine>,
    /// How long one health check may run. Default `5m`.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub health_timeout: Duration,
    /// The first delay after a refusal (group full) or a failure. Default `5s`.
    #[serde(default = "default_retry_min", with = "humantime_serde")]
    pub retry_min: Duration,
    /// The longest delay between attempts (exponential with jitter up to this). Default `5m`.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// For the etcd backend: the slot expires on its own after this long (as a server's
    /// `holder_ttl`). Not allowed with FleetLock, where the server decides.
    #[serde(default, with = "humantime_serde")]
    pub holder_ttl: Option<Duration>,
    /// `[agent.fleetlock]`: take slots through a FleetLock server.
    #[serde(default)]
    pub fleetlock: Option<FleetLockSettings>,
}

/// `[[agent.windows]]`: a reboot window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WindowSettings {
    /// Weekdays it opens on (`mon` … `sun`, or full names). Default: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// When it opens, `HH:MM` on a 24 h clock.
    pub start: String,
    /// How long it stays open (a real duration, DST changes included).
    #[serde(with = "humantime_serde")]
    pub length: Duration,
    /// An IANA time zone (`Europe/Berlin`). Default: the system's.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// `[agent.fleetlock]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FleetLockSettings {
    /// The server's base URL (`http://coordinator:9090/` or `https://…`).
    pub url: String,
    /// How long one request may take. Default `30s`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `[agent.fleetlock.tls]`, for an `https://` URL: `ca_file` (CAs to trust besides the
    /// system's), `cert_file` and `key_file` (a client certificate). `domain` is not supported
    /// here: the URL's host is the name checked.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

impl FleetLockSettings {
    /// The client these settings describe, with the certificate files read.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] for a file that cannot be read; [`ConfigError::Invalid`] for a bad
    /// URL, contradicting settings, or certificates that cannot be used.
    ///
    /// ```
    /// let config = coord_reboot::agent::AgentConfig::from_toml(
    ///     "[agent]\n[agent.fleetlock]\nurl = \"https://coordinator/\"\n",
    /// ).unwrap();
    /// let client = config.agent.fleetlock.unwrap().client().unwrap();
    /// assert_eq!(client.base().scheme(), "https");
    /// ```
    pub fn client(&self) -> Result<super::FleetLockClient, ConfigError> {
        self.check()?;
        let mut tls = super::FleetLockTls::new();
        if let Some(settings) = &self.tls {
            if let Some(ca) = &settings.ca_file {
                tls = tls.with_ca_pem(crate::config::read(ca)?.into_bytes());
            }
            if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
                tls = tls.with_identity_pem(
                    crate::config::read(cert)?.into_bytes(),
                    crate::config::read(key)?.into_bytes(),
                );
            }
        }
        super::FleetLockClient::with_tls(&self.url, self.timeout, &tls).map_err(|e| match e {
            super::ClientError::Tls { reason } => invalid("agent.fleetlock.tls", reason),
            other => invalid("agent.fleetlock.url", other.to_string()),
        })
    }

    /// Everything that can be checked without reading the certificate files.
    fn check(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(invalid("agent.fleetlock.timeout", "must be positive"));
        }
        let base = super::client::base_url(&self.url, true)
            .map_err(|e| invalid("agent.fleetlock.url", e.to_string()))?;
        if let Some(tls) = &self.tls {
            if base.scheme() != "https" {
                return Err(invalid(
                    "agent.fleetlock.tls",
                    "TLS settings need an https:// url",
                ));
            }
            if tls.domain.is_some() {
                return Err(invalid(
                    "agent.fleetlock.tls.domain",
                    "not supported for FleetLock: the url's host is the name checked",
                ));
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(invalid(
                    "agent.fleetlock.tls",
                    "cert_file and key_file go together",
                ));
            }
        }
        Ok(())
    }
}

/// What the agent checks for "a reboot is needed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The file exists.
    File(PathBuf),
    /// The command exits 0.
    Command(CommandLine),
}

fn default_group() -> String {
    "default".to_owned()
}
fn default_check_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_pre_reboot_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_reboot() -> CommandLine {
    CommandLine::Argv(vec!["systemctl".to_owned(), "reboot".to_owned()])
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_retry_min() -> Duration {
    Duration::from_secs(5)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl AgentConfig {
    /// Parses and validates an agent configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Toml`] for bad TOML or unknown keys; [`ConfigError::Group`];
    /// [`ConfigError::Invalid`] for bad values, both or neither backend, or a window that cannot
    /// be built (bad day, time, length or time zone).
    ///
    /// ```
    /// let config = coord_reboot::agent::AgentConfig::from_toml(r#"
    ///     [agent]
    ///     id = "node-1"
    ///     group = "workers"
    ///     [agent.fleetlock]
    ///     url = "http://coordinator:9090/"
    /// "#).unwrap();
    /// assert_eq!(config.agent.group, "workers");
    /// ```
    pub fn from_toml(text: &str) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates an agent configuration file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`], or as [`from_toml`](Self::from_toml).
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        AgentConfig::from_toml(&text)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let agent = &self.agent;
        match (&agent.fleetlock, &self.etcd) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "agent.fleetlock",
                    "give either [agent.fleetlock] or [etcd], not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "agent.fleetlock",
                    "no backend: add [agent.fleetlock] url = \"http://…/\" or an [etcd] section",
                ));
            }
            (Some(fleetlock), None) => {
                if agent.holder_ttl.is_some() {
                    return Err(invalid(
                        "agent.holder_ttl",
                        "only for the etcd backend (a FleetLock server sets its own)",
                    ));
                }
                fleetlock.check()?;
            }
            (None, Some(_)) => {}
        }
        agent.group()?;
        if let Some(id) = &agent.id {
            HolderId::new(id).map_err(|e| invalid("agent.id", e.to_string()))?;
        }
        if agent.signal_file.is_some() && agent.signal_command.is_some() {
            return Err(invalid(
                "agent.signal_command",
                "give either signal_file or signal_command",
            ));
        }
        for (field, command) in [
            ("agent.signal_command", agent.signal_command.as_ref()),
            ("agent.pre_reboot", agent.pre_reboot.as_ref()),
            ("agent.reboot", Some(&agent.reboot)),
            ("agent.health", agent.health.as_ref()),
        ] {
            if command.is_some_and(CommandLine::is_empty) {
                return Err(invalid(field, "empty command"));
            }
        }
        for (field, value) in [
            ("agent.check_interval", agent.check_interval),
            ("agent.pre_reboot_timeout", agent.pre_reboot_timeout),
            ("agent.health_timeout", agent.health_timeout),
            ("agent.retry_min", agent.retry_min),
            ("agent.retry_max", agent.retry_max),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be positive"));
            }
        }
        if agent.retry_min > agent.retry_max {
            return Err(invalid("agent.retry_min", "is larger than retry_max"));
        }
        if let Some(ttl) = agent.holder_ttl {
            if ttl.is_zero() || ttl.subsec_nanos() != 0 {
                return Err(invalid(
                    "agent.holder_ttl",
                    "must be a whole, non-zero number of seconds",
                ));
            }
        }
        agent.schedule()?;
        Ok(())
    }
}

impl AgentSettings {
    /// The group, checked.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Group`].
    pub fn group(&self) -> Result<GroupName, ConfigError> {
        Ok(GroupName::new(&self.group)?)
    }

    /// The node id: `id`, else `/etc/machine-id`, else the hostname.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when none of them gives a usable id.
    pub fn node_id(&self) -> Result<HolderId, ConfigError> {
        if let Some(id) = &self.id {
            return HolderId::new(id).map_err(|e| invalid("agent.id", e.to_string()));
        }
        [
            "/etc/machine-id",
            "/proc/sys/kernel/hostname",
            "/etc/hostname",
        ]
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .find_map(|text| HolderId::new(text.trim()).ok())
        .ok_or_else(|| {
            invalid(
                "agent.id",
                "no /etc/machine-id and no hostname to use: set agent.id",
            )
        })
    }

    /// The reboot signal.
    pub fn signal(&self) -> Signal {
        match (&self.signal_command, &self.signal_file) {
            (Some(command), _) => Signal::Command(command.clone()),
            (None, Some(file)) => Signal::File(file.clone()),
            (None, None) => Signal::File(PathBuf::from(DEFAULT_SIGNAL_FILE)),
        }
    }

    /// The reboot windows.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the window that cannot be built.
    pub fn schedule(&self) -> Result<Schedule, ConfigError> {
        let windows = self
            .windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Window::new(&w.days, &w.start, w.length, w.time_zone.as_deref())
                    .map_err(|e| invalid(format!("agent.windows[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule::new(windows))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const FLEETLOCK: &str = "[agent.fleetlock]\nurl = \"http://127.0.0.1:9090/\"\n";
    const ETCD: &str = "[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";

    #[test]
    fn defaults_apply_to_a_minimal_file() {
        let config = AgentConfig::from_toml(&format!("[agent]\n{FLEETLOCK}")).unwrap();
        let agent = &config.agent;
        assert_eq!(agent.group, "default");
        assert_eq!(
            agent.signal(),
            Signal::File(PathBuf::from("/var/run/reboot-required"))
        );
        assert_eq!(agent.reboot.to_string(), "systemctl reboot");
        assert_eq!(agent.check_interval, Duration::from_secs(300));
        assert!(agent.schedule().unwrap().windows().is_empty());
        assert_eq!(
            agent.fleetlock.as_ref().unwrap().timeout,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_full_file_parses() {
        let config = AgentConfig::from_toml(&format!(
            "[agent]\nid = \"node-1\"\ngroup = \"workers\"\nsignal_command = [\"needs-reboot\", \"-q\"]\n\
             reboot = \"echo rebooting\"\nhealth = \"true\"\nholder_ttl = \"2h\"\n\
             [[agent.windows]]\ndays = [\"sat\", \"Sunday\"]\nstart = \"22:00\"\nlength = \"4h\"\n\
             time_zone = \"Europe/Berlin\"\n{ETCD}"
        ))
        .unwrap();
        assert_eq!(config.agent.node_id().unwrap().as_str(), "node-1");
        assert!(matches!(
            config.agent.signal(),
            Signal::Command(CommandLine::Argv(_))
        ));
        assert_eq!(config.agent.schedule().unwrap().windows().len(), 1);
        assert!(config.etcd.is_some());
    }

    #[test]
    fn the_example_file_is_valid() {
        let config =
            AgentConfig::from_toml(include_str!("../../coord-reboot-agent.example.toml")).unwrap();
        assert_eq!(config.agent.group, "workers");
        assert_eq!(config.agent.schedule().unwrap().windows().len(), 2);
        assert!(config.agent.fleetlock.is_some());
    }

    #[test]
    fn exactly_one_backend_is_required() {
        assert!(AgentConfig::from_toml("[agent]\n").is_err());
        assert!(AgentConfig::from_toml(&format!("[agent]\n{FLEETLOCK}{ETCD}")).is_err());
        assert!(AgentConfig::from_toml(&format!("[agent]\n{ETCD}")).is_ok());
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            "group = \"a_b\"\n",
            "id = \"a/b\"\n",
            "signal_file = \"/x\"\nsignal_command = \"true\"\n",
            "reboot = \"\"\n",
            "check_interval = \"0s\"\n",
            "retry_min = \"10m\"\nretry_max = \"1m\"\n",
            "holder_ttl = \"2h\"\n",
            "rebot = \"typo\"\n",
            "[[agent.windows]]\nstart = \"25:00\"\nlength = \"1h\"\n",
            "[[agent.windows]]\nstart = \"02:00\"\nlength = \"1h\"\ntime_zone = \"Nowhere/Town\"\n",
            "[[agent.windows]]\ndays = [\"someday\"]\nstart = \"02:00\"\nlength = \"1h\"\n",
        ] {
            let text = format!("[agent]\n{bad}{FLEETLOCK}");
            let text = if bad.starts_with("[[") {
                format!("[agent]\n{FLEETLOCK}{bad}")
            } else {
                text
            };
            assert!(AgentConfig::from_toml(&text).is_err(), "accepted {bad}");
        }
        for (url, tls) in [
            ("http://coordinator/", "ca_file = \"ca.pem\""),
            ("https://coordinator/", "cert_file = \"node.pem\""),
            ("https://coordinator/", "domain = \"other\""),
            ("https://coordinator/", "unknown = 1"),
        ] {
            let text = format!(
                "[agent]\n[agent.fleetlock]\nurl = \"{url}\"\n[agent.fleetlock.tls]\n{tls}\n"
            );
            assert!(
                AgentConfig::from_toml(&text).is_err(),
                "accepted {url} with {tls}"
            );
        }
        let https = "[agent]\n[agent.fleetlock]\nurl = \"https://coordinator/\"\n";
        assert!(AgentConfig::from_toml(https).is_ok());
    }
}
