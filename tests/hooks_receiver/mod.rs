//! A webhook receiver for the tests: an in-process HTTP/1 server on 127.0.0.1:0 that checks
//! each request's signature with its own HMAC (not pixelrelay's), records it, and answers as a
//! scripted policy says (a status, or never).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pixelrelay::store::{Delivery, MessageRecord, OpenHit, Store, now_ms};
use pixelrelay::token::MessageId;
use pixelrelay::track::{Classification, Device};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the receiver answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// With this status.
    Status(u16),
    /// Never (the client times out).
    Stall,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `Content-Type`.
    pub content_type: String,
    /// `X-Pixelrelay-Timestamp`.
    pub timestamp: u64,
    /// The signature header verified with the receiver's own HMAC.
    pub sig_ok: bool,
    /// The parsed body.
    pub body: serde_json::Value,
    /// What the receiver answered.
    pub reply: Reply,
    /// All headers, lowercased names.
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn event_id(&self) -> &str {
        self.body["event_id"].as_str().unwrap_or("")
    }
    pub fn acked(&self) -> bool {
        matches!(self.reply, Reply::Status(s) if (200..300).contains(&s))
    }
}

type Policy = Arc<dyn Fn(usize, &serde_json::Value) -> Reply + Send + Sync>;

pub struct Receiver {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

/// Verifies `sha256=<hex>` over `ts + "." + body`, the README's recipe.
pub fn verify(secret: &[u8], ts: &str, body: &[u8], sig: &str) -> bool {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    m.update(ts.as_bytes());
    m.update(b".");
    m.update(body);
    let want: String = m
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    sig == format!("sha256={want}")
}

impl Receiver {
    pub async fn start(
        secret: &[u8],
        policy: impl Fn(usize, &serde_json::Value) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_on(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            secret,
            policy,
        )
    }

    pub fn start_on(
        listener: TcpListener,
        secret: &[u8],
        policy: impl Fn(usize, &serde_json::Value) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_tls(listener, None, secret, policy)
    }

    /// Like `start_on`, over TLS when `tls` is given.
    pub fn start_tls(
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        secret: &[u8],
        policy: impl Fn(usize, &serde_json::Value) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (tx, count) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let policy: Policy = Arc::new(policy);
        let secret = secret.to_vec();
        let l2 = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (log, tx, policy, secret) =
                    (l2.clone(), tx.clone(), policy.clone(), secret.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (log, tx, policy, secret) =
                            (log.clone(), tx.clone(), policy.clone(), secret.clone());
                        async move {
                            let headers: Vec<(String, String)> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                                })
                                .collect();
                            let h = |n: &str| {
                                headers
                                    .iter()
                                    .find(|(k, _)| k == n)
                                    .map(|(_, v)| v.clone())
                                    .unwrap_or_default()
                            };
                            let (ts, sig, ct) = (
                                h("x-pixelrelay-timestamp"),
                                h("x-pixelrelay-signature"),
                                h("content-type"),
                            );
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let sig_ok = verify(&secret, &ts, &body, &sig);
                            let json: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                            let n = log.lock().unwrap().len();
                            let reply = policy(n, &json);
                            log.lock().unwrap().push(Received {
                                content_type: ct,
                                timestamp: ts.parse().unwrap_or(0),
                                sig_ok,
                                body: json,
                                reply,
                                headers,
                            });
                            tx.send_modify(|c| *c += 1);
                            match reply {
                                Reply::Status(s) => Ok::<_, hyper::Error>(
                                    hyper::Response::builder()
                                        .status(s)
                                        .body(Full::new(Bytes::from_static(b"ok")))
                                        .unwrap(),
                                ),
                                Reply::Stall => std::future::pending().await,
                            }
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acc) => {
                            let Ok(s) = acc.accept(sock).await else {
                                return;
                            };
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(sock), svc).await;
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            log,
            count,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook?src=test", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (real time, up to `secs`) until `cond` holds over everything received.
    pub async fn wait(&self, secs: u64, what: &str, cond: impl Fn(&[Received]) -> bool) {
        let mut count = self.count.clone();
        let r = tokio::time::timeout(Duration::from_secs(secs), async {
            loop {
                if cond(&self.log.lock().unwrap()) {
                    return;
                }
                if count.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "timed out waiting for {what}; got {} requests",
            self.log.lock().unwrap().len()
        );
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// A self-signed certificate for `localhost`: (acceptor, the certificate in DER).
pub fn localhost_tls() -> (
    tokio_rustls::TlsAcceptor,
    rustls::pki_types::CertificateDer<'static>,
) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    pixelrelay::server::install_crypto();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), cert)
}

/// A delivered, tracked message in `store`.
pub fn message(store: &Store, rcpt: &str) -> MessageId {
    let id = MessageId::random();
    let at = now_ms();
    store
        .record_message(&MessageRecord {
            id,
            queue_id: "Q".into(),
            at_ms: at,
            sender: "news@example.com".into(),
            recipients: vec![rcpt.into()],
            message_id: Some("<m@example.com>".into()),
            subject: None,
            size: 10,
            tracked: true,
            skip_reason: None,
        })
        .unwrap();
    store
        .finish_message(
            &id,
            &Delivery {
                accepted: true,
                reply: "250 ok".into(),
                at_ms: at,
            },
        )
        .unwrap();
    id
}

/// A human open, now.
pub fn hit() -> OpenHit {
    OpenHit {
        at_ms: now_ms(),
        ip: "203.0.113.5".parse().unwrap(),
        user_agent: "Mozilla/5.0 Thunderbird/115.0".into(),
        classification: Classification {
            client: "Thunderbird".into(),
            device: Device::Desktop,
            machine: false,
            machine_reason: None,
            proxy: None,
        },
        country: None,
        click: None,
    }
}
