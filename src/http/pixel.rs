//! The public pixel listener (`[http].listen`): `GET|HEAD /o/{token}.gif`, `/healthz`, 404
//! for everything else.
//!
//! Every pixel request gets the same 43-byte transparent GIF, valid token or not, so a broken
//! image never shows in someone's mail and a prober learns nothing. A valid token of a known
//! message records one open (classified, IP per the trust rules) before the response is sent,
//! so a client that got its image has its open stored. Forged, truncated or unknown tokens
//! record nothing and are counted as invalid.
//!
//! Limits against slow or abusive clients (the accept loop in `http::serve`, shared with the
//! admin listener): at most `http.max_connections` connections, 16 KiB of request head and 64
//! headers, no request bodies (413), and hyper's header-read timeout, which also closes an idle
//! keep-alive connection after `min(http.header_timeout, http.idle_timeout)`. On shutdown the
//! listener stops accepting, idle connections close at once and requests in flight finish.
//!
//! Store writes go through one writer thread that group-commits: it takes every verified hit
//! queued at that moment (up to 256) and records them in one sled transaction, then wakes the
//! handlers, which answer only after their hit is committed. A lone hit is a batch of one, so
//! light load pays no extra latency; under load one commit (a sealed IO buffer: `pwrite` plus
//! `sync_file_range`, the dominant cost) serves many hits. When several hits are queued the
//! writer waits in 200 µs steps, up to 1 ms, while more keep arriving: without that wait the
//! batches under 64 connections averaged 4 hits, with it about 40. The writer also counts and
//! logs each open, so a client that hangs up mid-request is still counted exactly once.
//!
//! Measured with `tests/pixel_bench.rs` and wrk (2 threads, 64 connections, 10 s, every hit a
//! valid token, 10 000 messages, on the shared 2-core machine with other builds running):
//!
//! | | keep-alive | `Connection: close` |
//! |---|---|---|
//! | nginx `empty_gif` + access log (same run as the next row) | 93 700 req/s, p99 7 ms | 24 000 req/s, p99 6 ms |
//! | this code: event built on the request's task, writer waits for its batch | 18 800 req/s, p99 6 ms | 10 900 req/s, p99 10 ms |
//! | nginx (same run as the next row) | 84 200 req/s, p99 8 ms | 21 400 req/s, p99 7 ms |
//! | writer waits for its batch, event built in the writer | 15 100 req/s, p99 7 ms | 10 500 req/s, p99 10 ms |
//! | nginx (same run as the next row) | 75 500 req/s, p99 8 ms | 23 700 req/s, p99 6 ms |
//! | batched writer, no wait | 11 200 req/s, p99 16 ms | 8 900 req/s, p99 18 ms |
//! | nginx (an earlier run, for the rows below) | 53 900 req/s, p99 8 ms | 13 800 req/s, p99 9 ms |
//! | batched writer, no wait | 13 800 req/s, p99 18 ms | 6 800 req/s, p99 26 ms |
//! | one transaction per hit, on the request's task | 10 800 req/s, p99 28 ms | 5 400 req/s, p99 55 ms |
//! | one transaction per hit via `spawn_blocking` (earlier run) | 7 200 req/s, p99 50 ms | 5 000 req/s, p99 66 ms |
//!
//! Peak RSS: ~220 MB batched (sled's cache and IO buffers), ~520 MB unbatched; nginx 6 MB.
//! Every 200 is a committed open: the bench's stored-open count equals its valid-hit count.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpListener;

use super::client_ip::client_ip;
use super::serve::Limits;
use crate::config::HttpConfig;
use crate::shutdown::Shutdown;
use crate::store::{Hit, Store, now_ms};
use crate::token::{Purpose, TOKEN_LEN, TokenKey};
use crate::track::Hints;

/// The classic transparent 1×1 GIF89a (the same 43 bytes as nginx's `empty_gif`): a 2-entry
/// palette, a graphic control extension marking index 0 transparent, one LZW-coded pixel.
pub const GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// User agents are stored up to this many bytes.
const MAX_UA: usize = 1024;

/// Hit counters of the pixel listener (exported as metrics by the admin listener); the store's
/// indexer counts the hits it records or drops.
pub use crate::store::HitCounters as PixelCounters;

/// What the pixel listener needs.
#[derive(Debug)]
pub struct PixelState {
    /// Verifies tokens.
    pub key: TokenKey,
    /// Records opens.
    pub store: Store,
    /// Listener limits and trusted proxies.
    pub http: HttpConfig,
    /// `tracking.machine_window` for the early-load rule.
    pub machine_window: Duration,
    /// Valid/invalid hit counts (the store's).
    pub counters: Arc<PixelCounters>,
    /// Request latency (rendered by the admin listener's `/metrics`).
    pub latency: Histogram,
    /// HTTPS certificate, when the listener terminates TLS itself (`http.tls_cert`).
    pub tls: Option<Arc<crate::tls::TlsSource>>,
}

