//! What every backend computes the same way: open and event ids, the counters an open or a
//! final reply moves, the totals derived from them, and the webhook bodies. No engine here.

use serde::Serialize;

use super::types::{Counters, Delivery, MessageRecord, Stats, StoreError};
use crate::track::OpenEvent;

/// Bits of an open id or event sequence below its ms timestamp.
pub(crate) const ID_SHIFT: u32 = 20;

/// The next id: strictly after `last`, and at least `at_ms` in its high bits: unique,
/// strictly increasing and time-ordered.
pub(crate) fn next_id(last: u64, at_ms: u64) -> u64 {
    last.saturating_add(1).max(at_ms << ID_SHIFT)
}

/// The 16 hex digits of an id (by hand: `format!` is a tenth of the indexer's time).
pub(crate) fn format_id(id: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    (0..16)
        .map(|i| char::from(HEX[((id >> (60 - 4 * i)) & 0xf) as usize]))
        .collect()
}

/// An id from its 16 hex digits (a cursor the store handed out).
pub(crate) fn parse_id(s: &str) -> Result<u64, StoreError> {
    if s.len() != 16 {
        return Err(StoreError::BadCursor(s.to_string()));
    }
    u64::from_str_radix(s, 16).map_err(|_| StoreError::BadCursor(s.to_string()))
}

impl Counters {
    /// Counts an open in the day, client, device, kind, reason and proxy breakdowns.
    pub(crate) fn count_open(&mut self, ev: &OpenEvent) {
        let day = crate::clock::day(ev.at_ms);
        self.by_day.entry(day).or_default().add(ev.machine);
        self.by_client
            .entry(ev.client.clone())
            .or_default()
            .add(ev.machine);
        self.by_device
            .entry(ev.device.as_str().to_string())
            .or_default()
            .add(ev.machine);
        if ev.kind() == crate::track::OpenKind::Proxied {
            self.proxied_opens += 1;
        }
        if let Some(r) = ev.machine_reason.as_deref().filter(|_| ev.machine) {
            *self.by_reason.entry(r.to_string()).or_default() += 1;
        }
        if let Some(p) = ev.proxy {
            self.by_proxy
                .entry(p.as_str().to_string())
                .or_default()
                .add(ev.machine);
        }
    }

    /// Counts the first final reply to a message.
    pub(crate) fn count_delivery(&mut self, r: &MessageRecord, delivery: &Delivery) {
        if !delivery.accepted {
            self.rejected += 1;
        } else {
            self.relayed += 1;
            if r.tracked {
                self.tracked += 1;
            } else {
                let reason = r.skip_reason.as_deref().unwrap_or("unknown");
                *self.skipped.entry(reason.to_string()).or_default() += 1;
            }
        }
    }
}

impl Stats {
    /// The totals with what they imply: rates, shares, people directly and through proxies.
    pub fn of(counters: Counters) -> Stats {
        let skipped_total = counters.skipped.values().sum();
        let rate = |n: u64| {
            if counters.tracked == 0 {
                0.0
            } else {
                n as f64 / counters.tracked as f64
            }
        };
        let human_opens = counters.opens - counters.machine_opens;
        let machine_share_by_reason = counters
            .by_reason
            .iter()
            .map(|(r, n)| (r.clone(), *n as f64 / counters.opens.max(1) as f64))
            .collect();
        Stats {
            skipped_total,
            human_opens,
            direct_opens: human_opens.saturating_sub(counters.proxied_opens),
            machine_share_by_reason,
            open_rate: rate(counters.unique_opens),
            human_open_rate: rate(counters.unique_human_opens),
            human_clicks: counters.clicks - counters.machine_clicks,
            click_rate: rate(counters.unique_clicks),
            human_click_rate: rate(counters.unique_human_clicks),
            counters,
        }
    }
}

/// A message as stored and as its `message` webhook event shows it: the record and the final
/// reply, without open statistics (always zero-ish when the event is made, and they change).
#[derive(Serialize)]
pub(crate) struct MessageEvent<'a> {
    /// The record.
    #[serde(flatten)]
    pub(crate) record: &'a MessageRecord,
    /// The final reply.
    pub(crate) delivery: &'a Option<Delivery>,
}

/// The event's JSON: `type` and `event_id`, then the event's own fields. An open or click
/// event carries its own `type` (the follow stream shows it too), so the envelope leaves it to
/// the event.
#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    /// `open`, `click` or `message`.
    #[serde(rename = "type", skip_serializing_if = "is_event")]
    kind: &'static str,
    /// Unique per event; retries and the copy to another endpoint repeat it.
    event_id: &'a str,
    /// The SPEC event (or the message record).
    #[serde(flatten)]
    event: &'a T,
}

fn is_event(kind: &&'static str) -> bool {
    matches!(*kind, "open" | "click")
}

/// The body POSTed for event `event_id` of `kind`.
pub(crate) fn webhook_body<T: Serialize>(
    kind: &'static str,
    event_id: &str,
    event: &T,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Envelope {
        kind,
        event_id,
        event,
    })
}
