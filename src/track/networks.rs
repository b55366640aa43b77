//! The network catalogue: which networks pixel loads come from, as published by the
//! operators of scanners and mail providers. Pure: it parses text handed to it and answers
//! longest-prefix lookups; reading the files (`tracking.networks`) and reloading them on SIGHUP
//! is `evidence`'s job.
//!
//! # Files
//!
//! Two formats are accepted, told apart by the first line that is not blank or a `#` comment:
//!
//! - **pixelrelay's own**, whose first line is the header `prefix,kind,label,certainty,source`.
//!   Each row is one network: `prefix` a CIDR (`40.92.0.0/15`, `2a01:111:f400::/48`); `kind`
//!   one of `scanner` (a security scanner's network) or a mail provider whose fetchers carry
//!   readers (`google`, `yahoo`, `microsoft`, `apple`); `label` the name shown as the client of
//!   a scanner's loads; `certainty` `certain` (only machines fetch from there) or `probable`
//!   (machines fetch from there around delivery, people later: see `classify`); `source` where
//!   the range is published (the rest of the line, commas allowed).
//! - **Apple's iCloud Private Relay egress list** exactly as Apple publishes it
//!   (`egress-ip-ranges.csv`: `prefix,country,region,city,` rows, no header). Every row is an
//!   `apple` network, `probable`: Mail Privacy Protection prefetches through these addresses at
//!   delivery, and people browsing with Private Relay come from the same ones.
//!
//! # Lookups
//!
//! Prefixes may nest (a /24 inside a /16 of another row); the longest prefix that contains the
//! address wins, and of two rows with the same prefix the later one (later file, later line)
//! wins. At build time the prefixes of each family are flattened into sorted, disjoint ranges,
//! each naming its most specific row, so a lookup is one binary search: about 17 steps for
//! 100 000 prefixes (`benches/networks.rs`). IPv4-mapped IPv6 addresses are looked up as IPv4.

use std::net::IpAddr;
use std::sync::Arc;

use crate::net::{Cidr, canonical};

/// A mail provider whose image proxy or relay fetches remote images for its readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proxy {
    /// Gmail's image proxy (`GoogleImageProxy`, ggpht.com).
    Google,
    /// Yahoo Mail's image proxy (`YahooMailProxy`).
    Yahoo,
    /// Outlook.com / Microsoft 365.
    Microsoft,
    /// Apple's iCloud Private Relay (Mail Privacy Protection).
    Apple,
}

impl Proxy {
    /// The SPEC's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Proxy::Google => "google",
            Proxy::Yahoo => "yahoo",
            Proxy::Microsoft => "microsoft",
            Proxy::Apple => "apple",
        }
    }

    /// The inverse of [`Proxy::as_str`].
    pub fn parse(s: &str) -> Option<Proxy> {
        [Proxy::Google, Proxy::Yahoo, Proxy::Microsoft, Proxy::Apple]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// What fetches from a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetKind {
    /// A security scanner (link and attachment detonation, URL rewriting services).
    Scanner,
    /// A mail provider's fetchers, which load images for its readers.
    Provider(Proxy),
}

impl NetKind {
    /// The name used in catalogue files.
    pub fn as_str(self) -> &'static str {
        match self {
            NetKind::Scanner => "scanner",
            NetKind::Provider(p) => p.as_str(),
        }
    }

    fn parse(s: &str) -> Option<NetKind> {
        match s {
            "scanner" => Some(NetKind::Scanner),
            p => Proxy::parse(p).map(NetKind::Provider),
        }
    }
}

/// How sure the publisher's evidence makes us that a load from the network is a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Certainty {
    /// Only machines fetch from there.
    Certain,
    /// Machines fetch from there around delivery; people may fetch from there later.
    Probable,
}

impl Certainty {
    /// The name used in catalogue files.
    pub fn as_str(self) -> &'static str {
        match self {
            Certainty::Certain => "certain",
            Certainty::Probable => "probable",
        }
    }
}

