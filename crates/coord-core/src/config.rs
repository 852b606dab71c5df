//! How to reach etcd: endpoints, key namespace, credentials, TLS and timeouts.

use std::fmt;
use std::time::Duration;

use crate::{Client, Error, Result};

/// Settings for a [`Client`]. Build one with [`ClientConfig::new`] and the `with_*` methods, then
/// [`connect`](ClientConfig::connect).
///
/// The library never reads the environment; applications decide where endpoints come from (the
/// examples read `COORD_ENDPOINTS`, falling back to `ETCDCTL_ENDPOINTS`).
///
/// ```no_run
/// # async fn demo() -> coord_core::Result<()> {
/// use coord_core::{ClientConfig, TlsConfig};
/// use std::time::Duration;
///
/// let client = ClientConfig::new(["https://10.0.0.1:2379", "https://10.0.0.2:2379"])
///     .with_namespace("myapp/")
///     .with_user("svc", "secret")
///     .with_tls(TlsConfig::new().with_ca_pem(std::fs::read("ca.pem").unwrap_or_default()))
///     .with_request_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) namespace: String,
    pub(crate) user: Option<(String, String)>,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) keep_alive: Option<(Duration, Duration)>,
    pub(crate) tcp_keepalive: Option<Duration>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .finish()
    }
}

