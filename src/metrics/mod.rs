//! Prometheus metrics: one [`Metrics`] registry that the relay and the pixel listener update
//! as things happen, rendered in the text exposition format by the admin listener's
//! `GET /metrics`.
//!
//! Two kinds of series live here. Event series (sessions, transactions, upstream replies,
//! rewrite decisions, bytes, latencies) are incremented by the code that sees the event.
//! Collected series (pixel hits, opens by device and verdict, store size, index lag, webhook
//! deliveries) are copies of numbers another part already keeps exactly; the admin listener
//! gathers them into a [`Snapshot`] at each scrape instead of their being counted twice.
//!
//! A leaf: it imports nothing of pixelrelay, knows no SMTP, HTTP or storage; callers hand it
//! plain outcomes and snapshots.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `pixelrelay_smtp_sessions_total` | counter | |
//! | `pixelrelay_smtp_transactions_total` | counter | `outcome` = accepted, rejected, tempfail |
//! | `pixelrelay_upstream_replies_total` | counter | `stage` = mail, rcpt, data; `class` = 2xx, 3xx, 4xx, 5xx |
//! | `pixelrelay_rewrite_decisions_total` | counter | `decision` = tracked, skipped; `reason` |
//! | `pixelrelay_relayed_bytes_total` | counter | |
//! | `pixelrelay_relay_duration_seconds` | histogram | |
//! | `pixelrelay_pixel_requests_total` | counter | `result` = valid, invalid, store_error, held (waiting for a record another node has not indexed yet) |
//! | `pixelrelay_click_requests_total` | counter | `result` = redirected, invalid (tracked-link requests on the pixel listener) |
//! | `pixelrelay_pixel_duration_seconds` | histogram | |
//! | `pixelrelay_opens_total` | counter | `device`; `machine` = true, false |
//! | `pixelrelay_open_verdicts_total` | counter | `kind` = person, proxied, machine; `reason` (machine only) |
//! | `pixelrelay_clicks_total` | counter | `machine` = true, false; `reason` (machine only) |
//! | `pixelrelay_store_size_bytes` | gauge | |
//! | `pixelrelay_open_index_lag_bytes` | gauge | journal bytes not yet indexed into sled |
//! | `pixelrelay_open_index_pauses_total` | counter | times the indexer paused for a busy pixel listener |
//! | `pixelrelay_admin_follow_streams` | gauge | |
//! | `pixelrelay_admin_follow_lagged_total` | counter | |
//! | `pixelrelay_smtp_inflight_bytes` | gauge | message bytes reserved from `smtp.max_inflight_bytes` now |
//! | `pixelrelay_smtp_inflight_limit_bytes` | gauge | `smtp.max_inflight_bytes` |
//! | `pixelrelay_smtp_inflight_refused_total` | counter | reservations refused (452 4.3.1, or a rewrite skipped) |
//! | `pixelrelay_milter_messages_total` | counter | `decision` = tracked, skipped, store_error; `reason` (skipped only) |
//! | `pixelrelay_milter_connections` | gauge | milter connections from the MTA open now |
//! | `pixelrelay_milter_connection_errors_total` | counter | |
//! | `pixelrelay_milter_eom_duration_seconds` | histogram | end-of-message to the milter's answer |
//! | `pixelrelay_tls_certificate_not_after_seconds` | gauge | end of the served ACME certificate's validity (0 before the first) |
//! | `pixelrelay_acme_orders_total` | counter | `result` = issued, failed |
//! | `pixelrelay_config_reloads_total` | counter | `result` = applied, failed |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

mod milter;
mod ops;
pub use milter::MilterSeries;
pub use ops::OpsSeries;

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;

