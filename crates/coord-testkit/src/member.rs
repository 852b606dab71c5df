//! One etcd process: its flags, its directory and log, starting it, waiting until it is healthy.
//!
//! [`Etcd`](crate::Etcd) is one member; [`EtcdCluster`](crate::EtcdCluster) is several
//! members that share an `--initial-cluster`.

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Error, certs::CertFiles, health, ports::MemberPorts, process};

/// How long a member may take to become healthy. etcd 3.7 needs about 0.7 s alone and
/// 1–2 s as part of a fresh cluster; slow CI machines get a wide margin.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `/health` is polled while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How many log lines a startup error shows.
const LOG_TAIL_LINES: usize = 30;

/// Settings every member of a server or cluster shares.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) binary: PathBuf,
    /// `name=http://127.0.0.1:peer,...`
    pub(crate) initial_cluster: String,
    /// Unique per cluster, so members of different test clusters can never join each other.
    pub(crate) cluster_token: String,
    pub(crate) tls: Option<ServerTls>,
    pub(crate) extra_args: Vec<String>,
}

/// Client-URL TLS for a member.
#[derive(Debug, Clone)]
pub(crate) struct ServerTls {
    pub(crate) files: CertFiles,
    pub(crate) client_cert_auth: bool,
}

#[derive(Debug)]
pub(crate) struct Member {
    name: String,
    /// Holds `data/` and `etcd.log`.
    dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    ports: MemberPorts,
    launch: Launch,
    child: Option<Child>,
    /// SIGSTOPped by [`Member::pause`] and not continued since.
    paused: bool,
    /// Length of the log when the current process was started, so its own output can be told apart.
    log_start: u64,
}

impl Member {
    pub(crate) fn new(name: String, dir: PathBuf, ports: MemberPorts, launch: Launch) -> Self {
        Member {
            name,
            data_dir: dir.join("data"),
            log_path: dir.join("etcd.log"),
            dir,
            ports,
            launch,
            child: None,
            paused: false,
            log_start: 0,
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        let scheme = if self.launch.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.client_addr())
    }