/// One catalogue row, as a lookup returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// What fetches from it.
    pub kind: NetKind,
    /// Who runs it (`Microsoft Defender`, `iCloud Private Relay`).
    pub label: Arc<str>,
    /// How sure the evidence is.
    pub certainty: Certainty,
}

/// The header line of pixelrelay's own catalogue format.
pub const HEADER: &str = "prefix,kind,label,certainty,source";

/// The label of every row of Apple's egress list.
const APPLE_RELAY: &str = "iCloud Private Relay";

/// A prefix as `[first, last]` addresses of one family, with its row.
#[derive(Debug, Clone, Copy)]
struct Range {
    first: u128,
    last: u128,
    row: u32,
}

/// Prefixes of one family before flattening: (first, prefix length, row).
type Pending = Vec<(u128, u8, u32)>;

/// Accumulates rows from one or more files; [`Builder::build`] makes the lookup tables.
#[derive(Debug, Default)]
pub struct Builder {
    rows: Vec<Network>,
    v4: Pending,
    v6: Pending,
}

impl Builder {
    /// Adds the rows of one file and returns how many prefixes it had. `name` only labels
    /// errors; the first error stops the file (and names its line).
    pub fn add_file(&mut self, name: &str, text: &str) -> Result<usize, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let Some((n, first)) = lines.next() else {
            return Ok(0);
        };
        let before = self.v4.len() + self.v6.len();
        let err = |n: usize, why: String| format!("{name}: line {n}: {why}");
        if first.eq_ignore_ascii_case(HEADER) {
            for (n, line) in lines {
                self.own_row(line).map_err(|why| err(n, why))?;
            }
        } else {
            let apple = self.intern(
                NetKind::Provider(Proxy::Apple),
                APPLE_RELAY,
                Certainty::Probable,
            );
            for (n, line) in std::iter::once((n, first)).chain(lines) {
                self.apple_row(line, apple).map_err(|why| err(n, why))?;
            }
        }
        Ok(self.v4.len() + self.v6.len() - before)
    }

    /// One row of pixelrelay's format.
    fn own_row(&mut self, line: &str) -> Result<(), String> {
        let mut f = line.splitn(5, ',').map(str::trim);
        let (Some(prefix), Some(kind), Some(label), Some(certainty), Some(source)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(format!("expected {HEADER}, got {line:?}"));
        };
        let kind = NetKind::parse(kind).ok_or_else(|| {
            format!("kind {kind:?} is not scanner, google, yahoo, microsoft or apple")
        })?;
        let certainty = match certainty {
            "certain" => Certainty::Certain,
            "probable" => Certainty::Probable,
            c => return Err(format!("certainty {c:?} is not certain or probable")),
        };
        if label.is_empty() {
            return Err("the label is empty".into());
        }
        if source.is_empty() {
            return Err("the source is empty: every row cites where its range is published".into());
        }
        let cidr: Cidr = prefix.parse()?;
        let row = self.intern(kind, label, certainty);
        self.push(cidr, row);
        Ok(())
    }

    /// One row of Apple's egress list: `prefix,country,region,city,`.
    fn apple_row(&mut self, line: &str, row: u32) -> Result<(), String> {
        let fields: Vec<&str> = line.split(',').collect();
        if !(4..=5).contains(&fields.len()) {
            return Err(format!(
                "expected Apple's egress format prefix,country,region,city, (or the header \
                 {HEADER}), got {line:?}"
            ));
        }
        let cidr: Cidr = fields[0].trim().parse()?;
        self.push(cidr, row);
        Ok(())
    }

    /// The row index for (kind, label, certainty), reusing the last one when it is the same
    /// (consecutive rows of one vendor share a row).
    fn intern(&mut self, kind: NetKind, label: &str, certainty: Certainty) -> u32 {
        if let Some(last) = self.rows.last()
            && last.kind == kind
            && last.certainty == certainty
            && &*last.label == label
        {
            return (self.rows.len() - 1) as u32;
        }
        self.rows.push(Network {
            kind,
            label: label.into(),
            certainty,
        });
        (self.rows.len() - 1) as u32
    }

    fn push(&mut self, cidr: Cidr, row: u32) {
        match cidr.addr() {
            IpAddr::V4(a) => self.v4.push((u128::from(u32::from(a)), cidr.prefix(), row)),
            IpAddr::V6(a) => self.v6.push((u128::from(a), cidr.prefix(), row)),
        }
    }

    /// Flattens the prefixes into lookup tables.
    pub fn build(self) -> Catalogue {
        Catalogue {
            v4: flatten(self.v4, 32),
            v6: flatten(self.v6, 128),
            rows: self.rows,
        }
    }
}

