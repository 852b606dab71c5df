//! TLS: a server with a freshly generated CA (a server of its own).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use coord_core::{ClientConfig, Error, TlsConfig};
use coord_testkit::{Etcd, TestCerts};

#[tokio::test]
async fn tls_works_with_the_right_ca_and_fails_clearly_with_a_wrong_one() {
    let etcd = Etcd::builder().tls(true).start().await.unwrap();
    let certs = etcd.certs().unwrap();

    let good = ClientConfig::new(etcd.endpoints())
        .with_tls(TlsConfig::new().with_ca_pem(certs.ca_pem.clone()))
        .connect()
        .await
        .unwrap();
    good.put("tls-key", "v", None).await.unwrap();
    assert_eq!(
        good.get("tls-key", None).await.unwrap().kvs()[0].value(),
        b"v"
    );

    let other_ca = TestCerts::generate().unwrap();
    let bad = ClientConfig::new(etcd.endpoints())
        .with_tls(TlsConfig::new().with_ca_pem(other_ca.ca_pem.clone()))
        .connect()
        .await
        .unwrap();
    let err = bad.get("tls-key", None).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let chain = error_chain(&err);
    assert!(
        chain.to_lowercase().contains("certificate"),
        "the error should name the certificate problem: {chain}"
    );
}

#[tokio::test]
async fn mutual_tls_requires_the_client_certificate() {
    let etcd = Etcd::builder()
        .tls(true)
        .client_cert_auth(true)
        .start()
        .await
        .unwrap();
    let certs = etcd.certs().unwrap();

    let with_identity = ClientConfig::new(etcd.endpoints())
        .with_tls(
            TlsConfig::new()
                .with_ca_pem(certs.ca_pem.clone())
                .with_identity_pem(certs.client_cert_pem.clone(), certs.client_key_pem.clone()),
        )
        .connect()
        .await
        .unwrap();
    with_identity.put("mtls-key", "v", None).await.unwrap();

    let without = ClientConfig::new(etcd.endpoints())
        .with_tls(TlsConfig::new().with_ca_pem(certs.ca_pem.clone()))
        .connect()
        .await
        .unwrap();
    let err = without.get("mtls-key", None).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    // etcd 3.7 answers "CertificateRequired" (TLS 1.3), 3.5 "BadCertificate".
    let chain = error_chain(&err);
    assert!(chain.contains("Certificate"), "{chain}");
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
