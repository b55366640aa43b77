//! Open classification: user agent (+ a few request headers + timing) → client, device, and
//! whether a machine rather than a person most likely loaded the pixel.
//!
//! Mail-client and machine rules are ours and live in ONE table, [`RULES`], checked top to bottom
//! (first match wins); adding a client is adding a row and a test with a real user-agent string.
//! Anything the table does not know falls back to `woothee` (generic browsers, OSes, crawlers).
//!
//! # Three kinds of open
//!
//! - **A person, directly**: a mail client or browser fetched the image itself.
//! - **A person through a mail provider's image proxy** (`proxy` names it): Gmail fetches images
//!   through `GoogleImageProxy` when the recipient opens the message, Yahoo through
//!   `YahooMailProxy`; readers behind Outlook.com's or Apple's relays come from the providers'
//!   networks (the catalogue). The reader's device is unknowable behind Gmail's and Yahoo's
//!   proxies (`webmail`).
//! - **A machine** (`machine`, with one reason from [`REASONS`]). First reason that applies:
//!   1. `head-request`: a `HEAD` fetches no image; link checkers and scanners send it.
//!   2. `prefetch-header`: the request says it is a prefetch or preview (`Sec-Purpose`,
//!      `Purpose`, `X-Moz`: `prefetch`; `X-Purpose: preview`).
//!   3. `no-user-agent`: no mail client omits it.
//!   4. A user agent that names a machine: `gmail-prefetch` (Gmail's fetcher at delivery, which
//!      is not its image proxy), `apple-mpp` (Apple Mail Privacy Protection's bare
//!      `Mozilla/5.0`), `headless-browser`, `security-scanner`, `link-checker`,
//!      `http-library`, `crawler`.
//!   5. `scanner-network`: the address is in a scanner's network of the catalogue (`certain`:
//!      always; `probable`: within `tracking.probable_window` of hand-off), or in a mail
//!      provider's `probable` network within that window (for Apple's relay that is
//!      `apple-mpp`: Mail Privacy Protection prefetches at delivery).
//!   6. `scanner-asn`: the address belongs to a scanner vendor's autonomous system
//!      ([`super::networks::SCANNER_ASNS`], with `tracking.asn_db`).
//!   7. `early-load`: within `tracking.machine_window` of the relay handing the message
//!      upstream. No person opens mail that fast; scanners and prefetchers do, proxies too
//!      (Gmail's proxy has been seen fetching seconds after delivery, unopened).
//!
//! # Limits
//!
//! - A scanner that impersonates a current browser from an address no catalogue lists, later
//!   than the machine window, looks like a person.
//! - Apple Mail itself sends WebKit's bare WKWebView user agent: `AppleWebKit/… (KHTML, like
//!   Gecko)` with no `Safari/`, `Version/` or other browser token. Other apps that embed a bare
//!   WKWebView look the same and are reported as Apple Mail.
//! - A desktop browser user agent means a webmail session in a browser (`webmail`); a mobile one
//!   is `mobile`.

use std::time::Duration;

use super::networks::{Certainty, NetKind, Proxy};

/// Every `machine_reason` pixelrelay writes (README "Opens"), in the order they are tried.
pub const REASONS: &[&str] = &[
    "head-request",
    "prefetch-header",
    "no-user-agent",
    "gmail-prefetch",
    "apple-mpp",
    "headless-browser",
    "security-scanner",
    "link-checker",
    "http-library",
    "crawler",
    "scanner-network",
    "scanner-asn",
    "early-load",
    "early-click",
    "link-burst",
];

/// What kind of reader loaded the pixel (SPEC: `desktop|mobile|webmail|proxy|unknown`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// A desktop mail client (Outlook, Apple Mail on macOS, Thunderbird).
    Desktop,
    /// A phone or tablet mail app or browser.
    Mobile,
    /// Webmail, in a browser or behind the provider's image proxy.
    Webmail,
    /// A privacy proxy that hides the reader entirely (Apple MPP).
    Proxy,
    /// Not known (scanners, libraries, unknown agents).
    #[default]
    Unknown,
}