impl ClientConfig {
    /// `user=<name>;cert=<fingerprint>` (empty parts when unused): who a client authenticates as,
    /// without any secret.
    pub(crate) fn identity(&self) -> String {
        use std::hash::{Hash, Hasher};
        let user = self.user.as_ref().map_or("", |(name, _)| name.as_str());
        let cert = match self.tls.as_ref().and_then(|tls| tls.identity.as_ref()) {
            Some((cert_pem, _key)) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                cert_pem.hash(&mut hasher);
                format!("{:016x}", hasher.finish())
            }
            None => String::new(),
        };
        format!("user={user};cert={cert}")
    }

    /// Default for [`with_connect_timeout`](Self::with_connect_timeout).
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default for [`with_request_timeout`](Self::with_request_timeout).
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default HTTP/2 keep-alive ping interval. etcd's server punishes pings more frequent than its
    /// `--grpc-keepalive-min-time` (5 s by default) with GOAWAY, so this stays above it.
    pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
    /// Default time to wait for a keep-alive ping's answer before the connection is declared dead.
    pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default TCP keep-alive.
    pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(30);

    /// Starts a configuration for the given endpoints (`"http://host:2379"`, `"https://…"`, or
    /// `"host:2379"`, which means https when TLS is configured and http otherwise).
    pub fn new<I, S>(endpoints: I) -> ClientConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            namespace: String::new(),
            user: None,
            tls: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            keep_alive: Some((
                Self::DEFAULT_KEEP_ALIVE_INTERVAL,
                Self::DEFAULT_KEEP_ALIVE_TIMEOUT,
            )),
            tcp_keepalive: Some(Self::DEFAULT_TCP_KEEPALIVE),
        }
    }

    /// Prefixes every key coord writes or reads with `namespace` (for example `"myapp/"`), so that
    /// several applications can share one etcd. Empty by default.
    #[must_use = "builder methods return the modified config"]
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> ClientConfig {
        self.namespace = namespace.into();
        self
    }

    /// Authenticates as `user` with `password` (etcd's simple auth; tokens are refreshed when they
    /// expire).
    #[must_use = "builder methods return the modified config"]
    pub fn with_user(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> ClientConfig {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Uses TLS for every endpoint.
    #[must_use = "builder methods return the modified config"]
    pub fn with_tls(mut self, tls: TlsConfig) -> ClientConfig {
        self.tls = Some(tls);
        self
    }

    /// How long to wait for a TCP (and TLS) connection to an endpoint. 5 s by default.
    #[must_use = "builder methods return the modified config"]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.connect_timeout = timeout;
        self
    }

    /// How long a single unary request (get, put, txn, lease grant…) may take. 10 s by default.
    ///
    /// Unlike etcd-client's client-wide timeout, this never cuts a blocking wait: watches, lock
    /// and campaign waits and the session's keep-alive stream are not subject to it.
    #[must_use = "builder methods return the modified config"]
    pub fn with_request_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.request_timeout = timeout;
        self
    }

    /// HTTP/2 keep-alive: ping every `interval`, declare the connection dead when a ping is not
    /// answered within `timeout`. On by default (10 s / 5 s). `interval` must be at least the
    /// server's `--grpc-keepalive-min-time` (5 s by default) or the server closes the connection.
    #[must_use = "builder methods return the modified config"]
    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> ClientConfig {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// Turns HTTP/2 keep-alive pings off.
    #[must_use = "builder methods return the modified config"]
    pub fn without_keep_alive(mut self) -> ClientConfig {
        self.keep_alive = None;
        self
    }

    /// TCP keep-alive probes on every connection (30 s by default); `None` turns them off.
    #[must_use = "builder methods return the modified config"]
    pub fn with_tcp_keepalive(mut self, keepalive: Option<Duration>) -> ClientConfig {
        self.tcp_keepalive = keepalive;
        self
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The key namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Checks the configuration without connecting.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the setting: no endpoints, an empty or malformed endpoint,
    /// a plain `http://` endpoint while TLS is configured, a NUL byte in the namespace, a zero
    /// timeout or keep-alive setting, an empty user name.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(config_error("endpoints", "no endpoints given"));
        }
        for endpoint in &self.endpoints {
            validate_endpoint(endpoint, self.tls.is_some())?;
        }
        if self.namespace.contains('\0') {
            return Err(config_error("namespace", "contains a NUL byte"));
        }
        if self.connect_timeout.is_zero() {
            return Err(config_error("connect_timeout", "must be greater than zero"));
        }
        if self.request_timeout.is_zero() {
            return Err(config_error("request_timeout", "must be greater than zero"));
        }
        if let Some((interval, timeout)) = self.keep_alive {
            if interval.is_zero() || timeout.is_zero() {
                return Err(config_error(
                    "keep_alive",
                    "interval and timeout must be greater than zero",
                ));
            }
        }
        if let Some((user, _)) = &self.user {
            if user.is_empty() {
                return Err(config_error("user", "the user name is empty"));
            }
        }
        Ok(())
    }

    /// Validates the configuration and builds a [`Client`].
    ///
    /// Connections are made lazily, so an unreachable etcd shows up at the first request — except
    /// with credentials, which are checked here. Use [`Client::check`] to verify reachability.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (see [`validate`](Self::validate); also TLS material with no
    /// certificate or key rustls can use, `field` `"tls"`); with credentials, also
    /// [`Error::AuthFailed`], [`Error::Tls`], [`Error::Unavailable`] or [`Error::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future drops the half-built client.
    pub async fn connect(self) -> Result<Client> {
        self.validate()?;
        Client::connect(self).await
    }

    /// etcd-client's options for a client on coord's own transport ([`crate::transport`], which
    /// applies the timeouts, keep-alives and TLS): the credentials.
    pub(crate) fn connect_options(&self) -> etcd_client::ConnectOptions {
        let mut options = etcd_client::ConnectOptions::new().with_auto_token_refresh(true);
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        options
    }
}

