//! How to reach etcd: the global flags, named and defaulted as etcdctl's, and the environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use coord_core::{Client, ClientConfig, Session, TlsConfig};

use crate::Error;
use crate::output::Output;

/// Where the endpoints come from when `--endpoints` is not given, in order.
pub const ENDPOINT_VARIABLES: [&str; 2] = ["COORD_ENDPOINTS", "ETCDCTL_ENDPOINTS"];

/// The endpoint used when neither the flag nor the environment names one (etcdctl's default).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

/// The global flags: endpoints, namespace, credentials, TLS, timeouts and the output format.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// etcd endpoints, comma-separated (`http://host:2379`, `https://…`, or `host:2379`: https
    /// with TLS flags, http without) [env: COORD_ENDPOINTS, then ETCDCTL_ENDPOINTS; default:
    /// http://127.0.0.1:2379].
    #[arg(long, global = true, value_delimiter = ',', value_name = "URLS")]
    pub endpoints: Vec<String>,

    /// Prefix of every key coordctl reads or writes (for example `myapp/`), as the coord
    /// libraries' `ClientConfig::with_namespace`. etcdctl has none: `coordctl --namespace app/
    /// lock x` and `etcdctl lock app/x` are the same lock.
    #[arg(long, global = true, env = "COORD_NAMESPACE", default_value = "")]
    pub namespace: String,

    /// etcd user, as `name` or `name:password`.
    #[arg(
        long,
        global = true,
        env = "COORD_USER",
        value_name = "NAME[:PASSWORD]"
    )]
    pub user: Option<String>,

    /// Password for `--user` (when it does not include one).
    #[arg(
        long,
        global = true,
        env = "COORD_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,

    /// CA bundle (PEM) to verify etcd's certificate; turns TLS on.
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Client certificate (PEM) for TLS client authentication; needs `--key`.
    #[arg(long, global = true, requires = "key", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// Client private key (PEM) for `--cert`.
    #[arg(long, global = true, requires = "cert", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// How long to wait for a connection to an endpoint (`2s`, `500ms`).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub dial_timeout: Duration,

    /// How long one request (get, put, transaction, lease grant…) may take; waits for a lock,
    /// a permit or a leadership are not cut by it (use `--timeout` on those commands).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub command_timeout: Duration,

    /// Output format: `human` (text; etcdctl's layout where it has one) or `json` (one JSON
    /// document, or one per line for commands that follow changes).
    #[arg(
        long,
        short = 'o',
        short_alias = 'w',
        alias = "write-out",
        global = true,
        value_enum,
        default_value_t = Output::Human
    )]
    pub output: Output,
}

impl Connection {
    /// The endpoints: `--endpoints`, else `COORD_ENDPOINTS`, else `ETCDCTL_ENDPOINTS`, else
    /// [`DEFAULT_ENDPOINT`].
    pub fn resolved_endpoints(&self) -> Vec<String> {
        let given: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if !given.is_empty() {
            return given;
        }
        ENDPOINT_VARIABLES
            .iter()
            .filter_map(|var| std::env::var(var).ok())
            .map(|value| split_list(&value))
            .find(|endpoints| !endpoints.is_empty())
            .unwrap_or_else(|| vec![DEFAULT_ENDPOINT.to_owned()])
    }

    /// The client configuration the flags describe (files are read here).
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an unreadable certificate file or a user without a password.
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        let mut config = ClientConfig::new(self.resolved_endpoints())
            .with_namespace(&self.namespace)
            .with_connect_timeout(self.dial_timeout)
            .with_request_timeout(self.command_timeout);
        if let Some(user) = &self.user {
            let (name, password) = match (user.split_once(':'), &self.password) {
                (Some((name, password)), None) => (name, password.to_owned()),
                (None, Some(password)) => (user.as_str(), password.clone()),
                (Some(_), Some(_)) => {
                    return Err(Error::Usage(
                        "--password given while --user already includes one".to_owned(),
                    ));
                }
                (None, None) => {
                    return Err(Error::Usage(format!(
                        "no password for user {user:?}: use --user NAME:PASSWORD, --password or COORD_PASSWORD"
                    )));
                }
            };
            config = config.with_user(name, password);
        }
        if self.cacert.is_some() || self.cert.is_some() {
            let mut tls = TlsConfig::new();
            if let Some(ca) = &self.cacert {
                tls = tls.with_ca_pem(read(ca)?);
            }
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                tls = tls.with_identity_pem(read(cert)?, read(key)?);
            }
            config = config.with_tls(tls);
        }
        Ok(config)
    }

    /// A connected client.
    ///
    /// # Errors
    ///
    /// As [`client_config`](Self::client_config), then [`coord_core::Error`]s of connecting
    /// (invalid endpoints, authentication).
    pub async fn client(&self) -> Result<Client, Error> {
        Ok(self.client_config()?.connect().await?)
    }
}

/// A session with `ttl`, for the commands that hold something.
pub(crate) async fn session(client: &Client, ttl: Duration) -> Result<Session, Error> {
    Ok(Session::builder(client.clone()).ttl(ttl).start().await?)
}

/// Ends a session (revoking its lease removes every key still bound to it); a failure is only
/// reported, since the lease then expires on its own.
pub(crate) async fn close(session: Session) {
    let lease = session.lease_id();
    if let Err(e) = session.close().await {
        tracing::warn!(%lease, error = %crate::error::chain(&e), "could not revoke the session's lease; it expires at its TTL");
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses a duration such as `10s`, `1m30s` or `500ms`.
///
/// # Errors
///
/// A message for clap when the text is not a duration.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// Parses a non-zero duration.
///
/// # Errors
///
/// A message for clap for zero or a text that is not a duration.
pub(crate) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        zero if zero.is_zero() => Err("must be greater than zero".to_owned()),
        duration => Ok(duration),
    }
}

/// Parses a TTL: a whole, non-zero number of seconds (`10s`, `2h`).
///
/// # Errors
///
/// A message for clap otherwise.
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl.is_zero() || ttl.subsec_nanos() != 0 {
        return Err("must be a whole, non-zero number of seconds".to_owned());
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ttls_are_whole_seconds() {
        assert_eq!(parse_ttl("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_ttl("1500ms").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn endpoint_lists_drop_blanks() {
        assert_eq!(split_list(" a:1, ,b:2,"), vec!["a:1", "b:2"]);
    }
}
