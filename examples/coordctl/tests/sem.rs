//! `coordctl sem`: durable and session-bound permits, a full semaphore, listing, releasing and
//! changing the stored limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use common::Ctl;
use rustix::process::Signal;

#[tokio::test]
async fn durable_permits_fill_the_semaphore_are_listed_released_and_the_limit_changes() {
    let ctl = Ctl::new("sem_durable").await;
    let run = ctl
        .run(&["sem", "acquire", "builds", "--limit", "2", "--id", "node-a"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("node-a holds a permit of builds"),
        "{}",
        run.stdout
    );
    let b = ctl
        .run(&[
            "sem", "acquire", "builds", "--limit", "2", "--id", "node-b", "--ttl", "1h", "-o",
            "json",
        ])
        .await;
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(b.json()["durable"], true);

    // Full: a third gives up at once, or after its timeout, and leaves nothing behind.
    let full = ctl
        .run(&[
            "sem",
            "acquire",
            "builds",
            "--limit",
            "2",
            "--id",
            "node-c",
            "--timeout",
            "0s",
        ])
        .await;
    assert_eq!(full.code, 75, "{}", full.stderr);
    let full = ctl
        .run(&[
            "sem",
            "acquire",
            "builds",
            "--limit",
            "2",
            "--timeout",
            "200ms",
        ])
        .await;
    assert_eq!(full.code, 75, "{}", full.stderr);
    assert_eq!(ctl.keys(&ctl.key("builds/")).await.len(), 2);

    let list = ctl
        .run(&["sem", "list", "builds", "--limit", "2", "-o", "json"])
        .await
        .json();
    assert_eq!(list["limit"], 2);
    assert_eq!(list["limit_stored"], false);
    let holders = list["holders"].as_array().unwrap();
    let ids: Vec<&str> = holders.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["node-a", "node-b"]);
    assert!(holders[0]["token"].as_i64().unwrap() < holders[1]["token"].as_i64().unwrap());
    assert_eq!(holders[0]["taken_by"], "coordctl");
    assert!(list["waiting"].as_array().unwrap().is_empty());

    let human = ctl.run(&["sem", "list", "builds", "--limit", "2"]).await;
    assert!(
        human
            .stdout
            .contains("semaphore builds: 2 of 2 permit(s) held (default limit), 0 waiting"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("node-b"), "{}", human.stdout);

    let raised = ctl
        .run(&["sem", "set-limit", "builds", "3", "-o", "json"])
        .await
        .json();
    assert_eq!(
        (raised["limit"].as_u64(), raised["previous"].as_u64()),
        (Some(3), None)
    );
    // The stored limit wins over --limit.
    let c = ctl
        .run(&[
            "sem",
            "acquire",
            "builds",
            "--limit",
            "2",
            "--id",
            "node-c",
            "--timeout",
            "0s",
        ])
        .await;
    assert_eq!(c.code, 0, "{}", c.stderr);

    let released = ctl
        .run(&["sem", "release", "builds", "--id", "node-a", "-o", "json"])
        .await
        .json();
    assert_eq!(released["released"], true);
    let again = ctl
        .run(&["sem", "release", "builds", "--id", "node-a"])
        .await;
    assert_eq!(again.code, 0);
    assert!(
        again.stdout.contains("node-a held nothing"),
        "{}",
        again.stdout
    );
    let list = ctl
        .run(&["sem", "list", "builds", "-o", "json"])
        .await
        .json();
    assert_eq!(list["limit"], 3);
    assert_eq!(list["limit_stored"], true);
    assert_eq!(list["holders"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_session_permit_waits_for_a_free_slot_and_runs_its_command() {
    let ctl = Ctl::new("sem_session").await;
    let mut holder = ctl.spawn(&["sem", "acquire", "builds", "-o", "json"]);
    let held = holder.json().await;
    assert_eq!(held["durable"], false);
    let holder_key = held["key"].as_str().unwrap().to_owned();

    let mut waiter = ctl.spawn(&[
        "sem",
        "acquire",
        "builds",
        "--",
        "sh",
        "-c",
        "echo \"$COORD_PERMIT_KEY $COORD_FENCING_TOKEN\"; exit 3",
    ]);
    ctl.keys_become(&ctl.key("builds/"), 2).await;
    let list = ctl
        .run(&["sem", "list", "builds", "-o", "json"])
        .await
        .json();
    assert_eq!(list["holders"][0]["key"], holder_key.as_str());
    assert_eq!(list["waiting"].as_array().unwrap().len(), 1);

    holder.signal(Signal::TERM);
    let line = waiter.line().await;
    let (key, token) = line.split_once(' ').unwrap();
    assert!(
        key.starts_with(&ctl.key("builds/")) && key != holder_key,
        "{line}"
    );
    assert!(token.parse::<i64>().unwrap() > held["token"].as_i64().unwrap());
    assert_eq!(waiter.exit_code().await, 3);
    assert_eq!(holder.exit_code().await, 0);
    assert!(ctl.keys(&ctl.key("builds/")).await.is_empty());
}

#[tokio::test]
async fn bad_semaphore_input_is_a_usage_error_and_writes_nothing() {
    let ctl = Ctl::new("sem_bad").await;
    for args in [
        &["sem", "set-limit", "builds", "0"][..],
        &["sem", "acquire", "builds", "--limit", "0", "--id", "x"],
        &["sem", "acquire", "", "--id", "x"],
        &["sem", "acquire", "builds", "--id", "a/b"],
        &["sem", "acquire", "builds", "--id", "x", "--ttl", "1500ms"],
        &["sem", "release", "builds/", "--id", "x"],
    ] {
        let run = ctl.run(args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(!run.stderr.is_empty());
    }
    assert!(ctl.keys(&ctl.namespace).await.is_empty());
}
