//! `coordctl lock`: running a command while holding, holding until signalled, exclusion between
//! coordctl processes and with `etcdctl lock`, timeouts, loss, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{BOUND, Ctl};
use rustix::process::Signal;

/// A file the test writes right before it lets the first holder go: a command that prints it
/// and finds it written ran after the release.
struct Marker(PathBuf);

impl Marker {
    fn new(label: &str) -> Marker {
        let path = std::env::temp_dir().join(format!(
            "coordctl-{label}-{}-{}",
            std::process::id(),
            coord_testkit::unique_namespace("m").replace('/', "-")
        ));
        let _ = std::fs::remove_file(&path);
        Marker(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn write(&self) {
        std::fs::write(&self.0, "released\n").unwrap();
    }

    /// A shell command that prints the marker's content, or `not-yet` if it is missing.
    fn reader(&self) -> String {
        format!("cat {} 2>/dev/null || echo not-yet", self.path())
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn a_command_sees_the_key_and_token_and_its_exit_code_is_coordctls() {
    let ctl = Ctl::new("lock_cmd").await;
    let run = ctl
        .run(&[
            "lock",
            "jobs",
            "--",
            "sh",
            "-c",
            "echo \"$COORD_LOCK_KEY $COORD_FENCING_TOKEN $ETCD_LOCK_KEY $ETCD_LOCK_REV\"; exit 7",
        ])
        .await;
    assert_eq!(run.code, 7, "{}", run.stderr);
    let fields: Vec<&str> = run.stdout.split_whitespace().collect();
    let [key, token, etcd_key, etcd_rev] = fields[..] else {
        panic!("unexpected output {:?}", run.stdout);
    };
    assert!(key.starts_with(&ctl.key("jobs/")), "{key}");
    assert!(token.parse::<i64>().unwrap() > 0);
    assert_eq!((etcd_key, etcd_rev), (key, token));
    assert!(
        ctl.keys(&ctl.key("jobs/")).await.is_empty(),
        "the lock was not released after the command"
    );
}

#[tokio::test]
async fn without_a_command_the_key_is_printed_and_held_until_sigterm() {
    let ctl = Ctl::new("lock_hold").await;
    let mut holder = ctl.spawn(&["lock", "jobs", "-o", "json"]);
    let acquired = holder.json().await;
    let key = acquired["key"].as_str().unwrap().to_owned();
    assert!(acquired["token"].as_i64().unwrap() > 0);
    assert_eq!(ctl.keys(&ctl.key("jobs/")).await, vec![key]);

    holder.signal(Signal::TERM);
    assert_eq!(holder.exit_code().await, 0);
    assert!(ctl.keys(&ctl.key("jobs/")).await.is_empty());
}

#[tokio::test]
async fn two_coordctl_locks_exclude_each_other() {
    let ctl = Ctl::new("lock_exclusion").await;
    let marker = Marker::new("exclusion");
    let mut first = ctl.spawn(&["lock", "jobs"]);
    let first_key = first.line().await;

    let mut second = ctl.spawn(&[
        "lock",
        "jobs",
        "--",
        "sh",
        "-c",
        &format!("echo \"$COORD_LOCK_KEY\"; {}", marker.reader()),
    ]);
    ctl.keys_become(&ctl.key("jobs/"), 2).await;
    assert_eq!(ctl.keys(&ctl.key("jobs/")).await[0], first_key);

    marker.write();
    first.signal(Signal::INT);
    let second_key = second.line().await;
    assert_ne!(second_key, first_key);
    assert_eq!(
        second.line().await,
        "released",
        "the second ran its command before the first released"
    );
    assert_eq!(second.exit_code().await, 0);
    assert_eq!(first.exit_code().await, 0);
    assert!(ctl.keys(&ctl.key("jobs/")).await.is_empty());
}

#[tokio::test]
async fn a_lock_not_free_within_the_timeout_exits_75_and_leaves_nothing() {
    let ctl = Ctl::new("lock_timeout").await;
    let mut holder = ctl.spawn(&["lock", "jobs"]);
    holder.line().await;

    let once = ctl
        .run(&["lock", "jobs", "--timeout", "0s", "--", "true"])
        .await;
    assert_eq!(once.code, 75, "{}", once.stderr);
    let bounded = ctl.run(&["lock", "jobs", "--timeout", "200ms"]).await;
    assert_eq!(bounded.code, 75, "{}", bounded.stderr);
    assert!(
        bounded.stderr.contains("not acquired"),
        "{}",
        bounded.stderr
    );
    assert_eq!(ctl.keys(&ctl.key("jobs/")).await.len(), 1);

    holder.signal(Signal::TERM);
    assert_eq!(holder.exit_code().await, 0);
}

#[tokio::test]
async fn a_lost_lock_stops_the_command_and_exits_80() {
    let ctl = Ctl::new("lock_lost").await;
    let mut holder = ctl.spawn(&[
        "lock",
        "jobs",
        "--",
        "sh",
        "-c",
        "trap 'echo terminated; exit 0' TERM; echo \"$COORD_LOCK_KEY\"; while :; do sleep 1 & wait $!; done",
    ]);
    let key = holder.line().await;
    // An operator removes the lock: the holder must stop its command.
    ctl.client.delete(key, None).await.unwrap();
    assert_eq!(holder.line().await, "terminated");
    assert_eq!(holder.exit_code().await, 80);
}

#[tokio::test]
async fn a_missing_command_exits_127_and_releases() {
    let ctl = Ctl::new("lock_missing_cmd").await;
    let run = ctl
        .run(&["lock", "jobs", "--", "/nonexistent/coordctl-test-cmd"])
        .await;
    assert_eq!(run.code, 127, "{}", run.stderr);
    assert!(run.stderr.contains("cannot run"), "{}", run.stderr);
    assert!(ctl.keys(&ctl.key("jobs/")).await.is_empty());
}

#[tokio::test]
async fn bad_names_are_usage_errors_and_write_nothing() {
    let ctl = Ctl::new("lock_bad_name").await;
    for name in ["", "jobs/"] {
        let run = ctl.run(&["lock", name, "--", "true"]).await;
        assert_eq!(run.code, 2, "{name:?}: {}", run.stderr);
        assert!(run.stderr.contains("invalid name"), "{}", run.stderr);
    }
    let run = ctl
        .run(&["lock", "jobs", "--ttl", "0s", "--", "true"])
        .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(ctl.keys(&ctl.namespace).await.is_empty());
}

#[tokio::test]
async fn an_interrupted_wait_exits_130_and_leaves_no_key() {
    let ctl = Ctl::new("lock_interrupted").await;
    let mut holder = ctl.spawn(&["lock", "jobs"]);
    holder.line().await;
    let mut waiter = ctl.spawn(&["lock", "jobs"]);
    ctl.keys_become(&ctl.key("jobs/"), 2).await;

    waiter.signal(Signal::INT);
    assert_eq!(waiter.exit_code().await, 130);
    ctl.keys_become(&ctl.key("jobs/"), 1).await;
    holder.signal(Signal::TERM);
    assert_eq!(holder.exit_code().await, 0);
}

fn etcdctl() -> Option<PathBuf> {
    let found = coord_testkit::etcdctl_binary();
    if found.is_none() {
        eprintln!(
            "etcdctl not found (PATH or COORD_ETCDCTL_BIN): skipping the etcdctl interop check"
        );
    }
    found
}

fn etcdctl_command(etcdctl: &PathBuf, ctl: &Ctl) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(etcdctl);
    command
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={}", ctl.endpoints))
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn etcdctl_lock_waits_for_coordctl_lock() {
    let Some(etcdctl) = etcdctl() else { return };
    let ctl = Ctl::new("lock_etcdctl_waits").await;
    let marker = Marker::new("etcdctl-waits");
    let mut ours = ctl.spawn(&["lock", "jobs"]);
    let our_key = ours.line().await;

    let theirs = etcdctl_command(&etcdctl, &ctl)
        .args(["lock", &ctl.key("jobs"), "--", "sh", "-c"])
        .arg(format!("echo \"$ETCD_LOCK_KEY\"; {}", marker.reader()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ctl.keys_become(&ctl.key("jobs/"), 2).await;

    marker.write();
    ours.signal(Signal::TERM);
    let output = tokio::time::timeout(BOUND, theirs.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with(&ctl.key("jobs/")) && lines[0] != our_key);
    assert_eq!(lines[1], "released", "etcdctl ran while coordctl held");
    assert_eq!(ours.exit_code().await, 0);
}

#[tokio::test]
async fn coordctl_lock_waits_for_etcdctl_lock() {
    let Some(etcdctl) = etcdctl() else { return };
    let ctl = Ctl::new("lock_coordctl_waits").await;
    let marker = Marker::new("coordctl-waits");
    let mut theirs = etcdctl_command(&etcdctl, &ctl)
        .args(["lock", &ctl.key("jobs")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut their_lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(theirs.stdout.take().unwrap()));
    // etcdctl prints the key once it holds the lock.
    let their_key = tokio::time::timeout(BOUND, their_lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(their_key.starts_with(&ctl.key("jobs/")), "{their_key}");

    let mut ours = ctl.spawn(&[
        "lock",
        "jobs",
        "sh",
        "-c",
        &format!("echo \"$ETCD_LOCK_KEY\"; {}", marker.reader()),
    ]);
    ctl.keys_become(&ctl.key("jobs/"), 2).await;

    marker.write();
    // etcdctl unlocks on SIGINT.
    common::signal_pid(theirs.id().unwrap(), Signal::INT);
    let our_key = ours.line().await;
    assert_ne!(our_key, their_key);
    assert_eq!(
        ours.line().await,
        "released",
        "coordctl ran while etcdctl held"
    );
    assert_eq!(ours.exit_code().await, 0);
    let _ = tokio::time::timeout(Duration::from_secs(5), theirs.wait()).await;
    assert!(ctl.keys(&ctl.key("jobs/")).await.is_empty());
}
