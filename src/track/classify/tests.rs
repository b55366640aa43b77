//! Tests of the classifier, rule by rule.

use super::*;

const WINDOW: Duration = Duration::from_secs(5);
const WINDOWS: Windows = Windows {
    machine: WINDOW,
    probable: Duration::from_secs(900),
};

fn at(ua: &str, hints: &Hints, seen: &Seen<'_>, since: Option<Duration>) -> Classification {
    classify(ua, hints, seen, since, &WINDOWS)
}

fn late(ua: &str) -> Classification {
    at(
        ua,
        &Hints::default(),
        &Seen::default(),
        Some(Duration::from_secs(3600)),
    )
}

#[track_caller]
fn check(ua: &str, client: &str, device: Device, reason: Option<&str>) {
    let c = late(ua);
    assert_eq!(
        (c.client.as_str(), c.device, c.machine, c.machine_reason),
        (client, device, reason.is_some(), reason),
        "{ua}"
    );
}

// One test per table row. Sources of the strings are cited on each.

#[test]
fn gmail_image_proxy() {
    // Gmail's image proxy; the same string appears in Mandrill's open-webhook examples and in
    // countless tracking-server logs since Gmail started proxying images (Dec 2013).
    // It fetches when the reader opens the message: a person (mautic #16069).
    let ua =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    check(ua, "Gmail", Webmail, None);
    assert_eq!(late(ua).proxy, Some(Proxy::Google));
    assert_eq!(late(ua).kind(), OpenKind::Proxied);
}

#[test]
fn gmail_prefetch_at_delivery() {
    // Gmail's fetcher at delivery time (mautic PR #10245; ankane/ahoy_email #139, quoting
    // GMass's "false opens in Gmail").
    let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0";
    check(ua, "Gmail", Unknown, Some("gmail-prefetch"));
    assert_eq!(late(ua).proxy, Some(Proxy::Google));
}

#[test]
fn yahoo_mail_proxy() {
    // Yahoo's proxy; the UA names its own help page (help.yahoo.com SLN28749).
    let ua = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html";
    check(ua, "Yahoo Mail", Webmail, None);
    assert_eq!(late(ua).proxy, Some(Proxy::Yahoo));
    check(
        "Mozilla/5.0 (compatible; YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html)",
        "Yahoo Mail",
        Webmail,
        None,
    );
}

#[test]
fn apple_mail_privacy_protection() {
    // The bare UA of Apple's MPP prefetch, as ESPs report it (e.g. SocketLabs' "Identifying
    // Apple MPP opens" help article; see the module docs for the limits).
    check("Mozilla/5.0", "Apple Mail", ProxyDevice, Some("apple-mpp"));
    check(
        " Mozilla/5.0 ",
        "Apple Mail",
        ProxyDevice,
        Some("apple-mpp"),
    );
    assert_eq!(late("Mozilla/5.0").proxy, Some(Proxy::Apple));
}

#[test]
fn barracuda_scanner() {
    // Listed among filtered bot user agents in Braze's "Bot filtering" documentation.
    check(
        "Barracuda Sentinel (EE)",
        "Barracuda",
        Unknown,
        Some("security-scanner"),
    );
}

#[test]
fn mimecast_scanner() {
    // Mimecast does not publish its fetcher's UA; vendor token as matched by other open
    // trackers (synthetic full string).
    check(
        "Mozilla/5.0 (compatible; Mimecast Link Scanner)",
        "Mimecast",
        Unknown,
        Some("security-scanner"),
    );
}

#[test]
fn proofpoint_scanner() {
    // Proofpoint does not publish its UA either; vendor token (synthetic full string).
    check(
        "Mozilla/5.0 (compatible; Proofpoint URL Defense)",
        "Proofpoint",
        Unknown,
        Some("security-scanner"),
    );
}