    pub(crate) fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.client))
    }

    pub(crate) fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.metrics))
    }

    pub(crate) fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics_addr())
    }

    pub(crate) fn peer_url(name: &str, ports: MemberPorts) -> String {
        format!("{name}=http://127.0.0.1:{}", ports.peer)
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the testkit started this member and has not killed it (it may have crashed since).
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn command(&self) -> Command {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.ports.peer);
        let mut command = Command::new(&self.launch.binary);
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.launch.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.launch.cluster_token])
            .args(["--listen-metrics-urls", &self.metrics_url()])
            .args(["--log-level", "warn"]);
        if let Some(tls) = &self.launch.tls {
            command
                .arg("--cert-file")
                .arg(&tls.files.server_cert)
                .arg("--key-file")
                .arg(&tls.files.server_key);
            // etcd turns on client certificate verification whenever it has a trusted CA.
            if tls.client_cert_auth {
                command
                    .arg("--trusted-ca-file")
                    .arg(&tls.files.ca)
                    .arg("--client-cert-auth");
            }
        }
        command.args(&self.launch.extra_args);
        command
    }

    /// Starts the process (killing a previous one first). Returns once it runs, not once it is healthy.
    pub(crate) async fn launch(&mut self) -> Result<(), Error> {
        self.kill();
        fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("cannot create {}", self.dir.display()), e))?;
        let log_path = &self.log_path;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| Error::io(format!("cannot open {}", log_path.display()), e))?;
        self.log_start = log
            .metadata()
            .map_err(|e| Error::io(format!("cannot stat {}", log_path.display()), e))?
            .len();
        let stderr = log
            .try_clone()
            .map_err(|e| Error::io(format!("cannot reopen {}", log_path.display()), e))?;
        let mut command = self.command();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = process::spawn(command).await?;
        tracing::debug!(member = %self.name, pid = child.id(), endpoint = %self.endpoint(), "started etcd");
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL now; the data directory stays.
    /// Whether the member runs and is not paused: it can answer.
    pub(crate) fn is_answering(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    /// SIGSTOPs (`stop`) or SIGCONTs the process; nothing if it is not running.
    pub(crate) fn signal_pause(&mut self, stop: bool) -> Result<(), Error> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        process::pause(child, stop).map_err(|e| {
            let what = if stop { "pause" } else { "resume" };
            Error::io(
                format!(
                    "cannot {what} etcd member {} (pid {})",
                    self.name,
                    child.id()
                ),
                e,
            )
        })?;
        self.paused = stop;
        Ok(())
    }

    pub(crate) fn kill(&mut self) {
        self.paused = false;
        if let Some(mut child) = self.child.take() {
            tracing::debug!(member = %self.name, pid = child.id(), "killing etcd");
            process::kill(&mut child);
        }
    }

    /// `Some(status)` if the process has exited on its own (it is then reaped and forgotten).
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                self.child = None;
                Some(format!("etcd exited ({status})"))
            }
            Err(e) => Some(format!("cannot check the etcd process: {e}")),
        }
    }

    /// Whether this launch failed because a port was taken by someone else.
    pub(crate) fn lost_a_port(&self) -> bool {
        self.log_since_launch()
            .is_some_and(|log| log.contains("address already in use"))
    }

    /// Removes the data directory, so the next launch bootstraps a fresh member.
    pub(crate) fn wipe(&mut self) -> Result<(), Error> {
        self.kill();
        let data = &self.data_dir;
        match fs::remove_dir_all(data) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("cannot remove {}", data.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// New ports for a retry of a first start (the member must be wiped).
    pub(crate) fn set_ports(&mut self, ports: MemberPorts, launch: Launch) {
        self.ports = ports;
        self.launch = launch;
    }

    fn log_since_launch(&self) -> Option<String> {
        let mut file = fs::File::open(self.log_path()).ok()?;
        file.seek(SeekFrom::Start(self.log_start)).ok()?;
        let mut log = String::new();
        file.read_to_string(&mut log).ok()?;
        Some(log)
    }

    pub(crate) fn startup_error(&self, reason: String) -> Error {
        Error::Startup {
            member: self.name.clone(),
            reason,
            log: self.log_path.clone(),
            log_tail: log_tail(&self.log_since_launch().unwrap_or_default()),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log, without most of the two warnings etcd logs for every failed `/health`
/// poll (they would push everything else out of the tail).
fn log_tail(log: &str) -> String {
    let is_health_poll = |line: &&str| line.contains("etcdhttp/health.go");
    let last_health_lines: Vec<&str> = log.lines().filter(is_health_poll).collect();
    let keep_health_from = last_health_lines.len().saturating_sub(2);
    let mut health_seen = 0;
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| {
            if is_health_poll(line) {
                health_seen += 1;
                health_seen > keep_health_from
            } else {
                true
            }
        })
        .collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Waits until every member in `which` reports healthy, failing fast when one of them exits.
///
/// A member reports healthy once it has a leader and serves a linearizable read, so a
/// member of a cluster is only healthy while a quorum is up.
pub(crate) async fn wait_healthy(members: &mut [Member], which: &[usize]) -> Result<(), Error> {
    let started = Instant::now();
    let mut pending: Vec<usize> = which.to_vec();
    loop {
        for &i in &pending {
            if let Some(member) = members.get_mut(i) {
                if let Some(reason) = member.exited() {
                    return Err(member.startup_error(reason));
                }
            }
        }
        let mut still_pending = Vec::new();
        for &i in &pending {
            if let Some(member) = members.get(i) {
                if !health::is_healthy(member.metrics_addr()).await {
                    still_pending.push(i);
                }
            }
        }
        pending = still_pending;
        let Some(&first) = pending.first() else {
            return Ok(());
        };
        if started.elapsed() > STARTUP_TIMEOUT {
            let reason = format!("/health not true after {STARTUP_TIMEOUT:?}");
            return Err(match members.get(first) {
                Some(member) => member.startup_error(reason),
                None => Error::Config(reason),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
