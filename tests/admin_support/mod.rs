//! Helpers for the admin tests: an admin listener over a real store in-process, a way to write
//! messages and opens exactly as the test wants them, and a raw HTTP/1.1 client (so tests see
//! every status, header and chunk).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pixelrelay::config::{HttpConfig, StoreConfig};
use pixelrelay::http::admin::{self, AdminState};
use pixelrelay::http::pixel::PixelState;
use pixelrelay::metrics::Metrics;
use pixelrelay::shutdown::{self, ShutdownTrigger};
use pixelrelay::store::{Delivery, MessageRecord, OpenHit, Store, now_ms};
use pixelrelay::token::{MessageId, TokenKey};
use pixelrelay::track::{Classification, Device, OpenEvent};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// An admin listener on 127.0.0.1:0 over a fresh store.
pub struct Admin {
    pub addr: SocketAddr,
    pub store: Store,
    pub state: Arc<AdminState>,
    pub trigger: ShutdownTrigger,
    pub task: Option<JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

pub fn store_cfg(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("db"),
        subjects: true,
        anonymize_ip: false,
        retention_days: 0,
        flush_interval: Duration::from_millis(500),
        open_log: None,
        postgres: None,
    }
}

impl Admin {
    pub async fn start() -> Admin {
        Self::start_with(|_| {}).await
    }

    /// Starts with `tune` applied to the state before serving (e.g. a short heartbeat).
    pub async fn start_with(tune: impl FnOnce(&mut AdminState)) -> Admin {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&store_cfg(dir.path())).unwrap();
        let ingest = pixelrelay::ingest::Ingest::open(store.clone()).unwrap();
        let http = HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            trusted_proxies: Vec::new(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 100,
            workers: 0,
            tls: None,
            acme: None,
        };
        let pixel = Arc::new(PixelState::new(
            TokenKey::from_secret(b"admin-test"),
            ingest,
            http,
            pixelrelay::track::Windows {
                machine: Duration::from_secs(5),
                probable: Duration::from_secs(900),
            },
            Arc::new(pixelrelay::evidence::EvidenceSource::empty()),
        ));
        let metrics = Arc::new(Metrics::new(pixel.latency.clone()));
        let (trigger, sd) = shutdown::channel();
        let mut state = AdminState::new(store.clone(), TOKEN.as_bytes(), metrics, pixel, sd);
        tune(&mut state);
        let state = Arc::new(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(admin::serve(listener, state.clone()));
        Admin {
            addr,
            store,
            state,
            trigger,
            task: Some(task),
            dir,
        }
    }

    /// Records a relayed message and its delivery; returns its id.
    pub fn message(&self, m: &Msg) -> MessageId {
        let id = MessageId::random();
        self.store
            .record_message(&MessageRecord {
                id,
                queue_id: "Q".into(),
                at_ms: m.at_ms,
                sender: m.sender.clone(),
                recipients: vec![m.rcpt.clone()],
                message_id: Some(format!("<{id}@test>")),
                subject: m.subject.clone(),
                size: 100,
                tracked: m.skip.is_none(),
                skip_reason: m.skip.clone(),
            })
            .unwrap();
        self.store
            .finish_message(
                &id,
                &Delivery {
                    accepted: m.accepted,
                    reply: if m.accepted { "250 ok" } else { "550 no" }.into(),
                    at_ms: m.at_ms + 10,
                },
            )
            .unwrap();
        id
    }

    /// Records one open of `id`.
    pub fn open(&self, id: &MessageId, o: &Open) -> OpenEvent {
        self.store
            .record_open(
                id,
                &OpenHit {
                    at_ms: o.at_ms.unwrap_or_else(now_ms),
                    ip: "198.51.100.9".parse().unwrap(),
                    user_agent: format!("{} test agent", o.client),
                    classification: Classification {
                        client: o.client.to_string(),
                        device: o.device,
                        machine: o.machine,
                        machine_reason: o.machine.then_some("scanner-network"),
                        proxy: o.proxy,
                    },
                    country: None,
                    click: None,
                },
            )
            .unwrap()
            .expect("message exists")
    }

    /// Records a click on link `link` (going to `url`) of `id`, a person's or a link scanner's.
    pub fn click(&self, id: &MessageId, link: u16, url: &str, machine: bool) -> OpenEvent {
        self.store
            .record_open(
                id,
                &OpenHit {
                    at_ms: now_ms(),
                    ip: "198.51.100.10".parse().unwrap(),
                    user_agent: "Mozilla/5.0 Firefox/128.0".into(),
                    classification: Classification {
                        client: "Firefox".into(),
                        device: Device::Desktop,
                        machine,
                        machine_reason: machine.then_some("link-burst"),
                        proxy: None,
                    },
                    country: None,
                    click: Some((link, url.into())),
                },
            )
            .unwrap()
            .expect("message exists")
    }

