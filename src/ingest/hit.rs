//! A pixel hit as the listener journals it: what the request said (user agent, method,
//! headers), what its address was (network catalogue, ASN, country: looked up before the
//! address is anonymised), and the timing windows in force. Pure encoding; the indexer decodes
//! it and classifies it against the message's hand-off time.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::token::MessageId;
use crate::track::{Certainty, Hints, NetKind, Proxy, Seen, Windows};

/// The first byte of a hit journaled before address evidence existed (still read).
const HIT_V1: u8 = 1;
/// The first byte of an encoded [`Hit`] of the pixel.
const HIT_V2: u8 = 2;
/// The first byte of an encoded [`Hit`] of a tracked link: version 2's fields, then the link.
const CLICK_V1: u8 = 3;

/// A pixel load with an authentic token, as the listener hands it to the store; classified
/// when indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit<'a> {
    /// The message the token names.
    pub message: MessageId,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Client IP per the trust rules (the store applies `store.anonymize_ip` before writing).
    pub ip: IpAddr,
    /// User-Agent (the listener caps it at 1 KiB; borrowed from the request where it is
    /// valid UTF-8).
    pub user_agent: Cow<'a, str>,
    /// The request's method and headers that tell the classifier something.
    pub hints: Hints,
    /// `tracking.machine_window` and `tracking.probable_window` when the hit arrived.
    pub windows: Windows,
    /// What the full address was when the hit arrived (`evidence`), before anonymisation.
    pub seen: HitSeen<'a>,
    /// A click on a tracked link: its position and URL, as the token carried them (`None`: a
    /// pixel load).
    pub click: Option<(u16, Cow<'a, str>)>,
}

/// The evidence about a hit's address, journaled with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HitSeen<'a> {
    /// The catalogue network the address was in.
    pub network: Option<(NetKind, Certainty)>,
    /// It belonged to a scanner vendor's autonomous system.
    pub scanner_asn: bool,
    /// Who runs that network or system (at most 255 bytes journaled).
    pub label: Cow<'a, str>,
    /// Its country, with a country database.
    pub country: Option<[u8; 2]>,
}

impl HitSeen<'_> {
    /// What the classifier reads.
    pub fn as_seen(&self) -> Seen<'_> {
        Seen {
            network: self.network,
            scanner_asn: self.scanner_asn,
            label: &self.label,
        }
    }
}

/// Network kinds as journaled (0: none).
const NET_KINDS: [NetKind; 5] = [
    NetKind::Scanner,
    NetKind::Provider(Proxy::Google),
    NetKind::Provider(Proxy::Yahoo),
    NetKind::Provider(Proxy::Microsoft),
    NetKind::Provider(Proxy::Apple),
];

/// The longest label journaled.
const MAX_LABEL: usize = 255;

