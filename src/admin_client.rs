//! The admin API's client side: what `pixelrelay tail` and `pixelrelay stats` do.
//!
//! They read `[admin].listen` and `admin.token_file` from the same `relay.toml` as the relay
//! and talk HTTP/1.1 (hyper's client over a plain `TcpStream`) to the admin listener. Every
//! failure becomes one [`CliError`] line for the user: relay not running, token refused, token
//! file unreadable.
//!
//! `tail -f` follows `GET /api/v1/opens?follow=1&since=CURSOR`, remembering the id of the last
//! open it printed. When the stream ends (relay stopped or restarted, connection lost) it
//! reconnects with that cursor, so no open is missed or printed twice.
//!
//! Subjects, user agents and client names are attacker-controlled: the human format replaces
//! control characters before they reach a terminal.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::config::AdminConfig;
use crate::secret;

/// Longest time `tail -f` waits between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Time to connect and to get response headers from the admin listener.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure the CLI reports as one line and exit code 1.
#[derive(Debug)]
pub enum CliError {
    /// Nothing accepts connections at the admin address.
    NotRunning(String),
    /// 401: the token file does not hold the relay's token.
    Unauthorized(String),
    /// Anything else (token file, protocol, stdout).
    Other(String),
    /// Whoever read our output went away (`tail | head`): not an error.
    OutputClosed,
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::NotRunning(s) | CliError::Unauthorized(s) | CliError::Other(s) => {
                f.write_str(s)
            }
            CliError::OutputClosed => f.write_str("stdout closed"),
        }
    }
}

impl std::error::Error for CliError {}

/// Talks to one relay's admin listener.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `[admin].listen`.
    addr: SocketAddr,
    /// The bearer token.
    token: String,
    /// For messages: where the token came from.
    token_file: String,
}

impl AdminClient {
    /// A client for the relay configured by `admin`; reads the token file.
    pub fn from_config(admin: &AdminConfig) -> Result<AdminClient, CliError> {
        let token_file = admin.token_file.display().to_string();
        let token = secret::read(&admin.token_file).map_err(|e| {
            CliError::Other(format!(
                "admin.token_file: {e} (pixelrelay serve creates it on first start)"
            ))
        })?;
        let token = String::from_utf8(token)
            .map_err(|_| CliError::Other(format!("admin.token_file: {token_file}: not UTF-8")))?;
        Ok(AdminClient {
            addr: admin.listen,
            token,
            token_file,
        })
    }

    /// Sends `GET path` and returns the response once its head has arrived (2xx only).
    async fn get(&self, path: &str) -> Result<Response<Incoming>, CliError> {
        let not_running = |e: &dyn std::fmt::Display| {
            CliError::NotRunning(format!(
                "cannot reach the admin API at {} (is `pixelrelay serve` running?): {e}",
                self.addr
            ))
        };
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| not_running(&"connection timed out"))?
            .map_err(|e| not_running(&e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| not_running(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| CliError::Other(format!("bad request {path}: {e}")))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| not_running(&"no answer"))?
            .map_err(|e| not_running(&e))?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::UNAUTHORIZED => Err(CliError::Unauthorized(format!(
                "the admin API at {} refused the token in {} (401): is it the token of this relay?",
                self.addr, self.token_file
            ))),
            s => {
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let msg = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                Err(CliError::Other(format!(
                    "admin API {path}: {} {msg}",
                    s.as_u16()
                )))
            }
        }
    }

    /// `GET path` and parse the JSON body.
    async fn get_json(&self, path: &str) -> Result<Value, CliError> {
        let resp = self.get(path).await?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::Other(format!("admin API {path}: {e}")))?
            .to_bytes();
        serde_json::from_slice(&body)
            .map_err(|e| CliError::Other(format!("admin API {path}: invalid JSON: {e}")))
    }
}