/// What a scrape shows from outside this registry, gathered by the admin listener from the
/// pixel counters, the store, ingest and the notifier, and handed to [`Metrics::render`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Pixel hits with a valid token.
    pub pixel_valid: u64,
    /// Pixel hits with a forged, malformed or unknown token.
    pub pixel_invalid: u64,
    /// Valid hits that could not be recorded.
    pub pixel_store_errors: u64,
    /// Valid hits held for a message record not yet in the shared store.
    pub pixel_held: u64,
    /// Tracked-link requests redirected.
    pub click_redirects: u64,
    /// Tracked-link requests refused as invalid.
    pub click_invalid: u64,
    /// Opens per device: (device, opens, of which machine).
    pub opens_by_device: Vec<(String, u64, u64)>,
    /// Opens per kind and machine reason: (kind, reason, opens).
    pub verdicts: Vec<(&'static str, String, u64)>,
    /// Clicks by verdict: (`person` or the machine reason, clicks).
    pub clicks: Vec<(String, u64)>,
    /// Bytes on disk, if known.
    pub store_size: Option<u64>,
    /// Journal bytes not yet indexed.
    pub index_lag: u64,
    /// Times the indexer paused.
    pub index_pauses: u64,
    /// Webhook delivery counts, when webhooks are configured.
    pub webhooks: Option<WebhookCounts>,
    /// Messages in flight: bytes reserved now, the limit, reservations refused so far.
    pub inflight: Option<(u64, u64, u64)>,
}

/// Webhook delivery counts (lifetime) and the rows waiting now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookCounts {
    /// Deliveries answered 2xx.
    pub delivered: u64,
    /// Attempts that failed and will be retried.
    pub failed_attempts: u64,
    /// Events moved to the dead letters.
    pub dead_lettered: u64,
    /// Rows waiting.
    pub pending: u64,
}

/// The registry and every series in it. Shared as `Arc<Metrics>`; all updates are lock-free.
pub struct Metrics {
    /// What `/metrics` renders.
    registry: Registry,
    /// SMTP sessions started.
    smtp_sessions: Counter,
    /// Clients refused by a policy: relay denied, AUTH failed, limits.
    smtp_refusals: Family<Labels, Counter>,
    /// Finished transactions by outcome.
    transactions: Family<Labels, Counter>,
    /// Upstream replies by stage and class.
    upstream_replies: Family<Labels, Counter>,
    /// Tracked or skipped, and why.
    rewrite_decisions: Family<Labels, Counter>,
    /// Message bytes the upstream accepted.
    relayed_bytes: Counter,
    /// From the end of DATA to the reply sent to the client.
    relay_latency: LatencyHistogram,
    /// Pixel requests by result (collected from [`PixelCounters`]).
    pixel_requests: Family<Labels, Counter>,
    click_requests: Family<Labels, Counter>,
    /// Opens by device and machine flag (collected from the store's counters).
    opens: Family<Labels, Counter>,
    /// Opens by kind, and machine opens by reason (collected from the store's counters).
    verdicts: Family<Labels, Counter>,
    /// Clicks by machine flag and reason (collected from the store's counters).
    clicks: Family<Labels, Counter>,
    /// sled's size on disk (collected).
    store_size: Gauge,
    /// Open journal bytes not yet indexed (collected).
    index_lag: Gauge,
    /// Times the open indexer paused for the pixel listener (collected).
    index_pauses: Counter,
    /// Follow streams open now.
    follow_streams: Gauge,
    /// Webhook deliveries, failed attempts and dead letters (collected from the notifier).
    webhooks: Family<Labels, Counter>,
    /// Webhook events waiting or in flight.
    webhook_pending: Gauge,
    /// Times a follower fell behind the live feed and re-read the store.
    follow_lagged: Counter,
    /// Bytes of messages in flight reserved now (collected).
    inflight_bytes: Gauge,
    /// `smtp.max_inflight_bytes` (collected).
    inflight_limit: Gauge,
    /// Reservations refused: 452 4.3.1 given, or a rewrite skipped (collected).
    inflight_refused: Counter,
    /// The milter front end's series.
    pub milter: MilterSeries,
    /// The ACME certificate and config reloads.
    pub ops: OpsSeries,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Upper bound of the first latency bucket: 0.5 ms; each next one doubles, to ~65 s.
const FIRST_BUCKET_NS: u64 = 500_000;
/// Latency buckets with a finite bound; one more (`+Inf`) follows.
const BUCKETS: usize = 18;
/// Shards of a [`LatencyHistogram`]; threads beyond this many share one.
const SHARDS: usize = 16;

/// A latency histogram (buckets 0.5 ms, 1 ms, … ~65 s, `+Inf`) that many threads observe
/// without a lock and without writing a cache line another thread writes: each thread adds to
/// a shard of its own, and a scrape sums the shards. prometheus-client's `Histogram` is one
/// mutex every observer takes; on the pixel listener that was a lock both listener threads took
/// on every request.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Arc<[Shard; SHARDS]>);

/// One thread's counts, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Sum of the observed durations.
    sum_ns: AtomicU64,
    /// Observations per bucket (not cumulative; the last is `+Inf`).
    buckets: [AtomicU64; BUCKETS + 1],
}

