//! Throw-away TLS certificates for servers started with [`EtcdBuilder::tls`](crate::EtcdBuilder::tls).

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::Error;

/// A self-signed CA and a server and a client certificate issued by it, all in PEM.
///
/// - The server certificate is valid for `127.0.0.1` and `localhost` and may be used
///   for both server and client authentication (etcd dials itself with it).
/// - The client certificate has common name `root`: with `--client-cert-auth` and
///   etcd authentication enabled, etcd takes the CN as the user name, so it acts as
///   the `root` user.
///
/// Keys are generated fresh on every call; nothing here is secret or long-lived.
///
/// # Examples
///
/// ```
/// let certs = coord_testkit::TestCerts::generate()?;
/// assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
/// let dir = tempfile::tempdir().unwrap();
/// let files = certs.write_to(dir.path())?;
/// assert!(files.ca.exists() && files.client_key.exists());
/// # Ok::<(), coord_testkit::Error>(())
/// ```
#[derive(Clone)]
pub struct TestCerts {
    /// The CA certificate (trust anchor for both sides).
    pub ca_pem: String,
    /// The server certificate (SAN `127.0.0.1`, `localhost`).
    pub server_cert_pem: String,
    /// The server's private key.
    pub server_key_pem: String,
    /// The client certificate (CN `root`).
    pub client_cert_pem: String,
    /// The client's private key.
    pub client_key_pem: String,
}

/// Where [`TestCerts::write_to`] put each PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// `ca.pem`
    pub ca: PathBuf,
    /// `server.pem`
    pub server_cert: PathBuf,
    /// `server-key.pem`
    pub server_key: PathBuf,
    /// `client.pem`
    pub client_cert: PathBuf,
    /// `client-key.pem`
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Generates a new CA, server and client certificate.
    ///
    /// # Errors
    ///
    /// [`Error::Certificates`] if key generation or signing fails.
    pub fn generate() -> Result<TestCerts, Error> {
        let mut ca_params = CertificateParams::new(Vec::new()).map_err(Error::Certificates)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "coord-testkit CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(Error::Certificates)?;
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(Error::Certificates)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |sans: Vec<String>, cn: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
            let mut params = CertificateParams::new(sans).map_err(Error::Certificates)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = usages;
            let key = KeyPair::generate().map_err(Error::Certificates)?;
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(Error::Certificates)?;
            Ok::<_, Error>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "coord-testkit etcd",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        let (client_cert_pem, client_key_pem) = leaf(
            Vec::new(),
            "root",
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;

        Ok(TestCerts {
            ca_pem: ca_cert.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        })
    }

    /// Writes the five PEM files into `dir` (which must exist) and returns their paths.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a file cannot be written.
    pub fn write_to(&self, dir: &Path) -> Result<CertFiles, Error> {
        let files = CertFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        for (path, pem) in [
            (&files.ca, &self.ca_pem),
            (&files.server_cert, &self.server_cert_pem),
            (&files.server_key, &self.server_key_pem),
            (&files.client_cert, &self.client_cert_pem),
            (&files.client_key, &self.client_key_pem),
        ] {
            fs::write(path, pem)
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        }
        Ok(files)
    }

    /// TLS options for an etcd client that trusts [`ca_pem`](Self::ca_pem) and, with
    /// `client_identity`, presents the `root` client certificate.
    ///
    /// # Examples
    ///
    /// ```
    /// let certs = coord_testkit::TestCerts::generate()?;
    /// let options = etcd_client::ConnectOptions::new().with_tls(certs.tls_options(true));
    /// # let _ = options;
    /// # Ok::<(), coord_testkit::Error>(())
    /// ```
    pub fn tls_options(&self, client_identity: bool) -> etcd_client::TlsOptions {
        let options = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca_pem));
        if client_identity {
            options.identity(etcd_client::Identity::from_pem(
                &self.client_cert_pem,
                &self.client_key_pem,
            ))
        } else {
            options
        }
    }
}

impl fmt::Debug for TestCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The PEM blobs would drown any test failure message.
        f.debug_struct("TestCerts").finish_non_exhaustive()
    }
}
