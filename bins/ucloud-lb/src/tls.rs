//! The server side of TLS: TLS 1.3 and 1.2, several certificates (ECDSA and RSA:
//! each client gets the first one it can verify), ALPN http/1.1, and session
//! resumption by tickets and a session cache. The ticket key and the cache outlive
//! a reload, so clients keep resuming across SIGHUP.

use crate::error::Error;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// What survives reloads.
pub struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<ServerSessionMemoryCache>,
}

impl Resumption {
    pub fn new() -> Result<Resumption, Error> {
        ucloud_http::tls::install_provider();
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| Error::Tls(format!("cannot make a session ticket key: {e}")))?;
        Ok(Resumption {
            ticketer,
            cache: ServerSessionMemoryCache::new(20_000),
        })
    }
}

#[derive(Debug)]
struct ByKeyType(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for ByKeyType {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        self.0
            .iter()
            .find(|c| c.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}

pub fn server_config(
    certificates: &[(PathBuf, PathBuf)],
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut keys = Vec::new();
    for (cert, key) in certificates {
        let chain = ucloud_http::tls::load_certs(cert).map_err(|e| Error::Tls(e.0))?;
        let der = ucloud_http::tls::load_key(key).map_err(|e| Error::Tls(e.0))?;
        let certified = CertifiedKey::from_der(chain, der, &provider).map_err(|e| {
            Error::Tls(format!(
                "{} and {} do not make a usable certificate: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        keys.push(Arc::new(certified));
    }
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(format!("protocol versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ByKeyType(keys)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = resumption.ticketer.clone();
    config.session_storage = resumption.cache.clone();
    Ok(Arc::new(config))
}
