//! A node runs only the faces its config names: an empty `smtp.listen` turns SMTP off (and
//! then `[upstream]` may be left out), a missing `[http]` or `[admin]` turns that listener off
//! (relay-only, pixel-only and admin-only nodes of a deployment over a shared store).

mod common;

use common::*;

/// `config_text` without the sections named in `drop` (each "[http]" or "[admin]" with its
/// listen line), and with `smtp` as the SMTP listen line.
fn config(upstream: &str, smtp: &str, drop: &[&str]) -> String {
    let mut c = config_text(upstream, "").replace("listen = [\"127.0.0.1:0\"]", smtp);
    if upstream.is_empty() {
        // No [upstream] section at all.
        c = c.replace(
            "[upstream]\naddress = \"\"\ncommand_timeout = 5\ndata_timeout = 5\nconnect_timeout = 5\n",
            "",
        );
        assert!(!c.contains("[upstream]"), "{c}");
    }
    for section in drop {
        c = c.replace(&format!("{section}\nlisten = \"127.0.0.1:0\"\n"), "");
    }
    c
}

#[tokio::test]
async fn a_relay_only_node_relays_and_tracks_with_no_listener_of_its_own() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config(
        &up.addr.to_string(),
        "listen = [\"127.0.0.1:0\"]",
        &["[http]", "[admin]"],
    ))
    .await;
    assert_eq!(relay.addrs.http, None);
    assert_eq!(relay.addrs.admin, None);
    assert!(
        !relay.dir.path().join("data/admin.token").exists(),
        "no admin token made for an admin API that does not run"
    );
    let mut c = Client::hello(relay.smtp()).await;
    let html = b"Subject: hi\r\nContent-Type: text/html\r\n\r\n<html><body>hello</body></html>\r\n";
    let (code, text) = c.send_mail("a@example.com", &["b@example.net"], html).await;
    assert_eq!(code, 250, "{text}");
    // The pixel points at base_url: the pixel nodes serve it.
    let urls = pixel_urls(&up.messages()[0].data);
    assert_eq!(urls.len(), 1);
    assert!(urls[0].starts_with("http://127.0.0.1:8080/o/"), "{urls:?}");
    c.cmd("QUIT").await;
    relay.stop().await;
}

#[tokio::test]
async fn a_pixel_only_node_serves_pixels_and_takes_no_mail() {
    let relay = start_relay(&config("", "listen = []", &["[admin]"])).await;
    assert!(relay.addrs.smtp.is_empty());
    assert_eq!(relay.addrs.admin, None);
    let (status, headers, body) = http_get(
        &format!("http://{}/o/not-a-token.gif", relay.http()),
        "curl",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        headers.to_ascii_lowercase().contains("image/gif"),
        "{headers}"
    );
    assert!(body.starts_with(b"GIF89a"));
    relay.stop().await;
}

#[tokio::test]
async fn an_admin_only_node_answers_the_api() {
    let relay = start_relay(&config("", "listen = []", &["[http]"])).await;
    assert!(relay.addrs.smtp.is_empty());
    assert_eq!(relay.addrs.http, None);
    let stats = admin_json(&relay, "/api/v1/stats").await;
    assert_eq!(stats["relayed"], 0, "{stats}");
    relay.stop().await;
}

#[test]
fn the_cli_on_a_node_without_admin_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config("", "listen = []", &["[admin]"])).unwrap();
    let out = pixelrelay_cli(&["check-config"], &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("smtp off") && summary.contains("admin off"),
        "{summary}"
    );
    let out = pixelrelay_cli(&["tail"], &path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no [admin] section"), "{err}");
}

#[test]
fn only_a_node_that_takes_smtp_needs_an_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    // SMTP on, no [upstream]: the error names the key.
    let smtp_on = config("", "listen = [\"127.0.0.1:0\"]", &[]);
    std::fs::write(&path, &smtp_on).unwrap();
    let out = pixelrelay_cli(&["check-config"], &path);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream.address"), "{err}");
    // SMTP off: no upstream needed, and the summary says none is used.
    std::fs::write(&path, config("", "listen = []", &[])).unwrap();
    let out = pixelrelay_cli(&["check-config"], &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("smtp off"));
}
