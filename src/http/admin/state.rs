//! What the admin listener's routes share: the store, the pixel listener's state, metrics,
//! the notifier, shutdown, and the admin token they check.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{self, HeaderMap};
use sha2::{Digest, Sha256};

use crate::http::pixel::PixelState;
use crate::metrics::Metrics;
use crate::notify::Hooks;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// How often a silent follow stream sends a heartbeat line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// What the admin listener needs.
pub struct AdminState {
    /// Messages, opens, totals, live feed.
    pub store: Store,
    /// SHA-256 of the admin token.
    token_hash: [u8; 32],
    /// The registry `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// The pixel listener (its hit counters feed `/metrics`).
    pub pixel: Arc<PixelState>,
    /// Ends follow streams when the relay stops.
    pub shutdown: Shutdown,
    /// Heartbeat interval of follow streams ([`HEARTBEAT`]; shorter in tests).
    pub heartbeat: Duration,
    /// Webhook outbox and dead letters (none when the listener runs without them).
    pub notifier: Option<Arc<Hooks>>,
    /// The SMTP side's budget for messages in flight (none without an SMTP listener).
    pub budget: Option<Arc<crate::budget::Budget>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// State for a listener that accepts `token`.
    pub fn new(
        store: Store,
        token: &[u8],
        metrics: Arc<Metrics>,
        pixel: Arc<PixelState>,
        shutdown: Shutdown,
    ) -> AdminState {
        AdminState {
            store,
            token_hash: Sha256::digest(token).into(),
            metrics,
            pixel,
            shutdown,
            heartbeat: HEARTBEAT,
            notifier: None,
            budget: None,
        }
    }

    /// Whether the request carries the admin token.
    pub(super) fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(v) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let v = v.as_bytes();
        if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let presented: [u8; 32] = Sha256::digest(v[7..].trim_ascii()).into();
        constant_time_eq(&presented, &self.token_hash)
    }
}

/// Compares two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let a: [u8; 32] = Sha256::digest(b"secret").into();
        let b: [u8; 32] = Sha256::digest(b"secreT").into();
        assert!(constant_time_eq(&a, &a));
        assert!(!constant_time_eq(&a, &b));
    }
}
