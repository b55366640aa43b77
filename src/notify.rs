//! Webhook delivery: one worker per `[[webhooks]]` endpoint POSTs the rows of the store's
//! outbox (written in the same transaction as the open or message they describe), signs each
//! request, retries failures with exponential backoff and jitter until `max_age`, then moves
//! the row to the dead letters.
//!
//! # What an endpoint receives
//!
//! `POST <url>` with `Content-Type: application/json`, the body as stored (the SPEC's open
//! event plus `type` and `event_id`, or the `message` event), and
//!
//! ```text
//! X-Pixelrelay-Timestamp: <unix seconds>
//! X-Pixelrelay-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//! ```
//!
//! A 2xx answer within `timeout` deletes the row; anything else is a failed attempt.
//! Delivery is at least once: a crash between the 2xx and the delete sends the event again,
//! with the same `event_id`.
//!
//! # Isolation
//!
//! Each endpoint has its own task, its own connections and at most `concurrency` requests in
//! flight, so a slow endpoint delays nobody else. The pixel path only writes outbox rows inside
//! its own transaction and never waits for a worker. Workers read their rows from sled and
//! keep only (due time, sequence) pairs in memory.
//!
//! # Time
//!
//! Retry times are wall-clock milliseconds (they are stored and survive restarts), read
//! through [`Clock`]. In service that is the system clock (the signature's timestamp must be
//! what a receiver's clock says, even after a suspend or an NTP step); tests use
//! [`Clock::tokio`], which advances with tokio's clock, so with `tokio::time::pause()` a day
//! of retries runs in milliseconds.
//!
//! This module does not own the admin routes or the metrics exposition: it exposes
//! [`Notifier::metrics`] and the store's `pending`/`dead_letters`/`retry_dead_letter`.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::{WebhookConfig, WebhookSecret};
use crate::secret;
use crate::shutdown::Shutdown;
use crate::store::{OutboxItem, Store, StoreError, Subscription};

/// Where the workers read the time, in ms since the epoch.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system clock.
    Wall,
    /// The wall time when made, advanced by tokio's clock since (paused in tests).
    Tokio {
        /// Wall time at `base`.
        base_ms: u64,
        /// tokio's instant when the clock was made.
        base: tokio::time::Instant,
    },
}

impl Clock {
    /// The system clock.
    pub fn new() -> Clock {
        Clock::Wall
    }

    /// Starts at the wall time now, then follows tokio's clock.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            base_ms: crate::clock::now_ms(),
            base: tokio::time::Instant::now(),
        }
    }

    /// Now, in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Wall => crate::clock::now_ms(),
            Clock::Tokio { base_ms, base } => base_ms + base.elapsed().as_millis() as u64,
        }
    }

    /// The tokio instant of wall time `ms` (now if it is past).
    fn instant(&self, ms: u64) -> tokio::time::Instant {
        let now = self.now_ms();
        tokio::time::Instant::now() + Duration::from_millis(ms.saturating_sub(now))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Delivery counters of one endpoint (or their sum).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events answered with 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (non-2xx, timeout, connection error).
    pub failed_attempts: AtomicU64,
    /// Events moved to the dead letters.
    pub dead_lettered: AtomicU64,
    /// Gauge: events waiting or in flight for this endpoint.
    pub pending: AtomicU64,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MetricsSnapshot {
    /// See [`Metrics`].
    pub delivered: u64,
    /// See [`Metrics`].
    pub failed_attempts: u64,
    /// See [`Metrics`].
    pub dead_lettered: u64,
    /// See [`Metrics`].
    pub pending: u64,
}

impl Metrics {
    /// Reads the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
        }
    }
}