#[test]
fn office_existence_discovery() {
    // Microsoft Office's link existence check, seen in web-server logs when a URL is pasted
    // into Office documents and mail.
    let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Microsoft Office Existence Discovery";
    check(ua, "Microsoft Office", Unknown, Some("link-checker"));
}

#[test]
fn headless_chrome() {
    // Chromium's headless shell UA (`chrome --headless`), Chrome 120 on Linux.
    let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.71 Safari/537.36";
    check(ua, "HeadlessChrome", Unknown, Some("headless-browser"));
}

#[test]
fn http_libraries() {
    // python-requests: listed in Braze's bot-filtering documentation.
    check(
        "python-requests/2.32.3",
        "python-requests",
        Unknown,
        Some("http-library"),
    );
    // CPython urllib's default: "Python-urllib/<major>.<minor>" (Lib/urllib/request.py).
    check(
        "Python-urllib/3.11",
        "Python urllib",
        Unknown,
        Some("http-library"),
    );
    // aiohttp's default: "Python/<v> aiohttp/<v>" (aiohttp/http.py SERVER_SOFTWARE).
    check(
        "Python/3.10 aiohttp/3.8.1",
        "aiohttp",
        Unknown,
        Some("http-library"),
    );
    // Go's net/http default (net/http/request.go defaultUserAgent).
    check(
        "Go-http-client/1.1",
        "Go http client",
        Unknown,
        Some("http-library"),
    );
    // curl's default "curl/VERSION" (curl(1), --user-agent); Debian 12 ships 7.88.1.
    check("curl/7.88.1", "curl", Unknown, Some("http-library"));
    // GNU Wget's default "Wget/VERSION"; Debian 12 ships 1.21.3.
    check("Wget/1.21.3", "Wget", Unknown, Some("http-library"));
    // OkHttp's default "okhttp/VERSION" (okhttp3.internal.userAgent).
    check("okhttp/4.12.0", "OkHttp", Unknown, Some("http-library"));
    // Perl LWP's default "libwww-perl/VERSION" (LWP::UserAgent::_agent).
    check(
        "libwww-perl/6.72",
        "libwww-perl",
        Unknown,
        Some("http-library"),
    );
}

#[test]
fn outlook_mobile() {
    // Microsoft Learn, "Securing Outlook for iOS and Android in Exchange Online": UserAgent
    // values `Outlook-iOS/2.0` and `Outlook-Android/2.0`.
    check("Outlook-iOS/2.0", "Outlook", Mobile, None);
    check("Outlook-Android/2.0", "Outlook", Mobile, None);
}

#[test]
fn outlook_desktop() {
    // Outlook for Microsoft 365 on Windows fetching remote images (widely logged; also in
    // public open-tracker test suites).
    check(
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)",
        "Outlook",
        Desktop,
        None,
    );
    // Outlook 2016+/Office image fetches via urlmon.
    check(
        "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
        "Outlook",
        Desktop,
        None,
    );
}

#[test]
fn outlook_msoffice_token_alone() {
    // Older Outlook builds send only the MSOffice token (Outlook 2013: "MSOffice 15").
    check(
        "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.2; Trident/7.0; MSOffice 15)",
        "Outlook",
        Desktop,
        None,
    );
}

#[test]
fn thunderbird() {
    // The User-Agent header of a Thunderbird 115.4.2 message archived on lore.kernel.org
    // (dri-devel, Nov 2023); Thunderbird sends the same string over HTTP.
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.4.2";
    check(ua, "Thunderbird", Desktop, None);
}

#[test]
fn samsung_email() {
    // Samsung Email renders in an Android WebView and appends its own product token; the
    // full string here is assembled from the Android WebView UA (synthetic).
    let ua = "Mozilla/5.0 (Linux; Android 13; SM-S911B; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/114.0.5735.196 Mobile Safari/537.36 SamsungEmail/6.1.90.16";
    check(ua, "Samsung Email", Mobile, None);
}

