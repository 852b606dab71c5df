//! The operator commands: `status`, `set-max`, `lock`, `unlock`, talking to etcd directly (no
//! server needed), with human or JSON output.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use coord_reboot::{
    Config, EtcdSettings, GroupError, GroupName, GroupStatus, HolderId, RebootGroups,
};
use serde_json::{Value, json};

use crate::BoxError;

/// Exit code of `lock` when the group is full: sysexits' EX_TEMPFAIL (try again later); clap
/// already uses 2 for usage errors.
pub(crate) const EXIT_FULL: u8 = 75;

/// How to reach etcd: a server configuration file, or flags and environment like etcdctl's.
#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// Read `[etcd]` (endpoints, namespace, auth, TLS) from this server configuration; its
    /// groups are also listed by `status`. The flags below override it.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// etcd endpoints, comma-separated [env: COORD_ENDPOINTS, then ETCDCTL_ENDPOINTS;
    /// default: http://127.0.0.1:2379].
    #[arg(long, global = true, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Key namespace (as the server's `etcd.namespace`).
    #[arg(long, global = true, env = "COORD_NAMESPACE")]
    namespace: Option<String>,
    /// CA certificate file (PEM) for TLS to etcd.
    #[arg(long, global = true)]
    cacert: Option<PathBuf>,
    /// Client certificate file (PEM).
    #[arg(long, global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// Client key file (PEM).
    #[arg(long, global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// etcd user as `name:password` (password also from COORD_PASSWORD when only a name is given).
    #[arg(long, global = true)]
    user: Option<String>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Human)]
    pub(crate) output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Text for people.
    Human,
    /// One JSON document on stdout.
    Json,
}

impl Connection {
    /// The `--config` file, if given.
    pub(crate) fn config(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }

    /// The etcd settings and the groups the configuration file names (if one is given).
    fn settings(&self) -> Result<(EtcdSettings, Vec<GroupName>), BoxError> {
        let (mut settings, configured) = match &self.config {
            Some(path) => {
                let config = Config::load(path)?;
                let groups = config.group_names()?.into_keys().collect();
                (config.etcd, groups)
            }
            None => (EtcdSettings::new(endpoints_from_env()), Vec::new()),
        };
        if !self.endpoints.is_empty() {
            settings.endpoints = self.endpoints.clone();
        }
        if settings.endpoints.is_empty() {
            settings.endpoints = vec!["http://127.0.0.1:2379".to_owned()];
        }
        if let Some(namespace) = &self.namespace {
            settings.namespace = namespace.clone();
        }
        if self.cacert.is_some() || self.cert.is_some() {
            let mut tls = settings.tls.take().unwrap_or_default();
            if self.cacert.is_some() {
                tls.ca_file = self.cacert.clone();
            }
            if self.cert.is_some() {
                tls.cert_file = self.cert.clone();
                tls.key_file = self.key.clone();
            }
            settings.tls = Some(tls);
        }
        if let Some(user) = &self.user {
            let (name, password) = match user.split_once(':') {
                Some((name, password)) => (name.to_owned(), Some(password.to_owned())),
                None => (user.clone(), std::env::var("COORD_PASSWORD").ok()),
            };
            settings.username = Some(name);
            settings.password = password;
            settings.password_file = None;
        }
        Ok((settings, configured))
    }

    async fn groups(&self) -> Result<(RebootGroups, Vec<GroupName>), BoxError> {
        let (settings, configured) = self.settings()?;
        let client = settings.client_config()?.connect().await?;
        Ok((RebootGroups::new(client), configured))
    }
}