/// The stable id of an endpoint: the first 8 bytes of SHA-256 of its URL.
pub fn endpoint_id(url: &str) -> u64 {
    let d = Sha256::digest(url.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// `sha256=<hex>` over `timestamp + "." + body`: the `X-Pixelrelay-Signature` value.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut m = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    let tag = m.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

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

/// All endpoints of a relay.
#[derive(Debug, Clone)]
pub struct Notifier {
    /// The endpoints, in config order.
    endpoints: Vec<Arc<Endpoint>>,
    /// The store with the outbox.
    store: Store,
    /// Shared clock.
    clock: Clock,
}

impl Notifier {
    /// Loads every endpoint's secret and tells the store whom to write outbox rows for.
    pub fn from_config(cfgs: &[WebhookConfig], store: Store) -> Result<Notifier, String> {
        let mut endpoints = Vec::new();
        for (i, cfg) in cfgs.iter().enumerate() {
            let key = |k: &str| match cfg.secret {
                WebhookSecret::File(_) => format!("webhooks[{i}].secret_file: {k}"),
                WebhookSecret::Env(_) => format!("webhooks[{i}].secret_env: {k}"),
            };
            let secret = load_secret(cfg).map_err(|e| key(&e))?;
            let ep = Endpoint::new(cfg.clone(), secret)
                .map_err(|e| format!("webhooks[{i}].url: {e}"))?;
            endpoints.push(Arc::new(ep));
        }
        Ok(Notifier::new(endpoints, store))
    }

    /// From built endpoints (tests use short backoffs and extra roots this way).
    pub fn new(endpoints: Vec<Arc<Endpoint>>, store: Store) -> Notifier {
        Self::with_clock(endpoints, store, Clock::new())
    }

    /// [`Notifier::new`] reading the time from `clock`.
    pub fn with_clock(endpoints: Vec<Arc<Endpoint>>, store: Store, clock: Clock) -> Notifier {
        store.set_subscriptions(endpoints.iter().map(|e| e.subscription()).collect());
        Notifier {
            endpoints,
            store,
            clock,
        }
    }

    /// Deliveries waiting (or in flight), oldest first, after `cursor`: for the admin API.
    pub fn pending(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.store.pending(cursor, limit)
    }

    /// Dead letters, oldest first, after `cursor`: for the admin API.
    pub fn dead_letters(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.store.dead_letters(cursor, limit)
    }

    /// Puts dead letter `id` back into the outbox, due now with a fresh `max_age`; its worker
    /// picks it up at once. `Ok(false)` if there is no such dead letter.
    pub fn retry_dead_letter(&self, id: &str) -> Result<bool, StoreError> {
        self.store.retry_dead_letter(id, self.clock.now_ms())
    }

    /// The URL of the endpoint with stable id `id` (as in [`OutboxItem::endpoint`]).
    pub fn endpoint_url(&self, id: u64) -> Option<&str> {
        self.endpoints
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.cfg.url.as_str())
    }

    /// The endpoints (for metrics per endpoint).
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The counters summed over every endpoint.
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut m = MetricsSnapshot::default();
        for e in &self.endpoints {
            let s = e.metrics.snapshot();
            m.delivered += s.delivered;
            m.failed_attempts += s.failed_attempts;
            m.dead_lettered += s.dead_lettered;
            m.pending += s.pending;
        }
        m
    }

    /// Starts one worker per endpoint; they stop when `shutdown` fires (requests in flight are
    /// abandoned and their rows stay in the outbox). Await the handle to know they are gone.
    pub fn start(&self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let mut set = JoinSet::new();
        for ep in &self.endpoints {
            set.spawn(worker(
                Arc::clone(ep),
                self.store.clone(),
                self.clock,
                shutdown.clone(),
            ));
        }
        if !self.endpoints.is_empty() {
            info!(endpoints = self.endpoints.len(), "webhook delivery started");
        }
        tokio::spawn(async move { while set.join_next().await.is_some() {} })
    }
}

/// How one attempt ended.
enum Outcome {
    /// Delivered, dead-lettered or gone: forget it.
    Done,
    /// Failed: due again at this wall time.
    Retry(u64),
}

/// The worker of one endpoint: keeps (due, seq) of its rows, runs due ones with at most
/// `concurrency` in flight, and learns about new rows from the store's watch.
async fn worker(ep: Arc<Endpoint>, store: Store, clock: Clock, mut shutdown: Shutdown) {
    let mut watch = store.watch_outbox();
    let mut seen_retries = watch.borrow_and_update().retries;
    let mut queue: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut known: HashSet<u64> = HashSet::new();
    let mut last_seen = 0u64;
    scan(&ep, &store, 0, &mut queue, &mut known, &mut last_seen);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, Outcome)>();
    let mut inflight: JoinSet<()> = JoinSet::new();
    let mut running = 0usize;
    let limit = ep.cfg.concurrency.max(1);
    loop {
        let now = clock.now_ms();
        while running < limit {
            let Some(&(due, seq)) = queue.first() else {
                break;
            };
            if due > now {
                break;
            }
            queue.pop_first();
            running += 1;
            let (ep, store, tx) = (Arc::clone(&ep), store.clone(), done_tx.clone());
            inflight.spawn(async move {
                let out = attempt(&ep, &store, clock, seq).await;
                let _ = tx.send((seq, out));
            });
        }
        ep.metrics
            .pending
            .store(known.len() as u64, Ordering::Relaxed);
        let next_due = (running < limit)
            .then(|| queue.first().map(|&(due, _)| clock.instant(due)))
            .flatten();
        tokio::select! {
            () = shutdown.wait() => break,
            Some((seq, out)) = done_rx.recv() => {
                running -= 1;
                match out {
                    Outcome::Done => {
                        known.remove(&seq);
                    }
                    Outcome::Retry(at) => {
                        queue.insert((at, seq));
                    }
                }
            }
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            changed = watch.changed() => {
                if changed.is_err() {
                    break;
                }
                let v = *watch.borrow_and_update();
                if v.retries != seen_retries {
                    seen_retries = v.retries;
                    scan(&ep, &store, 0, &mut queue, &mut known, &mut last_seen);
                } else if v.last_seq > last_seen {
                    let after = last_seen;
                    scan(&ep, &store, after, &mut queue, &mut known, &mut last_seen);
                }
            }
            () = sleep_until(next_due) => {}
        }
    }
    inflight.abort_all();
    // Wait for the aborted attempts to be dropped: they hold the store, which a restart in
    // the same process must be able to reopen.
    while inflight.join_next().await.is_some() {}
    debug!(url = %ep.cfg.url, "webhook worker stopped");
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Adds the endpoint's rows after `after` that it does not know yet.
fn scan(
    ep: &Endpoint,
    store: &Store,
    after: u64,
    queue: &mut BTreeSet<(u64, u64)>,
    known: &mut HashSet<u64>,
    last_seen: &mut u64,
) {
    match store.outbox_scan(ep.id, after) {
        Ok(rows) => {
            for (seq, due) in rows {
                *last_seen = (*last_seen).max(seq);
                if known.insert(seq) {
                    queue.insert((due, seq));
                }
            }
        }
        Err(e) => warn!(url = %ep.cfg.url, error = %e, "cannot read the webhook outbox"),
    }
}