/// Turns possibly nested prefixes into sorted disjoint ranges, each naming the most specific
/// prefix that covers it (the later row on a tie).
fn flatten(prefixes: Pending, bits: u32) -> Vec<Range> {
    let last_of = |first: u128, len: u8| {
        let host = bits - u32::from(len);
        if host == 128 {
            u128::MAX
        } else {
            first | ((1u128 << host) - 1)
        }
    };
    // Wider prefixes before the narrower ones they contain; on equal prefixes the later row
    // last, so that it replaces the earlier one below.
    let mut order: Vec<usize> = (0..prefixes.len()).collect();
    order.sort_by_key(|&i| (prefixes[i].0, prefixes[i].1, i));
    let prefixes: Vec<(u128, u128, u32)> = order
        .into_iter()
        .map(|i| {
            let (first, len, row) = prefixes[i];
            (first, last_of(first, len), row)
        })
        .collect();
    let mut out: Vec<Range> = Vec::with_capacity(prefixes.len());
    // Enclosing prefixes, innermost last: (first, last, row).
    let mut stack: Vec<(u128, u128, u32)> = Vec::new();
    // Everything below `next` has been emitted (None: the whole space has).
    let mut next: Option<u128> = Some(0);
    let emit = |out: &mut Vec<Range>, next: &mut Option<u128>, last: u128, row: u32| {
        if let Some(from) = *next
            && from <= last
        {
            out.push(Range {
                first: from,
                last,
                row,
            });
        }
        *next = last.checked_add(1);
    };
    for (first, last, row) in prefixes {
        // Close the enclosing prefixes that end before this one starts.
        while let Some(&(_, top_last, top_row)) = stack.last() {
            if top_last >= first {
                break;
            }
            emit(&mut out, &mut next, top_last, top_row);
            stack.pop();
        }
        if let Some(top) = stack.last_mut()
            && top.0 == first
            && top.1 == last
        {
            // The same prefix again: the later row wins.
            top.2 = row;
            continue;
        }
        if let Some(&(_, _, top_row)) = stack.last()
            && first > 0
        {
            emit(&mut out, &mut next, first - 1, top_row);
        }
        next = Some(first);
        stack.push((first, last, row));
    }
    while let Some((_, last, row)) = stack.pop() {
        emit(&mut out, &mut next, last, row);
    }
    out
}

/// The loaded catalogue: longest-prefix lookups over every file's rows.
#[derive(Debug, Default)]
pub struct Catalogue {
    v4: Vec<Range>,
    v6: Vec<Range>,
    rows: Vec<Network>,
}

impl Catalogue {
    /// The catalogue of the given files, in order (later rows win ties).
    pub fn parse(files: &[(&str, &str)]) -> Result<Catalogue, String> {
        let mut b = Builder::default();
        for (name, text) in files {
            b.add_file(name, text)?;
        }
        Ok(b.build())
    }

    /// The most specific network containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Network> {
        let (table, x) = match canonical(ip) {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(a))),
            IpAddr::V6(a) => (&self.v6, u128::from(a)),
        };
        let i = table.partition_point(|r| r.first <= x).checked_sub(1)?;
        let r = &table[i];
        (x <= r.last).then(|| &self.rows[r.row as usize])
    }

    /// Disjoint ranges in the lookup tables (at least the number of prefixes that are not
    /// wholly hidden by more specific ones).
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the catalogue has no network at all.
    pub fn is_empty(&self) -> bool {
        self.ranges() == 0
    }
}

