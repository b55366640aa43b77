//! The private admin listener (`[admin].listen`): JSON API, live NDJSON follow stream,
//! dashboard page and Prometheus metrics. It shares the accept loop and limits of the pixel
//! listener (`http::serve`) but none of its routes: nothing here is reachable from the public
//! listener.
//!
//! # Authentication
//!
//! Every route but `/healthz` needs `Authorization: Bearer <token>`, the token being the
//! content of `admin.token_file` (generated 0600 on first start). The presented token is
//! compared with the real one in constant time (both are hashed with SHA-256 and the digests
//! compared without early exit, so neither content nor length leaks through timing). Without a
//! valid token the answer is `401` with `WWW-Authenticate: Bearer`. `GET /` is the one nuance: a
//! browser cannot add a header to a page load, so without the token the dashboard's *shell*
//! (static HTML and script, no data at all) comes with status 401; the page then asks for the
//! token and sends it on every API call it makes.
//!
//! # Routes
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok`, no token needed |
//! | `GET /` | the dashboard (`dashboard.html`) |
//! | `GET /api/v1/messages?limit=&cursor=&rcpt=&sender=&opened=&people=&since=&until=` | `{"items":[Message…],"next_cursor":…}`, newest first |
//! | `GET /api/v1/messages?format=csv&…` | the same filters' whole list as CSV (`csv`) |
//! | `GET /api/v1/messages/{id}` | one message and its `open_events`, or 404 |
//! | `GET /api/v1/opens?limit=&cursor=` | `{"items":[OpenEvent…],"next_cursor":…}`, newest first |
//! | `GET /api/v1/opens?follow=1[&since=CURSOR]` | NDJSON stream (`follow`) |
//! | `GET /api/v1/stats` | the store's totals (`pixelrelay stats --json`) |
//! | `GET /metrics` | OpenMetrics text exposition, which Prometheus scrapes (`crate::metrics`) |
//!
//! `limit` is 1..=1000 (default 50). `cursor` is the `next_cursor` of the previous page: pages
//! are cut at a key, so opens or messages written meanwhile (they sort before the first page)
//! never shift a later page, and nothing is skipped or repeated. `since`/`until` take
//! milliseconds since the epoch, `YYYY-MM-DD`, or RFC 3339 (`…T04:06:23Z`, `…T04:06:23.123Z`).
//! `opened` is `true`/`false` (or `1`/`0`); with `people=true` only opens by people count. Errors are `{"error":"…"}` with 400, 401, 404 or 405.
//!
//! The follow stream (`GET /api/v1/opens?follow=1`) is in `follow`, the page in `dashboard`.

mod csv;
mod dashboard;
mod follow;
mod respond;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::serve::Limits;
use crate::store::MessageFilter;
use crate::token::MessageId;
use crate::track::parse_rfc3339_ms;
use respond::{AdminBody, ApiError, ApiResult, bad, error, json, text, unauthorized};
pub use state::{AdminState, HEARTBEAT};

/// Most simultaneous admin connections (each follower holds one).
const MAX_CONNECTIONS: usize = 256;
/// Time allowed for a request head, and for an idle keep-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default page size.
const DEFAULT_LIMIT: usize = 50;
/// How long an API read waits at most for the open index to catch up with the journal.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Largest page size.
const MAX_LIMIT: usize = 1000;

/// Serves the admin listener until `state.shutdown` fires; returns when every connection
/// (follow streams included) has closed.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let limits = Limits {
        name: "admin",
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
        tls: None,
    };
    let shutdown = state.shutdown.clone();
    super::serve::serve(listener, limits, shutdown, move |_peer: SocketAddr, req| {
        let state = state.clone();
        async move {
            let path = req.uri().path();
            if path.starts_with("/api/") || path == "/metrics" {
                // Read what was answered: every pixel hit journaled before this request,
                // unless the index is further behind than that (then the data is as of now).
                state.pixel.ingest.caught_up(CATCH_UP).await;
            }
            handle(&state, req)
        }
    })
    .await;
}

/// Routes one request.
fn handle(state: &Arc<AdminState>, req: Request<Incoming>) -> Response<AdminBody> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "text/plain; charset=utf-8", "ok".into());
    }
    let authorized = state.authorized(req.headers());
    if req.method() == Method::POST
        && authorized
        && let Some(id) = path
            .strip_prefix("/api/v1/webhooks/dead/")
            .and_then(|r| r.strip_suffix("/retry"))
    {
        return retry_dead_letter(state, id)
            .unwrap_or_else(|ApiError(status, msg)| error(status, &msg));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if !authorized {
            return unauthorized();
        }
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/" {
        return dashboard::page(authorized);
    }
    if !authorized {
        return unauthorized();
    }
    let query = parse_query(req.uri().query().unwrap_or(""));
    let result = match path.as_str() {
        "/api/v1/messages" => messages(state, &query),
        "/api/v1/opens" if query.get("follow").is_some_and(|f| truthy(f) == Some(true)) => {
            follow::start(state, query.get("since").map(String::as_str))
        }
        "/api/v1/opens" => opens(state, &query),
        "/api/v1/clicks" => clicks(state, &query),
        "/api/v1/stats" => json(StatusCode::OK, &state.store.stats()),
        "/metrics" => Ok(text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.render(&metrics_snapshot(state)),
        )),
        "/api/v1/webhooks/pending" => webhook_rows(state, &query, false),
        "/api/v1/webhooks/dead" => webhook_rows(state, &query, true),
        p => match p.strip_prefix("/api/v1/messages/") {
            Some(id) => message(state, id),
            None => Err(ApiError(StatusCode::NOT_FOUND, "not found".into())),
        },
    };
    result.unwrap_or_else(|ApiError(status, msg)| error(status, &msg))
}

/// `GET /api/v1/webhooks/pending` and `/dead`: outbox rows, oldest first (`cursor` = last id).
fn webhook_rows(
    state: &AdminState,
    query: &HashMap<String, String>,
    dead: bool,
) -> Result<Response<AdminBody>, ApiError> {
    let Some(n) = state.notifier.as_ref().map(|h| h.current()) else {
        return json(StatusCode::OK, &serde_json::json!({ "items": [] }));
    };
    let limit = match query.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "limit must be 1 to 1000".into()))?,
        None => 50,
    };
    let cursor = query.get("cursor").map(String::as_str);
    let items = if dead {
        n.dead_letters(cursor, limit)?
    } else {
        n.pending(cursor, limit)?
    };
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(|i| i.id.clone()))
        .flatten();
    json(
        StatusCode::OK,
        &serde_json::json!({ "items": items, "next_cursor": next_cursor }),
    )
}

/// `POST /api/v1/webhooks/dead/{id}/retry`: back into the outbox, due now.
fn retry_dead_letter(state: &AdminState, id: &str) -> Result<Response<AdminBody>, ApiError> {
    let Some(n) = state.notifier.as_ref().map(|h| h.current()) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "no webhooks configured".into(),
        ));
    };
    if n.retry_dead_letter(id)? {
        json(StatusCode::OK, &serde_json::json!({ "retried": id }))
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no dead letter {id:?}"),
        ))
    }
}

fn messages(state: &AdminState, q: &HashMap<String, String>) -> ApiResult {
    let limit = limit(q)?;
    let opened = match q.get("opened") {
        None => None,
        Some(v) => Some(truthy(v).ok_or_else(|| bad(format!("opened: {v:?} is not true/false")))?),
    };
    let people = match q.get("people") {
        None => false,
        Some(v) => truthy(v).ok_or_else(|| bad(format!("people: {v:?} is not true/false")))?,
    };
    let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let filter = MessageFilter {
        rcpt: nonempty("rcpt"),
        sender: nonempty("sender"),
        opened,
        people,
        since_ms: time_param(q, "since")?,
        until_ms: time_param(q, "until")?,
    };
    match q.get("format").map(String::as_str) {
        None | Some("json") => {}
        Some("csv") => return csv::export(&state.store, &filter),
        Some(f) => return Err(bad(format!("format: {f:?} is not json or csv"))),
    }
    let page = state
        .store
        .list_messages(&filter, q.get("cursor").map(String::as_str), limit)?;
    json(StatusCode::OK, &page)
}

fn message(state: &AdminState, id: &str) -> ApiResult {
    let id: MessageId = id
        .parse()
        .map_err(|_| bad(format!("invalid message id {id:?}")))?;
    match state.store.get_message(&id)? {
        Some(m) => json(StatusCode::OK, &m),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no message {id}"))),
    }
}

fn opens(state: &AdminState, q: &HashMap<String, String>) -> ApiResult {
    let page = state
        .store
        .list_opens(q.get("cursor").map(String::as_str), limit(q)?)?;
    json(StatusCode::OK, &page)
}

fn clicks(state: &AdminState, q: &HashMap<String, String>) -> ApiResult {
    let page = state
        .store
        .list_clicks(q.get("cursor").map(String::as_str), limit(q)?)?;
    json(StatusCode::OK, &page)
}

fn limit(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "limit: {v:?} is not a number from 1 to {MAX_LIMIT}"
                ))
            }),
    }
}

fn truthy(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Some(true),
        "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// `since`/`until`: ms since the epoch, `YYYY-MM-DD`, or RFC 3339 in UTC with or without ms.
fn time_param(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    let Some(v) = q.get(key).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    parse_time(v).map(Some).ok_or_else(|| {
        bad(format!(
            "{key}: {v:?} is not a time (ms, YYYY-MM-DD or RFC 3339)"
        ))
    })
}

/// Parses the time forms `since`/`until` accept.
fn parse_time(v: &str) -> Option<u64> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok();
    }
    match v.len() {
        10 => parse_rfc3339_ms(&format!("{v}T00:00:00.000Z")),
        20 if v.ends_with('Z') => parse_rfc3339_ms(&format!("{}.000Z", &v[..19])),
        _ => parse_rfc3339_ms(v),
    }
}

/// Splits a query string and percent-decodes keys and values (`+` is a space; bytes that are
/// not UTF-8 are replaced).
fn parse_query(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// What `/metrics` shows from the pixel counters, the store, ingest and the notifier.
fn metrics_snapshot(state: &AdminState) -> crate::metrics::Snapshot {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &state.pixel.counters;
    let ingest = &state.pixel.ingest;
    let stats = state.store.stats();
    let verdicts = [
        ("person", String::new(), stats.direct_opens),
        ("proxied", String::new(), stats.counters.proxied_opens),
    ]
    .into_iter()
    .chain(
        stats
            .counters
            .by_reason
            .iter()
            .map(|(r, n)| ("machine", r.clone(), *n)),
    )
    .collect();
    crate::metrics::Snapshot {
        pixel_valid: c.valid.load(Relaxed),
        pixel_invalid: c.invalid.load(Relaxed),
        pixel_store_errors: c.store_errors.load(Relaxed),
        pixel_held: c.held.load(Relaxed),
        click_redirects: c.click_redirects.load(Relaxed),
        click_invalid: c.click_invalid.load(Relaxed),
        opens_by_device: stats
            .counters
            .by_device
            .iter()
            .map(|(d, o)| (d.clone(), o.opens, o.machine))
            .collect(),
        verdicts,
        clicks: std::iter::once((
            "person".to_string(),
            stats.counters.clicks - stats.counters.machine_clicks,
        ))
        .chain(
            stats
                .counters
                .click_reasons
                .iter()
                .map(|(r, n)| (r.clone(), *n)),
        )
        .collect(),
        store_size: state.store.size_on_disk().ok(),
        index_lag: ingest.index_lag_bytes(),
        index_pauses: ingest.index_pauses(),
        inflight: state
            .budget
            .as_ref()
            .map(|b| (b.in_use() as u64, b.limit() as u64, b.refused())),
        webhooks: state.notifier.as_ref().map(|h| {
            let m = h.current().metrics();
            crate::metrics::WebhookCounts {
                delivered: m.delivered,
                failed_attempts: m.failed_attempts,
                dead_lettered: m.dead_lettered,
                pending: m.pending,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_times() {
        let q = parse_query("rcpt=bob%40example.net&x=a+b&bad=%zz&cut=%4");
        assert_eq!(q["rcpt"], "bob@example.net");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["cut"], "%4");
        assert_eq!(parse_time("1000"), Some(1000));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(truthy("TRUE"), Some(true));
        assert_eq!(truthy("maybe"), None);
    }
}