/// One delivery attempt of row `seq`, and its bookkeeping in the store.
async fn attempt(ep: &Endpoint, store: &Store, clock: Clock, seq: u64) -> Outcome {
    let row = match store.outbox_get(ep.id, seq) {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Done,
        Err(e) => {
            warn!(url = %ep.cfg.url, error = %e, "cannot read a webhook outbox row");
            return Outcome::Retry(clock.now_ms() + ep.backoff(1).as_millis() as u64);
        }
    };
    let ts = clock.now_ms() / 1000;
    let result = ep.post(&row.body, ts).await;
    let now = clock.now_ms();
    let attempts = row.attempts.saturating_add(1);
    let err = match result {
        Ok(()) => {
            ep.metrics.delivered.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = store.outbox_delivered(ep.id, seq) {
                // It will be sent again: at least once.
                warn!(url = %ep.cfg.url, error = %e, "cannot remove a delivered webhook row");
            }
            return Outcome::Done;
        }
        Err(e) => e,
    };
    ep.metrics.failed_attempts.fetch_add(1, Ordering::Relaxed);
    let deadline = row
        .created_ms
        .saturating_add(ep.cfg.max_age.as_millis() as u64);
    if now >= deadline {
        warn!(url = %ep.cfg.url, event_id = %row.event_id, attempts, error = %err, "webhook event dead-lettered after max_age");
        match store.outbox_kill(ep.id, seq, attempts, &err) {
            Ok(_) => {
                ep.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                return Outcome::Done;
            }
            Err(e) => {
                warn!(url = %ep.cfg.url, error = %e, "cannot move a webhook row to the dead letters");
                return Outcome::Retry(now + ep.backoff(attempts).as_millis() as u64);
            }
        }
    }
    // The last attempt falls on the deadline, so an event gets its full max_age.
    let next = (now + ep.backoff(attempts).as_millis() as u64).min(deadline);
    debug!(url = %ep.cfg.url, event_id = %row.event_id, attempts, error = %err, "webhook attempt failed");
    if let Err(e) = store.outbox_reschedule(ep.id, seq, attempts, next, &err) {
        warn!(url = %ep.cfg.url, error = %e, "cannot record a failed webhook attempt");
    }
    Outcome::Retry(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"k",b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"k", 1_700_000_000, b"{}"),
            "sha256=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut cfg = WebhookConfig::new("http://127.0.0.1:1/", WebhookSecret::Env("X".into()));
        cfg.retry_min = Duration::from_secs(1);
        cfg.retry_max = Duration::from_secs(600);
        let ep = Endpoint::new(cfg, b"k".to_vec()).unwrap();
        for (attempts, full) in [
            (1u32, 1000u64),
            (2, 2000),
            (3, 4000),
            (10, 512_000),
            (11, 600_000),
            (60, 600_000),
        ] {
            for _ in 0..20 {
                let d = ep.backoff(attempts).as_millis() as u64;
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempts}: {d} not in [{}, {full}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn endpoint_ids_are_stable() {
        assert_eq!(endpoint_id("http://a/"), endpoint_id("http://a/"));
        assert_ne!(endpoint_id("http://a/"), endpoint_id("http://b/"));
    }
}
