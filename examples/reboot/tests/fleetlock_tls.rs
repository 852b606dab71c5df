//! The agent's FleetLock client over TLS and through redirects: the server behind a
//! TLS-terminating proxy (the way a FleetLock server is put behind an ingress), with the CA from
//! `[agent.fleetlock.tls]`, a proxy that asks for a client certificate, and 308 redirects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::sync::Arc;

use coord_reboot::agent::{AgentConfig, ClientError, FleetLockClient};
use coord_reboot::{Config, GroupName, HolderId, Server};
use coord_testkit::{CertFiles, TestCerts};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A FleetLock server on the shared etcd, reached through a TLS proxy on `localhost`.
struct Secured {
    server: Server,
    /// `https://localhost:<proxy port>/`
    url: String,
    /// The server itself: `http://127.0.0.1:<port>/`
    plain: String,
    files: CertFiles,
    _dir: tempfile::TempDir,
}

/// Starts the server and a proxy that terminates TLS with the test certificates (and, with
/// `client_auth`, requires a client certificate issued by the test CA).
async fn secured(label: &str, client_auth: bool) -> Secured {
    let etcd = coord_testkit::shared().await.unwrap();
    let namespace = coord_testkit::unique_namespace(label);
    let config = Config::from_toml(&format!(
        "[etcd]\nendpoints = {:?}\nnamespace = {namespace:?}\n[groups.workers]\nslots = 1\n",
        etcd.endpoints()
    ))
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = plain.local_addr().unwrap();
    tokio::spawn(server.clone().serve(plain, std::future::pending()));

    let certs = TestCerts::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = certs.write_to(dir.path()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(certs.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let tls = builder
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(certs.server_cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(certs.server_key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}/", proxy.local_addr().unwrap().port());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = proxy.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake just ends this connection, as a real proxy's would.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Secured {
        server,
        url,
        plain: format!("http://{backend}/"),
        files,
        _dir: dir,
    }
}

/// The agent's client for `url`, with `tls` as the `[agent.fleetlock.tls]` section.
fn client(url: &str, tls: &str) -> FleetLockClient {
    let config = AgentConfig::from_toml(&format!(
        "[agent]\n[agent.fleetlock]\nurl = {url:?}\ntimeout = \"10s\"\n{tls}"
    ))
    .unwrap();
    config.agent.fleetlock.unwrap().client().unwrap()
}

fn workers() -> GroupName {
    GroupName::new("workers").unwrap()
}

/// How many slots of `workers` are taken, as etcd says.
async fn holders(fleet: &Secured) -> usize {
    fleet
        .server
        .groups()
        .holders_and_slots(&workers())
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn the_ca_from_the_settings_lets_the_agent_take_a_slot_over_https() {
    let fleet = secured("fleetlock_tls", false).await;
    let node = HolderId::new("node-1").unwrap();
    let trusting = client(
        &fleet.url,
        &format!("[agent.fleetlock.tls]\nca_file = {:?}\n", fleet.files.ca),
    );
    trusting.pre_reboot(&workers(), &node).await.unwrap();
    assert_eq!(holders(&fleet).await, 1);

    // Without the CA the server's certificate is not trusted, and no request gets through.
    let untrusting = client(&fleet.url, "");
    let other = HolderId::new("node-2").unwrap();
    let err = untrusting
        .steady_state(&workers(), &node)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    let err = untrusting.pre_reboot(&workers(), &other).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    assert_eq!(holders(&fleet).await, 1);

    trusting.steady_state(&workers(), &node).await.unwrap();
    assert_eq!(holders(&fleet).await, 0);
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_server_asks_for_one() {
    let fleet = secured("fleetlock_mtls", true).await;
    let node = HolderId::new("node-1").unwrap();
    let ca = format!("[agent.fleetlock.tls]\nca_file = {:?}\n", fleet.files.ca);
    let with_identity = client(
        &fleet.url,
        &format!(
            "{ca}cert_file = {:?}\nkey_file = {:?}\n",
            fleet.files.client_cert, fleet.files.client_key
        ),
    );
    with_identity.pre_reboot(&workers(), &node).await.unwrap();
    assert_eq!(holders(&fleet).await, 1);

    let without = client(&fleet.url, &ca);
    let err = without.steady_state(&workers(), &node).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    assert_eq!(holders(&fleet).await, 1);
    with_identity.steady_state(&workers(), &node).await.unwrap();
}

#[tokio::test]
async fn unusable_certificate_files_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let config = AgentConfig::from_toml(&format!(
        "[agent]\n[agent.fleetlock]\nurl = \"https://localhost/\"\n\
         [agent.fleetlock.tls]\nca_file = {not_pem:?}\n"
    ))
    .unwrap();
    let err = config.agent.fleetlock.unwrap().client().unwrap_err();
    assert!(err.to_string().contains("agent.fleetlock.tls"), "{err}");

    let config = AgentConfig::from_toml(&format!(
        "[agent]\n[agent.fleetlock]\nurl = \"https://localhost/\"\n\
         [agent.fleetlock.tls]\nca_file = {:?}\n",
        dir.path().join("missing.pem")
    ))
    .unwrap();
    let err = config.agent.fleetlock.unwrap().client().unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

/// An HTTP server that answers every request with a 308 to `target` + the request's path.
async fn redirector(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let location = format!("{}{}", target.trim_end_matches('/'), uri.path());
        async move {
            (
                axum::http::StatusCode::PERMANENT_REDIRECT,
                [(axum::http::header::LOCATION, location)],
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn permanent_redirects_are_followed_with_the_same_request() {
    let fleet = secured("fleetlock_redirect", false).await;
    let node = HolderId::new("node-1").unwrap();
    let moved = client(&redirector(fleet.plain.clone()).await, "");
    moved.pre_reboot(&workers(), &node).await.unwrap();
    assert_eq!(holders(&fleet).await, 1);
    moved.steady_state(&workers(), &node).await.unwrap();
    assert_eq!(holders(&fleet).await, 0);

    // A redirect loop ends after a bounded number of hops, as an error that needs a person.
    let looping_target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let looping = format!("http://{}/", looping_target.local_addr().unwrap());
    let app = axum::Router::new().fallback({
        let looping = looping.clone();
        move || {
            let looping = looping.clone();
            async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, looping)],
                )
            }
        }
    });
    tokio::spawn(async move { axum::serve(looping_target, app).await });
    let err = client(&looping, "")
        .pre_reboot(&workers(), &node)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Status { status } if status.as_u16() == 307),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(holders(&fleet).await, 0);
}