/// `COORD_ENDPOINTS`, falling back to `ETCDCTL_ENDPOINTS` (comma-separated).
pub(crate) fn endpoints_from_env() -> Vec<String> {
    ["COORD_ENDPOINTS", "ETCDCTL_ENDPOINTS"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .map(|value| {
            value
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|endpoints| !endpoints.is_empty())
        .unwrap_or_default()
}

/// `status [GROUP…]`: slots, holders with age, token and expiry, waiters.
pub(crate) async fn status(
    connection: &Connection,
    groups: &[String],
) -> Result<ExitCode, BoxError> {
    let named = groups
        .iter()
        .map(|g| GroupName::new(g))
        .collect::<Result<Vec<_>, _>>()?;
    let (reboot, configured) = connection.groups().await?;
    let names = if named.is_empty() {
        let mut all = reboot.list().await?;
        all.extend(configured);
        all.sort();
        all.dedup();
        all
    } else {
        named
    };
    let mut statuses = Vec::with_capacity(names.len());
    for group in &names {
        statuses.push(reboot.status(group).await?);
    }
    let _ = reboot.close().await;
    match connection.output {
        Output::Json => print_json(&Value::Array(statuses.iter().map(status_json).collect())),
        Output::Human if statuses.is_empty() => println!("no reboot group in etcd"),
        Output::Human => print_status(&statuses),
    }
    Ok(ExitCode::SUCCESS)
}

/// `set-max GROUP N`.
pub(crate) async fn set_max(
    connection: &Connection,
    group: &str,
    slots: u32,
) -> Result<ExitCode, BoxError> {
    let group = GroupName::new(group)?;
    let (reboot, _) = connection.groups().await?;
    let previous = reboot.slots(&group).await?;
    reboot.set_slots(&group, slots).await?;
    let _ = reboot.close().await;
    match connection.output {
        Output::Json => print_json(&json!({
            "group": group, "slots": slots, "previous": previous,
        })),
        Output::Human => println!("group {group}: {slots} slot(s) (was {previous})"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `lock GROUP ID`: takes a slot for `id` now, or fails with [`EXIT_FULL`].
pub(crate) async fn lock(
    connection: &Connection,
    group: &str,
    id: &str,
    ttl: Option<Duration>,
) -> Result<ExitCode, BoxError> {
    let group = GroupName::new(group)?;
    let id = HolderId::new(id)?;
    let (reboot, _) = connection.groups().await?;
    let taken = reboot.lock(&group, &id, ttl).await;
    let _ = reboot.close().await;
    match taken {
        Ok(slot) => {
            match connection.output {
                Output::Json => print_json(&json!({
                    "group": group, "id": id, "locked": true, "token": slot.token,
                })),
                Output::Human => println!("{id} holds a slot of {group} (token {})", slot.token),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(GroupError::Full { slots, .. }) => {
            match connection.output {
                Output::Json => print_json(&json!({
                    "group": group, "id": id, "locked": false, "slots": slots,
                })),
                Output::Human => {
                    eprintln!("group {group} is full: all {slots} slot(s) are held by others")
                }
            }
            Ok(ExitCode::from(EXIT_FULL))
        }
        Err(e) => Err(e.into()),
    }
}

/// `unlock GROUP ID`: removes `id`'s slot (or waiting entry) whatever it is doing.
pub(crate) async fn unlock(
    connection: &Connection,
    group: &str,
    id: &str,
) -> Result<ExitCode, BoxError> {
    let group = GroupName::new(group)?;
    let id = HolderId::new(id)?;
    let (reboot, _) = connection.groups().await?;
    let removed = reboot.force_unlock(&group, &id).await;
    let _ = reboot.close().await;
    let removed = removed?;
    match connection.output {
        Output::Json => print_json(&json!({ "group": group, "id": id, "released": removed })),
        Output::Human if removed => println!("released {id}'s slot of {group}"),
        Output::Human => println!("{id} held nothing in {group}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn status_json(status: &GroupStatus) -> Value {
    let now = SystemTime::now();
    json!({
        "group": status.group,
        "slots": status.slots,
        "holders": status.holders.iter().map(|h| json!({
            "id": h.id,
            "token": h.token,
            "since_unix_ms": h.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()),
            "age_secs": now.duration_since(h.since).map_or(0, |d| d.as_secs()),
            "expires_in_secs": h.expires_in.map(|d| d.as_secs()),
            "durable": h.durable,
        })).collect::<Vec<_>>(),
        "waiting": status.waiting,
    })
}

fn print_status(statuses: &[GroupStatus]) {
    let now = SystemTime::now();
    for (i, status) in statuses.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!(
            "group {}: {} of {} slot(s) held",
            status.group,
            status.holders.len(),
            status.slots
        );
        if status.holders.is_empty() {
            continue;
        }
        let width = status
            .holders
            .iter()
            .map(|h| h.id.len())
            .max()
            .unwrap_or(0)
            .max(2);
        println!("  {:width$}  {:>10}  {:>10}  EXPIRES", "ID", "AGE", "TOKEN");
        for holder in &status.holders {
            let age = now.duration_since(holder.since).unwrap_or_default();
            let expires = holder
                .expires_in
                .map_or_else(|| "never".to_owned(), |d| format!("in {}", short(d)));
            println!(
                "  {:width$}  {:>10}  {:>10}  {expires}",
                holder.id,
                short(age),
                holder.token
            );
        }
        if !status.waiting.is_empty() {
            println!("  waiting: {}", status.waiting.join(", "));
        }
    }
}

/// `1d2h`, `3h4m`, `5m6s`, `7s`: the two largest units.
fn short(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

fn print_json(value: &Value) {
    println!("{value}");
}

/// Parses `--ttl` (`90s`, `2h`: whole seconds).
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime_serde::re::humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if ttl.is_zero() || ttl.subsec_nanos() != 0 {
        return Err("must be a whole, non-zero number of seconds".to_owned());
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_their_two_largest_units() {
        assert_eq!(short(Duration::from_secs(7)), "7s");
        assert_eq!(short(Duration::from_secs(65)), "1m5s");
        assert_eq!(short(Duration::from_secs(3 * 3600 + 4 * 60 + 5)), "3h4m");
        assert_eq!(short(Duration::from_secs(86_400 + 2 * 3600)), "1d2h");
    }

    #[test]
    fn ttls_are_whole_seconds() {
        assert_eq!(parse_ttl("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_ttl("1500ms").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
