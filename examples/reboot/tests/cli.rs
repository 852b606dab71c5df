//! The `coord-reboot` binary: operator commands against a real etcd, and `serve` as a process
//! (FleetLock over HTTP, reload on SIGHUP, stop on SIGTERM).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// Failure bound for waits on events; never a timing assertion.
const BOUND: Duration = Duration::from_secs(20);

const BIN: &str = env!("CARGO_BIN_EXE_coord-reboot");

struct Cli {
    endpoints: String,
    namespace: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

impl Cli {
    async fn new(label: &str) -> Cli {
        let etcd = coord_testkit::shared().await.unwrap();
        Cli {
            endpoints: etcd.endpoints().join(","),
            namespace: coord_testkit::unique_namespace(label),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let output = Command::new(BIN)
            .args(args)
            .args([
                "--endpoints",
                &self.endpoints,
                "--namespace",
                &self.namespace,
            ])
            .env_remove("COORD_ENDPOINTS")
            .env_remove("ETCDCTL_ENDPOINTS")
            .env_remove("COORD_NAMESPACE")
            .output()
            .await
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

#[tokio::test]
async fn operators_lock_list_resize_and_unlock() {
    let cli = Cli::new("cli_ops").await;

    let run = cli.run(&["lock", "default", "node-a"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("node-a holds a slot of default"),
        "{}",
        run.stdout
    );

    let status = cli.run(&["status", "-o", "json"]).await.json();
    assert_eq!(status[0]["group"], "default");
    assert_eq!(status[0]["slots"], 1);
    assert_eq!(status[0]["holders"][0]["id"], "node-a");
    assert!(status[0]["holders"][0]["token"].as_i64().unwrap() > 0);
    assert!(status[0]["holders"][0]["age_secs"].as_u64().is_some());
    assert_eq!(status[0]["holders"][0]["expires_in_secs"], Value::Null);

    let full = cli.run(&["lock", "default", "node-b", "-o", "json"]).await;
    assert_eq!(full.code, 75, "full is EX_TEMPFAIL: {}", full.stderr);
    assert_eq!(full.json()["locked"], false);

    let resized = cli
        .run(&["set-max", "default", "2", "-o", "json"])
        .await
        .json();
    assert_eq!(
        (resized["previous"].as_u64(), resized["slots"].as_u64()),
        (Some(1), Some(2))
    );

    let run = cli.run(&["lock", "default", "node-b", "--ttl", "1h"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let status = cli.run(&["status", "default", "-o", "json"]).await.json();
    let holders = status[0]["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 2);
    let expires = holders[1]["expires_in_secs"].as_u64().unwrap();
    assert!(expires > 0 && expires <= 3600, "{expires}");

    let human = cli.run(&["status"]).await;
    assert!(
        human.stdout.contains("group default: 2 of 2 slot(s) held"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("node-b"), "{}", human.stdout);

    let released = cli
        .run(&["unlock", "default", "node-a", "-o", "json"])
        .await
        .json();
    assert_eq!(released["released"], true);
    let again = cli
        .run(&["unlock", "default", "node-a", "-o", "json"])
        .await
        .json();
    assert_eq!(again["released"], false, "unlocking twice is not an error");
    let status = cli.run(&["status", "-o", "json"]).await.json();
    assert_eq!(status[0]["holders"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_arguments_fail_without_writing() {
    let cli = Cli::new("cli_bad").await;
    for args in [
        &["lock", "work_ers", "node-a"][..],
        &["lock", "default", "a/b"],
        &["set-max", "default", "0"],
        &["lock", "default", "node-a", "--ttl", "1500ms"],
        &["status", "bad group"],
    ] {
        let run = cli.run(args).await;
        assert!(
            run.code != 0 && run.code != 75,
            "{args:?} exited {}",
            run.code
        );
        assert!(!run.stderr.is_empty(), "{args:?} said nothing");
    }
    let status = cli.run(&["status", "-o", "json"]).await.json();
    assert_eq!(status, Value::Array(Vec::new()), "something was written");
}

/// Reads stderr lines until one contains `text`.
async fn wait_for_line(lines: &mut Lines<BufReader<ChildStderr>>, text: &str) {
    let wait = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(text) {
                return;
            }
        }
        panic!("stderr ended before {text:?}");
    };
    tokio::time::timeout(BOUND, wait)
        .await
        .unwrap_or_else(|_| panic!("no {text:?} on stderr"));
}

fn config(endpoints: &str, namespace: &str, slots: u32) -> String {
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[etcd]\nendpoints = {endpoints:?}\n\
         namespace = {namespace:?}\n[groups.default]\nslots = {slots}\n"
    )
}

#[tokio::test]
async fn serve_answers_fleetlock_reloads_on_sighup_and_stops_on_sigterm() {
    let cli = Cli::new("cli_serve").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, config(&cli.endpoints, &cli.namespace, 1)).unwrap();

    let mut server: Child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(server.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(BOUND, stdout.next_line())
        .await
        .expect("serve never said where it listens")
        .unwrap()
        .unwrap();
    let addr = line.strip_prefix("listening on ").expect(&line).to_owned();

    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/pre-reboot"))
        .header("fleet-lock-protocol", "true")
        .body(r#"{"client_params":{"id":"node-a","group":"default"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The operator reads etcd through the server's own configuration file.
    let status = Command::new(BIN)
        .args(["status", "-o", "json", "--config"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status[0]["holders"][0]["id"], "node-a");
    assert_eq!(status[0]["slots"], 1);

    std::fs::write(&file, config(&cli.endpoints, &cli.namespace, 3)).unwrap();
    let pid = server.id().unwrap().to_string();
    let hup = Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    assert!(hup.success());
    wait_for_line(&mut stderr, "configuration reloaded").await;
    let status = cli.run(&["status", "-o", "json"]).await.json();
    assert_eq!(
        status[0]["slots"], 3,
        "the reload wrote the configured slots"
    );

    let term = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(term.success());
    let exit = tokio::time::timeout(BOUND, server.wait())
        .await
        .expect("serve did not stop on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