impl Device {
    /// The SPEC's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Desktop => "desktop",
            Device::Mobile => "mobile",
            Device::Webmail => "webmail",
            Device::Proxy => "proxy",
            Device::Unknown => "unknown",
        }
    }
}

/// The three kinds of open (README "Opens").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenKind {
    /// A person's mail client or browser fetched the image itself.
    Person,
    /// A person, through a mail provider's image proxy.
    Proxied,
    /// A machine.
    Machine,
}

impl OpenKind {
    /// The kind of an open with these verdict fields.
    pub fn of(machine: bool, proxy: Option<Proxy>) -> OpenKind {
        match (machine, proxy) {
            (true, _) => OpenKind::Machine,
            (false, Some(_)) => OpenKind::Proxied,
            (false, None) => OpenKind::Person,
        }
    }

    /// `person`, `proxied` or `machine`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenKind::Person => "person",
            OpenKind::Proxied => "proxied",
            OpenKind::Machine => "machine",
        }
    }
}

/// The request itself, besides the user agent: its method and headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// The request announced itself as a prefetch or preview (`Sec-Purpose`, `Purpose`,
    /// `X-Moz`: prefetch; `X-Purpose: preview`).
    pub prefetch: bool,
    /// `Sec-CH-UA-Mobile: ?1` was sent (Chromium client hint).
    pub mobile: bool,
    /// A `HEAD` request.
    pub head: bool,
}

/// What the address says, looked up when the hit arrived (`evidence`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen<'a> {
    /// The catalogue network the address is in, if any.
    pub network: Option<(NetKind, Certainty)>,
    /// The address belongs to a scanner vendor's autonomous system.
    pub scanner_asn: bool,
    /// Who runs that network or system (`Microsoft Defender`, `Proofpoint`); empty if none.
    pub label: &'a str,
}

/// The timing rules' windows, after the relay handed the message upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// `tracking.machine_window`: any load this early is a machine (0: no timing rules).
    pub machine: Duration,
    /// `tracking.probable_window`: a load from a `probable` network this early is a machine.
    pub probable: Duration,
}

impl Windows {
    /// No timing rules at all.
    pub const NONE: Windows = Windows {
        machine: Duration::ZERO,
        probable: Duration::ZERO,
    };
}

/// The verdict on one pixel load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Mail client or browser name (`Gmail`, `Apple Mail`, `Outlook`, `Chrome`, `unknown`, ...),
    /// or the scanner's name for a load from a scanner's network.
    pub client: String,
    /// Kind of reader.
    pub device: Device,
    /// A machine, not a person, most likely loaded the pixel.
    pub machine: bool,
    /// Why `machine` is true: one of [`REASONS`].
    pub machine_reason: Option<&'static str>,
    /// The mail provider whose proxy or relay fetched the image, if known.
    pub proxy: Option<Proxy>,
}

impl Classification {
    /// Person, proxied or machine.
    pub fn kind(&self) -> OpenKind {
        OpenKind::of(self.machine, self.proxy)
    }
}

