//! Running the built `coordctl` against the test binary's shared etcd, each test in a namespace
//! of its own; waits are on events (output lines, etcd watches), bounded only to fail.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::process::Stdio;
use std::time::Duration;

use coord_core::etcd_client::{GetOptions, SortOrder, SortTarget};
use coord_core::{Client, ClientConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Failure bound for waits on events; never a timing assertion.
pub const BOUND: Duration = Duration::from_secs(20);

pub const BIN: &str = env!("CARGO_BIN_EXE_coordctl");

/// The coordctl command line of one test: the shared etcd and a namespace of its own.
pub struct Ctl {
    pub endpoints: String,
    pub namespace: String,
    /// A client in the same namespace, to look at (or tamper with) what coordctl wrote.
    pub client: Client,
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} / {}", self.stdout, self.stderr))
    }
}

/// A running coordctl with its stdout readable line by line.
pub struct Running {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
}

impl Running {
    /// The next stdout line (fails after [`BOUND`] or at end of output).
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(BOUND, self.stdout.next_line())
            .await
            .expect("no output line in time")
            .unwrap()
            .expect("output ended")
    }

    /// The next stdout line as JSON.
    pub async fn json(&mut self) -> Value {
        let line = self.line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Lines as JSON until one satisfies `done` (which gets each in turn).
    pub async fn json_until(&mut self, mut done: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let value = self.json().await;
            if done(&value) {
                return value;
            }
        }
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        signal_pid(self.child.id().unwrap(), signal);
    }

    /// Waits for the exit; its code (128 + N for a signal N).
    pub async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(BOUND, self.child.wait())
            .await
            .expect("did not exit in time")
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    }

    /// Whatever is left on stdout after the process exited.
    pub async fn rest(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(BOUND, self.stdout.next_line()).await {
            lines.push(line);
        }
        lines
    }
}

pub fn signal_pid(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

impl Ctl {
    pub async fn new(label: &str) -> Ctl {
        let etcd = coord_testkit::shared().await.expect("shared etcd");
        let namespace = coord_testkit::unique_namespace(label);
        let client = ClientConfig::new(etcd.endpoints())
            .with_namespace(namespace.clone())
            .connect()
            .await
            .expect("connect");
        Ctl {
            endpoints: etcd.endpoints().join(","),
            namespace,
            client,
        }
    }

    /// `coordctl --endpoints … --namespace … ARGS`, with no coordctl or etcdctl variables
    /// inherited from the test's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args([
                "--endpoints",
                &self.endpoints,
                "--namespace",
                &self.namespace,
            ])
            .args(args)
            .env_remove("RUST_LOG");
        for var in [
            "COORD_ENDPOINTS",
            "ETCDCTL_ENDPOINTS",
            "COORD_NAMESPACE",
            "COORD_USER",
            "COORD_PASSWORD",
        ] {
            command.env_remove(var);
        }
        command.kill_on_drop(true);
        command
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        let output = tokio::time::timeout(BOUND, self.command(args).stdin(Stdio::null()).output())
            .await
            .expect("coordctl did not finish in time")
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Running { child, stdout }
    }

    /// The full key of `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.namespace)
    }

    /// Keys under `prefix` (a full key prefix), in create order.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let read = self
            .client
            .get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Ascend),
                ),
            )
            .await
            .unwrap();
        read.kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect()
    }

    /// Waits, by watching the prefix, until exactly `n` keys are under it.
    pub async fn keys_become(&self, prefix: &str, n: usize) {
        coord_testkit::wait_for_key_count(self.client.etcd(), prefix, n, BOUND)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