/// Which shard this thread adds to.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// The bucket of a duration: the first whose bound is at least `ns`.
fn bucket_of(ns: u64) -> usize {
    let q = ns.saturating_sub(1) / FIRST_BUCKET_NS;
    ((u64::BITS - q.leading_zeros()) as usize).min(BUCKETS)
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Arc::new(Default::default()))
    }
}

impl LatencyHistogram {
    /// Counts one duration.
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.0[shard_index()];
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
        shard.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// Sum in seconds, count, and `(upper bound, observations)` per bucket over all shards.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut sum_ns = 0u64;
        let mut counts = [0u64; BUCKETS + 1];
        for shard in self.0.iter() {
            sum_ns = sum_ns.wrapping_add(shard.sum_ns.load(Ordering::Relaxed));
            for (c, b) in counts.iter_mut().zip(&shard.buckets) {
                *c += b.load(Ordering::Relaxed);
            }
        }
        let buckets: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let bound = match i {
                    BUCKETS => f64::INFINITY,
                    i => (FIRST_BUCKET_NS << i) as f64 / 1e9,
                };
                (bound, c)
            })
            .collect();
        let count = counts.iter().sum();
        (sum_ns as f64 / 1e9, count, buckets)
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Metrics {
    /// A registry with every series registered. `pixel_latency` is the pixel listener's own
    /// histogram (it observes requests; this registry only renders it).
    pub fn new(pixel_latency: LatencyHistogram) -> Metrics {
        let mut registry = Registry::with_prefix("pixelrelay");
        let m = Metrics {
            registry: Registry::default(),
            smtp_sessions: Counter::default(),
            smtp_refusals: Family::default(),
            transactions: Family::default(),
            upstream_replies: Family::default(),
            rewrite_decisions: Family::default(),
            relayed_bytes: Counter::default(),
            relay_latency: LatencyHistogram::default(),
            pixel_requests: Family::default(),
            click_requests: Family::default(),
            opens: Family::default(),
            verdicts: Family::default(),
            clicks: Family::default(),
            store_size: Gauge::default(),
            index_lag: Gauge::default(),
            index_pauses: Counter::default(),
            follow_streams: Gauge::default(),
            webhooks: Family::default(),
            webhook_pending: Gauge::default(),
            follow_lagged: Counter::default(),
            inflight_bytes: Gauge::default(),
            inflight_limit: Gauge::default(),
            inflight_refused: Counter::default(),
            milter: MilterSeries::default(),
            ops: OpsSeries::default(),
        };
        m.register_smtp(&mut registry);
        m.milter.register(&mut registry);
        m.ops.register(&mut registry);
        m.register_pixel(&mut registry, pixel_latency);
        m.register_store(&mut registry);
        Metrics { registry, ..m }
    }

    /// The SMTP side: sessions, refusals, transactions, upstream replies, rewrite.
    fn register_smtp(&self, registry: &mut Registry) {
        registry.register(
            "smtp_sessions",
            "SMTP sessions accepted",
            self.smtp_sessions.clone(),
        );
        registry.register(
            "smtp_refusals",
            "Clients refused by policy, by reason (relay_denied, auth_failed, too_many_errors, connection_limit, ip_connection_limit, insufficient_storage)",
            self.smtp_refusals.clone(),
        );
        registry.register(
            "smtp_transactions",
            "SMTP transactions finished, by outcome (accepted, rejected, tempfail)",
            self.transactions.clone(),
        );
        registry.register(
            "upstream_replies",
            "Replies from the upstream by SMTP stage and class",
            self.upstream_replies.clone(),
        );
        registry.register(
            "rewrite_decisions",
            "Tracking decisions: tracked, or skipped with the reason",
            self.rewrite_decisions.clone(),
        );
        registry.register_with_unit(
            "relayed",
            "Message bytes the upstream accepted",
            Unit::Bytes,
            self.relayed_bytes.clone(),
        );
        registry.register_with_unit(
            "relay_duration",
            "Time from the end of DATA to the final reply",
            Unit::Seconds,
            self.relay_latency.clone(),
        );
        registry.register_with_unit(
            "smtp_inflight",
            "Message bytes held in memory now, reserved from smtp.max_inflight_bytes",
            Unit::Bytes,
            self.inflight_bytes.clone(),
        );
        registry.register_with_unit(
            "smtp_inflight_limit",
            "smtp.max_inflight_bytes",
            Unit::Bytes,
            self.inflight_limit.clone(),
        );
        registry.register(
            "smtp_inflight_refused",
            "Reservations the in-flight budget refused: 452 4.3.1 given, or a rewrite skipped",
            self.inflight_refused.clone(),
        );
    }

    /// The pixel side: requests, latency, opens and their verdicts.
    fn register_pixel(&self, registry: &mut Registry, pixel_latency: LatencyHistogram) {
        registry.register(
            "pixel_requests",
            "Pixel requests by result (valid: an open was recorded)",
            self.pixel_requests.clone(),
        );
        registry.register(
            "click_requests",
            "Tracked-link requests by result (redirected: the token was authentic)",
            self.click_requests.clone(),
        );
        registry.register_with_unit(
            "pixel_duration",
            "Time to answer a request on the pixel listener",
            Unit::Seconds,
            pixel_latency,
        );
        registry.register(
            "opens",
            "Recorded opens by device and machine flag (lifetime)",
            self.opens.clone(),
        );
        registry.register(
            "open_verdicts",
            "Recorded opens by kind (person, proxied, machine) and machine reason (lifetime)",
            self.verdicts.clone(),
        );
        registry.register(
            "clicks",
            "Recorded clicks on tracked links by machine flag and reason (lifetime)",
            self.clicks.clone(),
        );
    }

    /// The store, the open index, followers and webhooks.
    fn register_store(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "store_size",
            "Size of the sled store on disk",
            Unit::Bytes,
            self.store_size.clone(),
        );
        registry.register_with_unit(
            "open_index_lag",
            "Pixel hits journaled but not yet recorded in the store",
            Unit::Bytes,
            self.index_lag.clone(),
        );
        registry.register(
            "open_index_pauses",
            "Times the open indexer paused to leave contended CPUs to the pixel listener",
            self.index_pauses.clone(),
        );
        registry.register(
            "admin_follow_streams",
            "Follow streams (tail -f, dashboards) connected now",
            self.follow_streams.clone(),
        );
        registry.register(
            "webhook_events",
            "Webhook events by result: delivered, failed_attempt, dead_lettered",
            self.webhooks.clone(),
        );
        registry.register(
            "webhook_pending",
            "Webhook events waiting in the outbox or in flight",
            self.webhook_pending.clone(),
        );
        registry.register(
            "admin_follow_lagged",
            "Times a follower fell behind the live feed and caught up from the store",
            self.follow_lagged.clone(),
        );
    }

    /// A session was accepted.
    pub fn smtp_session(&self) {
        self.smtp_sessions.inc();
    }

    /// A client was refused by policy for `reason`.
    pub fn smtp_refused(&self, reason: &'static str) {
        self.smtp_refusals
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// The upstream answered `code` at `stage` (`mail`, `rcpt`, `data`).
    pub fn upstream_reply(&self, stage: &'static str, code: u16) {
        let class = format!("{}xx", code / 100);
        self.upstream_replies
            .get_or_create(&vec![("stage", stage.to_string()), ("class", class)])
            .inc();
    }

    /// A transaction finished: the tracking decision (`tracked`, else the skip reason), the
    /// reply code given to the client, the bytes forwarded and the time it took.
    pub fn transaction(&self, tracking: &str, code: u16, bytes: usize, took: Duration) {
        let outcome = match code {
            200..=299 => "accepted",
            400..=499 => "tempfail",
            _ => "rejected",
        };
        self.transactions
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        let labels = match tracking {
            "tracked" => vec![
                ("decision", "tracked".to_string()),
                ("reason", String::new()),
            ],
            r => vec![
                ("decision", "skipped".to_string()),
                ("reason", r.to_string()),
            ],
        };
        self.rewrite_decisions.get_or_create(&labels).inc();
        if outcome == "accepted" {
            self.relayed_bytes.inc_by(bytes as u64);
        }
        self.relay_latency.observe(took);
    }

    /// A follow stream opened (`+1`) or closed (`-1`).
    pub fn follow_streams(&self, delta: i64) {
        self.follow_streams.inc_by(delta);
    }

    /// A follower lagged and re-read the store.
    pub fn follow_lagged(&self) {
        self.follow_lagged.inc();
    }

    /// The exposition text, after copying in the series collected from elsewhere.
    pub fn render(&self, snap: &Snapshot) -> String {
        let counter = |family: &Family<Labels, Counter>, labels: Labels, n: u64| {
            family
                .get_or_create(&labels)
                .inner()
                .store(n, Ordering::Relaxed)
        };
        for (result, n) in [
            ("valid", snap.pixel_valid),
            ("invalid", snap.pixel_invalid),
            ("store_error", snap.pixel_store_errors),
            ("held", snap.pixel_held),
        ] {
            counter(
                &self.pixel_requests,
                vec![("result", result.to_string())],
                n,
            );
        }
        for (result, n) in [
            ("redirected", snap.click_redirects),
            ("invalid", snap.click_invalid),
        ] {
            counter(
                &self.click_requests,
                vec![("result", result.to_string())],
                n,
            );
        }
        for (device, opens, machine) in &snap.opens_by_device {
            for (flag, n) in [("false", opens - machine), ("true", *machine)] {
                let labels = vec![("device", device.clone()), ("machine", flag.to_string())];
                counter(&self.opens, labels, n);
            }
        }
        for (kind, reason, n) in &snap.verdicts {
            let labels = vec![("kind", kind.to_string()), ("reason", reason.clone())];
            counter(&self.verdicts, labels, *n);
        }
        for (verdict, n) in &snap.clicks {
            let labels = if verdict == "person" {
                vec![("machine", "false".to_string())]
            } else {
                vec![("machine", "true".to_string()), ("reason", verdict.clone())]
            };
            counter(&self.clicks, labels, *n);
        }
        if let Some(size) = snap.store_size {
            self.store_size.set(i64::try_from(size).unwrap_or(i64::MAX));
        }
        self.index_lag
            .set(i64::try_from(snap.index_lag).unwrap_or(i64::MAX));
        self.index_pauses
            .inner()
            .store(snap.index_pauses, Ordering::Relaxed);
        if let Some(w) = &snap.webhooks {
            for (result, n) in [
                ("delivered", w.delivered),
                ("failed_attempt", w.failed_attempts),
                ("dead_lettered", w.dead_lettered),
            ] {
                counter(&self.webhooks, vec![("result", result.to_string())], n);
            }
            self.webhook_pending
                .set(i64::try_from(w.pending).unwrap_or(i64::MAX));
        }
        if let Some((used, limit, refused)) = snap.inflight {
            self.inflight_bytes
                .set(i64::try_from(used).unwrap_or(i64::MAX));
            self.inflight_limit
                .set(i64::try_from(limit).unwrap_or(i64::MAX));
            self.inflight_refused
                .inner()
                .store(refused, Ordering::Relaxed);
        }
        let mut out = String::new();
        // Writing into a String cannot fail; an error would only mean a bad metric name.
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests;
