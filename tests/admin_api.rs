//! The admin API over real sockets: authentication on every route, cursor pagination that
//! neither skips nor repeats while opens and messages are written, filters, stats equal to
//! what the test generated, and `/metrics` as valid exposition text, also from a whole relay.

#[path = "admin_support/mod.rs"]
mod support;

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pixelrelay::store::now_ms;
use pixelrelay::track::Device;
use serde_json::Value;
use support::{Admin, Msg, Open, TOKEN, get};

const ROUTES: &[&str] = &[
    "/",
    "/api/v1/messages",
    "/api/v1/messages?limit=5&rcpt=bob",
    "/api/v1/messages/00112233445566778899aabbccddeeff",
    "/api/v1/opens",
    "/api/v1/opens?limit=1",
    "/api/v1/opens?follow=1",
    "/api/v1/stats",
    "/metrics",
    "/nothing-here",
];

#[tokio::test]
async fn every_route_but_healthz_needs_the_token() {
    let a = Admin::start().await;
    let id = a.message(&Msg {
        subject: Some("secret subject".into()),
        ..Msg::new("bob@example.net")
    });
    a.open(&id, &Open::person("Thunderbird", Device::Desktop));
    let wrong = [
        None,
        Some("wrong"),
        Some(""),
        Some(&TOKEN[..TOKEN.len() - 1]),
        Some("test-admin-token-0123456789x"),
    ];
    for route in ROUTES {
        for t in wrong {
            let r = get(a.addr, route, t).await;
            assert_eq!(r.status, 401, "{route} with {t:?}");
            assert!(
                !r.text().contains("secret subject") && !r.text().contains("bob@"),
                "{route}: data leaked without the token"
            );
            if *route != "/" {
                assert_eq!(
                    r.header("www-authenticate"),
                    Some("Bearer realm=\"pixelrelay admin\"")
                );
                assert_eq!(r.json()["error"], "missing or wrong admin token");
            }
        }
        // Other schemes are not accepted either.
        let r = support::request(
            a.addr,
            &format!(
                "GET {route} HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {TOKEN}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(r.status, 401, "{route} with Basic");
    }
    // POST is refused as well, and 401 first without the token.
    let r = support::request(
        a.addr,
        "POST /api/v1/stats HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = support::request(
        a.addr,
        &format!("POST /api/v1/stats HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 405);
    // healthz is open.
    let r = get(a.addr, "/healthz", None).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    // With the token every route answers (the follow stream is only opened).
    for route in ROUTES {
        if route.contains("follow") {
            let s = support::follow(a.addr, None).await;
            assert_eq!(s.header_ct(), Some("application/x-ndjson"));
            continue;
        }
        let r = a.get(route).await;
        let want = match *route {
            "/nothing-here" => 404,
            r if r.contains("00112233") => 404,
            _ => 200,
        };
        assert_eq!(r.status, want, "{route}");
    }
    // The scheme name is case-insensitive (RFC 7235).
    let r = support::request(
        a.addr,
        &format!("GET /api/v1/stats HTTP/1.1\r\nHost: t\r\nAuthorization: bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    // The page: same shell either way, with a strict CSP.
    let page = a.get("/").await;
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    // Self-contained: nothing loaded from elsewhere.
    let html = page.text();
    for needle in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "src=\"//",
    ] {
        assert!(!html.contains(needle), "external asset: {needle}");
    }
    a.stop().await;
}

trait CtHeader {
    fn header_ct(&self) -> Option<&str>;
}

impl CtHeader for support::Stream {
    fn header_ct(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.as_str())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_pages_neither_skip_nor_repeat_under_concurrent_writes() {
    let a = Admin::start().await;
    let id = a.message(&Msg::new("bob@example.net"));
    for _ in 0..300 {
        a.open(&id, &Open::person("Outlook", Device::Desktop));
    }
    let store = a.store.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut ids = Vec::new();
        for i in 0..700 {
            let e = store
                .record_open(
                    &id,
                    &pixelrelay::store::OpenHit {
                        at_ms: now_ms(),
                        ip: "192.0.2.1".parse().unwrap(),
                        user_agent: format!("ua {i}"),
                        classification: pixelrelay::track::Classification {
                            client: "Outlook".into(),
                            device: Device::Desktop,
                            machine: false,
                            machine_reason: None,
                            proxy: None,
                        },
                        country: None,
                        click: None,
                    },
                )
                .unwrap()
                .unwrap();
            ids.push(e.id);
        }
        ids
    });
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/opens?limit=37&cursor={c}"),
            None => "/api/v1/opens?limit=37".to_string(),
        };
        let page = a.get(&path).await.json();
        pages += 1;
        for e in page["items"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    writer.await.unwrap();
    assert!(pages > 8, "{pages}");
    // Newest first, strictly: no repeat.
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "not strictly descending"
    );
    // No skip: exactly every stored open up to the first one listed.
    let all: Vec<String> = a
        .store
        .opens_after(None, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .filter(|i| *i <= seen[0])
        .rev()
        .collect();
    assert_eq!(all.len(), seen.len());
    assert_eq!(all, seen);
    assert!(seen.len() >= 300);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_pages_neither_skip_nor_repeat_under_concurrent_writes() {
    let a = Admin::start().await;
    let base = now_ms() - 3_600_000;
    let mut original = BTreeSet::new();
    for i in 0..200u64 {
        // Pairs share a millisecond: the id breaks the tie.
        let id = a.message(&Msg {
            at_ms: base + i / 2,
            ..Msg::new(&format!("r{i}@example.net"))
        });
        original.insert(id.to_string());
    }
    let store = a.store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..200 {
            let id = pixelrelay::token::MessageId::random();
            store
                .record_message(&pixelrelay::store::MessageRecord {
                    id,
                    queue_id: "W".into(),
                    at_ms: now_ms(),
                    sender: "w@example.com".into(),
                    recipients: vec![format!("w{i}@example.net")],
                    message_id: None,
                    subject: None,
                    size: 1,
                    tracked: true,
                    skip_reason: None,
                })
                .unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/messages?limit=23&cursor={c}"),
            None => "/api/v1/messages?limit=23".to_string(),
        };
        let page = a.get(&path).await.json();
        for m in page["items"].as_array().unwrap() {
            seen.push((
                m["at"].as_str().unwrap().to_string(),
                m["id"].as_str().unwrap().to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    writer.await.unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "not strictly newest first"
    );
    let ids: BTreeSet<String> = seen.iter().map(|(_, i)| i.clone()).collect();
    assert_eq!(ids.len(), seen.len(), "a message was listed twice");
    assert!(
        original.is_subset(&ids),
        "skipped {} messages",
        original.difference(&ids).count()
    );
    // Messages written during the walk may show up (newer than the walk's cursor, or in the
    // cursor's own millisecond with a lower id), but never twice and never instead of another.
    a.stop().await;
}

#[tokio::test]
async fn message_filters_and_bad_parameters() {
    let a = Admin::start().await;
    let day = 86_400_000u64;
    let t0 = 1_795_000_000_000u64 - 1_795_000_000_000 % day; // a midnight in 2026
    let mut ids = HashMap::new();
    for (name, rcpt, sender, at, opened) in [
        ("a1", "alice@example.net", "news@a.example", t0 + 1000, true),
        (
            "a2",
            "Alice@Example.net",
            "news@b.example",
            t0 + day + 1000,
            false,
        ),
        (
            "b1",
            "bob@example.net",
            "news@a.example",
            t0 + 2 * day,
            true,
        ),
        (
            "b2",
            "bob@example.net",
            "billing@b.example",
            t0 + 3 * day,
            false,
        ),
        (
            "c1",
            "carol@example.org",
            "news@a.example",
            t0 + 3 * day + 5,
            true,
        ),
    ] {
        let id = a.message(&Msg {
            at_ms: at,
            sender: sender.into(),
            ..Msg::new(rcpt)
        });
        if opened {
            a.open(&id, &Open::person("Apple Mail", Device::Mobile));
        }
        ids.insert(id.to_string(), name);
    }
    async fn listed(a: &Admin, ids: &HashMap<String, &'static str>, q: &str) -> Vec<&'static str> {
        let r = a.get(&format!("/api/v1/messages?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ids[m["id"].as_str().unwrap()])
            .collect()
    }
    macro_rules! names {
        ($q:expr) => {
            listed(&a, &ids, $q).await
        };
    }
    assert_eq!(names!(""), ["c1", "b2", "b1", "a2", "a1"]);
    assert_eq!(names!("rcpt=alice"), ["a2", "a1"]);
    assert_eq!(names!("rcpt=BOB%40example.net"), ["b2", "b1"]);
    assert_eq!(names!("sender=news%40a"), ["c1", "b1", "a1"]);
    assert_eq!(names!("opened=true"), ["c1", "b1", "a1"]);
    assert_eq!(names!("opened=0"), ["b2", "a2"]);
    assert_eq!(names!("rcpt=bob&opened=false"), ["b2"]);
    let d = |n: u64| pixelrelay::track::format_rfc3339_ms(t0 + n * day)[..10].to_string();
    assert_eq!(names!(&format!("since={}", d(2))), ["c1", "b2", "b1"]);
    assert_eq!(names!(&format!("until={}", d(2))), ["a2", "a1"]);
    assert_eq!(
        names!(&format!("since={}&until={}", d(1), d(3))),
        ["b1", "a2"]
    );
    assert_eq!(
        names!(&format!(
            "since={}&until={}",
            t0 + 3 * day,
            t0 + 3 * day + 5
        )),
        ["b2"]
    );
    let iso = pixelrelay::track::format_rfc3339_ms(t0 + 3 * day + 5);
    assert_eq!(names!(&format!("since={iso}&sender=news")), ["c1"]);
    assert_eq!(names!("limit=2&rcpt=example"), ["c1", "b2"]);

    // One message with its opens.
    let (b1, _) = ids.iter().find(|(_, n)| **n == "b1").unwrap();
    let m = a.get(&format!("/api/v1/messages/{b1}")).await;
    assert_eq!(m.status, 200);
    let m = m.json();
    assert_eq!(m["id"], b1.as_str());
    assert_eq!(m["open_events"].as_array().unwrap().len(), 1);
    assert_eq!(m["open_events"][0]["client"], "Apple Mail");
    assert_eq!(m["open_events"][0]["device"], "mobile");

    for (q, status) in [
        ("/api/v1/messages?limit=0", 400),
        ("/api/v1/messages?limit=1001", 400),
        ("/api/v1/messages?limit=x", 400),
        ("/api/v1/messages?opened=maybe", 400),
        ("/api/v1/messages?since=yesterday", 400),
        ("/api/v1/messages?cursor=zz", 400),
        ("/api/v1/opens?cursor=zz", 400),
        ("/api/v1/opens?follow=1&since=nothex", 400),
        ("/api/v1/messages/not-an-id", 400),
        ("/api/v1/messages/00000000000000000000000000000000", 404),
    ] {
        let r = a.get(q).await;
        assert_eq!(r.status, status, "{q}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{q}");
    }
    a.stop().await;
}

#[tokio::test]
async fn stats_equal_what_was_generated() {
    let a = Admin::start().await;
    let opens_plan: &[&[Open]] = &[
        &[
            Open::machine("Gmail", Device::Webmail),
            Open::person("Gmail", Device::Webmail),
            Open::person("Gmail", Device::Webmail),
        ],
        &[Open::machine("Apple Mail", Device::Proxy)],
        &[
            Open::person("Outlook", Device::Desktop),
            Open::machine("Outlook", Device::Desktop),
        ],
        &[Open::person("Apple Mail", Device::Mobile)],
        &[],
        &[],
    ];
    let mut tracked = Vec::new();
    for (i, _) in opens_plan.iter().enumerate() {
        tracked.push(a.message(&Msg::new(&format!("t{i}@example.net"))));
    }
    for reason in ["no_html", "no_html", "no_html", "recipients", "recipients"] {
        a.message(&Msg {
            skip: Some(reason.into()),
            ..Msg::new("s@example.net")
        });
    }
    a.message(&Msg {
        accepted: false,
        ..Msg::new("r@example.net")
    });
    let mut by_client: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut by_device: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let (mut opens, mut machine, mut unique, mut unique_human) = (0u64, 0u64, 0u64, 0u64);
    for (id, plan) in tracked.iter().zip(opens_plan) {
        for o in *plan {
            a.open(id, o);
            opens += 1;
            machine += u64::from(o.machine);
            let c = by_client.entry(o.client).or_default();
            c.0 += 1;
            c.1 += u64::from(o.machine);
            let d = by_device.entry(o.device.as_str()).or_default();
            d.0 += 1;
            d.1 += u64::from(o.machine);
        }
        unique += u64::from(!plan.is_empty());
        unique_human += u64::from(plan.iter().any(|o| !o.machine));
    }
    let s = a.get("/api/v1/stats").await.json();
    assert_eq!(s["recorded"], 12);
    assert_eq!(s["relayed"], 11);
    assert_eq!(s["rejected"], 1);
    assert_eq!(s["tracked"], 6);
    assert_eq!(s["skipped_total"], 5);
    assert_eq!(
        s["skipped"],
        serde_json::json!({"no_html": 3, "recipients": 2})
    );
    assert_eq!(s["opens"], opens);
    assert_eq!(s["machine_opens"], machine);
    assert_eq!(s["human_opens"], opens - machine);
    assert_eq!(s["unique_opens"], unique);
    assert_eq!(s["unique_human_opens"], unique_human);
    assert_eq!(s["open_rate"].as_f64().unwrap(), unique as f64 / 6.0);
    assert_eq!(
        s["human_open_rate"].as_f64().unwrap(),
        unique_human as f64 / 6.0
    );
    let breakdown = |v: &Value| -> BTreeMap<String, (u64, u64)> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    (c["opens"].as_u64().unwrap(), c["machine"].as_u64().unwrap()),
                )
            })
            .collect()
    };
    let own = |m: BTreeMap<&str, (u64, u64)>| -> BTreeMap<String, (u64, u64)> {
        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    };
    assert_eq!(breakdown(&s["by_client"]), own(by_client));
    assert_eq!(breakdown(&s["by_device"]), own(by_device));
    let today = pixelrelay::clock::day(now_ms());
    let days = breakdown(&s["by_day"]);
    // Opens were stamped "now": all on today (or yesterday if the test straddled midnight).
    assert_eq!(days.values().map(|c| c.0).sum::<u64>(), opens);
    assert!(days.contains_key(&today) || days.len() == 2, "{days:?}");
    a.stop().await;
}

/// A strict parser for the text exposition format (OpenMetrics 1.0, which prometheus-client
/// writes and Prometheus scrapes): every sample belongs to the family declared before it, with
/// the suffixes its type allows, valid names, quoted and escaped label values, float values,
/// cumulative histogram buckets ending in `+Inf` equal to `_count`, no duplicates, `# EOF` last.
/// Returns `name{labels}` → value.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    fn name_ok(n: &str) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }
    fn parse_value(v: &str) -> f64 {
        match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => v
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value {v:?}")),
        }
    }
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(lines.last(), Some(&""), "text must end with a newline");
    let lines = &lines[..lines.len() - 1];
    assert_eq!(lines.last(), Some(&"# EOF"), "must end with # EOF");
    let mut families: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut samples = BTreeMap::new();
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (n, line) in lines[..lines.len() - 1].iter().enumerate() {
        let ctx = format!("line {}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or_else(|| panic!("{ctx}"));
            assert!(name_ok(name), "{ctx}");
            let arg = parts.next().unwrap_or_else(|| panic!("{ctx}"));
            match kind {
                "TYPE" => {
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "info",
                            "stateset",
                            "unknown",
                            "gaugehistogram"
                        ]
                        .contains(&arg),
                        "{ctx}"
                    );
                    assert!(
                        families.insert(name.to_string(), arg.to_string()).is_none(),
                        "family declared twice: {ctx}"
                    );
                    current = Some((name.to_string(), arg.to_string()));
                }
                "HELP" | "UNIT" => {
                    if kind == "UNIT" {
                        assert!(
                            name.ends_with(&format!("_{arg}")),
                            "unit not in name: {ctx}"
                        );
                    }
                }
                _ => panic!("unknown descriptor {ctx}"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{ctx}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{ctx}"));
        let value = parse_value(value);
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{ctx}"));
                let mut labels = Vec::new();
                let b = body.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    let eq = body[i..].find('=').unwrap_or_else(|| panic!("{ctx}")) + i;
                    let lname = &body[i..eq];
                    assert!(name_ok(lname) && !lname.contains(':'), "label name {ctx}");
                    assert_eq!(b.get(eq + 1), Some(&b'"'), "{ctx}");
                    let mut j = eq + 2;
                    let mut val = String::new();
                    loop {
                        match b.get(j) {
                            Some(b'\\') => {
                                match b.get(j + 1) {
                                    Some(b'\\') => val.push('\\'),
                                    Some(b'"') => val.push('"'),
                                    Some(b'n') => val.push('\n'),
                                    _ => panic!("bad escape {ctx}"),
                                }
                                j += 2;
                            }
                            Some(b'"') => break,
                            Some(_) => {
                                let ch = body[j..].chars().next().unwrap();
                                val.push(ch);
                                j += ch.len_utf8();
                            }
                            None => panic!("unterminated label value {ctx}"),
                        }
                    }
                    labels.push((lname.to_string(), val));
                    i = j + 1;
                    if i < b.len() {
                        assert_eq!(b[i], b',', "{ctx}");
                        i += 1;
                    }
                }
                (name, labels)
            }
        };
        assert!(name_ok(name), "{ctx}");
        let (family, kind) = current
            .clone()
            .unwrap_or_else(|| panic!("sample before TYPE {ctx}"));
        let suffix = name
            .strip_prefix(family.as_str())
            .unwrap_or_else(|| panic!("sample {name} outside its family {family}: {ctx}"));
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[
                "", "_total", "_bucket", "_sum", "_count", "_created", "_info",
            ],
        };
        assert!(
            allowed.contains(&suffix),
            "suffix {suffix:?} for a {kind}: {ctx}"
        );
        if kind == "counter" && suffix == "_total" {
            assert!(value >= 0.0, "negative counter {ctx}");
        }
        let le = labels
            .iter()
            .find(|(k, _)| k == "le")
            .map(|(_, v)| v.clone());
        let others: Vec<String> = labels
            .iter()
            .filter(|(k, _)| k != "le")
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        if suffix == "_bucket" {
            let le = parse_value(&le.unwrap_or_else(|| panic!("bucket without le {ctx}")));
            buckets
                .entry(format!("{family}{{{}}}", others.join(",")))
                .or_default()
                .push((le, value));
        }
        let mut all: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        all.sort();
        let key = if all.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", all.join(","))
        };
        assert!(
            samples.insert(key, value).is_none(),
            "duplicate sample {ctx}"
        );
    }
    for (series, b) in &buckets {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{series}: buckets not cumulative"
        );
        let (le, last) = *b.last().unwrap();
        assert!(le.is_infinite(), "{series}: no +Inf bucket");
        let count_key = series
            .replacen('{', "_count{", 1)
            .replace("_count{}", "_count");
        assert_eq!(
            samples.get(&count_key),
            Some(&last),
            "{series}: +Inf bucket != _count ({count_key})"
        );
    }
    samples
}

