//! The public pixel listener (`[http].listen`): `GET|HEAD /o/{token}.gif`, tracked links'
//! redirects `GET|HEAD /c/{token}`, `/healthz`, 404 for everything else. A `HEAD` gets the same answer and is recorded as a machine open
//! (`head-request`): link checkers send it, mail clients fetch the image.
//!
//! Every pixel request gets the same 43-byte transparent GIF, valid token or not, so a broken
//! image never shows in someone's mail and a prober learns nothing. A hit with an authentic
//! token (the HMAC checks out; no lookup) is appended to the journal (`ingest`) with what its
//! address is (`evidence`: network catalogue, ASN, country, looked up before anonymisation);
//! the indexer then classifies it and records the open, or drops it as invalid if the message
//! is unknown. Forged, truncated or mutated tokens record nothing and are counted as invalid
//! at once.
//!
//! Limits against slow or abusive clients (the accept loop in `http::serve`, shared with the
//! admin listener): at most `http.max_connections` connections, 16 KiB of request head and 100
//! headers, no request bodies (413), and hyper's header-read timeout, which also closes an idle
//! keep-alive connection after `min(http.header_timeout, http.idle_timeout)`. On shutdown the
//! listener stops accepting, idle connections close at once and requests in flight finish.
//!
//! The request does no store lookup and no store write: one catalogue lookup (a binary search)
//! and one buffered journal append, encoded straight into the journal's buffer (0.2–0.3 µs).
//! Recording the open (tens of µs in sled) happens behind, on the indexer thread under
//! `SCHED_IDLE`, which pauses while a burst keeps every CPU busy (`ingest::pace`).
//! Requests are served on `http.workers` threads of their own (one per CPU by default), each a
//! single-threaded runtime (`http::serve::serve_on_threads`).
//!
//! Measured against nginx with `bench/pixel.sh 10`: at nginx's pace with keep-alive; the
//! figures and their history are in `bench/RESULTS.md`.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::client_ip::client_ip;
use super::serve::Limits;
use crate::config::HttpConfig;
use crate::evidence::EvidenceSource;
use crate::ingest::{Hit, HitSeen, Ingest};
use crate::net::Cidr;
use crate::shutdown::Shutdown;
use crate::store::now_ms;
use crate::token::{MessageId, Purpose, TOKEN_LEN, TokenKey};
use crate::track::{Hints, Windows};

/// The classic transparent 1×1 GIF89a (the same 43 bytes as nginx's `empty_gif`): a 2-entry
/// palette, a graphic control extension marking index 0 transparent, one LZW-coded pixel.
pub const GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// User agents are stored up to this many bytes.
const MAX_UA: usize = 1024;

/// Hit counters of the pixel listener (exported as metrics by the admin listener); the store's
/// indexer counts the hits it records or drops.
pub use crate::ingest::HitCounters as PixelCounters;

/// What the pixel listener needs.
#[derive(Debug)]
pub struct PixelState {
    /// Verifies tokens.
    pub key: TokenKey,
    /// Journals hits (the indexer records them as opens).
    pub ingest: Ingest,
    /// Listener limits.
    pub http: HttpConfig,
    /// Peers whose `Forwarded`/`X-Forwarded-For` is believed (`http.trusted_proxies`; a
    /// config reload replaces them).
    pub trusted_proxies: ArcSwap<Vec<Cidr>>,
    /// `tracking.machine_window` and `tracking.probable_window` for the timing rules (a config
    /// reload replaces them).
    pub windows: ArcSwap<Windows>,
    /// The network catalogue and databases, looked up per hit before anonymisation.
    pub evidence: Arc<EvidenceSource>,
    /// Valid/invalid hit counts (the store's).
    pub counters: Arc<PixelCounters>,
    /// Request latency (rendered by the admin listener's `/metrics`).
    pub latency: crate::metrics::LatencyHistogram,
    /// HTTPS certificate, when the listener terminates TLS itself (`http.tls_cert`).
    pub tls: Option<Arc<crate::tls::TlsSource>>,
}

