//! One webhook endpoint: its parsed URL, TLS client configuration (rustls, ring, webpki
//! roots plus optional extra CAs), a small pool of keep-alive HTTP/1 connections, one signed
//! POST bounded by `timeout`, and the retry delay. Knows nothing of the outbox.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tracing::debug;

use super::{Metrics, endpoint_id, sign};
use crate::config::{WebhookConfig, WebhookSecret};
use crate::secret;
use crate::store::Subscription;

/// One endpoint, ready to deliver to.
pub struct Endpoint {
    /// Its configuration.
    pub cfg: WebhookConfig,
    /// The signing key.
    secret: Vec<u8>,
    /// See [`endpoint_id`].
    pub id: u64,
    /// Scheme, host, port and path, parsed once.
    target: Target,
    /// TLS client configuration for https URLs.
    tls: Option<tokio_rustls::TlsConnector>,
    /// Counters.
    pub metrics: Metrics,
    /// Idle keep-alive connections.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Endpoint")
            .field("url", &self.cfg.url)
            .field("id", &format_args!("{:016x}", self.id))
            .finish()
    }
}

/// Where requests go.
#[derive(Debug, Clone)]
struct Target {
    /// Host for DNS and SNI (brackets stripped).
    host: String,
    /// Port.
    port: u16,
    /// `Host:` header value.
    authority: String,
    /// Path and query.
    path: String,
    /// https.
    https: bool,
}

/// Reads an endpoint's secret from its file (0600) or environment variable.
pub fn load_secret(cfg: &WebhookConfig) -> Result<Vec<u8>, String> {
    match &cfg.secret {
        WebhookSecret::File(p) => secret::read(p).map_err(|e| e.to_string()),
        WebhookSecret::Env(var) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().as_bytes().to_vec()),
            _ => Err(format!("${var} is not set")),
        },
    }
}

impl Endpoint {
    /// Builds an endpoint with a known secret. Errors name what is wrong.
    pub fn new(cfg: WebhookConfig, secret: Vec<u8>) -> Result<Endpoint, String> {
        Self::with_roots(cfg, secret, Vec::new())
    }

    /// [`Endpoint::new`] trusting extra CA certificates (DER) besides the webpki roots.
    pub fn with_roots(
        cfg: WebhookConfig,
        secret: Vec<u8>,
        extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    ) -> Result<Endpoint, String> {
        crate::config::check_webhook_url(&cfg.url)?;
        let uri: hyper::Uri = cfg.url.parse().map_err(|e| format!("{e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or("no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string());
        let tls = if https {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            for c in extra_roots {
                roots.add(c).map_err(|e| format!("extra root: {e}"))?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(tls)))
        } else {
            None
        };
        Ok(Endpoint {
            id: endpoint_id(&cfg.url),
            cfg,
            secret,
            target: Target {
                host,
                port,
                authority,
                path,
                https,
            },
            tls,
            metrics: Metrics::default(),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The store subscription of this endpoint.
    pub fn subscription(&self) -> Subscription {
        Subscription {
            endpoint: self.id,
            open: self.cfg.open,
            message: self.cfg.message,
            click: self.cfg.click,
        }
    }

    /// One attempt: POSTs `body` signed at `timestamp`; `Ok(())` on 2xx, else why not.
    /// Bounded by `timeout` as a whole.
    pub async fn post(&self, body: &str, timestamp: u64) -> Result<(), String> {
        match tokio::time::timeout(self.cfg.timeout, self.post_inner(body, timestamp)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timeout after {} s",
                self.cfg.timeout.as_secs_f64()
            )),
        }
    }

    async fn post_inner(&self, body: &str, timestamp: u64) -> Result<(), String> {
        let mut sender = self.connection().await?;
        let t = &self.target;
        let mut req = hyper::Request::post(t.path.as_str())
            .header(hyper::header::HOST, t.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "pixelrelay-webhook/1")
            .header("X-Pixelrelay-Timestamp", timestamp.to_string())
            .header(
                "X-Pixelrelay-Signature",
                sign(&self.secret, timestamp, body.as_bytes()),
            );
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        // Read (a bounded amount of) the body so the connection can carry the next request.
        let drained = Limited::new(resp.into_body(), 64 * 1024).collect().await;
        if drained.is_ok() && !sender.is_closed() {
            self.idle.lock().await.push(sender);
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }

    /// An idle keep-alive connection, or a new one.
    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        while let Some(mut s) = self.idle.lock().await.pop() {
            if !s.is_closed() && s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", t.host, t.port))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(t.host.clone())
                    .map_err(|e| format!("TLS name {}: {e}", t.host))?;
                Box::new(
                    tls.connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS handshake: {e}"))?,
                )
            }
            None => Box::new(tcp),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes.
            let _ = conn.await;
        });
        debug!(https = t.https, host = %t.host, "webhook connection opened");
        Ok(sender)
    }

    /// The delay before attempt `attempts + 1`: `retry_min · 2^(attempts-1)`, at most
    /// `retry_max`, then a random factor in [0.5, 1] (jitter spreads retries of a burst).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let min = self.cfg.retry_min.as_millis().max(1) as u64;
        let max = self.cfg.retry_max.as_millis().max(1) as u64;
        let exp = attempts.saturating_sub(1).min(40);
        let d = min.saturating_mul(1u64 << exp).min(max);
        let jittered = rand::random_range(d / 2..=d);
        Duration::from_millis(jittered.max(1))
    }
}

/// A byte stream hyper can drive: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