#[tokio::test]
async fn metrics_are_valid_exposition_with_the_store_numbers() {
    let a = Admin::start().await;
    let id = a.message(&Msg::new("bob@example.net"));
    a.open(&id, &Open::machine("Gmail", Device::Webmail));
    a.open(&id, &Open::machine("Gmail", Device::Webmail));
    a.open(&id, &Open::person("Gmail", Device::Webmail));
    a.open(&id, &Open::person("Apple Mail", Device::Mobile));
    // The size is what is on disk: make sure something is.
    a.store.flush().await.unwrap();
    let r = a.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.header("content-type")
    );
    let m = parse_exposition(&r.text());
    let v = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} missing in\n{}", r.text()))
    };
    assert_eq!(
        v("pixelrelay_opens_total{device=\"webmail\",machine=\"true\"}"),
        2.0
    );
    assert_eq!(
        v("pixelrelay_opens_total{device=\"webmail\",machine=\"false\"}"),
        1.0
    );
    assert_eq!(
        v("pixelrelay_opens_total{device=\"mobile\",machine=\"false\"}"),
        1.0
    );
    assert_eq!(
        v("pixelrelay_open_verdicts_total{kind=\"machine\",reason=\"scanner-network\"}"),
        2.0
    );
    assert_eq!(
        v("pixelrelay_open_verdicts_total{kind=\"person\",reason=\"\"}"),
        2.0
    );
    assert_eq!(v("pixelrelay_pixel_requests_total{result=\"valid\"}"), 0.0);
    assert!(v("pixelrelay_store_size_bytes") > 0.0);
    // The API waited for the index before answering: nothing journaled is left behind.
    assert_eq!(v("pixelrelay_open_index_lag_bytes"), 0.0);
    for k in [
        "pixelrelay_smtp_sessions_total",
        "pixelrelay_relayed_bytes_total",
        "pixelrelay_relay_duration_seconds_count",
        "pixelrelay_pixel_duration_seconds_count",
        "pixelrelay_open_index_pauses_total",
    ] {
        v(k);
    }
    a.stop().await;
}