/// `s` cut to at most `max` bytes on a character boundary.
fn capped(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Hit<'_> {
    /// [`Hit::encode_with_ip`] with the hit's own address, into a vector of its own.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        self.encode_with_ip(self.ip, &mut b);
        b
    }

    /// The most bytes [`Hit::encode_with_ip`] appends.
    pub(crate) fn encoded_len(&self) -> usize {
        let click = self.click.as_ref().map_or(0, |(_, url)| 4 + url.len());
        58 + self.seen.label.len().min(MAX_LABEL)
            + self.user_agent.len().min(u16::MAX as usize)
            + click
    }

    /// Appends the journal record to `b`, with `ip` in place of the hit's own (the anonymised
    /// address): `2 ‖ id(16) ‖ at_ms(8) ‖ machine_window_ms(4) ‖ probable_window_ms(4) ‖
    /// flags(1) ‖ net(1) ‖ country(2) ‖ ip(4|16) ‖ label_len(1) ‖ label ‖ ua_len(2) ‖ ua`,
    /// integers little-endian; flags: 1 prefetch, 2 mobile, 4 IPv6, 8 HEAD, 16 certain network,
    /// 32 scanner ASN, 64 country known; net: 0 none, else 1 + the index in `NET_KINDS`. A
    /// click starts with 3 instead and ends with `link(2) ‖ url_len(2) ‖ url` (URLs in tokens
    /// are at most 2 048 bytes).
    pub(crate) fn encode_with_ip(&self, ip: IpAddr, b: &mut Vec<u8>) {
        let ua = &self.user_agent.as_bytes()[..self.user_agent.len().min(u16::MAX as usize)];
        let label = capped(&self.seen.label, MAX_LABEL).as_bytes();
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        b.push(if self.click.is_some() {
            CLICK_V1
        } else {
            HIT_V2
        });
        b.extend_from_slice(self.message.as_bytes());
        b.extend_from_slice(&self.at_ms.to_le_bytes());
        b.extend_from_slice(&ms(self.windows.machine).to_le_bytes());
        b.extend_from_slice(&ms(self.windows.probable).to_le_bytes());
        let s = &self.seen;
        let flags = u8::from(self.hints.prefetch)
            | (u8::from(self.hints.mobile) << 1)
            | (u8::from(ip.is_ipv6()) << 2)
            | (u8::from(self.hints.head) << 3)
            | (u8::from(matches!(s.network, Some((_, Certainty::Certain)))) << 4)
            | (u8::from(s.scanner_asn) << 5)
            | (u8::from(s.country.is_some()) << 6);
        b.push(flags);
        let net = s.network.map_or(0, |(k, _)| {
            1 + NET_KINDS.iter().position(|n| *n == k).unwrap_or(0) as u8
        });
        b.push(net);
        b.extend_from_slice(&s.country.unwrap_or_default());
        match ip {
            IpAddr::V4(v4) => b.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b.extend_from_slice(&v6.octets()),
        }
        b.push(label.len() as u8);
        b.extend_from_slice(label);
        b.extend_from_slice(&(ua.len() as u16).to_le_bytes());
        b.extend_from_slice(ua);
        if let Some((link, url)) = &self.click {
            let url = capped(url, u16::MAX as usize).as_bytes();
            b.extend_from_slice(&link.to_le_bytes());
            b.extend_from_slice(&(url.len() as u16).to_le_bytes());
            b.extend_from_slice(url);
        }
    }

    /// The inverse of [`Hit::encode_with_ip`] (and of the version-1 record written before
    /// address evidence existed); `None` for anything else.
    pub(crate) fn decode(b: &[u8]) -> Option<Hit<'static>> {
        let (&v, b) = b.split_first()?;
        if v != HIT_V1 && v != HIT_V2 && v != CLICK_V1 {
            return None;
        }
        let v2 = v != HIT_V1;
        let (id, b) = b.split_at_checked(16)?;
        let (at, b) = b.split_at_checked(8)?;
        let (window, b) = b.split_at_checked(4)?;
        let ms = |w: &[u8]| -> Option<Duration> {
            Some(Duration::from_millis(u64::from(u32::from_le_bytes(
                w.try_into().ok()?,
            ))))
        };
        let (probable, b) = if v2 {
            let (p, b) = b.split_at_checked(4)?;
            (ms(p)?, b)
        } else {
            (Duration::ZERO, b)
        };
        let (&flags, b) = b.split_first()?;
        let (net, country, b) = if v2 {
            let (&net, b) = b.split_first()?;
            let (c, b) = b.split_at_checked(2)?;
            (net, [c[0], c[1]], b)
        } else {
            (0, [0; 2], b)
        };
        let (ip, b) = take_ip(flags & 4 != 0, b)?;
        let (label, b) = if v2 {
            let (&len, b) = b.split_first()?;
            let (l, b) = b.split_at_checked(usize::from(len))?;
            (String::from_utf8_lossy(l).into_owned(), b)
        } else {
            (String::new(), b)
        };
        let (len, b) = b.split_at_checked(2)?;
        let (ua, b) = b.split_at_checked(usize::from(u16::from_le_bytes(len.try_into().ok()?)))?;
        let (click, b) = if v == CLICK_V1 {
            let (link, b) = b.split_at_checked(2)?;
            let (len, b) = b.split_at_checked(2)?;
            let (url, b) =
                b.split_at_checked(usize::from(u16::from_le_bytes(len.try_into().ok()?)))?;
            let url = String::from_utf8(url.to_vec()).ok()?;
            (
                Some((u16::from_le_bytes(link.try_into().ok()?), Cow::Owned(url))),
                b,
            )
        } else {
            (None, b)
        };
        if !b.is_empty() {
            return None;
        }
        let network = network(net, flags & 16 != 0)?;
        Some(Hit {
            message: MessageId::from_slice(id)?,
            at_ms: u64::from_le_bytes(at.try_into().ok()?),
            ip,
            user_agent: Cow::Owned(String::from_utf8_lossy(ua).into_owned()),
            hints: Hints {
                prefetch: flags & 1 != 0,
                mobile: flags & 2 != 0,
                head: flags & 8 != 0,
            },
            windows: Windows {
                machine: ms(window)?,
                probable,
            },
            seen: HitSeen {
                network,
                scanner_asn: flags & 32 != 0,
                label: Cow::Owned(label),
                country: (flags & 64 != 0).then_some(country),
            },
            click,
        })
    }
}

