//! A throwaway certificate authority for TLS tests: a CA, a server certificate for the loopback
//! names (`localhost`, `127.0.0.1`, `::1`) and client certificates, written as PEM files into a
//! temporary directory that lives as long as the [`TestCa`].
//!
//! Invariants:
//! - every key is freshly generated (ECDSA P-256), so no test shares a secret with another run;
//! - the server certificate names exactly the loopback names, so verify-full against
//!   `127.0.0.1` or `localhost` passes and against any other name fails;
//! - an "untrusted" CA is just another [`TestCa`]: certificates of one do not verify under the
//!   other.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::error::{Result, TestkitError};

/// A certificate and its private key, as PEM text and as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
    /// Where the certificate is written.
    pub cert_path: PathBuf,
    /// Where the key is written (mode 0600: PostgreSQL refuses a key others can read).
    pub key_path: PathBuf,
}

/// A test certificate authority with a server certificate for the loopback names.
pub struct TestCa {
    dir: TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    ca_pem: String,
    ca_path: PathBuf,
    server: CertFiles,
}

impl TestCa {
    /// A new CA named `name`, with a server certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn new(name: &str) -> Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("driftless-test-ca-").tempdir().map_err(|source| {
                TestkitError::Io {
                    op: "create temporary directory",
                    path: std::env::temp_dir(),
                    source,
                }
            })?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(tls_error)?;
        let ca_cert = params.self_signed(&ca_key).map_err(tls_error)?;
        let ca_pem = ca_cert.pem();
        let ca_path = dir.path().join("ca.pem");
        write(&ca_path, &ca_pem, 0o644)?;
        let mut ca = Self {
            server: CertFiles {
                cert_pem: String::new(),
                key_pem: String::new(),
                cert_path: PathBuf::new(),
                key_path: PathBuf::new(),
            },
            dir,
            ca_cert,
            ca_key,
            ca_pem,
            ca_path,
        };
        ca.server = ca.issue(
            "server",
            "localhost",
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Ok(ca)
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate's file: what a client's `sslrootcert` or `ca_file` names.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The server certificate for the loopback names, and its key.
    pub fn server(&self) -> &CertFiles {
        &self.server
    }

    /// A new server certificate for the loopback names under file stem `stem` (for tests of
    /// certificate reload: a second certificate from the same CA).
    pub fn new_server_cert(&self, stem: &str) -> Result<CertFiles> {
        self.issue(
            stem,
            "localhost",
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose subject's common name is `common_name`, for mutual TLS.
    pub fn client_cert(&self, common_name: &str) -> Result<CertFiles> {
        let stem =
            format!("client-{}", common_name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        self.issue(&stem, common_name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        stem: &str,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertFiles> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(tls_error)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().map_err(tls_error)?;
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).map_err(tls_error)?;
        let files = CertFiles {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path: self.dir.path().join(format!("{stem}.pem")),
            key_path: self.dir.path().join(format!("{stem}.key")),
        };
        write(&files.cert_path, &files.cert_pem, 0o644)?;
        write(&files.key_path, &files.key_pem, 0o600)?;
        Ok(files)
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("ca_path", &self.ca_path).finish_non_exhaustive()
    }
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|source| TestkitError::Io { op: "write", path: path.to_owned(), source })
}

fn tls_error(error: rcgen::Error) -> TestkitError {
    TestkitError::Tls(error.to_string())
}