fn validate_endpoint(endpoint: &str, tls: bool) -> Result<()> {
    if endpoint.trim().is_empty() {
        return Err(config_error("endpoints", "an endpoint is empty"));
    }
    if endpoint.chars().any(char::is_whitespace) {
        return Err(config_error(
            "endpoints",
            format!("endpoint {endpoint:?} contains whitespace"),
        ));
    }
    let rest = if let Some(rest) = endpoint.strip_prefix("http://") {
        if tls {
            return Err(config_error(
                "endpoints",
                format!(
                    "endpoint {endpoint:?} is plain http:// but TLS is configured (use https://)"
                ),
            ));
        }
        rest
    } else if let Some(rest) = endpoint.strip_prefix("https://") {
        rest
    } else if endpoint.contains("://") {
        return Err(config_error(
            "endpoints",
            format!("endpoint {endpoint:?} has an unsupported scheme (use http:// or https://)"),
        ));
    } else {
        endpoint
    };
    let host_port = rest.trim_end_matches('/');
    let port_ok = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !port_ok {
        return Err(config_error(
            "endpoints",
            format!(
                "endpoint {endpoint:?} must be host:port, optionally with an http:// or https:// scheme"
            ),
        ));
    }
    Ok(())
}

fn config_error(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

/// TLS settings: the CA that signs the servers' certificates, and optionally a client certificate
/// for mutual TLS.
///
/// ```
/// use coord_core::TlsConfig;
///
/// let tls = TlsConfig::new()
///     .with_ca_pem(b"-----BEGIN CERTIFICATE-----\n...".to_vec())
///     .with_identity_pem(b"client cert".to_vec(), b"client key".to_vec())
///     .with_domain("etcd.internal");
/// # let _ = tls;
/// ```
#[derive(Clone, Default)]
pub struct TlsConfig {
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) domain: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &self.ca_pem.as_ref().map(|pem| pem.len()))
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl TlsConfig {
    /// TLS with no CA yet: servers' certificates are checked against the CA given with
    /// [`with_ca_pem`](Self::with_ca_pem) only (no platform roots).
    pub fn new() -> TlsConfig {
        TlsConfig::default()
    }

    /// Trusts the CA certificate(s) in `pem`.
    #[must_use = "builder methods return the modified config"]
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> TlsConfig {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) for mutual TLS (`--client-cert-auth`).
    #[must_use = "builder methods return the modified config"]
    pub fn with_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> TlsConfig {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Checks the servers' certificates against this name instead of the endpoint's host.
    #[must_use = "builder methods return the modified config"]
    pub fn with_domain(mut self, domain: impl Into<String>) -> TlsConfig {
        self.domain = Some(domain.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<()>) -> &'static str {
        match result {
            Err(Error::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_config_is_valid() {
        ClientConfig::new(["127.0.0.1:2379", "http://a:1", "https://b:2/"])
            .validate()
            .unwrap();
    }

    #[test]
    fn no_endpoints_is_rejected() {
        assert_eq!(
            field_of(ClientConfig::new(Vec::<String>::new()).validate()),
            "endpoints"
        );
    }

    #[test]
    fn malformed_endpoints_are_rejected() {
        for bad in [
            "",
            " ",
            "localhost",
            "http://",
            "http://:2379",
            "a:b",
            "a:0",
            "ftp://a:1",
            "a :1",
        ] {
            assert_eq!(
                field_of(ClientConfig::new([bad]).validate()),
                "endpoints",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plain_http_with_tls_is_rejected() {
        let config = ClientConfig::new(["http://a:2379"]).with_tls(TlsConfig::new());
        assert_eq!(field_of(config.validate()), "endpoints");
    }

    #[test]
    fn zero_timeouts_are_rejected() {
        let base = ClientConfig::new(["a:1"]);
        assert_eq!(
            field_of(base.clone().with_request_timeout(Duration::ZERO).validate()),
            "request_timeout"
        );
        assert_eq!(
            field_of(base.clone().with_connect_timeout(Duration::ZERO).validate()),
            "connect_timeout"
        );
        assert_eq!(
            field_of(
                base.with_keep_alive(Duration::ZERO, Duration::from_secs(1))
                    .validate()
            ),
            "keep_alive"
        );
    }

    #[test]
    fn nul_in_namespace_is_rejected() {
        assert_eq!(
            field_of(ClientConfig::new(["a:1"]).with_namespace("a\0").validate()),
            "namespace"
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let config = ClientConfig::new(["a:1"]).with_user("alice", "hunter2");
        let shown = format!("{config:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
