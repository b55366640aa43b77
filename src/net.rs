//! Small network helpers shared by the listeners: CIDR ranges and IP anonymisation.
//!
//! No IO here.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// An IPv4 or IPv6 network such as `127.0.0.0/8` or `::1/128` (an [`ipnet::IpNet`] with its host
/// bits cleared). A bare address means a single host; IPv4-mapped IPv6 addresses are IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// The network address (host bits cleared; IPv4-mapped addresses as IPv4).
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

/// Whether any of `nets` contains `ip`.
pub fn any_contains(nets: &[Cidr], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

/// Maps `::ffff:a.b.c.d` to `a.b.c.d` so that rules and logs see one form.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Keeps the IPv4 /24 or the IPv6 /48 of an address (`store.anonymize_ip`).
pub fn anonymize(ip: IpAddr) -> IpAddr {
    let ip = canonical(ip);
    let prefix = if ip.is_ipv4() { 24 } else { 48 };
    IpNet::new(ip, prefix).map_or(ip, |n| n.trunc().network())
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid network \"{s}\" (expected e.g. 192.0.2.0/24 or 2001:db8::/32)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(a.trim().parse::<IpAddr>().map_err(|_| bad())?);
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => IpNet::from(addr).max_prefix_len(),
        };
        let net = IpNet::new(addr, prefix).map_err(|_| bad())?;
        Ok(Cidr(net.trunc()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contains_v4_v6_and_mapped() {
        let n: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("127.9.9.9")));
        assert!(n.contains(ip("::ffff:127.0.0.2")));
        assert!(!n.contains(ip("128.0.0.1")));
        let h: Cidr = "127.0.0.1".parse().unwrap();
        assert!(h.contains(ip("127.0.0.1")) && !h.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
    }

    #[test]
    fn rejects_bad_networks() {
        for s in ["10.0.0.0/33", "::/129", "x/8", "", "10.0.0.0/"] {
            assert!(s.parse::<Cidr>().is_err(), "{s}");
        }
    }

    #[test]
    fn anonymize_keeps_24_and_48() {
        assert_eq!(anonymize(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(anonymize(ip("2001:db8:abcd:12::1")), ip("2001:db8:abcd::"));
    }
}
