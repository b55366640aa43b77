//! Operations series: the pixel listener's certificate from the ACME CA (when it expires, and
//! orders by result) and config reloads by result, for alerts on what would otherwise fail
//! quietly (a certificate that stops renewing, a reload that did not apply).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::Labels;

/// Updated by the certificate manager and the reload as things happen.
#[derive(Debug, Default)]
pub struct OpsSeries {
    cert_not_after: Gauge,
    acme_orders: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
}

impl OpsSeries {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "tls_certificate_not_after",
            "End of validity of the pixel listener's ACME certificate being served (seconds since the epoch; 0 before the first)",
            Unit::Seconds,
            self.cert_not_after.clone(),
        );
        registry.register(
            "acme_orders",
            "Certificate orders to the ACME CA by result: issued or failed",
            self.acme_orders.clone(),
        );
        registry.register(
            "config_reloads",
            "SIGHUP config reloads by result: applied or failed (the running config kept)",
            self.reloads.clone(),
        );
    }

    /// A certificate valid until `not_after` (seconds since the epoch) is being served.
    pub fn certificate(&self, not_after: i64) {
        self.cert_not_after.set(not_after);
    }

    /// An order ended: `issued` or not.
    pub fn acme_order(&self, issued: bool) {
        let result = if issued { "issued" } else { "failed" };
        self.acme_orders
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// A reload ended: `applied` or not.
    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "failed" };
        self.reloads
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }
}
