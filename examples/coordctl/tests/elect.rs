//! `coordctl elect`: campaigning, leading until signalled, resigning, observing every change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use common::Ctl;
use rustix::process::Signal;
use serde_json::Value;

fn leader_value(report: &Value) -> Option<&str> {
    report["leader"]["value"].as_str()
}

#[tokio::test]
async fn candidates_lead_in_turn_and_the_observer_reports_each_change() {
    let ctl = Ctl::new("elect_turns").await;
    let mut observer = ctl.spawn(&["elect", "--observe", "scheduler", "-o", "json"]);
    let first_report = observer.json().await;
    assert_eq!(first_report["leader"], Value::Null, "{first_report}");

    let mut a = ctl.spawn(&["elect", "scheduler", "node-a"]);
    let a_key = a.line().await;
    assert!(a_key.starts_with(&ctl.key("scheduler/")), "{a_key}");
    assert_eq!(a.line().await, "node-a");
    let seen = observer.json_until(|r| leader_value(r).is_some()).await;
    assert_eq!(leader_value(&seen), Some("node-a"));
    assert_eq!(seen["leader"]["key"], a_key.as_str());

    let mut b = ctl.spawn(&["elect", "scheduler", "node-b", "-o", "json"]);
    ctl.keys_become(&ctl.key("scheduler/"), 2).await;

    a.signal(Signal::TERM);
    let elected = b.json().await;
    assert_eq!(elected["value"], "node-b");
    assert!(elected["token"].as_i64().unwrap() > seen["leader"]["token"].as_i64().unwrap());
    assert_eq!(a.exit_code().await, 0);
    let seen = observer
        .json_until(|r| leader_value(r) == Some("node-b"))
        .await;
    assert_eq!(seen["leader"]["key"], elected["key"]);

    b.signal(Signal::INT);
    assert_eq!(b.exit_code().await, 0);
    observer.json_until(|r| r["leader"].is_null()).await;
    observer.signal(Signal::TERM);
    assert_eq!(observer.exit_code().await, 0);
}

#[tokio::test]
async fn the_human_observer_prints_key_and_value_or_no_leader() {
    let ctl = Ctl::new("elect_human").await;
    let mut observer = ctl.spawn(&["elect", "-l", "scheduler"]);
    assert_eq!(observer.line().await, "no leader");
    let mut a = ctl.spawn(&["elect", "scheduler", "node-a"]);
    let key = a.line().await;
    assert_eq!(observer.line().await, key);
    assert_eq!(observer.line().await, "node-a");
    a.signal(Signal::TERM);
    assert_eq!(a.exit_code().await, 0);
    assert_eq!(observer.line().await, "no leader");
    observer.signal(Signal::TERM);
    assert_eq!(observer.exit_code().await, 0);
}

#[tokio::test]
async fn a_campaign_not_won_within_the_timeout_exits_75_and_leaves_nothing() {
    let ctl = Ctl::new("elect_timeout").await;
    let mut leader = ctl.spawn(&["elect", "scheduler", "node-a"]);
    leader.line().await;
    let run = ctl
        .run(&["elect", "scheduler", "node-b", "--timeout", "200ms"])
        .await;
    assert_eq!(run.code, 75, "{}", run.stderr);
    assert_eq!(ctl.keys(&ctl.key("scheduler/")).await.len(), 1);
    leader.signal(Signal::TERM);
    assert_eq!(leader.exit_code().await, 0);
}

#[tokio::test]
async fn elect_needs_a_value_or_observe() {
    let ctl = Ctl::new("elect_usage").await;
    let run = ctl.run(&["elect", "scheduler"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let run = ctl.run(&["elect", "", "x"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(ctl.keys(&ctl.namespace).await.is_empty());
}
