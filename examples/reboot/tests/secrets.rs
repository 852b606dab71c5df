//! The etcd password never shows: not in `serve`'s output (debug logging on) when etcd refuses
//! it, denies an operation or goes away, not in FleetLock error bodies, not in `Debug` output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::process::Stdio;
use std::time::Duration;

use coord_reboot::Config;
use coord_testkit::{Etcd, User, enable_auth};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_coord-reboot");
/// Failure bound only.
const BOUND: Duration = Duration::from_secs(30);
const SECRET: &str = "Sup3r-S3cret-etcd-pw";

fn config(endpoints: &[String], namespace: &str, password: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[etcd]\nendpoints = {endpoints:?}\n\
         namespace = {namespace:?}\nusername = \"fleet\"\npassword = {password:?}\n\
         [groups.default]\nslots = 1\n"
    )
}

/// Runs `serve` until it exits on its own (a start-up failure): its whole output.
async fn failed_start(file: &std::path::Path) -> String {
    let output = tokio::time::timeout(
        BOUND,
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(file)
            .env("RUST_LOG", "debug")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("serve should give up on this configuration")
    .unwrap();
    assert!(!output.status.success());
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn the_etcd_password_never_appears_in_output_errors_or_debug() {
    let mut etcd = Etcd::start().await.unwrap();
    let fleet = User {
        name: "fleet",
        password: SECRET,
        prefix: Some("fleet/"),
    };
    enable_auth(&etcd, "rootpw", &[fleet]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let mut seen = String::new();

    // Debug output of the configuration.
    let text = config(&etcd.endpoints(), "fleet/", SECRET);
    let parsed = Config::from_toml(&text).unwrap();
    seen += &format!("{parsed:?}");

    // A wrong password (etcd refuses it), and a namespace the role does not cover (etcd denies
    // the start-up write of the slots): serve explains and exits.
    let wrong = format!("{SECRET}-but-wrong");
    std::fs::write(&file, config(&etcd.endpoints(), "fleet/", &wrong)).unwrap();
    let out = failed_start(&file).await;
    assert!(!out.contains(&wrong), "{out}");
    seen += &out;
    std::fs::write(&file, config(&etcd.endpoints(), "elsewhere/", SECRET)).unwrap();
    let out = failed_start(&file).await;
    assert!(out.to_lowercase().contains("permission"), "{out}");
    seen += &out;

    // A working server, then etcd goes away: the FleetLock error says so, without secrets.
    std::fs::write(&file, config(&etcd.endpoints(), "fleet/", SECRET)).unwrap();
    let mut server = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Drain stderr as it comes: debug logging would fill the pipe and block the server.
    let mut stderr = server.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs).await;
        logs
    });
    let mut stdout = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(BOUND, stdout.next_line())
        .await
        .expect("serve never said where it listens")
        .unwrap()
        .unwrap();
    let addr = line.strip_prefix("listening on ").expect(&line).to_owned();
    let http = reqwest::Client::new();
    let lock = |op: &'static str| {
        http.post(format!("http://{addr}/v1/{op}"))
            .header("fleet-lock-protocol", "true")
            .body(r#"{"client_params":{"id":"node-a","group":"default"}}"#)
            .send()
    };
    assert_eq!(lock("pre-reboot").await.unwrap().status(), 200);
    etcd.kill();
    let response = lock("steady-state").await.unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    seen += &response.text().await.unwrap();
    etcd.restart().await.unwrap();

    server.start_kill().unwrap();
    let _ = server.wait().await;
    let logs = logs.await.unwrap();
    assert!(logs.contains("DEBUG"), "debug logging was on");
    seen += &logs;
    while let Ok(Some(line)) = stdout.next_line().await {
        seen += &line;
    }

    assert!(!seen.is_empty());
    assert!(!seen.contains(SECRET), "the password leaked into:\n{seen}");
}
