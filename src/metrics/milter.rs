//! The milter front end's series: messages by decision, connections open, conversations that
//! failed, and the time from end-of-message to the answer.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::{Labels, LatencyHistogram};

/// Updated by the milter as things happen; registered with the rest.
#[derive(Debug, Default)]
pub struct MilterSeries {
    messages: Family<Labels, Counter>,
    connections: Gauge,
    errors: Counter,
    latency: LatencyHistogram,
}

impl MilterSeries {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "milter_messages",
            "Messages the milter answered at end-of-message: tracked, skipped with the reason, or store_error (accepted unchanged)",
            self.messages.clone(),
        );
        registry.register(
            "milter_connections",
            "Milter connections from the MTA open now",
            self.connections.clone(),
        );
        registry.register(
            "milter_connection_errors",
            "Milter conversations that ended in an I/O or protocol error",
            self.errors.clone(),
        );
        registry.register_with_unit(
            "milter_eom_duration",
            "Time from the MTA's end-of-message to the milter's answer (decision, rewrite, record)",
            Unit::Seconds,
            self.latency.clone(),
        );
    }

    /// A message was answered: `decision` is `tracked`, `store_error` or a skip reason; `took`
    /// from end-of-message to the answer.
    pub fn message(&self, decision: &str, took: Duration) {
        let labels = match decision {
            "tracked" | "store_error" => vec![
                ("decision", decision.to_string()),
                ("reason", String::new()),
            ],
            r => vec![
                ("decision", "skipped".to_string()),
                ("reason", r.to_string()),
            ],
        };
        self.messages.get_or_create(&labels).inc();
        self.latency.observe(took);
    }

    /// A connection from the MTA opened (`+1`) or closed (`-1`).
    pub fn connections(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// A conversation ended in an error.
    pub fn error(&self) {
        self.errors.inc();
    }
}
