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
//! Layout: `endpoint.rs` (one endpoint: TLS, connections, one signed POST, backoff),
//! `worker.rs` (the per-endpoint delivery loop and its outbox bookkeeping), this file (clock,
//! signature, metrics, the [`Notifier`] that starts the workers).
//!
//! This module does not own the admin routes or the metrics exposition: it exposes
//! [`Notifier::metrics`] and the store's `pending`/`dead_letters`/`retry_dead_letter`.

mod endpoint;
mod live;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::{WebhookConfig, WebhookSecret};
use crate::shutdown::Shutdown;
use crate::store::{OutboxItem, Store, StoreError};

pub use endpoint::{Endpoint, load_secret};
pub use live::Hooks;

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
    fn endpoint_url(&self, id: u64) -> Option<&str> {
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
            set.spawn(worker::worker(
                Arc::clone(ep),
                self.store.clone(),
                self.clock,
                shutdown.clone(),
            ));
        }
        if !self.endpoints.is_empty() {
            info!(endpoints = self.endpoints.len(), "webhook delivery started");
        }
        // Rows of an endpoint no longer configured wait for it to come back (its id is a hash
        // of its URL); say so rather than keep them silently.
        match self.store.outbox_endpoints() {
            Ok(ids) => {
                for id in ids {
                    if self.endpoint_url(id).is_none() {
                        warn!(
                            endpoint = %format_args!("{id:016x}"),
                            "the webhook outbox holds events for an endpoint that is no longer configured; they wait until its url is configured again"
                        );
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read the webhook outbox"),
        }
        tokio::spawn(async move { while set.join_next().await.is_some() {} })
    }
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