#[test]
fn the_parser_rejects_broken_exposition() {
    for bad in [
        "x_total 1\n# EOF\n",
        "# TYPE x counter\nx_total 1\n",
        "# TYPE x counter\nx 1\n# EOF\n",
        "# TYPE x counter\nx_total{a=\"1} 1\n# EOF\n",
        "# TYPE x counter\nx_total{a=1} 1\n# EOF\n",
        "# TYPE x counter\nx_total one\n# EOF\n",
        "# TYPE x counter\nx_total 1\nx_total 1\n# EOF\n",
        "# TYPE x histogram\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 1\nx_count 1\n# EOF\n",
        "# TYPE x histogram\nx_bucket{le=\"1\"} 1\nx_count 1\n# EOF\n",
    ] {
        let r = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(r.is_err(), "accepted: {bad:?}");
    }
    let ok = parse_exposition(
        "# HELP x_seconds h\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\nx_seconds_sum 1.5\nx_seconds_count 2\nx_seconds_bucket{le=\"1.0\"} 1\nx_seconds_bucket{le=\"+Inf\"} 2\n# TYPE y counter\ny_total{a=\"q\\\"\\\\\"} 3\n# EOF\n",
    );
    assert_eq!(ok["y_total{a=\"q\\\"\\\\\"}"], 3.0);
}

