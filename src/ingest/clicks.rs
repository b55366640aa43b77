//! What tells a link scanner from a person on a click, beyond the rules opens share
//! (`track::classify`: a `HEAD`, a prefetch header, a scanner's network or user agent, and the
//! timing window after hand-off, here reason `early-click`): several links of one message
//! followed from one address within [`BURST_MS`] of each other (Safe Links and its kind follow
//! every link of a message at once; a person reads the page a link leads to first). The click
//! that starts a burst has no later click to compare with and keeps its verdict; every click
//! after it in the burst is a machine's, reason `link-burst`.
//!
//! The memory of recent clicks is this node's: on a database several nodes share, a burst
//! split across nodes by a load balancer is caught only by the other rules.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::token::MessageId;
use crate::track::Classification;

/// Clicks on different links of one message from one address this close together are a
/// scanner's.
pub const BURST_MS: u64 = 5_000;

/// Addresses remembered at most before the stale ones are dropped.
const MAX_REMEMBERED: usize = 1 << 16;

/// The latest click of each (message, address) pair, for the burst rule.
#[derive(Debug, Default)]
pub struct Bursts {
    recent: HashMap<(MessageId, IpAddr), (u64, u16)>,
}

impl Bursts {
    /// Remembers a click on `link` of `message` from `ip` at `at_ms`; whether it follows a
    /// click on another link of the same message from the same address within [`BURST_MS`]
    /// (a click on the same link again is a person reloading, not a burst).
    pub fn burst(&mut self, message: MessageId, ip: IpAddr, link: u16, at_ms: u64) -> bool {
        if self.recent.len() >= MAX_REMEMBERED {
            self.recent
                .retain(|_, (at, _)| at.saturating_add(BURST_MS) > at_ms);
        }
        let before = self.recent.insert((message, ip), (at_ms, link));
        // A full table of live bursts: forget the oldest half rather than grow without bound.
        if self.recent.len() > MAX_REMEMBERED {
            let mut times: Vec<u64> = self.recent.values().map(|(at, _)| *at).collect();
            times.sort_unstable();
            let cut = times[times.len() / 2];
            self.recent.retain(|_, (at, _)| *at > cut);
        }
        before.is_some_and(|(at, l)| l != link && at_ms.saturating_sub(at) < BURST_MS)
    }
}

/// A click's verdict from the rules opens share, with the click rules applied: the timing
/// rule named for clicks, and a burst makes it a machine's.
pub fn classify_click(mut c: Classification, burst: bool) -> Classification {
    if c.machine_reason == Some("early-load") {
        c.machine_reason = Some("early-click");
    }
    if !c.machine && burst {
        c.machine = true;
        c.machine_reason = Some("link-burst");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn other_links_of_one_message_from_one_address_within_the_window_are_a_burst() {
        let mut b = Bursts::default();
        let (m, other) = (MessageId::random(), MessageId::random());
        let t = 1_800_000_000_000;
        assert!(!b.burst(m, ip("192.0.2.1"), 0, t), "the first click");
        assert!(
            b.burst(m, ip("192.0.2.1"), 1, t + 300),
            "another link at once"
        );
        assert!(b.burst(m, ip("192.0.2.1"), 2, t + 600));
        // The same link again: a reload, not a burst.
        assert!(!b.burst(m, ip("192.0.2.1"), 2, t + 700));
        // Another address, another message: no burst.
        assert!(!b.burst(m, ip("192.0.2.2"), 3, t + 800));
        assert!(!b.burst(other, ip("192.0.2.1"), 3, t + 900));
        // Past the window: a person who came back for another link.
        assert!(!b.burst(m, ip("192.0.2.1"), 5, t + 700 + BURST_MS));
        assert!(b.burst(m, ip("192.0.2.1"), 6, t + 800 + BURST_MS));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut b = Bursts::default();
        let m = MessageId::random();
        for i in 0..(3 * MAX_REMEMBERED as u32) {
            let a = IpAddr::from((i + 1).to_be_bytes());
            // All within one window: the table can hold no more and halves itself.
            b.burst(m, a, 0, 1_800_000_000_000 + u64::from(i) / 1_000);
            assert!(b.recent.len() <= MAX_REMEMBERED);
        }
    }

    #[test]
    fn the_click_rules_name_and_add_reasons() {
        let person = Classification {
            client: "Firefox".into(),
            device: crate::track::Device::Desktop,
            machine: false,
            machine_reason: None,
            proxy: None,
        };
        assert_eq!(classify_click(person.clone(), false), person);
        let burst = classify_click(person.clone(), true);
        assert!(burst.machine);
        assert_eq!(burst.machine_reason, Some("link-burst"));
        let early = Classification {
            machine: true,
            machine_reason: Some("early-load"),
            ..person.clone()
        };
        assert_eq!(
            classify_click(early, true).machine_reason,
            Some("early-click")
        );
        let head = Classification {
            machine: true,
            machine_reason: Some("head-request"),
            ..person
        };
        assert_eq!(
            classify_click(head, true).machine_reason,
            Some("head-request")
        );
    }
}