/// Autonomous systems of security scanners: a load from one of them is a machine
/// (`scanner-asn`). The numbers are the vendors' own registrations (RIR whois; the issue
/// thread that asked for them names them too). Google's and Microsoft's ASNs are deliberately
/// absent: their image proxies carry real readers.
pub const SCANNER_ASNS: &[(u32, &str)] = &[
    (22843, "Proofpoint"),
    (26211, "Proofpoint"),
    (52129, "Proofpoint"),
    (30031, "Mimecast"),
    (39588, "Mimecast"),
    (42427, "Mimecast"),
    (60492, "Mimecast"),
    (16417, "Cisco"),
];

/// The scanner vendor of an autonomous system, if it is one of [`SCANNER_ASNS`].
pub fn scanner_asn(asn: u32) -> Option<&'static str> {
    SCANNER_ASNS
        .iter()
        .find(|(n, _)| *n == asn)
        .map(|(_, label)| *label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn label(c: &Catalogue, s: &str) -> Option<String> {
        c.lookup(ip(s)).map(|n| n.label.to_string())
    }

    const OWN: &str = "# test\nprefix,kind,label,certainty,source\n\
        10.0.0.0/8,scanner,Wide,certain,a\n\
        10.1.0.0/16,scanner,Middle,probable,b, with a comma\n\
        10.1.2.0/24,microsoft,Narrow,probable,c\n\
        10.1.2.128/25,scanner,Narrower,certain,d\n\
        10.200.0.0/16,google,Apart,certain,e\n\
        2001:db8::/32,scanner,Six,certain,f\n\
        2001:db8:1::/48,apple,SixNarrow,probable,g\n";

    #[test]
    fn the_longest_prefix_wins_on_both_families() {
        let c = Catalogue::parse(&[("own.csv", OWN)]).unwrap();
        for (addr, want) in [
            ("10.0.0.1", Some("Wide")),
            ("10.1.0.0", Some("Middle")),
            ("10.1.1.255", Some("Middle")),
            ("10.1.2.0", Some("Narrow")),
            ("10.1.2.127", Some("Narrow")),
            ("10.1.2.128", Some("Narrower")),
            ("10.1.2.255", Some("Narrower")),
            ("10.1.3.0", Some("Middle")),
            ("10.2.0.0", Some("Wide")),
            ("10.200.5.5", Some("Apart")),
            ("10.255.255.255", Some("Wide")),
            ("11.0.0.0", None),
            ("9.255.255.255", None),
            ("::ffff:10.1.2.200", Some("Narrower")),
            ("2001:db8::1", Some("Six")),
            ("2001:db8:1::1", Some("SixNarrow")),
            ("2001:db8:2::1", Some("Six")),
            ("2001:db9::1", None),
        ] {
            assert_eq!(label(&c, addr).as_deref(), want, "{addr}");
        }
        let n = c.lookup(ip("10.1.2.3")).unwrap();
        assert_eq!(
            (n.kind, n.certainty),
            (NetKind::Provider(Proxy::Microsoft), Certainty::Probable)
        );
    }

    #[test]
    fn whole_space_prefixes_and_ties() {
        let text = "prefix,kind,label,certainty,source\n\
            0.0.0.0/0,scanner,All,probable,x\n\
            255.255.255.255/32,scanner,Top,certain,x\n\
            ::/0,scanner,All6,probable,x\n\
            ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128,scanner,Top6,certain,x\n\
            192.0.2.0/24,scanner,First,certain,x\n";
        let later = "prefix,kind,label,certainty,source\n192.0.2.0/24,scanner,Second,certain,x\n";
        let c = Catalogue::parse(&[("a", text), ("b", later)]).unwrap();
        assert_eq!(label(&c, "0.0.0.0").as_deref(), Some("All"));
        assert_eq!(label(&c, "255.255.255.254").as_deref(), Some("All"));
        assert_eq!(label(&c, "255.255.255.255").as_deref(), Some("Top"));
        assert_eq!(label(&c, "192.0.2.9").as_deref(), Some("Second"));
        assert_eq!(label(&c, "::").as_deref(), Some("All6"));
        assert_eq!(
            label(&c, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").as_deref(),
            Some("Top6")
        );
    }

    #[test]
    fn apples_egress_list_is_read_as_published() {
        let apple = "172.224.224.0/27,GB,GB-EN,London,\n\
            2a02:26f7:b3c0:4000::/64,DE,DE-BE,Berlin,\n\
            172.224.226.0/27,US,US-CA,Los Angeles,\n";
        let c = Catalogue::parse(&[("egress-ip-ranges.csv", apple)]).unwrap();
        let n = c.lookup(ip("172.224.224.7")).unwrap();
        assert_eq!(n.kind, NetKind::Provider(Proxy::Apple));
        assert_eq!(n.certainty, Certainty::Probable);
        assert_eq!(&*n.label, APPLE_RELAY);
        assert!(c.lookup(ip("2a02:26f7:b3c0:4000::17")).is_some());
        assert!(c.lookup(ip("172.224.224.32")).is_none());
        assert_eq!(c.ranges(), 3);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        for (text, want) in [
            (
                "prefix,kind,label,certainty,source\n10.0.0.0/33,scanner,X,certain,y",
                "line 2",
            ),
            (
                "prefix,kind,label,certainty,source\n10.0.0.0/8,robot,X,certain,y",
                "kind",
            ),
            (
                "prefix,kind,label,certainty,source\n10.0.0.0/8,scanner,X,sure,y",
                "certainty",
            ),
            (
                "prefix,kind,label,certainty,source\n10.0.0.0/8,scanner,X,certain",
                "expected",
            ),
            (
                "prefix,kind,label,certainty,source\n10.0.0.0/8,scanner,X,certain,",
                "source",
            ),
            ("172.224.224.0/27,GB", "Apple's egress format"),
            ("not-an-address,GB,GB-EN,London,", "invalid network"),
        ] {
            let e = Catalogue::parse(&[("f.csv", text)]).unwrap_err();
            assert!(e.starts_with("f.csv: line "), "{e}");
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        assert!(
            Catalogue::parse(&[("empty", "# nothing\n\n")])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn scanner_asns_exclude_google_and_microsoft() {
        assert_eq!(scanner_asn(22843), Some("Proofpoint"));
        assert_eq!(scanner_asn(16417), Some("Cisco"));
        assert_eq!(scanner_asn(15169), None, "Google");
        assert_eq!(scanner_asn(8075), None, "Microsoft");
    }

    /// A brute-force check of the flattening against a linear longest-prefix scan.
    #[test]
    fn flattening_agrees_with_a_linear_scan() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut text = String::from("prefix,kind,label,certainty,source\n");
        let mut nets = Vec::new();
        for i in 0..300 {
            // Addresses within 10.0.0.0/12 so that prefixes nest often.
            let a = 0x0a00_0000u32 | (rnd() as u32 & 0x000f_ffff);
            let len = 12 + (rnd() % 21) as u8;
            let cidr: Cidr = format!("{}/{len}", std::net::Ipv4Addr::from(a))
                .parse()
                .unwrap();
            text.push_str(&format!("{cidr},scanner,n{i},certain,x\n"));
            nets.push((cidr, format!("n{i}")));
        }
        let c = Catalogue::parse(&[("r", &text)]).unwrap();
        for _ in 0..5000 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(
                0x0a00_0000u32 | (rnd() as u32 & 0x000f_ffff),
            ));
            // Linear: the longest prefix, the later row on a tie.
            let want = nets
                .iter()
                .filter(|(n, _)| n.contains(a))
                .fold(None::<&(Cidr, String)>, |best, cand| match best {
                    Some(b) if b.0.prefix() > cand.0.prefix() => Some(b),
                    _ => Some(cand),
                })
                .map(|(_, l)| l.clone());
            assert_eq!(label(&c, &a.to_string()), want, "{a}");
        }
    }
}
