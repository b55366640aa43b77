//! Click tracking end to end: real clients send HTML mail through the relay with
//! `tracking.clicks` on; the upstream receives the part's http(s) links as signed redirects
//! (opted-out, unsubscribe and mailto links as written); headless Chromium opens the delivered
//! HTML, clicks a tracked link and lands on a page this test serves; the click is recorded with
//! its link and URL, and shows in the API, the follow stream, `stats`, `tail` and the metrics.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};

use pixelrelay::token::TokenKey;
use pixelrelay::track::OpenEvent;

/// A destination website: answers every GET with a small page and remembers (path, user
/// agent) of each request.
struct Landing {
    port: u16,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Landing {
    fn start() -> Landing {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let mut ua = String::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("user-agent:") {
                        ua = v.trim().to_string();
                    }
                }
                log.lock().unwrap().push((path, ua));
                let body = "<html><head><title>landed</title></head><body><p id=\"landed\">you landed</p></body></html>";
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Landing { port, seen }
    }

    fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// A relay with clicks on, its pixel listener (and `base_url`) on a known port; `tracking`
/// adds keys to `[tracking]`.
async fn click_relay(up: &FakeUpstream, tracking: &str) -> (Relay, u16) {
    let http = free_port();
    let cfg = config_text(&up.addr.to_string(), "")
        .replace(
            "base_url = \"http://127.0.0.1:8080\"",
            &format!("base_url = \"http://127.0.0.1:{http}\"\nclicks = true\n{tracking}"),
        )
        .replace(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"127.0.0.1:{http}\""),
        )
        // A known admin port: `pixelrelay tail` reads it from the config.
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"127.0.0.1:{}\"", free_port()),
        );
    (
        start_relay(&format!("{cfg}\n[store]\nsubjects = true\n")).await,
        http,
    )
}

/// An 8bit HTML newsletter with links in every context (what a list manager sends).
fn newsletter(dest: u16) -> String {
    let site = format!("http://127.0.0.1:{dest}");
    let html = format!(
        "<html><body><h1>News</h1>\
         <p><a href=\"{site}/landing?a=1&amp;b=2\" id=\"read\">Read the story</a></p>\
         <p><a href='{site}/second'>Second</a> and <a href=\"{site}/kept\" data-track=\"off\">kept</a></p>\
         <p><a href=\"mailto:editor@example.com\">Write to us</a> <a href=\"#top\">top</a></p>\
         <!-- <a href=\"{site}/commented\">old</a> -->\
         <p><a href=\"{site}/unsubscribe?u=bob\">Unsubscribe</a></p></body></html>"
    );
    format!(
        "From: news@example.com\r\nTo: bob@example.net\r\nSubject: Clicks\r\nMessage-ID: <clicks@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nRead: {site}/landing\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--b1--\r\n"
    )
}

/// Sends `mail` through the relay with swaks; the upstream's copy.
async fn send_with_swaks(relay: &Relay, up: &FakeUpstream, mail: &str) -> Option<Vec<u8>> {
    swaks_send(relay.smtp(), mail)?;
    Some(up.messages().pop().expect("delivered").data)
}

/// The delivered HTML part, decoded.
fn html_of(message: &[u8]) -> String {
    let m = mail_parser::MessageParser::default()
        .parse(message)
        .unwrap();
    m.html_part(0).unwrap().text_contents().unwrap().to_string()
}

/// Every `href` value of `html`, in order.
fn hrefs(html: &str) -> Vec<String> {
    html.split("href=")
        .skip(1)
        .map(|r| {
            let q = r.chars().next().unwrap();
            r[1..].split(q).next().unwrap().to_string()
        })
        .collect()
}

