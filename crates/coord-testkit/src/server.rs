//! [`Etcd`]: one single-member etcd server in its own temporary directory.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use etcd_client::{Client, CompactionOptions, ConnectOptions};
use tempfile::TempDir;

use crate::{
    Error, TestCerts,
    member::{self, Launch, Member, ServerTls},
    ports::MemberPorts,
    tempdir,
};

/// How many times a first start is retried with fresh ports when another process took one.
const PORT_ATTEMPTS: usize = 3;

/// A running single-member etcd server.
///
/// The server listens on free loopback ports and keeps its data, log and
/// certificates in a temporary directory. Dropping it SIGKILLs the process and
/// removes the directory. If the test process dies first (panic, abort, SIGKILL),
/// Linux kills the server too.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let etcd = coord_testkit::Etcd::start().await?;
/// let mut client = etcd.client().await?;
/// client.put("greeting", "hello", None).await?;
/// let reply = client.get("greeting", None).await?;
/// assert_eq!(reply.kvs()[0].value(), b"hello");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Etcd {
    member: Member,
    certs: Option<TestCerts>,
    client_cert_auth: bool,
    root_password: Option<String>,
    // Dropped after `Drop::drop` has killed the process.
    dir: TempDir,
}

/// Configures and starts an [`Etcd`]; see [`Etcd::builder`].
#[derive(Debug, Clone, Default)]
pub struct EtcdBuilder {
    binary: Option<PathBuf>,
    tls: bool,
    client_cert_auth: bool,
    root_password: Option<String>,
    args: Vec<String>,
}

impl Etcd {
    /// Starts a server with the defaults (plain HTTP, no auth, the [`etcd_binary`](crate::etcd_binary)).
    ///
    /// # Errors
    ///
    /// See [`EtcdBuilder::start`].
    ///
    /// # Cancel safety
    ///
    /// Cancelling drops the half-started server, which kills it.
    pub async fn start() -> Result<Etcd, Error> {
        Etcd::builder().start().await
    }

    /// A builder for a server with TLS, client-certificate auth, etcd auth or extra flags.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), coord_testkit::Error> {
    /// let etcd = coord_testkit::Etcd::builder()
    ///     .tls(true)
    ///     .arg("--auto-compaction-retention=1")
    ///     .start()
    ///     .await?;
    /// assert!(etcd.endpoint().starts_with("https://"));
    /// # Ok(()) }
    /// ```
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::default()
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    /// `vec![self.endpoint()]`, for `Client::connect`.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The client listener's address, e.g. for [`FaultProxy::start`](crate::FaultProxy::start).
    pub fn client_addr(&self) -> SocketAddr {
        self.member.client_addr()
    }

    /// The plain-HTTP metrics listener (`--listen-metrics-urls`), serving `/health` and
    /// `/metrics` even when the client URL uses TLS.
    pub fn metrics_url(&self) -> String {
        self.member.metrics_url()
    }

    /// The member's `--data-dir`.
    pub fn data_dir(&self) -> &Path {
        self.member.data_dir()
    }