#[test]
fn iphone_and_ipad_mail() {
    // WebKit's default WKWebView UA on iOS (Source/WebCore/platform/ios/UserAgentIOS.mm:
    // no "Version/" or "Safari/" unless the app adds an application name); "Mobile/15E148" is
    // the frozen build token. This is what Mail on iOS 16/17 sends.
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    check(iphone, "Apple Mail", Mobile, None);
    let ipad = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    check(ipad, "Apple Mail", Mobile, None);
}

#[test]
fn apple_mail_macos() {
    // WebKit's default WKWebView UA on macOS (Source/WebCore/platform/mac/UserAgentMac.mm), the
    // string Apple Mail sends: the OS version is frozen at 10_15_7.
    let ua =
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)";
    check(ua, "Apple Mail", Desktop, None);
}

#[test]
fn browsers_fall_back_to_woothee() {
    // Chrome 120 on Windows (Chrome's reduced UA format, chromium.org "User-Agent Reduction").
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    check(chrome, "Chrome", Webmail, None);
    // Safari 17 on macOS is a browser, not Apple Mail: it carries Version/ and Safari/.
    let safari = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15";
    check(safari, "Safari", Webmail, None);
    // Mobile Safari on iPhone.
    let msafari = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    check(msafari, "Safari", Mobile, None);
    // Googlebot (Google Search Central, "Googlebot" crawler docs).
    check(
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Googlebot",
        Unknown,
        Some("crawler"),
    );
}

#[test]
fn empty_user_agent_is_a_machine() {
    check("", "unknown", Unknown, Some("no-user-agent"));
    check("something-nobody-knows", "unknown", Unknown, None);
}

#[test]
fn early_load_marks_a_person_client_as_machine() {
    let ua =
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)";
    let none = Seen::default();
    let h = Hints::default();
    let c = at(ua, &h, &none, Some(Duration::from_millis(1200)));
    assert_eq!(
        (c.client.as_str(), c.machine, c.machine_reason),
        ("Apple Mail", true, Some("early-load"))
    );
    let c = at(ua, &h, &none, Some(WINDOW));
    assert!(!c.machine, "the window is exclusive at its end");
    let c = at(ua, &h, &none, None);
    assert!(!c.machine, "unknown timing is not evidence");
    // A proxy fetching seconds after delivery is a machine too, and still names its proxy.
    let gp =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    let c = at(gp, &h, &none, Some(Duration::ZERO));
    assert_eq!(
        (c.machine_reason, c.proxy),
        (Some("early-load"), Some(Proxy::Google))
    );
    // Windows of 0 turn timing off.
    let c = classify(ua, &h, &none, Some(Duration::ZERO), &Windows::NONE);
    assert!(!c.machine);
}

#[test]
fn request_hints_come_first() {
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let none = Seen::default();
    let late = Some(Duration::from_secs(3600));
    let head = Hints {
        head: true,
        prefetch: true,
        ..Hints::default()
    };
    assert_eq!(
        at(chrome, &head, &none, late).machine_reason,
        Some("head-request")
    );
    let prefetch = Hints {
        prefetch: true,
        ..Hints::default()
    };
    assert_eq!(
        at("", &prefetch, &none, late).machine_reason,
        Some("prefetch-header")
    );
    assert_eq!(
        at("", &Hints::default(), &none, late).machine_reason,
        Some("no-user-agent")
    );
}