/// How a rule recognises a user agent. Needles are lowercase; the UA is lowercased once.
#[derive(Debug, Clone, Copy)]
enum Match {
    /// The UA contains this.
    Contains(&'static str),
    /// The trimmed UA is exactly this.
    Exact(&'static str),
    /// Apple's WebKit without any browser token, on the given platform needles (any of them).
    BareWebKit(&'static [&'static str]),
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
struct Rule {
    /// The test on the lowercased UA.
    pattern: Match,
    /// Reported client name.
    client: &'static str,
    /// Reported device.
    device: Device,
    /// `Some(reason)` when a hit matching this row is a machine.
    machine: Option<&'static str>,
    /// The provider whose fetcher this is.
    proxy: Option<Proxy>,
}

const fn rule(
    pattern: Match,
    client: &'static str,
    device: Device,
    machine: Option<&'static str>,
) -> Rule {
    Rule {
        pattern,
        client,
        device,
        machine,
        proxy: None,
    }
}

const fn via(proxy: Proxy, r: Rule) -> Rule {
    Rule {
        proxy: Some(proxy),
        ..r
    }
}

use Device::{Desktop, Mobile, Proxy as ProxyDevice, Unknown, Webmail};
use Match::{BareWebKit, Contains, Exact};

/// The mail-client and machine rules, first match wins. Each row has a test below.
const RULES: &[Rule] = &[
    // Gmail's fetcher at delivery time, which is not its image proxy: a stale Chrome/Edge
    // string with a second `Mozilla/5.0` at the end (mautic PR #10245, ahoy_email #139).
    via(
        Proxy::Google,
        rule(
            Contains("edge/12.246 mozilla/5.0"),
            "Gmail",
            Unknown,
            Some("gmail-prefetch"),
        ),
    ),
    // Webmail image proxies: a person opened the message (mautic #16069).
    via(
        Proxy::Google,
        rule(Contains("googleimageproxy"), "Gmail", Webmail, None),
    ),
    via(
        Proxy::Yahoo,
        rule(Contains("yahoomailproxy"), "Yahoo Mail", Webmail, None),
    ),
    // Apple Mail Privacy Protection: the bare UA.
    via(
        Proxy::Apple,
        rule(
            Exact("mozilla/5.0"),
            "Apple Mail",
            ProxyDevice,
            Some("apple-mpp"),
        ),
    ),
    // Security scanners and link checkers.
    rule(
        Contains("barracuda"),
        "Barracuda",
        Unknown,
        Some("security-scanner"),
    ),
    rule(
        Contains("mimecast"),
        "Mimecast",
        Unknown,
        Some("security-scanner"),
    ),
    rule(
        Contains("proofpoint"),
        "Proofpoint",
        Unknown,
        Some("security-scanner"),
    ),
    rule(
        Contains("existence discovery"),
        "Microsoft Office",
        Unknown,
        Some("link-checker"),
    ),
    rule(
        Contains("headlesschrome"),
        "HeadlessChrome",
        Unknown,
        Some("headless-browser"),
    ),
    rule(
        Contains("python-requests"),
        "python-requests",
        Unknown,
        Some("http-library"),
    ),
    rule(
        Contains("python-urllib"),
        "Python urllib",
        Unknown,
        Some("http-library"),
    ),
    rule(
        Contains("aiohttp"),
        "aiohttp",
        Unknown,
        Some("http-library"),
    ),
    rule(
        Contains("go-http-client"),
        "Go http client",
        Unknown,
        Some("http-library"),
    ),
    rule(Contains("curl/"), "curl", Unknown, Some("http-library")),
    rule(Contains("wget/"), "Wget", Unknown, Some("http-library")),
    rule(Contains("okhttp"), "OkHttp", Unknown, Some("http-library")),
    rule(
        Contains("libwww-perl"),
        "libwww-perl",
        Unknown,
        Some("http-library"),
    ),
    // Mail clients.
    rule(Contains("outlook-ios"), "Outlook", Mobile, None),
    rule(Contains("outlook-android"), "Outlook", Mobile, None),
    rule(Contains("microsoft outlook"), "Outlook", Desktop, None),
    rule(Contains("ms-office"), "Outlook", Desktop, None),
    rule(Contains("msoffice"), "Outlook", Desktop, None),
    rule(Contains("thunderbird/"), "Thunderbird", Desktop, None),
    rule(Contains("samsungemail/"), "Samsung Email", Mobile, None),
    rule(BareWebKit(&["iphone", "ipad"]), "Apple Mail", Mobile, None),
    rule(BareWebKit(&["macintosh"]), "Apple Mail", Desktop, None),
];

/// Tokens that mean "a browser, not a bare WebKit view".
const BROWSER_TOKENS: &[&str] = &[
    "safari/", "version/", "chrome/", "crios/", "fxios/", "firefox/", "edg/", "edgios/", "opr/",
    "gsa/",
];

impl Match {
    fn matches(self, ua: &str) -> bool {
        match self {
            Match::Contains(n) => ua.contains(n),
            Match::Exact(n) => ua == n,
            Match::BareWebKit(platforms) => {
                ua.contains("applewebkit/")
                    && ua.contains("(khtml, like gecko)")
                    && platforms.iter().any(|p| ua.contains(p))
                    && !BROWSER_TOKENS.iter().any(|t| ua.contains(t))
            }
        }
    }
}

/// Classifies one pixel load: its user agent, the request's `hints`, what its address is
/// (`seen`), and how long after the relay handed the message upstream it came (`None` if
/// unknown: timing is then no evidence).
pub fn classify(
    user_agent: &str,
    hints: &Hints,
    seen: &Seen<'_>,
    since_relay: Option<Duration>,
    windows: &Windows,
) -> Classification {
    let ua = user_agent.trim().to_ascii_lowercase();
    let matched = RULES.iter().find(|r| r.pattern.matches(&ua));
    let mut c = match matched {
        Some(r) => Classification {
            client: r.client.to_string(),
            device: r.device,
            machine: r.machine.is_some(),
            machine_reason: r.machine,
            proxy: r.proxy,
        },
        None => generic(user_agent.trim(), hints),
    };
    let within = |w: Duration| since_relay.is_some_and(|d| d < w);
    let (net_reason, net_proxy) = match seen.network {
        None => (None, None),
        Some((NetKind::Scanner, Certainty::Certain)) => (Some("scanner-network"), None),
        Some((NetKind::Scanner, Certainty::Probable)) => {
            (within(windows.probable).then_some("scanner-network"), None)
        }
        Some((NetKind::Provider(p), certainty)) => {
            let early = certainty == Certainty::Probable && within(windows.probable);
            let reason = match p {
                Proxy::Apple => "apple-mpp",
                _ => "scanner-network",
            };
            (early.then_some(reason), Some(p))
        }
    };
    c.proxy = c.proxy.or(net_proxy);
    // The request's own words first, then the user agent, then the address, then timing.
    let reason = if hints.head {
        Some("head-request")
    } else if hints.prefetch {
        Some("prefetch-header")
    } else if c.machine_reason.is_some() {
        c.machine_reason
    } else if net_reason.is_some() {
        net_reason
    } else if seen.scanner_asn {
        Some("scanner-asn")
    } else if within(windows.machine) {
        Some("early-load")
    } else {
        None
    };
    // A scanner impersonating a browser is named after whoever runs its network.
    if matched.is_none()
        && matches!(reason, Some("scanner-network" | "scanner-asn"))
        && !seen.label.is_empty()
    {
        c.client = seen.label.to_string();
        c.device = Device::Unknown;
    }
    c.machine = reason.is_some();
    c.machine_reason = reason;
    c
}

/// The fallback: woothee's verdict on a UA no rule knows.
fn generic(ua: &str, hints: &Hints) -> Classification {
    let unknown = |reason: Option<&'static str>| Classification {
        client: "unknown".to_string(),
        device: Device::Unknown,
        machine: reason.is_some(),
        machine_reason: reason,
        proxy: None,
    };
    if ua.is_empty() || ua == "-" {
        return unknown(Some("no-user-agent"));
    }
    let Some(w) = woothee::parser::Parser::new().parse(ua) else {
        return unknown(None);
    };
    let name = if w.name == woothee::woothee::VALUE_UNKNOWN {
        "unknown"
    } else {
        w.name
    };
    let (device, machine) = match w.category {
        "crawler" => (Device::Unknown, Some("crawler")),
        "smartphone" | "mobilephone" => (Device::Mobile, None),
        "pc" if hints.mobile => (Device::Mobile, None),
        // A stock desktop browser reading mail is a webmail session.
        "pc" => (Device::Webmail, None),
        _ => (Device::Unknown, None),
    };
    Classification {
        client: name.to_string(),
        device,
        machine: machine.is_some(),
        machine_reason: machine,
        proxy: None,
    }
}

#[cfg(test)]
mod tests;
