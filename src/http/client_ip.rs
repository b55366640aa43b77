//! The client address of an HTTP request: the socket peer, unless the peer is a trusted proxy
//! (`http.trusted_proxies`), in which case `Forwarded` (RFC 7239) or else `X-Forwarded-For` is
//! walked from the right, skipping trusted hops, and the first untrusted address wins.
//!
//! Anyone can write these headers, so only the part appended by proxies we trust means
//! anything: the right-most untrusted entry is the last address a trusted proxy saw. An entry
//! that is not an address (`unknown`, an obfuscated `_node`, garbage) stops the walk at the
//! nearest trusted hop, since nothing to its left can be believed. Pure: no IO.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{FORWARDED, HeaderName};

use crate::net::{Cidr, any_contains, canonical};

/// `X-Forwarded-For`.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address to record for a request from `peer` carrying `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !any_contains(trusted, peer) {
        return peer;
    }
    let chain = forwarded_chain(headers).or_else(|| xff_chain(headers));
    let Some(chain) = chain else { return peer };
    // Walk right to left; `last` is the nearest hop we have accepted so far.
    let mut last = peer;
    for node in chain.iter().rev() {
        match node {
            Some(ip) if any_contains(trusted, *ip) => last = *ip,
            Some(ip) => return *ip,
            None => return last,
        }
    }
    last
}

/// The `for=` nodes of every `Forwarded` header, in order; `None` if there is no such header.
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut out = Vec::new();
    let mut seen = false;
    for value in headers.get_all(FORWARDED) {
        seen = true;
        let Ok(value) = value.to_str() else {
            out.push(None);
            continue;
        };
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            });
            if let Some(node) = node {
                out.push(parse_node(node));
            }
        }
    }
    seen.then_some(out)
}

/// The entries of every `X-Forwarded-For` header, in order; `None` if there is none.
fn xff_chain(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut out = Vec::new();
    let mut seen = false;
    for value in headers.get_all(&X_FORWARDED_FOR) {
        seen = true;
        match value.to_str() {
            Ok(v) => out.extend(v.split(',').map(|n| parse_node(n.trim()))),
            Err(_) => out.push(None),
        }
    }
    seen.then_some(out)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `"[2001:db8::1]:4711"`,
/// `2001:db8::1`. Anything else is `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse::<IpAddr>().ok().map(canonical);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // IPv4 with a port.
    let (addr, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn trusted() -> Vec<Cidr> {
        vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=198.51.100.8"),
        ]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &trusted()),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &[]),
            ip("10.0.0.1"),
            "no trusted proxies at all"
        );
    }

    #[test]
    fn xff_right_most_untrusted_wins() {
        // The client forged a left-most entry; our two proxies appended the real hops.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.2")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.7")
        );
        // Split across header lines, same order.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "198.51.100.7, 10.0.0.2"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted()),
            ip("198.51.100.7")
        );
        // Ports and mapped addresses.
        let h = headers(&[("x-forwarded-for", "198.51.100.7:5555")]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &h, &trusted()),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn all_trusted_gives_the_left_most() {
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.1.1.1"));
    }

    #[test]
    fn garbage_stops_at_the_nearest_trusted_hop() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7, unknown, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.0.0.2"));
        let h = headers(&[("x-forwarded-for", "not an ip")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_is_preferred_and_parsed() {
        let h = headers(&[
            (
                "forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"",
            ),
            ("x-forwarded-for", "198.51.100.99"),
        ]);
        assert_eq!(
            client_ip(ip("::1"), &h, &trusted()),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("forwarded", "for=192.0.2.60, for=10.0.0.3")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("192.0.2.60"));
        let h = headers(&[("forwarded", "for=_hidden, for=10.0.0.3")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted()), ip("10.0.0.3"));
    }

    #[test]
    fn node_forms() {
        assert_eq!(parse_node("192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("192.0.2.1:80"), Some(ip("192.0.2.1")));
        assert_eq!(
            parse_node("\"[2001:db8::1]:4711\""),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_node("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("[zz]"), None);
        assert_eq!(parse_node("host:80"), None);
    }
}