impl PixelState {
    /// State sharing the store's hit counters.
    pub fn new(
        key: TokenKey,
        ingest: Ingest,
        http: HttpConfig,
        windows: Windows,
        evidence: Arc<EvidenceSource>,
    ) -> PixelState {
        PixelState {
            key,
            counters: ingest.hit_counters(),
            ingest,
            trusted_proxies: ArcSwap::from_pointee(http.trusted_proxies.clone()),
            http,
            windows: ArcSwap::from_pointee(windows),
            evidence,
            latency: Default::default(),
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
    let threads = match state.http.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // `handle` never waits, so the handler answers at once: no future holding the request and
    // no per-request clone of `state` (an atomic both listener threads would contend on).
    let handler = move |peer, req| {
        let started = Instant::now();
        let r = handle(&state, peer, req);
        state.latency.observe(started.elapsed());
        std::future::ready(r)
    };
    super::serve::serve_on_threads(listener, threads, limits, shutdown, handler).await;
}

/// Routes one request.
fn handle(state: &PixelState, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let head = req.method() == Method::HEAD;
    let route_known = path == "/healthz"
        || (path.starts_with("/o/") && path.ends_with(".gif"))
        || path.starts_with("/c/");
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
    if let Some(token) = path.strip_prefix("/c/") {
        return redirect(state, peer.ip(), req.headers(), head, token);
    }
    let token = &path[3..path.len() - 4];
    let c = &state.counters;
    match (token.len() == TOKEN_LEN)
        .then(|| state.key.verify(Purpose::Open, token))
        .flatten()
    {
        Some(id) => record(state, peer.ip(), req.headers(), head, id, None),
        None => {
            c.invalid.fetch_add(1, Ordering::Relaxed);
        }
    }
    gif()
}

/// A tracked link: `302` to the URL its token carries when the token is authentic (under the
/// key or a previous one; no lookup, so any node holding the key answers), and the click
/// journaled; else a plain `404` that records nothing. The destination can only be a URL
/// minted into a message (`token::click`): no open redirect.
fn redirect(
    state: &PixelState,
    peer: IpAddr,
    headers: &HeaderMap,
    head: bool,
    token: &str,
) -> Response<Full<Bytes>> {
    let c = &state.counters;
    let Some(click) = state.key.verify_click(token) else {
        c.click_invalid.fetch_add(1, Ordering::Relaxed);
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let Ok(location) = HeaderValue::from_maybe_shared(Bytes::from(location(&click.url))) else {
        c.click_invalid.fetch_add(1, Ordering::Relaxed);
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    c.click_redirects.fetch_add(1, Ordering::Relaxed);
    let clicked = (click.link, Cow::Borrowed(click.url.as_str()));
    record(state, peer, headers, head, click.id, Some(clicked));
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    *r.headers_mut() = REDIRECT_HEADERS.clone();
    r.headers_mut().insert(header::LOCATION, location);
    r
}

/// A redirect's headers but `Location`, built once (as the pixel's).
static REDIRECT_HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| {
    let mut h = HeaderMap::with_capacity(8);
    h.insert(header::CACHE_CONTROL, NO_CACHE);
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    // The destination learns nothing of the token from the Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h
});

/// `url` as a `Location` value: visible ASCII as it is, every other byte (spaces, controls,
/// UTF-8 of an international URL) percent-encoded.
fn location(url: &str) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(url.len());
    for &b in url.as_bytes() {
        if (0x21..=0x7e).contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    out
}

/// Looks the address up and journals the hit on message `id` (a pixel load, or a click on
/// `click`); never fails the request.
fn record(
    state: &PixelState,
    peer: IpAddr,
    headers: &HeaderMap,
    head: bool,
    id: MessageId,
    click: Option<(u16, Cow<'_, str>)>,
) {
    let c = &state.counters;
    let ip = client_ip(peer, headers, &state.trusted_proxies.load());
    let evidence = state.evidence.current();
    let looked = evidence.look_up(ip);
    let hit = Hit {
        message: id,
        at_ms: now_ms(),
        ip,
        user_agent: user_agent(headers),
        hints: Hints {
            head,
            ..hints(headers)
        },
        windows: **state.windows.load(),
        seen: HitSeen {
            network: looked.network.map(|n| (n.kind, n.certainty)),
            scanner_asn: looked.scanner_asn.is_some(),
            label: Cow::Borrowed(looked.label()),
            country: looked.country,
        },
        click,
    };
    if let Err(e) = state.ingest.append_hit(&hit) {
        c.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(msg = %id, error = %e, "cannot journal a pixel hit or click");
    }
}

/// The User-Agent, lossily decoded and capped at [`MAX_UA`] bytes (borrowed from the request
/// when it is valid UTF-8).
fn user_agent(headers: &HeaderMap) -> Cow<'_, str> {
    let Some(v) = headers.get(header::USER_AGENT) else {
        return Cow::Borrowed("");
    };
    let cap = |s: &str| {
        let mut end = s.len().min(MAX_UA);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        end
    };
    match String::from_utf8_lossy(v.as_bytes()) {
        Cow::Borrowed(s) => Cow::Borrowed(&s[..cap(s)]),
        Cow::Owned(mut s) => {
            s.truncate(cap(&s));
            Cow::Owned(s)
        }
    }
}

/// Request headers that say a load is a prefetch (Chromium, the old spelling, Firefox) or a
/// preview (`X-Purpose: preview`, Safari's and older WebKit's top-sites previews).
const PREFETCH_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("sec-purpose"),
    HeaderName::from_static("purpose"),
    HeaderName::from_static("x-moz"),
    HeaderName::from_static("x-purpose"),
];
/// Chromium's client hint for a mobile device.
const SEC_CH_UA_MOBILE: HeaderName = HeaderName::from_static("sec-ch-ua-mobile");

/// Header hints for the classifier (the method is the caller's).
fn hints(headers: &HeaderMap) -> Hints {
    let says_prefetch = |name: &HeaderName| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                let v = v.to_ascii_lowercase();
                v.contains("prefetch") || v.contains("preview")
            })
        })
    };
    Hints {
        prefetch: PREFETCH_HEADERS.iter().any(says_prefetch),
        mobile: headers
            .get(SEC_CH_UA_MOBILE)
            .is_some_and(|v| v.as_bytes() == b"?1"),
        head: false,
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

/// Keeps search engines from indexing the pixel.
const X_ROBOTS_TAG: HeaderName = HeaderName::from_static("x-robots-tag");

/// The pixel response's headers, built once (a clone costs less than inserting each).
static GIF_HEADERS: LazyLock<HeaderMap> = LazyLock::new(|| {
    let mut h = HeaderMap::with_capacity(8);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("43"));
    h.insert(header::CACHE_CONTROL, NO_CACHE);
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    h.insert(X_ROBOTS_TAG, HeaderValue::from_static("noindex"));
    h
});

