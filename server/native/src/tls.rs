//! TLS for the front end (rustls, ring): the certificate chain and key come from PEM (IG_SERVER_TLS_CERT_FILE,
//! IG_SERVER_TLS_KEY_FILE, read by Python) and can be replaced while serving (`reload_tls`, on SIGHUP):
//! handshakes after the swap present the new certificate; connections already open keep theirs.

use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// ring's provider: aws-lc-rs, rustls's default, would add a cmake and C build to `make setup`. rustls 0.23.48
/// deprecated ring's provider for want of post-quantum key exchange; X25519 and the NIST curves remain.
#[allow(deprecated)]
fn provider() -> CryptoProvider {
    tokio_rustls::rustls::crypto::ring::default_provider()
}

/// The certificate every handshake presents, swappable.
#[derive(Debug)]
pub(crate) struct Certificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    pub(crate) fn new(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        Ok(Certificate { current: RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)) })
    }

    /// Replaces the certificate; a chain or key that does not load leaves the current one in place.
    pub(crate) fn reload(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
        let next = Arc::new(certified_key(cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The chain (leaf first) and its private key; a key that does not match the leaf is refused.
fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("the TLS certificate file is not PEM: {err}"))?;
    if chain.is_empty() {
        return Err("the TLS certificate file holds no certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| format!("the TLS key file holds no private key: {err}"))?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| format!("the TLS private key is not usable: {err}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|err| format!("the TLS key does not match the certificate: {err}"))?;
    Ok(certified)
}

/// An acceptor speaking HTTP/2 only (ALPN h2, as gRPC requires), TLS 1.2 and 1.3.
pub(crate) fn acceptor(certificate: Arc<Certificate>) -> Result<TlsAcceptor, String> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_what_was_wrong() {
        let err = Certificate::new(b"not a certificate", b"not a key").unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = Certificate::new(cert, b"").unwrap_err();
        assert!(err.contains("no private key"), "{err}");
    }
}
