//! The pixel listener over real sockets: responses, recording and classification with real
//! user agents, forgery resistance, proxy trust, anonymisation, limits and shutdown.
//!
//! The listener is bound before `serve` starts, so connections queue in the backlog: no
//! readiness wait is needed. The client is a raw `TcpStream` so tests control every byte.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pixelrelay::config::{HttpConfig, StoreConfig};
use pixelrelay::http::pixel::{GIF, PixelState, serve};
use pixelrelay::shutdown::{self, ShutdownTrigger};
use pixelrelay::store::{Store, now_ms};
use pixelrelay::token::{MessageId, Purpose, TokenKey};
use pixelrelay::track::Device;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const HOUR: u64 = 3_600_000;

struct Server {
    addr: std::net::SocketAddr,
    state: Arc<PixelState>,
    trigger: ShutdownTrigger,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn http_cfg() -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        trusted_proxies: Vec::new(),
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 100,
        workers: 0,
        tls: None,
        acme: None,
    }
}

async fn start(http: HttpConfig, anonymize_ip: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        path: dir.path().join("db"),
        subjects: true,
        anonymize_ip,
        retention_days: 0,
        flush_interval: Duration::from_millis(500),
        open_log: None,
        postgres: None,
    };
    let store = Store::open(&cfg).unwrap();
    let ingest = pixelrelay::ingest::Ingest::open(store).unwrap();
    let key = TokenKey::from_secret(b"pixel-test-secret");
    let windows = pixelrelay::track::Windows {
        machine: Duration::from_secs(5),
        probable: Duration::from_secs(900),
    };
    let evidence =
        pixelrelay::evidence::EvidenceSource::new(pixelrelay::evidence::Evidence::builtin());
    let state = Arc::new(PixelState::new(
        key,
        ingest,
        http,
        windows,
        Arc::new(evidence),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, sd) = shutdown::channel();
    let task = tokio::spawn(serve(listener, state.clone(), sd));
    Server {
        addr,
        state,
        trigger,
        task,
        _dir: dir,
    }
}

impl Server {
    /// A delivered, tracked message; `sent_ago_ms` before now.
    fn message(&self, rcpt: &str, sent_ago_ms: u64) -> (MessageId, String) {
        let store = self.state.ingest.store();
        let id = common::delivered_message(store, rcpt, now_ms() - sent_ago_ms);
        (id, self.state.key.mint(Purpose::Open, &id))
    }

    /// The store, once every hit answered so far is indexed.
    async fn store(&self) -> &Store {
        assert!(
            self.state.ingest.caught_up(Duration::from_secs(30)).await,
            "open index did not catch up"
        );
        self.state.ingest.store()
    }