/// The whole relay: the admin listener is bound and wired, and an SMTP transaction shows in
/// the metrics the relay updates.
#[tokio::test]
async fn a_relayed_message_shows_in_the_metrics_of_a_running_relay() {
    let up = common::FakeUpstream::start().await;
    let relay = common::start_relay(&common::config_text(&up.addr.to_string(), "")).await;
    let token = std::fs::read_to_string(relay.dir.path().join("data/admin.token")).unwrap();
    let token = token.trim();
    let admin = relay.admin();
    assert_eq!(get(admin, "/metrics", None).await.status, 401);
    let mut c = common::Client::hello(relay.smtp()).await;
    let (code, _) = c
        .send_mail(
            "news@example.com",
            &["bob@example.net"],
            b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<p>hello</p>\r\n",
        )
        .await;
    assert_eq!(code, 250);
    assert_eq!(c.cmd("QUIT").await.0, 221);
    let r = get(admin, "/metrics", Some(token)).await;
    assert_eq!(r.status, 200);
    let m = parse_exposition(&r.text());
    assert_eq!(m["pixelrelay_smtp_sessions_total"], 1.0);
    assert_eq!(
        m["pixelrelay_smtp_transactions_total{outcome=\"accepted\"}"],
        1.0
    );
    assert_eq!(
        m["pixelrelay_upstream_replies_total{class=\"2xx\",stage=\"mail\"}"],
        1.0
    );
    assert_eq!(
        m["pixelrelay_upstream_replies_total{class=\"2xx\",stage=\"rcpt\"}"],
        1.0
    );
    assert_eq!(
        m["pixelrelay_upstream_replies_total{class=\"2xx\",stage=\"data\"}"],
        1.0
    );
    assert_eq!(m["pixelrelay_relay_duration_seconds_count"], 1.0);
    assert!(m["pixelrelay_relayed_bytes_total"] > 50.0);
    let decisions: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("pixelrelay_rewrite_decisions_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(decisions, 1.0);
    // The upstream's reply is recorded just after the client got it: poll briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let s = loop {
        let s = get(admin, "/api/v1/stats", Some(token)).await.json();
        if s["relayed"] == 1 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(s["relayed"], 1);
    assert_eq!(
        s["tracked"].as_u64().unwrap() + s["skipped_total"].as_u64().unwrap(),
        1
    );
    // The public pixel listener serves none of it, token or not.
    for route in ["/", "/api/v1/stats", "/api/v1/opens?follow=1", "/metrics"] {
        assert_eq!(
            get(relay.http(), route, Some(token)).await.status,
            404,
            "{route}"
        );
    }
    let msgs = get(admin, "/api/v1/messages", Some(token)).await.json();
    assert_eq!(msgs["items"][0]["recipients"][0], "bob@example.net");
    relay.stop().await;
}
