//! Webhook deliveries in the admin API and metrics: a dead endpoint's event is listed as
//! pending, then dead-lettered after `max_age`, visible in `/metrics`, and retried by
//! `POST /api/v1/webhooks/dead/{id}/retry`.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn admin_post(relay: &Relay, path: &str) -> (u16, String) {
    let token = std::fs::read_to_string(relay.dir.path().join("data/admin.token")).unwrap();
    let mut s = tokio::net::TcpStream::connect(relay.admin()).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        token.trim()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    (
        text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0),
        text,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_counted_and_retried() {
    let up = FakeUpstream::start().await;
    let http = free_port();
    let dead_port = free_port(); // nothing listens here: every delivery fails
    // The variable is unique to this test.
    unsafe { std::env::set_var("PIXELRELAY_TEST_HOOK_SECRET", "s3cret") };
    let cfg = config_text(&up.addr.to_string(), "")
        .replace(
            "base_url = \"http://127.0.0.1:8080\"",
            &format!("base_url = \"http://127.0.0.1:{http}\""),
        )
        .replace(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"127.0.0.1:{http}\""),
        );
    let cfg = format!(
        "{cfg}\n[[webhooks]]\nurl = \"http://127.0.0.1:{dead_port}/hook\"\nsecret_env = \"PIXELRELAY_TEST_HOOK_SECRET\"\ntimeout = 1\nmax_age = 2\n"
    );
    let relay = start_relay(&cfg).await;
    let mut c = Client::hello(relay.smtp()).await;
    let msg = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hook\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n<html><body>x</body></html>\r\n";
    assert_eq!(
        c.send_mail("a@example.com", &["b@example.net"], msg)
            .await
            .0,
        250
    );
    let url = pixel_urls(&up.messages()[0].data).remove(0);
    assert_eq!(http_get(&url, "Thunderbird/115.0").await.0, 200);

    let pending = admin_json(&relay, "/api/v1/webhooks/pending").await;
    assert_eq!(
        pending["items"].as_array().map(Vec::len),
        Some(1),
        "{pending}"
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let dead = loop {
        let d = admin_json(&relay, "/api/v1/webhooks/dead").await;
        if d["items"].as_array().is_some_and(|a| a.len() == 1) {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never dead-lettered: {d}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let metrics = admin_text(&relay, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "pixelrelay_webhook_events_total{result=\"dead_lettered\"} 1"),
        "{metrics}"
    );
    let id = dead["items"][0]["id"].as_str().unwrap().to_string();
    let (status, text) = admin_post(&relay, &format!("/api/v1/webhooks/dead/{id}/retry")).await;
    assert_eq!(status, 200, "{text}");
    let d = admin_json(&relay, "/api/v1/webhooks/dead").await;
    assert_eq!(d["items"].as_array().map(Vec::len), Some(0), "{d}");
    let (status, _) = admin_post(
        &relay,
        "/api/v1/webhooks/dead/00000000000000000000000000000000/retry",
    )
    .await;
    assert_eq!(status, 404);
    relay.stop().await;
}
