//! A single etcd server: starting, sharing, killing, restarting, dropping, TLS, auth.
// Helpers outside #[test] functions may unwrap like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use coord_testkit::{Error, Etcd, shared, unique_namespace};
use etcd_client::{EventType, WatchOptions};

/// Whether `pid` no longer runs (gone, or a zombie nobody reaped yet).
fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_started_server_answers_put_and_get() {
    let etcd = Etcd::start().await.unwrap();
    let mut client = etcd.client().await.unwrap();
    client.put("k", "v", None).await.unwrap();
    let reply = client.get("k", None).await.unwrap();
    assert_eq!(reply.kvs()[0].value(), b"v");
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(etcd.endpoints(), vec![etcd.endpoint()]);
}

#[tokio::test]
async fn shared_returns_the_same_server_every_time() {
    let (a, b) = tokio::join!(shared(), shared());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(std::ptr::eq(a, b));
    let c = shared().await.unwrap();
    assert!(std::ptr::eq(a, c));
}

#[test]
fn shared_works_from_many_runtimes_at_once() {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let etcd = shared().await.unwrap();
                    let ns = unique_namespace("many_runtimes");
                    let mut client = etcd.client().await.unwrap();
                    client.put(format!("{ns}k"), "v", None).await.unwrap();
                    etcd as *const Etcd as usize
                })
            })
        })
        .collect();
    let servers: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(servers.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn unique_namespace_differs_per_call() {
    let a = unique_namespace("t");
    let b = unique_namespace("t");
    assert_ne!(a, b);
    assert!(a.starts_with("coord-test/t/") && a.ends_with('/'));
}

#[tokio::test]
async fn kill_and_restart_keep_the_data() {
    let mut etcd = Etcd::start().await.unwrap();
    let endpoint = etcd.endpoint();
    let mut client = etcd.client().await.unwrap();
    client.put("k", "before the crash", None).await.unwrap();

    etcd.kill();
    assert_eq!(etcd.pid(), None);
    etcd.restart().await.unwrap();

    assert_eq!(etcd.endpoint(), endpoint);
    let mut client = etcd.client().await.unwrap();
    let reply = client.get("k", None).await.unwrap();
    assert_eq!(reply.kvs()[0].value(), b"before the crash");
}

#[tokio::test]
async fn dropping_a_server_kills_it_and_removes_its_directory() {
    let etcd = Etcd::start().await.unwrap();
    let pid = etcd.pid().unwrap();
    let dir = etcd.dir().to_path_buf();
    assert!(etcd.data_dir().starts_with(&dir) && etcd.data_dir().is_dir());
    assert!(!process_is_gone(pid));

    drop(etcd);

    assert!(process_is_gone(pid));
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_server_runs_in_a_directory_named_for_this_process() {
    let etcd = Etcd::start().await.unwrap();
    let name = etcd.dir().file_name().unwrap().to_str().unwrap().to_owned();
    assert!(name.starts_with(&format!("coord-testkit-{}-", std::process::id())));
    assert!(etcd.dir().starts_with(std::env::temp_dir()));
    assert!(etcd.log_path().is_file());
}

#[tokio::test]
async fn a_failed_start_reports_the_tail_of_the_etcd_log() {
    let error = Etcd::builder()
        .arg("--no-such-flag")
        .start()
        .await
        .unwrap_err();
    let Error::Startup { log_tail, .. } = &error else {
        panic!("expected a startup error, got {error:?}");
    };
    assert!(log_tail.contains("no-such-flag"), "{error}");
    assert!(error.to_string().contains("no-such-flag"), "{error}");
}

#[tokio::test]
async fn a_missing_binary_is_reported_as_a_spawn_error() {
    let error = Etcd::builder()
        .binary(Path::new("/nonexistent/etcd"))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/etcd"), "{error}");
}

#[tokio::test]
async fn compact_returns_the_current_revision_and_older_watches_see_compact_revision() {
    let etcd = Etcd::start().await.unwrap();
    let mut client = etcd.client().await.unwrap();
    let first = client.put("k", "1", None).await.unwrap();
    let first = first.header().unwrap().revision();
    client.put("k", "2", None).await.unwrap();
    let last = client.put("k", "3", None).await.unwrap();
    let last = last.header().unwrap().revision();

    let compacted = etcd.compact().await.unwrap();
    assert_eq!(compacted, last);
    assert_eq!(
        etcd.compact().await.unwrap(),
        last,
        "compacting twice is fine"
    );

    let mut stream = client
        .watch("k", Some(WatchOptions::new().with_start_revision(first)))
        .await
        .unwrap();
    let reply = loop {
        let reply = stream.message().await.unwrap().unwrap();
        if !reply.created() || reply.canceled() {
            break reply;
        }
    };
    assert!(reply.canceled());
    assert_eq!(reply.compact_revision(), compacted);

    // A watch from the compaction revision on still works.
    let mut stream = client
        .watch(
            "k",
            Some(WatchOptions::new().with_start_revision(compacted)),
        )
        .await
        .unwrap();
    let reply = loop {
        let reply = stream.message().await.unwrap().unwrap();
        if !reply.events().is_empty() {
            break reply;
        }
    };
    assert_eq!(reply.events()[0].event_type(), EventType::Put);
    assert_eq!(reply.events()[0].kv().unwrap().value(), b"3");
}

#[tokio::test]
async fn metrics_and_version_are_served() {
    let etcd = Etcd::start().await.unwrap();
    let metrics = etcd.metrics().await.unwrap();
    assert!(metrics.contains("etcd_server_has_leader 1"), "{metrics}");
    let version = etcd.version().await.unwrap();
    assert!(version.starts_with("3."), "{version}");
    assert!(etcd.metrics_url().starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn a_tls_server_serves_put_and_get_to_its_client() {
    let etcd = Etcd::builder().tls(true).start().await.unwrap();
    assert!(etcd.endpoint().starts_with("https://127.0.0.1:"));
    assert!(etcd.metrics_url().starts_with("http://"));
    assert!(etcd.certs().is_some());
    let mut client = etcd.client().await.unwrap();
    client.put("k", "v", None).await.unwrap();
    let reply = client.get("k", None).await.unwrap();
    assert_eq!(reply.kvs()[0].value(), b"v");
}

#[tokio::test]
async fn a_client_cert_auth_server_rejects_clients_without_a_certificate() {
    let etcd = Etcd::builder()
        .client_cert_auth(true)
        .start()
        .await
        .unwrap();

    let mut client = etcd.client().await.unwrap();
    client.put("k", "v", None).await.unwrap();

    let ca_only =
        etcd_client::ConnectOptions::new().with_tls(etcd.certs().unwrap().tls_options(false));
    let mut anonymous = etcd_client::Client::connect(etcd.endpoints(), Some(ca_only))
        .await
        .unwrap();
    assert!(anonymous.get("k", None).await.is_err());
}

#[tokio::test]
async fn a_root_password_enables_auth_and_the_client_logs_in_as_root() {
    let etcd = Etcd::builder()
        .root_password("secret")
        .start()
        .await
        .unwrap();

    let mut root = etcd.client().await.unwrap();
    root.put("k", "v", None).await.unwrap();

    let mut anonymous = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    assert!(anonymous.get("k", None).await.is_err());
}