    /// The temporary directory holding the data directory, `etcd.log` and certificates;
    /// removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file receiving etcd's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        self.member.log_path()
    }

    /// The process id, or `None` after [`kill`](Self::kill).
    pub fn pid(&self) -> Option<u32> {
        self.member.pid()
    }

    /// The generated certificates when started with [`tls(true)`](EtcdBuilder::tls).
    pub fn certs(&self) -> Option<&TestCerts> {
        self.certs.as_ref()
    }

    /// Options that reach this server: its CA when TLS is on, the `root` client
    /// certificate with client-certificate auth, the `root` user's credentials when
    /// [`root_password`](EtcdBuilder::root_password) was set. Add your own timeouts
    /// or keep-alives on top.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let etcd = coord_testkit::Etcd::start().await?;
    /// use std::time::Duration;
    /// let options = etcd.connect_options().with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
    /// let client = etcd_client::Client::connect(etcd.endpoints(), Some(options)).await?;
    /// # Ok(()) }
    /// ```
    pub fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new();
        if let Some(certs) = &self.certs {
            options = options.with_tls(certs.tls_options(self.client_cert_auth));
        }
        if let Some(password) = &self.root_password {
            options = options.with_user("root", password.clone());
        }
        options
    }

    /// A client for this server, configured with [`connect_options`](Self::connect_options).
    ///
    /// # Errors
    ///
    /// [`Error::Client`] if the client cannot be built or (with etcd auth) cannot authenticate.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn client(&self) -> Result<Client, Error> {
        Client::connect(self.endpoints(), Some(self.connect_options()))
            .await
            .map_err(|e| Error::client(format!("cannot connect to {}", self.endpoint()), e))
    }

    /// Compacts the key-value history at the current revision, waiting until the
    /// compaction is physically applied, and returns that revision. Watches from an
    /// older revision then fail with `compact_revision` set.
    ///
    /// Compacting again without writes in between is fine and returns the same revision.
    ///
    /// # Errors
    ///
    /// [`Error::Client`] if a request fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; the compaction may or may not have happened.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let etcd = coord_testkit::Etcd::start().await?;
    /// let mut client = etcd.client().await?;
    /// client.put("k", "v1", None).await?;
    /// client.put("k", "v2", None).await?;
    /// let compacted_at = etcd.compact().await?;
    /// assert_eq!(compacted_at, client.get("k", None).await?.header().unwrap().revision());
    /// # Ok(()) }
    /// ```
    pub async fn compact(&self) -> Result<i64, Error> {
        let mut client = self.client().await?;
        compact(&mut client).await
    }

    /// The raw Prometheus text of `/metrics`.
    ///
    /// # Errors
    ///
    /// [`Error::Http`] if the request fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn metrics(&self) -> Result<String, Error> {
        crate::health::metrics(self.member.metrics_addr()).await
    }

    /// The server version (e.g. `"3.7.2"`), from the Status RPC.
    ///
    /// # Errors
    ///
    /// [`Error::Client`] if the request fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn version(&self) -> Result<String, Error> {
        let mut client = self.client().await?;
        let status = client
            .status()
            .await
            .map_err(|e| Error::client("Status RPC failed", e))?;
        Ok(status.version().to_owned())
    }

    /// SIGKILLs the server now, keeping its data directory for [`restart`](Self::restart).
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// Starts the server again on the same ports and data directory (killing it first if it
    /// still runs) and waits until it is healthy.
    ///
    /// Clients created before keep working: they reconnect to the same address.
    ///
    /// # Errors
    ///
    /// [`Error::Startup`] if it does not become healthy, e.g. because another process took
    /// one of its ports meanwhile (the log tail then says "address already in use").
    ///
    /// # Cancel safety
    ///
    /// Cancelling may leave the server running but not yet healthy.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.member.launch().await?;
        member::wait_healthy(std::slice::from_mut(&mut self.member), &[0]).await
    }
}

/// Compaction shared by [`Etcd::compact`] and the cluster.
pub(crate) async fn compact(client: &mut Client) -> Result<i64, Error> {
    let reply = client
        .get("coord-testkit/compact", None)
        .await
        .map_err(|e| Error::client("cannot read the current revision", e))?;
    let revision = reply.header().map_or(0, |h| h.revision());
    match client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
    {
        Ok(_) => Ok(revision),
        // Already compacted at exactly this revision: nothing was written since.
        Err(etcd_client::Error::GRpcStatus(status))
            if status
                .message()
                .contains("required revision has been compacted") =>
        {
            Ok(revision)
        }
        Err(e) => Err(Error::client(
            format!("cannot compact at revision {revision}"),
            e,
        )),
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Before `dir` is removed.
        self.member.kill();
    }
}