    pub async fn get(&self, path: &str) -> Resp {
        get(self.addr, path, Some(TOKEN)).await
    }

    pub async fn stop(mut self) {
        self.trigger.trigger();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("admin listener stopped")
                .unwrap();
        }
    }
}

/// A message to record.
#[derive(Clone, Debug)]
pub struct Msg {
    pub at_ms: u64,
    pub sender: String,
    pub rcpt: String,
    pub subject: Option<String>,
    /// `None`: tracked.
    pub skip: Option<String>,
    pub accepted: bool,
}

impl Msg {
    pub fn new(rcpt: &str) -> Msg {
        Msg {
            at_ms: now_ms(),
            sender: "news@example.com".into(),
            rcpt: rcpt.into(),
            subject: Some("Hello".into()),
            skip: None,
            accepted: true,
        }
    }
}

/// An open to record.
#[derive(Clone, Debug)]
pub struct Open {
    pub client: &'static str,
    pub device: Device,
    pub machine: bool,
    /// The mail provider whose proxy fetched it.
    pub proxy: Option<pixelrelay::track::Proxy>,
    pub at_ms: Option<u64>,
}

impl Open {
    pub fn person(client: &'static str, device: Device) -> Open {
        Open {
            client,
            device,
            machine: false,
            proxy: None,
            at_ms: None,
        }
    }

    /// A person reading through `proxy`'s image proxy.
    pub fn proxied(client: &'static str, device: Device, proxy: pixelrelay::track::Proxy) -> Open {
        Open {
            proxy: Some(proxy),
            ..Open::person(client, device)
        }
    }

    pub fn machine(client: &'static str, device: Device) -> Open {
        Open {
            client,
            device,
            machine: true,
            proxy: None,
            at_ms: None,
        }
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` with an optional bearer token, `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Resp {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await
}

/// Sends a raw request and reads the whole response (content-length or chunked).
pub async fn request(addr: SocketAddr, raw: &str) -> Resp {
    let mut s = Stream::open(addr, raw).await;
    let mut body = Vec::new();
    while let Some(chunk) = s.chunk().await {
        body.extend_from_slice(&chunk);
    }
    Resp {
        status: s.status,
        headers: s.headers,
        body,
    }
}

/// A response being read chunk by chunk (the follow stream).
pub struct Stream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    io: BufReader<TcpStream>,
    /// Content-Length left, or `None` for chunked.
    left: Option<usize>,
    done: bool,
    /// Bytes read but not yet returned as lines.
    pending: Vec<u8>,
}

impl Stream {
    pub async fn open(addr: SocketAddr, raw: &str) -> Stream {
        let mut io = BufReader::new(TcpStream::connect(addr).await.unwrap());
        io.get_mut().write_all(raw.as_bytes()).await.unwrap();
        let mut line = String::new();
        io.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            io.read_line(&mut l).await.unwrap();
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let chunked = find("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let left = if chunked {
            None
        } else {
            Some(
                find("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )
        };
        Stream {
            status,
            headers,
            io,
            left,
            done: false,
            pending: Vec::new(),
        }
    }

    /// The next piece of body; `None` at its end (or when the connection closes).
    pub async fn chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        match self.left {
            Some(0) => {
                self.done = true;
                None
            }
            Some(n) => {
                let mut b = vec![0; n];
                self.io.read_exact(&mut b).await.ok()?;
                self.left = Some(0);
                Some(b)
            }
            None => {
                let mut size = String::new();
                if self.io.read_line(&mut size).await.ok()? == 0 {
                    self.done = true;
                    return None;
                }
                let n = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut b = vec![0; n + 2];
                self.io.read_exact(&mut b).await.ok()?;
                b.truncate(n);
                if n == 0 {
                    self.done = true;
                    return None;
                }
                Some(b)
            }
        }
    }

    /// The next NDJSON line (without its newline); `None` when the stream ends.
    pub async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let rest = self.pending.split_off(i + 1);
                let mut l = std::mem::replace(&mut self.pending, rest);
                l.truncate(i);
                return Some(String::from_utf8(l).expect("UTF-8 line"));
            }
            let c = self.chunk().await?;
            self.pending.extend_from_slice(&c);
        }
    }
}

/// Opens a follow stream with the test token.
pub async fn follow(addr: SocketAddr, since: Option<&str>) -> Stream {
    let q = since.map(|s| format!("&since={s}")).unwrap_or_default();
    let s = Stream::open(
        addr,
        &format!(
            "GET /api/v1/opens?follow=1{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(s.status, 200);
    s
}

/// Waits until `n` followers are subscribed to the store's feed.
pub async fn wait_followers(store: &Store, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.followers() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "follower did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