/// The address at the front of `b`: 16 octets when `v6`, else 4.
fn take_ip(v6: bool, b: &[u8]) -> Option<(IpAddr, &[u8])> {
    if v6 {
        let (ip, b) = b.split_at_checked(16)?;
        let ip: [u8; 16] = ip.try_into().ok()?;
        Some((IpAddr::V6(Ipv6Addr::from(ip)), b))
    } else {
        let (ip, b) = b.split_at_checked(4)?;
        let ip: [u8; 4] = ip.try_into().ok()?;
        Some((IpAddr::V4(Ipv4Addr::from(ip)), b))
    }
}

/// The network a hit came from, as encoded: 0 is none, `n` is `NET_KINDS[n - 1]`; `None` when
/// `n` is past the table.
fn network(n: u8, certain: bool) -> Option<Option<(NetKind, Certainty)>> {
    if n == 0 {
        return Some(None);
    }
    let kind = *NET_KINDS.get(usize::from(n) - 1)?;
    let certainty = if certain {
        Certainty::Certain
    } else {
        Certainty::Probable
    };
    Some(Some((kind, certainty)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(ip: &str, ua: &str) -> Hit<'static> {
        Hit {
            message: MessageId::random(),
            at_ms: 1_790_000_000_123,
            ip: ip.parse().unwrap(),
            user_agent: ua.to_string().into(),
            hints: Hints {
                prefetch: true,
                mobile: false,
                head: true,
            },
            windows: Windows {
                machine: Duration::from_secs(30),
                probable: Duration::from_secs(900),
            },
            seen: HitSeen {
                network: Some((NetKind::Provider(Proxy::Apple), Certainty::Probable)),
                scanner_asn: true,
                label: "iCloud Private Relay".into(),
                country: Some(*b"DE"),
            },
            click: None,
        }
    }

    #[test]
    fn hits_round_trip() {
        for h in [
            hit("192.0.2.7", "Mozilla/5.0 (iPhone) Mobile"),
            hit("2001:db8::1", ""),
            hit("::ffff:192.0.2.1", "é ü"),
        ] {
            assert_eq!(Hit::decode(&h.encode()), Some(h));
        }
    }

    #[test]
    fn every_network_kind_and_no_evidence_round_trip() {
        for network in NET_KINDS
            .iter()
            .flat_map(|k| [(*k, Certainty::Certain), (*k, Certainty::Probable)])
            .map(Some)
            .chain([None])
        {
            let mut h = hit("192.0.2.7", "ua");
            h.seen = HitSeen {
                network,
                scanner_asn: false,
                label: "".into(),
                country: None,
            };
            assert_eq!(Hit::decode(&h.encode()), Some(h));
        }
        // A long label is cut on a character boundary.
        let mut h = hit("192.0.2.7", "ua");
        h.seen.label = "é".repeat(200).into();
        let back = Hit::decode(&h.encode()).unwrap();
        assert_eq!(back.seen.label.len(), 254);
    }

    #[test]
    fn version_1_records_still_decode() {
        // `1 ‖ id ‖ at_ms ‖ window_ms ‖ flags ‖ ip ‖ ua_len ‖ ua`, as journaled before.
        let id = MessageId::random();
        let mut b = vec![1u8];
        b.extend_from_slice(id.as_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&5000u32.to_le_bytes());
        b.push(1);
        b.extend_from_slice(&[192, 0, 2, 1]);
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(b"ua");
        let h = Hit::decode(&b).unwrap();
        assert_eq!(h.message, id);
        assert!(h.hints.prefetch && !h.hints.head);
        assert_eq!(h.windows.machine, Duration::from_secs(5));
        assert_eq!(h.seen, HitSeen::default());
        assert_eq!(h.user_agent, "ua");
    }

    #[test]
    fn anything_else_does_not_decode() {
        let b = hit("192.0.2.7", "ua").encode();
        for cut in 0..b.len() {
            assert_eq!(Hit::decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(b'x');
        assert_eq!(Hit::decode(&longer), None);
        let mut v3 = b.clone();
        v3[0] = 3;
        assert_eq!(Hit::decode(&v3), None, "a pixel hit is no click");
        let mut v4 = b;
        v4[0] = 4;
        assert_eq!(Hit::decode(&v4), None);
    }

    #[test]
    fn clicks_round_trip_and_refuse_cuts() {
        let mut h = hit("2001:db8::7", "Mozilla/5.0");
        h.click = Some((7, "https://example.com/a?b=c&d=é".into()));
        let b = h.encode();
        assert_eq!(b[0], CLICK_V1);
        assert!(b.len() <= h.encoded_len());
        assert_eq!(Hit::decode(&b), Some(h));
        for cut in 0..b.len() {
            assert_eq!(Hit::decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut longer = b;
        longer.push(0);
        assert_eq!(Hit::decode(&longer), None);
    }
}
