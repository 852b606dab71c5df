//! [`EtcdCluster`]: several etcd members forming one raft group, for failover tests.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

use crate::{
    Error,
    member::{self, Launch, Member},
    ports::MemberPorts,
    server, tempdir,
};

/// How many times a first start is retried with fresh ports when another process took one.
const PORT_ATTEMPTS: usize = 3;

/// How long [`EtcdCluster::leader`] waits for a leader. An election takes about one
/// election timeout (1 s by default) after the old leader's last heartbeat.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`EtcdCluster::leader`] asks again, and how long one Status RPC may take.
const LEADER_POLL: Duration = Duration::from_millis(50);
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// A running etcd cluster of `n` members on loopback, bootstrapped statically
/// (`--initial-cluster`), all in one temporary directory.
///
/// Members are numbered `0..len()`; member `i` is named `m<i>`. Members can be
/// killed and restarted individually to test failover. Dropping the cluster kills
/// every member and removes the directory.
///
/// Heartbeat and election timeouts are etcd's defaults (100 ms / 1 s).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut cluster = coord_testkit::EtcdCluster::start(3).await?;
/// let old = cluster.leader().await?;
/// cluster.kill(old)?;
/// let new = cluster.leader().await?; // waits for the election
/// assert_ne!(old, new);
/// cluster.restart(old).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    // Dropped after the members, whose `Drop` kills them.
    dir: TempDir,
}

/// Configures and starts an [`EtcdCluster`]; see [`EtcdCluster::builder`].
#[derive(Debug, Clone)]
pub struct EtcdClusterBuilder {
    size: usize,
    binary: Option<PathBuf>,
    args: Vec<String>,
}

impl EtcdCluster {
    /// Starts an `n`-member cluster and waits until every member is healthy.
    ///
    /// # Errors
    ///
    /// See [`EtcdClusterBuilder::start`].
    ///
    /// # Cancel safety
    ///
    /// Cancelling kills the members started so far.
    pub async fn start(n: usize) -> Result<EtcdCluster, Error> {
        EtcdCluster::builder(n).start().await
    }

    /// A builder for an `n`-member cluster with another binary or extra flags.
    pub fn builder(n: usize) -> EtcdClusterBuilder {
        EtcdClusterBuilder {
            size: n,
            binary: None,
            args: Vec::new(),
        }
    }

    /// The number of members (killed ones included).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always `false`: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The client URLs of all members, killed ones included.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The client URL of member `i`, `http://127.0.0.1:PORT`.
    ///
    /// `None` if `i >= len()`.
    pub fn endpoint(&self, i: usize) -> Option<String> {
        self.members.get(i).map(Member::endpoint)
    }

    /// The client listener address of member `i`, e.g. for a [`FaultProxy`](crate::FaultProxy).
    ///
    /// `None` if `i >= len()`.
    pub fn client_addr(&self, i: usize) -> Option<SocketAddr> {
        self.members.get(i).map(Member::client_addr)
    }

    /// The plain-HTTP metrics URL of member `i` (serves `/health` and `/metrics`).
    ///
    /// `None` if `i >= len()`.
    pub fn metrics_url(&self, i: usize) -> Option<String> {
        self.members.get(i).map(Member::metrics_url)
    }

    /// The `--data-dir` of member `i`.
    ///
    /// `None` if `i >= len()`.
    pub fn data_dir(&self, i: usize) -> Option<&Path> {
        self.members.get(i).map(Member::data_dir)
    }

