//! The server side of TLS: TLS 1.3 and 1.2, several certificates (ECDSA and RSA:
//! each client gets the first one it can verify), ALPN http/1.1, and session
//! resumption by tickets and a session cache. The ticket key and the cache outlive
//! a reload, so clients keep resuming across SIGHUP.
//!
//! Between balancers (a relay on a gateway's host, ucloud-lb.conf(5) `client_ca`):
//! the relay requires a client certificate from the site's CA, and the balancer
//! in front presents one and checks the relay's against the same kind of CA.

use crate::error::Error;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use std::path::{Path, PathBuf};
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

/// `client_ca`: require a client certificate issued by it (relay mode).
pub fn server_config(
    certificates: &[(PathBuf, PathBuf)],
    client_ca: Option<&Path>,
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
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(format!("protocol versions: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = ucloud_http::tls::load_roots(ca).map_err(|e| Error::Tls(e.0))?;
            // No anonymous clients: a relay's every peer is a balancer.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::Tls(format!("client_ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(ByKeyType(keys)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = resumption.ticketer.clone();
    config.session_storage = resumption.cache.clone();
    Ok(Arc::new(config))
}

/// What a balancer needs to reach a relay: a client configuration that trusts only
/// `ca` and presents `certificate`, and the name the relay's certificate must carry.
pub struct Relayed {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Relayed({:?})", self.name)
    }
}

pub fn client_config(tls: &crate::config::BackendTls) -> Result<Arc<Relayed>, Error> {
    let roots = ucloud_http::tls::load_roots(&tls.ca).map_err(|e| Error::Tls(e.0))?;
    let (cert, key) = &tls.certificate;
    let chain = ucloud_http::tls::load_certs(cert).map_err(|e| Error::Tls(e.0))?;
    let der = ucloud_http::tls::load_key(key).map_err(|e| Error::Tls(e.0))?;
    // Both ends are ours: TLS 1.3 alone.
    let config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| Error::Tls(format!("protocol versions: {e}")))?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, der)
    .map_err(|e| {
        Error::Tls(format!(
            "{} and {} do not make a usable client certificate: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    let name = ServerName::try_from(tls.name.clone())
        .map_err(|e| Error::Tls(format!("tls_name {}: {e}", tls.name)))?;
    Ok(Arc::new(Relayed {
        config: Arc::new(config),
        name,
    }))
}