impl EtcdBuilder {
    /// Runs this etcd binary instead of [`etcd_binary()`](crate::etcd_binary).
    #[must_use = "builder methods return the modified builder"]
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Serves the client URL over TLS with freshly generated [`TestCerts`]
    /// (`--cert-file`, `--key-file`). Clients need not present a certificate (etcd would
    /// demand one as soon as it is given `--trusted-ca-file`, so that is only passed with
    /// [`client_cert_auth`](Self::client_cert_auth)). The metrics URL stays plain HTTP.
    #[must_use = "builder methods return the modified builder"]
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }

    /// Requires clients to present a certificate signed by the test CA (`--trusted-ca-file`,
    /// `--client-cert-auth`).
    /// Implies [`tls(true)`](Self::tls); [`Etcd::client`] presents the `root` client certificate.
    #[must_use = "builder methods return the modified builder"]
    pub fn client_cert_auth(mut self, enabled: bool) -> Self {
        self.client_cert_auth = enabled;
        self
    }

    /// Enables etcd authentication once the server is up: creates user `root` with this
    /// password, grants it role `root` and turns auth on. [`Etcd::client`] then logs in as
    /// `root`. Other users and roles are up to the test.
    #[must_use = "builder methods return the modified builder"]
    pub fn root_password(mut self, password: impl Into<String>) -> Self {
        self.root_password = Some(password.into());
        self
    }

    /// Passes an extra flag to etcd, e.g. `"--auto-compaction-retention=1"`. Flags the
    /// testkit sets itself (names, URLs, directories, TLS files) must not be repeated.
    #[must_use = "builder methods return the modified builder"]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the server and waits until `/health` reports it healthy.
    ///
    /// If etcd fails because another process took one of its freshly chosen ports in
    /// the meantime, it is retried with new ports (three attempts in all).
    ///
    /// # Errors
    ///
    /// - [`Error::BinaryNotFound`] / [`Error::UnsupportedPlatform`]: no etcd to run.
    /// - [`Error::Startup`] if etcd exits or is not healthy within 30 s; the message ends
    ///   with the tail of its log.
    /// - [`Error::Client`] if enabling auth fails; [`Error::Io`], [`Error::Certificates`].
    ///
    /// # Cancel safety
    ///
    /// Cancelling kills the half-started server.
    pub async fn start(self) -> Result<Etcd, Error> {
        let binary = match self.binary {
            Some(binary) => binary,
            None => crate::etcd_binary()?,
        };
        let dir = tempdir::create()?;
        let tls = self.tls || self.client_cert_auth;
        let (certs, tls) = if tls {
            let certs = TestCerts::generate()?;
            let certs_dir = dir.path().join("certs");
            fs::create_dir(&certs_dir)
                .map_err(|e| Error::io(format!("cannot create {}", certs_dir.display()), e))?;
            let files = certs.write_to(&certs_dir)?;
            let tls = ServerTls {
                files,
                client_cert_auth: self.client_cert_auth,
            };
            (Some(certs), Some(tls))
        } else {
            (None, None)
        };
        let name = "etcd".to_owned();
        let cluster_token = token(&dir);
        let launch = |ports: MemberPorts| Launch {
            binary: binary.clone(),
            initial_cluster: Member::peer_url(&name, ports),
            cluster_token: cluster_token.clone(),
            tls: tls.clone(),
            extra_args: self.args.clone(),
        };

        let ports = MemberPorts::allocate()?;
        let mut member = Member::new(name.clone(), dir.path().to_path_buf(), ports, launch(ports));
        let mut attempt = 1;
        loop {
            member.launch().await?;
            match member::wait_healthy(std::slice::from_mut(&mut member), &[0]).await {
                Ok(()) => break,
                Err(e) if attempt < PORT_ATTEMPTS && member.lost_a_port() => {
                    tracing::debug!(error = %e, "etcd lost a port to another process; retrying");
                    member.wipe()?;
                    let ports = MemberPorts::allocate()?;
                    member.set_ports(ports, launch(ports));
                    attempt += 1;
                }
                Err(e) => {
                    member.kill();
                    // Keep the log the error points to; the next test run removes the directory.
                    let _ = dir.keep();
                    return Err(e);
                }
            }
        }

        let etcd = Etcd {
            member,
            certs,
            client_cert_auth: self.client_cert_auth,
            root_password: None,
            dir,
        };
        match self.root_password {
            Some(password) => etcd.enable_auth(password).await,
            None => Ok(etcd),
        }
    }
}

impl Etcd {
    async fn enable_auth(mut self, password: String) -> Result<Etcd, Error> {
        let mut client = self.client().await?;
        client
            .user_add("root", password.as_str(), None)
            .await
            .map_err(|e| Error::client("cannot add user root", e))?;
        client
            .user_grant_role("root", "root")
            .await
            .map_err(|e| Error::client("cannot grant role root to user root", e))?;
        client
            .auth_enable()
            .await
            .map_err(|e| Error::client("cannot enable auth", e))?;
        self.root_password = Some(password);
        Ok(self)
    }
}

/// The cluster token: the temporary directory's unique name.
pub(crate) fn token(dir: &TempDir) -> String {
    dir.path().file_name().map_or_else(
        || "coord-testkit".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    )
}
