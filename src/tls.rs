//! Inbound TLS: the certificate and key behind SMTP STARTTLS, the implicit-TLS SMTP listeners
//! and the pixel listener's HTTPS; and the roots outbound TLS trusts (upstream, database, ACME
//! CA).
//!
//! TLS 1.2 and 1.3 only, with rustls' (AEAD-only) cipher suites from the ring provider. The
//! configuration sits behind a lock so `reload` (on SIGHUP) swaps in new certificate files
//! without touching connections in progress; a reload that fails keeps the old certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

/// The current server TLS configuration and where it came from.
pub struct TlsSource {
    /// Certificate chain and private key files; `None` when the configuration manages its own
    /// certificates (ACME).
    files: Option<(PathBuf, PathBuf)>,
    /// Config section, for errors (`smtp.tls`, `http.tls`).
    section: &'static str,
    /// What new handshakes use.
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.files {
            Some((cert, _)) => write!(f, "TlsSource({}: {})", self.section, cert.display()),
            None => write!(f, "TlsSource({}: managed)", self.section),
        }
    }
}

impl TlsSource {
    /// Loads a certificate chain and key; errors name `{section}.cert` or `{section}.key`.
    pub fn load(cert: &Path, key: &Path, section: &'static str) -> Result<TlsSource, String> {
        let sc = build(cert, key, section)?;
        Ok(TlsSource {
            files: Some((cert.to_path_buf(), key.to_path_buf())),
            section,
            current: RwLock::new(Arc::new(sc)),
        })
    }

    /// A configuration whose certificates change by themselves (its resolver's), never
    /// reloaded from files.
    pub fn managed(sc: Arc<ServerConfig>, section: &'static str) -> TlsSource {
        TlsSource {
            files: None,
            section,
            current: RwLock::new(sc),
        }
    }

    /// Whether [`TlsSource::reload`] reads files.
    pub fn from_files(&self) -> bool {
        self.files.is_some()
    }

    /// Re-reads the files; on error the old configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let Some((cert, key)) = &self.files else {
            return Ok(());
        };
        let sc = build(cert, key, self.section)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sc);
        Ok(())
    }

    /// The config section this certificate belongs to.
    pub fn section(&self) -> &'static str {
        self.section
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn build(cert: &Path, key: &Path, section: &str) -> Result<ServerConfig, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{section}.cert: {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{section}.cert: {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{section}.cert: {}: no certificate found",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{section}.key: {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("{section}: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{section}.key: does not match the certificate or is unusable: {e}"))
}

/// The roots an outbound connection trusts: the webpki roots, plus the PEM certificates of
/// `ca_file` (a private CA). Errors name `key` and the file.
pub fn trusted_roots(ca_file: Option<&Path>, key: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let Some(path) = ca_file else {
        return Ok(roots);
    };
    let bad = |e: &dyn std::fmt::Display| format!("{key}: {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificates found"));
    }
    for c in certs {
        roots.add(c).map_err(|e| bad(&e))?;
    }
    Ok(roots)
}