#[test]
fn networks_decide_by_certainty_and_window() {
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/80.0.3987.132 Safari/537.36";
    let h = Hints::default();
    let early = Some(Duration::from_secs(30));
    let late = Some(Duration::from_secs(3600));
    let net = |kind, certainty| Seen {
        network: Some((kind, certainty)),
        scanner_asn: false,
        label: "Microsoft Defender",
    };
    let certain = net(NetKind::Scanner, Certainty::Certain);
    let c = at(chrome, &h, &certain, late);
    assert_eq!(
        (c.client.as_str(), c.machine_reason, c.device),
        ("Microsoft Defender", Some("scanner-network"), Unknown)
    );
    let probable = net(NetKind::Scanner, Certainty::Probable);
    assert_eq!(
        at(chrome, &h, &probable, early).machine_reason,
        Some("scanner-network")
    );
    let c = at(chrome, &h, &probable, late);
    assert_eq!((c.machine, c.client.as_str()), (false, "Chrome"));
    // A provider's probable network: machine at delivery, a proxied person later.
    let ms = net(NetKind::Provider(Proxy::Microsoft), Certainty::Probable);
    let c = at(chrome, &h, &ms, early);
    assert_eq!(
        (c.machine_reason, c.proxy),
        (Some("scanner-network"), Some(Proxy::Microsoft))
    );
    let c = at(chrome, &h, &ms, late);
    assert_eq!(c.kind(), OpenKind::Proxied);
    let apple = net(NetKind::Provider(Proxy::Apple), Certainty::Probable);
    let mail = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
    assert_eq!(
        at(mail, &h, &apple, early).machine_reason,
        Some("apple-mpp")
    );
    let c = at(mail, &h, &apple, late);
    assert_eq!(
        (c.kind(), c.client.as_str(), c.device),
        (OpenKind::Proxied, "Apple Mail", Mobile)
    );
    // A known user agent keeps its own name from a scanner's network.
    let c = at(mail, &h, &certain, late);
    assert_eq!(
        (c.client.as_str(), c.machine_reason),
        ("Apple Mail", Some("scanner-network"))
    );
    // ASN: machine, named after the vendor.
    let asn = Seen {
        network: None,
        scanner_asn: true,
        label: "Proofpoint",
    };
    let c = at(chrome, &h, &asn, late);
    assert_eq!(
        (c.client.as_str(), c.machine_reason),
        ("Proofpoint", Some("scanner-asn"))
    );
}

#[test]
fn every_reason_is_in_the_vocabulary() {
    for r in RULES.iter().filter_map(|r| r.machine) {
        assert!(REASONS.contains(&r), "{r}");
    }
}

#[test]
fn mobile_client_hint() {
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let mobile = Hints {
        mobile: true,
        ..Hints::default()
    };
    let c = at(chrome, &mobile, &Seen::default(), None);
    assert_eq!((c.device, c.machine), (Device::Mobile, false));
}

#[test]
fn every_rule_row_is_reachable() {
    // A row shadowed by an earlier one would be dead: check each row's client appears for
    // at least one of the strings above (cheap guard while the table grows).
    let samples = [
        "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0",
        "via ggpht.com GoogleImageProxy",
        "YahooMailProxy",
        "Mozilla/5.0",
        "Barracuda Sentinel (EE)",
        "Mimecast",
        "Proofpoint",
        "Microsoft Office Existence Discovery",
        "HeadlessChrome/120",
        "python-requests/2",
        "Python-urllib/3.11",
        "Python/3.10 aiohttp/3.8.1",
        "Go-http-client/1.1",
        "curl/8",
        "Wget/1",
        "okhttp/4",
        "libwww-perl/6",
        "Outlook-iOS/2.0",
        "Outlook-Android/2.0",
        "Microsoft Outlook 16",
        "ms-office",
        "MSOffice 16",
        "Thunderbird/115",
        "SamsungEmail/6",
        "(iPhone) AppleWebKit/605 (KHTML, like Gecko)",
        "(Macintosh) AppleWebKit/605 (KHTML, like Gecko)",
    ];
    assert_eq!(samples.len(), RULES.len());
    for (i, (s, r)) in samples.iter().zip(RULES).enumerate() {
        let lc = s.to_ascii_lowercase();
        let first = RULES.iter().position(|r| r.pattern.matches(&lc));
        assert_eq!(
            first,
            Some(i),
            "row {i} ({}) is not the first match for {s:?}",
            r.client
        );
    }
}
