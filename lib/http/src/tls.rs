//! rustls configuration from PEM files: a server's certificate chain and key, and a
//! client that trusts exactly the CA file it is given (never the system store: the
//! sender talks to one UCloud, whose CA the site names in `site.conf`).
//!
//! Every program of this build uses the aws-lc-rs provider, installed explicitly so
//! that no feature unification elsewhere can switch it.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// Installs aws-lc-rs as the process's rustls provider. Safe to call more than once:
/// a second install fails only because the same provider is already there.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Every certificate in a PEM file, in file order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            TlsError(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{} holds a bad certificate: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        TlsError(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

/// A root store holding exactly the CA certificates of `ca_file`.
pub fn load_roots(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots.add(cert).map_err(|e| {
            TlsError(format!(
                "{} holds a certificate that is no usable CA: {e}",
                ca_file.display()
            ))
        })?;
    }
    Ok(roots)
}

/// A server configuration for the chain in `cert_file` and the key in `key_file`.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    install_provider();
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            TlsError(format!(
                "{} and {} do not make a usable certificate: {e}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
    Ok(Arc::new(config))
}

/// A client configuration trusting only the CAs in `ca_file`.
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    install_provider();
    let roots = load_roots(ca_file)?;
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("tls-test-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn files_without_pem_objects_are_clear_errors() {
        let empty = scratch("empty.pem", "no pem here\n");
        let e = load_certs(&empty).unwrap_err();
        assert!(e.0.contains("no PEM certificate"), "{e}");
        assert!(load_key(&empty).is_err());
        assert!(client_config(&empty).is_err());
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(load_roots(missing)
            .unwrap_err()
            .0
            .contains("/nonexistent/ca.pem"));
        std::fs::remove_file(empty).unwrap();
    }

    #[test]
    fn a_broken_certificate_is_refused() {
        let bad = scratch(
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        assert!(load_roots(&bad).is_err());
        std::fs::remove_file(bad).unwrap();
    }
}
