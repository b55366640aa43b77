//! Inbound TLS: the certificate and key behind STARTTLS and the implicit-TLS listeners.
//!
//! TLS 1.2 and 1.3 only, with rustls' (AEAD-only) cipher suites from the ring provider. The
//! configuration sits behind a lock so `reload` (on SIGHUP) swaps in new certificate files
//! without touching sessions in progress; a reload that fails keeps the old certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

use crate::config::SmtpTlsConfig;

/// The current server TLS configuration and where it came from.
pub struct TlsSource {
    /// Certificate chain file.
    cert: PathBuf,
    /// Private key file.
    key: PathBuf,
    /// What new handshakes use.
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsSource {
    /// Loads `[smtp.tls]`'s files; errors name the key.
    pub fn load(cfg: &SmtpTlsConfig) -> Result<TlsSource, String> {
        let sc = build(&cfg.cert, &cfg.key)?;
        Ok(TlsSource {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            current: RwLock::new(Arc::new(sc)),
        })
    }

    /// Re-reads the files; on error the old configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let sc = build(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sc);
        Ok(())
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn build(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("smtp.tls.cert: {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("smtp.tls.cert: {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "smtp.tls.cert: {}: no certificate found",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("smtp.tls.key: {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("smtp.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("smtp.tls.key: does not match the certificate or is unusable: {e}"))
}