/// The follow stream from the start, read until `needle` occurred `n` times (10 s at most).
async fn follow_until(relay: &Relay, needle: &str, n: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = std::fs::read_to_string(relay.dir.path().join("data/admin.token")).unwrap();
    let mut s = tokio::net::TcpStream::connect(relay.admin()).await.unwrap();
    let req = format!(
        "GET /api/v1/opens?follow=1&since=0000000000000000 HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while String::from_utf8_lossy(&buf).matches(needle).count() < n {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_follows_a_tracked_link_to_its_page_and_the_click_is_recorded() {
    let up = FakeUpstream::start().await;
    let landing = Landing::start();
    let (relay, http) = click_relay(&up, "").await;
    let Some(delivered) = send_with_swaks(&relay, &up, &newsletter(landing.port)).await else {
        return;
    };
    let html = html_of(&delivered);
    let site = format!("http://127.0.0.1:{}", landing.port);
    let links = hrefs(&html);
    let tracked = format!("http://127.0.0.1:{http}/c/");
    assert!(links[0].starts_with(&tracked), "{links:?}");
    assert!(links[1].starts_with(&tracked), "{links:?}");
    assert_eq!(links[0].matches("/c/").count(), 1);
    assert_eq!(
        &links[2..],
        &[
            format!("{site}/kept"),
            "mailto:editor@example.com".to_string(),
            "#top".to_string(),
            format!("{site}/commented"),
            format!("{site}/unsubscribe?u=bob"),
        ],
        "opted-out, mailto, fragment, commented and unsubscribe links stay as written"
    );
    // Any node holding the key verifies the token without a lookup.
    let secret = pixelrelay::secret::read(&relay.dir.path().join("data/secret.key")).unwrap();
    let click = TokenKey::from_secret(&secret)
        .verify_click(links[0].strip_prefix(&tracked).unwrap())
        .expect("a valid click token");
    assert_eq!(
        (click.link, click.url.as_str()),
        (0, &*format!("{site}/landing?a=1&b=2"))
    );

    // A real browser opens the delivered HTML part and clicks the first link.
    let dir = tempfile::tempdir().unwrap();
    let page = format!(
        "{html}<script>window.addEventListener('load', () => document.getElementById('read').click());</script>"
    );
    std::fs::write(dir.path().join("mail.html"), page).unwrap();
    let Some(out) = chromium(&[
        "--virtual-time-budget=10000",
        "--dump-dom",
        &format!("file://{}/mail.html", dir.path().display()),
    ]) else {
        relay.stop().await;
        return;
    };
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("you landed"),
        "the browser landed on the page: {dom}"
    );
    assert!(
        landing.paths().contains(&"/landing?a=1&b=2".to_string()),
        "{:?}",
        landing.paths()
    );

    let clicks = admin_json(&relay, "/api/v1/clicks?limit=10").await;
    let clicks: Vec<OpenEvent> = serde_json::from_value(clicks["items"].clone()).unwrap();
    assert_eq!(clicks.len(), 1, "{clicks:#?}");
    let c = &clicks[0];
    assert!(c.is_click());
    assert_eq!(
        (c.link, c.url.as_deref()),
        (Some(0), Some(&*format!("{site}/landing?a=1&b=2")))
    );
    assert!(c.user_agent.contains("Chrome"), "{c:?}");
    assert_eq!(c.recipient, "bob@example.net");
    assert_eq!(c.subject.as_deref(), Some("Clicks"));
    // Followed within seconds of hand-off by a headless browser: a machine's, and said why.
    assert!(c.machine, "{c:?}");
    let opens = admin_json(&relay, "/api/v1/opens?limit=10").await;
    assert!(
        opens["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["type"] == "open"),
        "{opens}"
    );
    let m = admin_json(&relay, &format!("/api/v1/messages/{}", c.message)).await;
    assert_eq!(m["clicks"]["count"], 1, "{m}");
    assert_eq!(
        m["click_events"][0]["url"],
        format!("{site}/landing?a=1&b=2")
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_and_link_scanners_are_told_apart_everywhere_clicks_go() {
    let up = FakeUpstream::start().await;
    let landing = Landing::start();
    // Timing rules off: the verdicts below come from the click rules alone.
    let (relay, _) = click_relay(&up, "machine_window = 0\nprobable_window = 0").await;
    let Some(delivered) = send_with_swaks(&relay, &up, &newsletter(landing.port)).await else {
        return;
    };
    let links = hrefs(&html_of(&delivered));
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    // A person follows the first link.
    let (status, head, _) = http_get(&links[0], firefox).await;
    assert_eq!(status, 302);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains(&format!(
            "location: http://127.0.0.1:{}/landing?a=1&b=2",
            landing.port
        )),
        "{head}"
    );
    assert!(head.contains("cache-control: no-store"), "{head}");
    // The same address follows the second link at once: a scanner working through them.
    let (status, _, _) = http_get(&links[1], firefox).await;
    assert_eq!(status, 302);
    // A forged token goes nowhere and records nothing.
    let forged = format!("{}x", &links[0][..links[0].len() - 1]);
    assert_eq!(http_get(&forged, firefox).await.0, 404);

    let page = admin_json(&relay, "/api/v1/clicks?limit=10").await;
    let clicks: Vec<OpenEvent> = serde_json::from_value(page["items"].clone()).unwrap();
    assert_eq!(clicks.len(), 2, "{clicks:#?}");
    let (burst, person) = (&clicks[0], &clicks[1]);
    assert!(
        !person.machine && person.first && person.link == Some(0),
        "{person:?}"
    );
    assert_eq!(person.client, "Firefox");
    assert!(burst.machine, "{burst:?}");
    assert_eq!(burst.machine_reason.as_deref(), Some("link-burst"));
    assert_eq!((burst.link, burst.count), (Some(1), 2));

    let stats = admin_json(&relay, "/api/v1/stats").await;
    assert_eq!(
        (stats["clicks"].as_u64(), stats["human_clicks"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(stats["unique_human_clicks"], 1);
    assert_eq!(stats["human_click_rate"], 1.0);
    assert_eq!(stats["opens"], 0, "clicks are not opens");
    let m = admin_json(&relay, &format!("/api/v1/messages/{}", person.message)).await;
    assert_eq!(m["clicks"]["links"], serde_json::json!([0, 1]));
    assert_eq!(m["clicks"]["human_links"], serde_json::json!([0]));
    assert!(m["clicks"]["first_human_at"].is_string(), "{m}");
    // The follow stream carries clicks with their type.
    let stream = follow_until(&relay, "\"type\":\"click\"", 2).await;
    assert!(
        stream.contains(&format!("\"id\":\"{}\"", burst.id)),
        "{stream}"
    );
    let metrics = admin_text(&relay, "/metrics").await;
    assert!(
        metrics.contains("pixelrelay_clicks_total{machine=\"false\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pixelrelay_clicks_total{machine=\"true\",reason=\"link-burst\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pixelrelay_click_requests_total{result=\"invalid\"} 1"),
        "{metrics}"
    );
    // `pixelrelay tail` shows both kinds.
    let out = pixelrelay_cli(&["tail", "-n", "10"], &relay.dir.path().join("relay.toml"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.contains("  click  ")).count(),
        2,
        "{text}"
    );
    assert!(text.contains("#0 http://127.0.0.1:"), "{text}");
    relay.stop().await;
}