/// What keeps a pixel or a redirect from being cached anywhere, so that each load reaches us.
const NO_CACHE: HeaderValue =
    HeaderValue::from_static("no-store, no-cache, must-revalidate, private, max-age=0");

/// The pixel response.
fn gif() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(GIF)));
    *r.headers_mut() = GIF_HEADERS.clone();
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
        assert!(long.starts_with(&*ua));
        assert!(matches!(ua, Cow::Borrowed(_)), "valid UTF-8 is not copied");
        // Invalid UTF-8: replaced, then capped the same way.
        let mut bytes = vec![0xff; 2000];
        bytes[0] = b'a';
        h.insert(header::USER_AGENT, HeaderValue::from_bytes(&bytes).unwrap());
        let ua = user_agent(&h);
        assert!(ua.starts_with("a\u{fffd}"));
        assert!(ua.len() <= MAX_UA && ua.len() >= MAX_UA - 2, "{}", ua.len());
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
                mobile: true,
                head: false
            }
        );
        let mut h = HeaderMap::new();
        h.insert("x-purpose", HeaderValue::from_static("preview"));
        assert!(hints(&h).prefetch, "X-Purpose: preview");
        let mut h = HeaderMap::new();
        h.insert("purpose", HeaderValue::from_static("prefetch"));
        assert!(hints(&h).prefetch, "Purpose: prefetch");
        let mut h = HeaderMap::new();
        h.insert("x-moz", HeaderValue::from_static("prefetch"));
        assert!(hints(&h).prefetch, "X-Moz: prefetch");
    }
}