/// How `tail` prints.
#[derive(Debug, Clone, Copy)]
pub struct TailOptions {
    /// Keep following.
    pub follow: bool,
    /// Raw JSON lines instead of aligned text.
    pub json: bool,
    /// Stored opens printed first.
    pub lines: usize,
}

/// `pixelrelay tail`.
pub async fn tail(
    client: &AdminClient,
    opts: TailOptions,
    out: &mut impl Write,
) -> Result<(), CliError> {
    // At least one of each: the newest event is the follow cursor even with `-n 0`. Opens and
    // clicks share one id sequence; the newest of both, merged.
    let mut items = Vec::new();
    for kind in ["opens", "clicks"] {
        let page = client
            .get_json(&format!(
                "/api/v1/{kind}?limit={}",
                opts.lines.clamp(1, 1000)
            ))
            .await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
    }
    let id = |e: &Value| e["id"].as_str().unwrap_or("").to_string();
    items.sort_by_key(|e| std::cmp::Reverse(id(e)));
    let mut cursor = items
        .first()
        .map(id)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "0000000000000000".to_string());
    for e in items.iter().take(opts.lines).rev() {
        print_open(out, e, opts.json)?;
    }
    if !opts.follow {
        return Ok(());
    }
    let mut backoff = Duration::from_millis(100);
    let mut reported = false;
    loop {
        match follow_once(client, &mut cursor, opts.json, out).await {
            // The stream ended (relay stopping): reconnect at once, then back off.
            Ok(()) => {}
            Err(CliError::NotRunning(msg)) => {
                if !reported {
                    eprintln!("pixelrelay: {msg}; retrying");
                    reported = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => return Err(e),
        }
        backoff = Duration::from_millis(100);
    }
}

/// Follows one connection until its stream ends; `cursor` tracks the last open printed.
async fn follow_once(
    client: &AdminClient,
    cursor: &mut String,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let resp = client
        .get(&format!("/api/v1/opens?follow=1&since={cursor}"))
        .await?;
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    loop {
        let frame = match body.frame().await {
            None => return Ok(()),
            Some(Ok(f)) => f,
            // Connection reset mid-stream: reconnect like after a clean end.
            Some(Err(_)) => return Ok(()),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(nl + 1);
            let line = &line[..nl];
            if line.is_empty() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            // Control lines: heartbeats and the end-of-stream notice.
            if v.get("heartbeat").is_some() || v.get("end").is_some() {
                continue;
            }
            let Some(id) = v["id"].as_str() else { continue };
            if id.len() != 16 || id <= cursor.as_str() {
                continue;
            }
            *cursor = id.to_string();
            if json {
                write_line(out, line)?;
            } else {
                print_open(out, &v, false)?;
            }
        }
        if buf.remaining() > 1 << 20 {
            return Err(CliError::Other(
                "admin API: a stream line over 1 MiB".into(),
            ));
        }
    }
}

fn write_line(out: &mut impl Write, line: &[u8]) -> Result<(), CliError> {
    out.write_all(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

fn stdout_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::OutputClosed
    } else {
        CliError::Other(format!("stdout: {e}"))
    }
}

fn print_open(out: &mut impl Write, e: &Value, json: bool) -> Result<(), CliError> {
    let line = if json { e.to_string() } else { human_open(e) };
    write_line(out, line.as_bytes())
}

/// One aligned line: time, kind (`open`, `click`), recipient, subject, client, device,
/// verdict (`person`, `proxied:google`, `machine:apple-mpp`), IP; a click ends with its link's
/// position and URL.
fn human_open(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("");
    let at = s("at");
    let time = if at.len() >= 19 {
        format!("{} {}", &at[..10], &at[11..19])
    } else {
        at.to_string()
    };
    let subject = match s("subject") {
        "" => "-",
        x => x,
    };
    let machine = match (e["machine"].as_bool() == Some(true), s("proxy")) {
        (true, _) => format!("machine:{}", s("machine_reason")),
        (false, "") => "person".to_string(),
        (false, proxy) => format!("proxied:{proxy}"),
    };
    let (kind, link) = if s("type") == "click" {
        let n = e["link"].as_u64().unwrap_or(0);
        ("click", format!("  #{n} {}", clean(s("url"))))
    } else {
        ("open", String::new())
    };
    format!(
        "{}  {}  {}  {}  {}  {}  {}  {}{link}",
        cell(&time, 19),
        cell(kind, 5),
        cell(s("recipient"), 28),
        cell(subject, 32),
        cell(s("client"), 14),
        cell(s("device"), 7),
        cell(&machine, 26),
        clean(s("ip"))
    )
}

/// `s` cleaned of control characters, cut or padded to `width` characters.
fn cell(s: &str, width: usize) -> String {
    let s = clean(s);
    let n = s.chars().count();
    if n > width {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    } else {
        format!("{s}{}", " ".repeat(width - n))
    }
}

/// Replaces control characters (terminal escapes) with `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `pixelrelay stats` in human form.
fn human_stats(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let pct = |k: &str| format!("{:.1}%", v[k].as_f64().unwrap_or(0.0) * 100.0);
    let skipped = v["skipped"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, c)| format!("{} {}", clean(k), c.as_u64().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let mut out = String::new();
    let mut row = |label: &str, value: String, detail: String| {
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!("  ({detail})")
        };
        out.push_str(&format!("{label:<14}{value:>10}{detail}\n"));
    };
    row("relayed", n("relayed").to_string(), String::new());
    row("rejected", n("rejected").to_string(), String::new());
    row("tracked", n("tracked").to_string(), String::new());
    row("skipped", n("skipped_total").to_string(), skipped);
    row(
        "opens",
        n("opens").to_string(),
        format!(
            "people {} (direct {}, through a proxy {}), machine {}",
            n("human_opens"),
            n("direct_opens"),
            n("proxied_opens"),
            n("machine_opens")
        ),
    );
    row(
        "unique opens",
        n("unique_opens").to_string(),
        format!("people {}", n("unique_human_opens")),
    );
    row(
        "open rate",
        pct("open_rate"),
        format!("people only {}", pct("human_open_rate")),
    );
    if n("clicks") > 0 {
        row(
            "clicks",
            n("clicks").to_string(),
            format!(
                "people {}, machine {}; links {} (people {})",
                n("human_clicks"),
                n("machine_clicks"),
                n("link_clicks"),
                n("human_link_clicks")
            ),
        );
        row(
            "unique clicks",
            n("unique_clicks").to_string(),
            format!("people {}", n("unique_human_clicks")),
        );
        row(
            "click rate",
            pct("click_rate"),
            format!("people only {}", pct("human_click_rate")),
        );
    }
    for (label, key) in [
        ("by client", "by_client"),
        ("by device", "by_device"),
        ("by proxy", "by_proxy"),
    ] {
        let b = breakdown(&v[key]);
        if !b.is_empty() {
            row(label, String::new(), b);
        }
    }
    let shares = machine_shares(&v["machine_share_by_reason"]);
    if !shares.is_empty() {
        row("machine share", String::new(), shares);
    }
    out
}

/// `name opens (machine machine), …` for a `by_*` breakdown, most opens first.
fn breakdown(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return String::new();
    };
    let mut parts: Vec<(String, u64, u64)> = m
        .iter()
        .map(|(name, c)| {
            (
                clean(name),
                c["opens"].as_u64().unwrap_or(0),
                c["machine"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    parts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    parts
        .iter()
        .map(|(name, opens, machine)| format!("{name} {opens} ({machine} machine)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `reason 12.5%, …` for `machine_share_by_reason`, largest first.
fn machine_shares(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return String::new();
    };
    let mut reasons: Vec<(String, f64)> = m
        .iter()
        .map(|(r, f)| (clean(r), f.as_f64().unwrap_or(0.0)))
        .collect();
    reasons.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    reasons
        .iter()
        .map(|(r, f)| format!("{r} {:.1}%", f * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `pixelrelay stats [--json]`.
pub async fn stats(client: &AdminClient, json: bool, out: &mut impl Write) -> Result<(), CliError> {
    let v = client.get_json("/api/v1/stats").await?;
    let text = if json {
        format!("{v}\n")
    } else {
        human_stats(&v)
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_stats_split_people_and_machines() {
        let v = serde_json::json!({
            "relayed": 10, "tracked": 8, "opens": 6, "human_opens": 4, "direct_opens": 1,
            "proxied_opens": 3, "machine_opens": 2, "unique_opens": 5,
            "unique_human_opens": 3, "open_rate": 0.625, "human_open_rate": 0.375,
            "by_proxy": {"google": {"opens": 2, "machine": 0}},
            "machine_share_by_reason": {"scanner-asn": 0.125, "apple-mpp": 0.25}
        });
        let t = human_stats(&v);
        assert!(
            t.contains("people 4 (direct 1, through a proxy 3), machine 2"),
            "{t}"
        );
        assert!(t.contains("people only 37.5%"), "{t}");
        assert!(t.contains("google 2 (0 machine)"), "{t}");
        assert!(t.contains("apple-mpp 25.0%, scanner-asn 12.5%"), "{t}");
        assert!(
            !t.contains("click"),
            "no click lines before the first click: {t}"
        );
        let mut v = v;
        v["clicks"] = 5.into();
        v["human_clicks"] = 3.into();
        v["machine_clicks"] = 2.into();
        v["unique_clicks"] = 4.into();
        v["unique_human_clicks"] = 2.into();
        v["click_rate"] = 0.5.into();
        v["human_click_rate"] = 0.25.into();
        let t = human_stats(&v);
        assert!(t.contains("people 3, machine 2"), "{t}");
        assert!(t.contains("people only 25.0%"), "{t}");
    }

    #[test]
    fn human_line_is_aligned_and_cleaned() {
        let e = serde_json::json!({
            "id": "0000000000000001", "at": "2026-11-24T04:06:23.123Z",
            "recipient": "bob@example.net", "subject": "Hi\u{1b}[31m there",
            "client": "Gmail", "device": "webmail", "machine": true,
            "machine_reason": "early-load", "proxy": "google", "ip": "203.0.113.5"
        });
        let l = human_open(&e);
        assert!(
            l.starts_with("2026-11-24 04:06:23  open   bob@example.net "),
            "{l}"
        );
        assert!(!l.contains('\u{1b}'), "{l}");
        assert!(l.contains("Hi?[31m there"), "{l}");
        assert!(l.contains("machine:early-load"), "{l}");
        let mut proxied = e.clone();
        proxied["machine"] = false.into();
        assert!(human_open(&proxied).contains("proxied:google"));
        proxied["proxy"] = Value::Null;
        assert!(human_open(&proxied).contains("person"));
        assert!(l.ends_with("203.0.113.5"), "{l}");
        assert!(l.contains(":23  open   bob@"), "{l}");
        let mut click = e.clone();
        click["type"] = "click".into();
        click["link"] = 3.into();
        click["url"] = "https://example.com/\u{7}x".into();
        let lc = human_open(&click);
        assert!(lc.contains(":23  click  bob@"), "{lc}");
        assert!(
            lc.ends_with("203.0.113.5  #3 https://example.com/?x"),
            "{lc}"
        );
        let mut e2 = e.clone();
        e2["subject"] = Value::Null;
        e2["recipient"] = "a-very-long-recipient-address@example.invalid".into();
        let l2 = human_open(&e2);
        // Columns line up whatever the content.
        let col = |s: &str| s[..s.find("Gmail").unwrap()].chars().count();
        assert_eq!(col(&l), col(&l2), "{l}\n{l2}");
    }
}
