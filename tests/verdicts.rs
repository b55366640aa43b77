//! The labelled verdict fixture (`fixtures/verdicts/cases.toml`), replayed through the real
//! pixel listener: every case is an HTTP request from a trusted proxy naming the reader's
//! address in `X-Forwarded-For`, against the shipped scanner catalogue, Apple's egress format and
//! ASN/country databases the test writes itself. Every machine case must be recorded as a
//! machine with its reason, no person case as a machine, and every proxy case must name its
//! proxy.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{delivered_message, have_mmdb_writer, write_mmdb};
use pixelrelay::config::Config;
use pixelrelay::evidence::{Evidence, EvidenceSource};
use pixelrelay::http::pixel::{PixelState, serve};
use pixelrelay::shutdown;
use pixelrelay::store::{Store, now_ms};
use pixelrelay::token::{MessageId, Purpose, TokenKey};
use pixelrelay::track::Windows;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Deserialize)]
struct Fixture {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    ua: Option<String>,
    ip: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    delay: u64,
    kind: String,
    reason: Option<String>,
    proxy: Option<String>,
    client: Option<String>,
    source: String,
}

fn get() -> String {
    "GET".into()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/verdicts")
}

/// The ASN database the fixture's README describes.
const ASNS: &[&str] = &[
    "198.51.100.0/24=22843:Proofpoint",
    "2001:db8:a::/48=30031:Mimecast",
    "2001:db8:b::/48=16417:Cisco",
    "2001:db8:c::/48=52129:Proofpoint",
    "66.249.64.0/19=15169:Google",
    "40.64.0.0/10=8075:Microsoft",
];

/// The relay.toml of the replay: the shipped catalogue, Apple's format and both databases.
fn config(dir: &Path) -> Config {
    let asn = dir.join("asn.mmdb");
    let country = dir.join("country.mmdb");
    write_mmdb(&asn, "asn", ASNS);
    write_mmdb(&country, "country", &["203.0.113.0/24=DE"]);
    let text = format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]
[upstream]
capture_dir = "outbox"
[tracking]
networks = ["builtin:scanners.csv", "{egress}"]
asn_db = "{asn}"
country_db = "{country}"
[http]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1"]
[admin]
listen = "127.0.0.1:0"
[store]
path = "db"
"#,
        egress = fixtures().join("egress-sample.csv").display(),
        asn = asn.display(),
        country = country.display(),
    );
    std::fs::write(dir.join("relay.toml"), text).unwrap();
    Config::load(&dir.join("relay.toml")).unwrap_or_else(|e| panic!("config: {e}"))
}

/// A tracked message handed upstream `delay` seconds ago; returns its id and pixel token.
fn message(store: &Store, key: &TokenKey, delay: u64) -> (MessageId, String) {
    let id = delivered_message(store, "bob@example.net", now_ms() - delay * 1000);
    (id, key.mint(Purpose::Open, &id))
}

/// One request as the case describes it, through a trusted proxy; returns the status line.
async fn request(addr: std::net::SocketAddr, token: &str, c: &Case) -> String {
    let mut req = format!(
        "{} /o/{token}.gif HTTP/1.1\r\nHost: track.example\r\nConnection: close\r\nX-Forwarded-For: {}\r\n",
        c.method, c.ip
    );
    if let Some(ua) = &c.ua {
        req.push_str(&format!("User-Agent: {ua}\r\n"));
    }
    for (k, v) in &c.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_labelled_case_gets_its_kind_reason_and_proxy() {
    let fixture: Fixture =
        toml::from_str(&std::fs::read_to_string(fixtures().join("cases.toml")).unwrap()).unwrap();
    let cases = fixture.case;
    assert!(cases.len() >= 60, "the fixture has {} cases", cases.len());
    for kind in ["person", "proxied", "machine"] {
        assert!(cases.iter().any(|c| c.kind == kind), "no {kind} case");
    }
    for c in &cases {
        assert!(
            !c.source.trim().is_empty(),
            "a case without a source: {c:?}"
        );
        assert!(
            (c.kind == "machine") == c.reason.is_some(),
            "machine cases and only they name a reason: {c:?}"
        );
        if let Some(r) = &c.reason {
            assert!(
                pixelrelay::track::REASONS.contains(&r.as_str()),
                "{r} is not in the documented vocabulary"
            );
        }
    }
    if !have_mmdb_writer() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let evidence = Evidence::load(&cfg.tracking).unwrap();
    let store = Store::open(&cfg.store).unwrap();
    let ingest = pixelrelay::ingest::Ingest::open(store.clone()).unwrap();
    let key = TokenKey::from_secret(b"verdicts");
    let windows = Windows {
        machine: cfg.tracking.machine_window,
        probable: cfg.tracking.probable_window,
    };
    assert_eq!(
        windows.machine,
        Duration::from_secs(30),
        "the shipped default"
    );
    let state = Arc::new(PixelState::new(
        key.clone(),
        ingest.clone(),
        cfg.http.clone().expect("[http]"),
        windows,
        Arc::new(EvidenceSource::new(evidence)),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, sd) = shutdown::channel();
    let task = tokio::spawn(serve(listener, state, sd));

    let mut ids = Vec::new();
    for c in &cases {
        let (id, token) = message(&store, &key, c.delay);
        let status = request(addr, &token, c).await;
        assert!(status.contains(" 200 "), "{status} for {c:?}");
        ids.push(id);
    }
    assert!(ingest.caught_up(Duration::from_secs(30)).await);

    let mut wrong = Vec::new();
    for (c, id) in cases.iter().zip(&ids) {
        let m = store.get_message(id).unwrap().unwrap();
        let [e] = m.open_events.as_slice() else {
            wrong.push(format!("{} events for {c:?}", m.open_events.len()));
            continue;
        };
        let got = (
            e.kind().as_str(),
            e.machine_reason.as_deref(),
            e.proxy.map(|p| p.as_str()),
        );
        let want = (c.kind.as_str(), c.reason.as_deref(), c.proxy.as_deref());
        if got != want {
            wrong.push(format!(
                "{} {:?} after {} s: got {got:?}, want {want:?} ({})",
                c.ip, c.ua, c.delay, c.source
            ));
        }
        if let Some(client) = &c.client
            && &e.client != client
        {
            wrong.push(format!("{}: client {:?}, want {client:?}", c.ip, e.client));
        }
        // The country database answers for 203.0.113.0/24 only.
        let country = c.ip.starts_with("203.0.113.").then_some("DE");
        if e.country.as_deref() != country {
            wrong.push(format!("{}: country {:?}", c.ip, e.country));
        }
        if e.ip != c.ip.parse::<std::net::IpAddr>().unwrap().to_string() {
            wrong.push(format!("{}: recorded from {}", c.ip, e.ip));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    let st = store.stats();
    let machines = cases.iter().filter(|c| c.kind == "machine").count() as u64;
    let proxied = cases.iter().filter(|c| c.kind == "proxied").count() as u64;
    assert_eq!(st.counters.machine_opens, machines);
    assert_eq!(st.counters.proxied_opens, proxied);
    assert_eq!(
        st.direct_opens,
        cases.len() as u64 - machines - proxied,
        "people, directly"
    );
    trigger.trigger();
    task.await.unwrap();
}
