//! `coordctl config`: JSON values set, read and followed as coord-discovery's `Config` does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use common::Ctl;
use coord_discovery::config::Config;
use rustix::process::Signal;
use serde_json::{Value, json};

#[tokio::test]
async fn a_value_set_is_read_back_by_get_and_by_a_typed_config() {
    let ctl = Ctl::new("config_set_get").await;
    let missing = ctl.run(&["config", "get", "limits"]).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);
    assert!(missing.stderr.contains("not set"), "{}", missing.stderr);

    let set = ctl
        .run(&[
            "config",
            "set",
            "limits",
            r#"{"max_jobs": 8}"#,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(set.code, 0, "{}", set.stderr);
    assert!(set.json()["revision"].as_i64().unwrap() > 0);

    let get = ctl.run(&["config", "get", "limits"]).await;
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&get.stdout).unwrap(),
        json!({"max_jobs": 8})
    );
    let get = ctl
        .run(&["config", "get", "limits", "-o", "json"])
        .await
        .json();
    assert_eq!(
        (&get["set"], &get["value"]),
        (&json!(true), &json!({"max_jobs": 8}))
    );

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Limits {
        max_jobs: u32,
    }
    let mut typed = Config::new(&ctl.client, "limits", Limits { max_jobs: 1 }).unwrap();
    assert_eq!(
        typed.wait_ready().await.unwrap().value.as_ref(),
        &Limits { max_jobs: 8 }
    );
}

#[tokio::test]
async fn watch_prints_the_value_then_every_change() {
    let ctl = Ctl::new("config_watch").await;
    let mut watch = ctl.spawn(&["config", "watch", "limits", "-o", "json"]);
    let first = watch.json().await;
    assert_eq!(first["set"], false);

    assert_eq!(ctl.run(&["config", "set", "limits", "1"]).await.code, 0);
    assert_eq!(watch.json().await["value"], 1);
    assert_eq!(ctl.run(&["config", "set", "limits", "[2]"]).await.code, 0);
    assert_eq!(watch.json().await["value"], json!([2]));

    // Not JSON (written by another tool): reported, the last good value stays.
    ctl.client
        .put(ctl.key("limits"), "oops", None)
        .await
        .unwrap();
    let bad = watch.json().await;
    assert_eq!(bad["value"], json!([2]));
    assert!(bad["error"].as_str().is_some(), "{bad}");
    let get = ctl.run(&["config", "get", "limits"]).await;
    assert_eq!(get.code, 1, "{}", get.stderr);

    ctl.client.delete(ctl.key("limits"), None).await.unwrap();
    assert_eq!(watch.json().await["set"], false);
    watch.signal(Signal::TERM);
    assert_eq!(watch.exit_code().await, 0);
}

#[tokio::test]
async fn bad_input_is_a_usage_error_and_writes_nothing() {
    let ctl = Ctl::new("config_bad").await;
    for args in [
        &["config", "set", "limits", "{max_jobs: 8}"][..],
        &["config", "set", "limits", ""],
        &["config", "set", "", "1"],
        &["config", "set", "limits/", "1"],
        &["config", "get", ""],
    ] {
        let run = ctl.run(args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(!run.stderr.is_empty());
    }
    let run = ctl.run(&["config", "set", "limits", "{"]).await;
    assert!(run.stderr.contains("not JSON"), "{}", run.stderr);
    assert!(ctl.keys(&ctl.namespace).await.is_empty());
}

#[tokio::test]
async fn an_unreachable_etcd_is_an_error_within_the_command_timeout() {
    let ctl = Ctl::new("config_unreachable").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    for args in [
        &["config", "get", "limits"][..],
        &["services", "list", "api"],
        &["lock", "jobs", "--", "true"],
    ] {
        let output = tokio::process::Command::new(common::BIN)
            .args(["--endpoints", &endpoint, "--namespace", &ctl.namespace])
            .args(["--command-timeout", "1s"])
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with("coordctl: "), "{stderr}");
    }
}