    /// The temporary directory holding every member's directory (`m<i>/`); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of member `i`, or `None` if it was killed.
    ///
    /// Also `None` if `i >= len()`.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i).and_then(Member::pid)
    }

    /// SIGKILLs member `i` now, keeping its data directory. Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchMember`] if `i >= len()`.
    pub fn kill(&mut self, i: usize) -> Result<(), Error> {
        let len = self.members.len();
        self.members
            .get_mut(i)
            .ok_or(Error::NoSuchMember { index: i, len })?
            .kill();
        Ok(())
    }

    /// SIGSTOPs member `i`: the process and its connections stay, but it answers nothing and
    /// sends no heartbeats — a stalled VM, a long GC pause. A paused leader is replaced once the
    /// others' election timeout passes; when [`resume`](Self::resume)d it finds itself a follower.
    /// [`kill`](Self::kill), [`restart`](Self::restart) and dropping the cluster work on a paused
    /// member too. Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchMember`] if `i >= len()`; [`Error::Io`] if the signal cannot be sent.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), coord_testkit::Error> {
    /// let mut cluster = coord_testkit::EtcdCluster::start(3).await?;
    /// let old = cluster.leader().await?;
    /// cluster.pause(old)?;
    /// let new = cluster.leader().await?; // waits for the election
    /// assert_ne!(old, new);
    /// cluster.resume(old).await?;
    /// # Ok(()) }
    /// ```
    pub fn pause(&mut self, i: usize) -> Result<(), Error> {
        self.member_mut(i)?.signal_pause(true)
    }

    /// SIGCONTs member `i` after [`pause`](Self::pause) and waits until it is healthy again
    /// (a resumed leader first learns that it was replaced: until then its reads fail with
    /// "leader changed"). Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchMember`] if `i >= len()`; [`Error::Io`] if the signal cannot be sent;
    /// [`Error::Startup`] if the member is not healthy within 30 s.
    ///
    /// # Cancel safety
    ///
    /// Cancelling after the signal leaves the member running, maybe not yet healthy.
    pub async fn resume(&mut self, i: usize) -> Result<(), Error> {
        let member = self.member_mut(i)?;
        if !member.is_running() {
            return Ok(());
        }
        member.signal_pause(false)?;
        member::wait_healthy(&mut self.members, &[i]).await
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut Member, Error> {
        let len = self.members.len();
        self.members
            .get_mut(i)
            .ok_or(Error::NoSuchMember { index: i, len })
    }

    /// Starts member `i` again on the same ports and data directory (killing it first if it
    /// still runs) and waits until it is healthy.
    ///
    /// A member reports healthy only once it has a leader and can serve a linearizable
    /// read, i.e. while a quorum is up. (A member that has just lost its quorum answers
    /// `/health` only after about 7 s, when its read times out.) Restarting a member while too few others run
    /// therefore fails with a timeout (30 s): after losing quorum, first bring back
    /// members with [`restart_without_waiting`](Self::restart_without_waiting), then
    /// `restart` the one that completes the quorum.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchMember`] if `i >= len()`; [`Error::Startup`] if the member exits or is
    /// not healthy in time.
    ///
    /// # Cancel safety
    ///
    /// Cancelling may leave the member running but not yet healthy.
    pub async fn restart(&mut self, i: usize) -> Result<(), Error> {
        let len = self.members.len();
        let member = self
            .members
            .get_mut(i)
            .ok_or(Error::NoSuchMember { index: i, len })?;
        member.launch().await?;
        member::wait_healthy(&mut self.members, &[i]).await
    }

    /// Starts member `i` again on the same ports and data directory (killing it first if it
    /// still runs) without waiting for it to become healthy; see [`restart`](Self::restart).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchMember`] if `i >= len()`; [`Error::Io`] if it cannot be spawned.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn restart_without_waiting(&mut self, i: usize) -> Result<(), Error> {
        let len = self.members.len();
        self.members
            .get_mut(i)
            .ok_or(Error::NoSuchMember { index: i, len })?
            .launch()
            .await
    }

    /// The index of the current raft leader, waiting (up to 30 s) while there is none.
    ///
    /// A member counts as leader when it is running, says it is the leader, and a
    /// majority of the cluster agrees. So right after the leader was killed this waits
    /// for the election instead of returning the dead member, which the followers
    /// still name as leader until their election timeout.
    ///
    /// # Errors
    ///
    /// [`Error::NoLeader`] if no leader is agreed on in time (e.g. no quorum is running).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn leader(&self) -> Result<usize, Error> {
        let started = Instant::now();
        let options = ConnectOptions::new()
            .with_timeout(STATUS_TIMEOUT)
            .with_connect_timeout(STATUS_TIMEOUT);
        let mut clients = Vec::new();
        for (i, member) in self.members.iter().enumerate() {
            // A paused member would hold the connection attempt until it times out.
            if member.is_answering() {
                let client = Client::connect([member.endpoint()], Some(options.clone()))
                    .await
                    .map_err(|e| {
                        Error::client(format!("cannot connect to {}", member.endpoint()), e)
                    })?;
                clients.push((i, client));
            }
        }
        loop {
            if let Some(leader) = self.agreed_leader(&mut clients).await {
                return Ok(leader);
            }
            if started.elapsed() > LEADER_TIMEOUT {
                return Err(Error::NoLeader {
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    async fn agreed_leader(&self, clients: &mut [(usize, Client)]) -> Option<usize> {
        let mut index_of_id = HashMap::new();
        let mut named_leaders = Vec::new();
        for (i, client) in clients.iter_mut() {
            let Ok(status) = client.status().await else {
                continue;
            };
            if let Some(header) = status.header() {
                index_of_id.insert(header.member_id(), *i);
            }
            named_leaders.push(status.leader());
        }
        let quorum = self.members.len() / 2 + 1;
        index_of_id.iter().find_map(|(id, &i)| {
            let votes = named_leaders.iter().filter(|leader| *leader == id).count();
            (votes >= quorum).then_some(i)
        })
    }

    /// A client for the members running now (the client does not learn about members
    /// restarted later).
    ///
    /// etcd-client balances requests over its endpoints without failing over, so a
    /// request may fail with `Unavailable` when it lands on a member that has died since.
    ///
    /// # Errors
    ///
    /// [`Error::Client`] if the client cannot be built.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn client(&self) -> Result<Client, Error> {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(Member::endpoint)
            .collect();
        Client::connect(endpoints, None)
            .await
            .map_err(|e| Error::client("cannot connect to the cluster", e))
    }

    /// Compacts the key-value history at the current revision (physically) and returns it.
    /// See [`Etcd::compact`](crate::Etcd::compact).
    ///
    /// # Errors
    ///
    /// [`Error::Client`] if a request fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; the compaction may or may not have happened.
    pub async fn compact(&self) -> Result<i64, Error> {
        let mut client = self.client().await?;
        server::compact(&mut client).await
    }
}

impl EtcdClusterBuilder {
    /// Runs this etcd binary instead of [`etcd_binary()`](crate::etcd_binary).
    #[must_use = "builder methods return the modified builder"]
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Passes an extra flag to every member, e.g. `"--election-timeout=500"`.
    #[must_use = "builder methods return the modified builder"]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts all members at once and waits until every one is healthy. If a member
    /// fails because another process took one of its ports, the whole cluster is
    /// bootstrapped again with fresh ports (three attempts in all).
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] if `n == 0`.
    /// - [`Error::BinaryNotFound`] / [`Error::UnsupportedPlatform`]: no etcd to run.
    /// - [`Error::Startup`] if a member exits or is not healthy within 30 s; the message
    ///   ends with the tail of its log.
    /// - [`Error::Io`].
    ///
    /// # Cancel safety
    ///
    /// Cancelling kills the members started so far.
    pub async fn start(self) -> Result<EtcdCluster, Error> {
        if self.size == 0 {
            return Err(Error::Config("a cluster needs at least one member".into()));
        }
        let binary = match self.binary {
            Some(binary) => binary,
            None => crate::etcd_binary()?,
        };
        let dir = tempdir::create()?;
        let names: Vec<String> = (0..self.size).map(|i| format!("m{i}")).collect();
        let cluster_token = server::token(&dir);
        let launch = |ports: &[MemberPorts]| Launch {
            binary: binary.clone(),
            initial_cluster: names
                .iter()
                .zip(ports)
                .map(|(name, ports)| Member::peer_url(name, *ports))
                .collect::<Vec<_>>()
                .join(","),
            cluster_token: cluster_token.clone(),
            tls: None,
            extra_args: self.args.clone(),
        };
        let allocate = || {
            (0..self.size)
                .map(|_| MemberPorts::allocate())
                .collect::<Result<Vec<_>, _>>()
        };

        let ports = allocate()?;
        let layout = launch(&ports);
        let mut members: Vec<Member> = names
            .iter()
            .zip(&ports)
            .map(|(name, ports)| {
                Member::new(name.clone(), dir.path().join(name), *ports, layout.clone())
            })
            .collect();

        let all: Vec<usize> = (0..self.size).collect();
        let mut attempt = 1;
        loop {
            for member in &mut members {
                member.launch().await?;
            }
            match member::wait_healthy(&mut members, &all).await {
                Ok(()) => break,
                Err(e) if attempt < PORT_ATTEMPTS && members.iter().any(Member::lost_a_port) => {
                    tracing::debug!(error = %e, "an etcd member lost a port to another process; retrying");
                    let ports = allocate()?;
                    let layout = launch(&ports);
                    for (member, ports) in members.iter_mut().zip(&ports) {
                        member.wipe()?;
                        member.set_ports(*ports, layout.clone());
                    }
                    attempt += 1;
                }
                Err(e) => {
                    drop(members);
                    // Keep the logs the error points to; the next test run removes the directory.
                    let _ = dir.keep();
                    return Err(e);
                }
            }
        }
        Ok(EtcdCluster { members, dir })
    }
}