    async fn connect(&self) -> Client {
        Client {
            io: BufReader::new(TcpStream::connect(self.addr).await.unwrap()),
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Client {
    io: BufReader<TcpStream>,
}

impl Client {
    async fn send(&mut self, raw: &str) {
        self.io.get_mut().write_all(raw.as_bytes()).await.unwrap();
    }

    /// Expects hyper's answer to a request head it refuses: a 431, or the connection dropped.
    async fn head_refused(&mut self) {
        let mut line = String::new();
        let _ = self.io.read_line(&mut line).await;
        assert!(line.is_empty() || line.contains(" 431 "), "{line:?}");
    }

    /// Reads one response; `head` = it answers a HEAD request (no body follows).
    async fn read(&mut self, head: bool) -> Resp {
        let mut line = String::new();
        self.io.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            self.io.read_line(&mut l).await.unwrap();
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut r = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if !head {
            let n: usize = r.header("content-length").unwrap().parse().unwrap();
            r.body = vec![0; n];
            self.io.read_exact(&mut r.body).await.unwrap();
        }
        r
    }

    async fn get(&mut self, path: &str, extra: &str) -> Resp {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"))
            .await;
        self.read(false).await
    }

    /// Waits for the server to close the connection (EOF or reset).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.io.read(&mut buf).await, Ok(0) | Err(_))
    }
}

fn assert_gif(r: &Resp) {
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert_eq!(r.header("content-length"), Some("43"));
    assert_eq!(
        r.header("cache-control"),
        Some("no-store, no-cache, must-revalidate, private, max-age=0")
    );
    assert_eq!(r.header("pragma"), Some("no-cache"));
    assert_eq!(r.header("expires"), Some("0"));
    assert_eq!(r.header("x-robots-tag"), Some("noindex"));
}

/// Real user agents (sources in `track::classify`'s tests) and what they must be stored as.
const CLIENTS: &[(&str, &str, Device, Option<&str>)] = &[
    (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "Gmail",
        Device::Webmail,
        None,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
        "Apple Mail",
        Device::Desktop,
        None,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
        "Apple Mail",
        Device::Mobile,
        None,
    ),
    (
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)",
        "Outlook",
        Device::Desktop,
        None,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.4.2",
        "Thunderbird",
        Device::Desktop,
        None,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Chrome",
        Device::Webmail,
        None,
    ),
];

#[tokio::test]
async fn real_clients_are_recorded_and_classified() {
    let s = start(http_cfg(), false).await;
    let (id, token) = s.message("bob@example.net", HOUR);
    let mut c = s.connect().await;
    for (i, (ua, client, device, reason)) in CLIENTS.iter().enumerate() {
        let r = c
            .get(&format!("/o/{token}.gif"), &format!("User-Agent: {ua}\r\n"))
            .await;
        assert_gif(&r);
        assert_eq!(r.body, GIF);
        let m = s.store().await.get_message(&id).unwrap().unwrap();
        let e = m.open_events.last().unwrap();
        assert_eq!(e.count, i as u64 + 1);
        assert_eq!(e.first, i == 0);
        assert_eq!(
            (e.client.as_str(), e.device, e.machine_reason.as_deref()),
            (*client, *device, *reason),
            "{ua}"
        );
        assert_eq!(e.machine, reason.is_some());
        assert_eq!(e.user_agent, *ua);
        assert_eq!(e.ip, "127.0.0.1");
        assert_eq!(e.recipient, "bob@example.net");
        assert_eq!(e.subject.as_deref(), Some("Hi"));
    }
    let st = s.store().await.stats();
    assert_eq!(
        (
            st.counters.opens,
            st.counters.machine_opens,
            st.counters.unique_opens
        ),
        (6, 0, 1)
    );
    // Gmail's reader came through Google's image proxy.
    assert_eq!((st.counters.proxied_opens, st.direct_opens), (1, 5));
    assert_eq!(s.state.counters.valid.load(Ordering::Relaxed), 6);
    assert_eq!(s.state.counters.invalid.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_load_right_after_delivery_is_an_early_load_machine() {
    let s = start(http_cfg(), false).await;
    let (id, token) = s.message("bob@example.net", 0);
    let ua = CLIENTS[4].0;
    let r = s
        .connect()
        .await
        .get(&format!("/o/{token}.gif"), &format!("User-Agent: {ua}\r\n"))
        .await;
    assert_gif(&r);
    let e = s
        .store()
        .await
        .get_message(&id)
        .unwrap()
        .unwrap()
        .open_events
        .pop()
        .unwrap();
    assert_eq!(
        (e.client.as_str(), e.machine, e.machine_reason.as_deref()),
        ("Thunderbird", true, Some("early-load"))
    );
}

#[tokio::test]
async fn head_gets_headers_and_no_body() {
    let s = start(http_cfg(), false).await;
    let (id, token) = s.message("bob@example.net", HOUR);
    let mut c = s.connect().await;
    c.send(&format!("HEAD /o/{token}.gif HTTP/1.1\r\nHost: t\r\n\r\n"))
        .await;
    let r = c.read(true).await;
    assert_gif(&r);
    // Were a body sent after the HEAD response, this next read would start inside it.
    let r = c.get("/healthz", "").await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    let events = s
        .store()
        .await
        .get_message(&id)
        .unwrap()
        .unwrap()
        .open_events;
    assert_eq!(events.len(), 1, "HEAD is recorded");
    assert_eq!(
        (events[0].machine, events[0].machine_reason.as_deref()),
        (true, Some("head-request")),
        "a HEAD fetches no image: a machine"
    );
}

#[tokio::test]
async fn forged_and_mutated_tokens_get_the_gif_and_record_nothing() {
    let s = start(http_cfg(), false).await;
    let (id, token) = s.message("bob@example.net", HOUR);
    let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
    let mut bad = Vec::with_capacity(10_000);
    // Every single-bit flip of the real token (33 bytes × 8 = 264), then random mutations.
    for bit in 0..raw.len() * 8 {
        let mut r = raw.clone();
        r[bit / 8] ^= 1 << (bit % 8);
        bad.push(URL_SAFE_NO_PAD.encode(&r));
    }
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    while bad.len() < 10_000 {
        let t = match bad.len() % 4 {
            // Random 44-character tokens in the right alphabet.
            0 => (0..44)
                .map(|_| alphabet[(next() % 64) as usize] as char)
                .collect(),
            // Multi-bit mutations of the real token.
            1 => {
                let mut r = raw.clone();
                for _ in 0..1 + next() % 4 {
                    let b = (next() % (r.len() as u64 * 8)) as usize;
                    r[b / 8] ^= 1 << (b % 8);
                }
                URL_SAFE_NO_PAD.encode(&r)
            }
            // Truncated or extended.
            2 => {
                let n = (next() % 60) as usize;
                let mut t: String = token.chars().cycle().take(n).collect();
                if n == 44 {
                    t.push('A');
                }
                t
            }
            // Authentic tokens of messages this store never saw.
            _ => s.state.key.mint(Purpose::Open, &MessageId::random()),
        };
        assert_ne!(t, token);
        bad.push(t);
    }
    // Four keep-alive connections in parallel.
    let bad = Arc::new(bad);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let bad = bad.clone();
        let mut c = s.connect().await;
        tasks.push(tokio::spawn(async move {
            for t in bad.iter().skip(w).step_by(4) {
                let r = c
                    .get(
                        &format!("/o/{t}.gif"),
                        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Thunderbird/115.4.2\r\n",
                    )
                    .await;
                assert_gif(&r);
                assert_eq!(r.body, GIF);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Authentic tokens of unknown messages are journaled and dropped by the indexer.
    s.store().await;
    assert_eq!(s.state.counters.invalid.load(Ordering::Relaxed), 10_000);
    assert_eq!(s.state.counters.valid.load(Ordering::Relaxed), 0);
    assert_eq!(s.store().await.stats().counters.opens, 0);
    assert!(s.store().await.opens_after(None, 10).unwrap().is_empty());
    assert_eq!(
        s.store()
            .await
            .get_message(&id)
            .unwrap()
            .unwrap()
            .message
            .opens
            .count,
        0
    );
    // The real token still works afterwards.
    assert_gif(&s.connect().await.get(&format!("/o/{token}.gif"), "").await);
    assert_eq!(s.store().await.stats().counters.opens, 1);
}

#[tokio::test]
async fn routes_methods_and_bodies() {
    let s = start(http_cfg(), false).await;
    let mut c = s.connect().await;
    let r = c.get("/healthz", "").await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    for p in ["/", "/o/", "/o/abc.png", "/favicon.ico", "/healthz/x"] {
        assert_eq!(c.get(p, "").await.status, 404, "{p}");
    }
    c.send("POST /o/abc.gif HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .await;
    let r = c.read(false).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    // A body on the pixel route: refused and the connection closed.
    c.send("GET /o/abc.gif HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.read(false).await.status, 413);
    assert!(c.closed().await);
    let mut c = s.connect().await;
    c.send("GET /o/abc.gif HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    assert_eq!(c.read(false).await.status, 413);
    // An oversized head is refused by hyper (431) or the connection is dropped.
    let mut c = s.connect().await;
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    c.io.get_mut().write_all(huge.as_bytes()).await.ok();
    c.head_refused().await;
    // Header count: hyper's 100 are served, one more is refused.
    let with_headers = |n: usize| {
        let mut req = "GET /healthz HTTP/1.1\r\nHost: t\r\n".to_string();
        for i in 1..n {
            req.push_str(&format!("X-H{i}: v\r\n"));
        }
        req + "\r\n"
    };
    let mut c = s.connect().await;
    c.send(&with_headers(100)).await;
    assert_eq!(c.read(false).await.status, 200);
    let mut c = s.connect().await;
    c.send(&with_headers(101)).await;
    c.head_refused().await;
    assert_eq!(
        s.state.counters.invalid.load(Ordering::Relaxed),
        0,
        "refused requests are not hits"
    );
}

#[tokio::test]
async fn proxy_headers_only_from_trusted_peers() {
    // Untrusted peer: X-Forwarded-For and Forwarded are ignored.
    let s = start(http_cfg(), false).await;
    let (id, token) = s.message("bob@example.net", HOUR);
    let hdr = "X-Forwarded-For: 198.51.100.7\r\nForwarded: for=198.51.100.8\r\n";
    assert_gif(&s.connect().await.get(&format!("/o/{token}.gif"), hdr).await);
    let e = s
        .store()
        .await
        .get_message(&id)
        .unwrap()
        .unwrap()
        .open_events
        .pop()
        .unwrap();
    assert_eq!(e.ip, "127.0.0.1");

    // Loopback trusted: the right-most untrusted entry wins, a forged left-most one does not.
    let mut cfg = http_cfg();
    cfg.trusted_proxies = vec![
        "127.0.0.0/8".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    ];
    let s = start(cfg, false).await;
    let (id, token) = s.message("bob@example.net", HOUR);
    let mut c = s.connect().await;
    c.get(
        &format!("/o/{token}.gif"),
        "X-Forwarded-For: 6.6.6.6, 198.51.100.7, 10.1.2.3\r\n",
    )
    .await;
    c.get(
        &format!("/o/{token}.gif"),
        "Forwarded: for=\"[2001:db8:cafe::17]:4711\"\r\n",
    )
    .await;
    c.get(&format!("/o/{token}.gif"), "").await;
    let ips: Vec<String> = s
        .store()
        .await
        .get_message(&id)
        .unwrap()
        .unwrap()
        .open_events
        .into_iter()
        .map(|e| e.ip)
        .collect();
    assert_eq!(ips, vec!["198.51.100.7", "2001:db8:cafe::17", "127.0.0.1"]);
}

#[tokio::test]
async fn anonymised_ips_over_http() {
    let mut cfg = http_cfg();
    cfg.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let s = start(cfg, true).await;
    let (id, token) = s.message("bob@example.net", HOUR);
    let mut c = s.connect().await;
    c.get(
        &format!("/o/{token}.gif"),
        "X-Forwarded-For: 198.51.100.77\r\n",
    )
    .await;
    c.get(
        &format!("/o/{token}.gif"),
        "X-Forwarded-For: 2001:db8:abcd:12::99\r\n",
    )
    .await;
    let ips: Vec<String> = s
        .store()
        .await
        .get_message(&id)
        .unwrap()
        .unwrap()
        .open_events
        .into_iter()
        .map(|e| e.ip)
        .collect();
    assert_eq!(ips, vec!["198.51.100.0", "2001:db8:abcd::"]);
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let mut cfg = http_cfg();
    cfg.header_timeout = Duration::from_millis(300);
    let s = start(cfg, false).await;
    // Slowloris: a head that never ends.
    let mut c = s.connect().await;
    c.send("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: 1")
        .await;
    let closed = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
    assert_eq!(closed, Ok(true), "a trickled head must be cut off");
    // Idle keep-alive after a request.
    let mut c = s.connect().await;
    assert_eq!(c.get("/healthz", "").await.status, 200);
    let closed = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
    assert_eq!(closed, Ok(true), "an idle connection must be closed");
}

#[tokio::test]
async fn connection_limit_queues_the_excess() {
    let mut cfg = http_cfg();
    cfg.max_connections = 2;
    // The limit holds across the listener's threads.
    cfg.workers = 3;
    let s = start(cfg, false).await;
    let mut a = s.connect().await;
    let mut b = s.connect().await;
    assert_eq!(a.get("/healthz", "").await.status, 200);
    assert_eq!(b.get("/healthz", "").await.status, 200);
    // The third is accepted by the kernel but not served while both permits are held.
    let mut third = s.connect().await;
    third.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(false)).await;
    assert!(early.is_err(), "served beyond max_connections");
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(5), third.read(false))
        .await
        .expect("served after a slot freed");
    assert_eq!(r.status, 200);
    drop(b);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let s = start(http_cfg(), false).await;
    let mut idle = s.connect().await;
    assert_eq!(idle.get("/healthz", "").await.status, 200);
    s.trigger.trigger();
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("serve returned")
        .unwrap();
    assert!(idle.closed().await);
    assert!(
        TcpStream::connect(s.addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hits_are_each_recorded_once_with_exact_counts() {
    let mut cfg = http_cfg();
    // Hits of one message arrive on several listener threads at once.
    cfg.workers = 4;
    let s = start(cfg, false).await;
    let (a, ta) = s.message("a@example.net", HOUR);
    let (b, tb) = s.message("b@example.net", HOUR);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut c = s.connect().await;
        let t = if w % 2 == 0 { ta.clone() } else { tb.clone() };
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                assert_gif(
                    &c.get(
                        &format!("/o/{t}.gif"),
                        "User-Agent: Thunderbird/115.4.2\r\n",
                    )
                    .await,
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for id in [a, b] {
        let m = s.store().await.get_message(&id).unwrap().unwrap();
        assert_eq!(m.message.opens.count, 200);
        let counts: Vec<u64> = m.open_events.iter().map(|e| e.count).collect();
        assert_eq!(
            counts,
            (1..=200).collect::<Vec<u64>>(),
            "running counts in id order"
        );
        assert_eq!(m.open_events.iter().filter(|e| e.first).count(), 1);
    }
    assert_eq!(s.state.counters.valid.load(Ordering::Relaxed), 400);
    let st = s.store().await.stats().counters;
    assert_eq!((st.opens, st.unique_opens), (400, 2));
}

#[tokio::test]
async fn tracked_links_redirect_and_forged_ones_go_nowhere() {
    let s = start(http_cfg(), false).await;
    let (id, _) = s.message("bob@example.net", HOUR);
    let url = "https://shop.example/spring?utm=mail&id=42";
    let token = s.state.key.mint_click(&id, 2, url).unwrap();
    let mut c = s.connect().await;
    let r = c.get(&format!("/c/{token}"), "").await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(url));
    assert_eq!(
        r.header("cache-control"),
        Some("no-store, no-cache, must-revalidate, private, max-age=0")
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    c.send(&format!("HEAD /c/{token} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .await;
    let r = c.read(true).await;
    assert_eq!((r.status, r.header("location")), (302, Some(url)));
    // An international destination goes out percent-encoded, as a Location must be.
    let intl = s
        .state
        .key
        .mint_click(&id, 0, "https://b\u{fc}cher.example/caf\u{e9}")
        .unwrap();
    let r = c.get(&format!("/c/{intl}"), "").await;
    assert_eq!(
        r.header("location"),
        Some("https://b%C3%BCcher.example/caf%C3%A9")
    );

    // Forged, re-signed, truncated, mutated and random tokens: 404, nowhere, nothing recorded.
    let other = TokenKey::from_secret(b"another key")
        .mint_click(&id, 2, "https://evil.example/")
        .unwrap();
    let mut flipped = token.clone().into_bytes();
    flipped[30] = if flipped[30] == b'A' { b'B' } else { b'A' };
    let mut bad = vec![
        other,
        token[..token.len() - 1].to_string(),
        String::from_utf8(flipped).unwrap(),
        s.state.key.mint(Purpose::Open, &id),
        String::new(),
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let raw: Vec<u8> = (0..40 + (x % 60) as usize)
            .map(|i| (x >> (i % 56)) as u8 ^ i as u8)
            .collect();
        bad.push(URL_SAFE_NO_PAD.encode(raw));
    }
    for t in &bad {
        let r = c.get(&format!("/c/{t}"), "").await;
        assert_eq!(r.status, 404, "{t}");
        assert_eq!(r.header("location"), None);
        assert_eq!(r.body, b"not found\n");
    }
    let counters = &s.state.counters;
    assert_eq!(counters.click_redirects.load(Ordering::Relaxed), 3);
    assert_eq!(
        counters.click_invalid.load(Ordering::Relaxed),
        bad.len() as u64
    );
    // Exactly the three authentic requests were recorded, as clicks,
    // to the URLs minted into the message; a redirect is not an open.
    let store = s.store().await;
    assert_eq!(store.stats().counters.opens, 0);
    assert_eq!(counters.invalid.load(Ordering::Relaxed), 0);
    let clicks = store.list_clicks(None, 100).unwrap().items;
    let got: Vec<(Option<u16>, Option<&str>, Option<&str>)> = clicks
        .iter()
        .rev()
        .map(|c| (c.link, c.url.as_deref(), c.machine_reason.as_deref()))
        .collect();
    let intl_url = "https://b\u{fc}cher.example/caf\u{e9}";
    assert_eq!(
        got,
        vec![
            // Sent without a user agent: machines all, the HEAD named as such.
            (Some(2), Some(url), Some("no-user-agent")),
            (Some(2), Some(url), Some("head-request")),
            (Some(0), Some(intl_url), Some("no-user-agent")),
        ]
    );
}