impl PixelState {
    /// State sharing the store's hit counters.
    pub fn new(
        key: TokenKey,
        store: Store,
        http: HttpConfig,
        machine_window: Duration,
    ) -> PixelState {
        PixelState {
            key,
            counters: store.hit_counters(),
            store,
            http,
            machine_window,
            latency: crate::metrics::latency_histogram(),
            tls: None,
        }
    }
}

/// Serves the pixel listener on `listener` until `shutdown` fires, then lets in-flight
/// requests finish and returns once every connection has closed.
pub async fn serve(listener: TcpListener, state: Arc<PixelState>, shutdown: Shutdown) {
    let limits = Limits {
        name: "pixel",
        max_connections: state.http.max_connections,
        header_timeout: state.http.header_timeout.min(state.http.idle_timeout),
        tls: state.tls.clone(),
    };
    super::serve::serve(listener, limits, shutdown, move |peer, req| {
        let state = state.clone();
        async move {
            let started = Instant::now();
            let r = handle(&state, peer, req).await;
            state.latency.observe(started.elapsed().as_secs_f64());
            r
        }
    })
    .await;
}

/// Routes one request.
async fn handle(
    state: &PixelState,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let head = req.method() == Method::HEAD;
    let route_known = path == "/healthz" || (path.starts_with("/o/") && path.ends_with(".gif"));
    if !route_known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if !(req.method() == Method::GET || head) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if has_body(req.headers()) {
        // Nothing here takes a body; refuse it and close rather than read it.
        let mut r = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request bodies are not accepted\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let token = &path[3..path.len() - 4];
    record(state, peer.ip(), req.headers(), token);
    gif()
}

/// Verifies the token and journals the hit; never fails the request.
fn record(state: &PixelState, peer: IpAddr, headers: &HeaderMap, token: &str) {
    let c = &state.counters;
    let Some(id) = (token.len() == TOKEN_LEN)
        .then(|| state.key.verify(Purpose::Open, token))
        .flatten()
    else {
        c.invalid.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let hit = Hit {
        message: id,
        at_ms: now_ms(),
        ip: client_ip(peer, headers, &state.http.trusted_proxies),
        user_agent: user_agent(headers),
        hints: hints(headers),
        machine_window: state.machine_window,
    };
    if let Err(e) = state.store.append_hit(&hit) {
        c.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(message = %id, error = %e, "cannot journal open");
    }
}

/// The User-Agent, lossily decoded and capped at [`MAX_UA`] bytes.
fn user_agent(headers: &HeaderMap) -> String {
    let Some(v) = headers.get(header::USER_AGENT) else {
        return String::new();
    };
    let mut s = String::from_utf8_lossy(v.as_bytes()).into_owned();
    if s.len() > MAX_UA {
        let mut end = MAX_UA;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Header hints for the classifier.
fn hints(headers: &HeaderMap) -> Hints {
    let says_prefetch = |name: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("prefetch"))
        })
    };
    Hints {
        prefetch: says_prefetch("sec-purpose")
            || says_prefetch("purpose")
            || says_prefetch("x-moz"),
        mobile: headers
            .get("sec-ch-ua-mobile")
            .is_some_and(|v| v.as_bytes() == b"?1"),
    }
}

/// A request that announces a body.
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .any(|v| v.to_str().map_or(true, |s| s.trim() != "0"))
}

/// The pixel response.
fn gif() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(GIF)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("43"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, private, max-age=0"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    r
}

/// A small plain-text response.
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gif_is_a_valid_transparent_1x1() {
        assert_eq!(GIF.len(), 43);
        assert_eq!(&GIF[..6], b"GIF89a");
        assert_eq!(u16::from_le_bytes([GIF[6], GIF[7]]), 1, "width");
        assert_eq!(u16::from_le_bytes([GIF[8], GIF[9]]), 1, "height");
        assert_eq!(GIF[10] & 0x80, 0x80, "global colour table present");
        // Graphic control extension: transparency flag set, transparent index 0.
        assert_eq!(&GIF[19..22], &[0x21, 0xf9, 0x04]);
        assert_eq!(GIF[22] & 1, 1);
        assert_eq!(GIF[25], 0);
        assert_eq!(GIF[27], 0x2c, "image descriptor");
        assert_eq!(GIF[42], 0x3b, "trailer");
    }

    #[test]
    fn body_detection() {
        let mut h = HeaderMap::new();
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(has_body(&h));
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(has_body(&h));
    }

    #[test]
    fn user_agent_is_capped_on_a_char_boundary() {
        let mut h = HeaderMap::new();
        let long = format!("a{}", "é".repeat(1000));
        h.insert(header::USER_AGENT, HeaderValue::from_str(&long).unwrap());
        let ua = user_agent(&h);
        assert!(ua.len() <= MAX_UA && ua.len() >= MAX_UA - 1, "{}", ua.len());
        assert!(long.starts_with(&ua));
    }

    #[test]
    fn hints_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(hints(&h), Hints::default());
        h.insert(
            "sec-purpose",
            HeaderValue::from_static("prefetch;prerender"),
        );
        h.insert("sec-ch-ua-mobile", HeaderValue::from_static("?1"));
        assert_eq!(
            hints(&h),
            Hints {
                prefetch: true,
                mobile: true
            }
        );
    }
}
