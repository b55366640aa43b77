//! SIGHUP reloads the config: tracking rules, allow lists, webhooks, log level and limits take
//! effect for new transactions (even on a connection opened before the signal), keys that need
//! a restart are named in the log, and a file that does not load keeps the running config.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const HTML: &[u8] = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: reload\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n<html><body><a href=\"https://shop.example/x\">shop</a></body></html>\r\n";

/// The config with `tracking` as the `[tracking]` body and `extra` appended.
fn config(smtp: &str, tracking: &str, extra: &str) -> String {
    format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]
hostname = "relay.test"
allow_networks = ["127.0.0.0/8"]
{smtp}
[upstream]
capture_dir = "data/outbox"
[tracking]
{tracking}
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[log]
level = "info"
{extra}
"#
    )
}

fn hangup(p: &Proc) {
    Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap();
}

fn lines_with(p: &Proc, needle: &str) -> usize {
    p.log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// Sends SIGHUP and waits for the reload's outcome line (`needle`) to appear once more.
async fn reload(p: &Proc, needle: &str) {
    let before = lines_with(p, needle);
    hangup(p);
    eventually(10, needle, || lines_with(p, needle) > before).await;
}

/// GETs a pixel `url`'s path from `pixel` with `X-Forwarded-For: xff`; the status.
fn hit(pixel: std::net::SocketAddr, url: &str, xff: &str) -> u16 {
    use std::io::{Read, Write};
    let path = &url[url.find("/o/").expect("a pixel URL")..];
    let mut s = std::net::TcpStream::connect(pixel).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: Thunderbird/115.0\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    std::str::from_utf8(out.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The open from `ip` in an admin response listing opens.
fn open_from(response: &str, ip: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["items"]
        .as_array()
        .and_then(|items| items.iter().find(|o| o["ip"] == ip).cloned())
        .unwrap_or_else(|| panic!("no open from {ip} in {response}"))
}

/// The captured message written last.
fn last_captured(dir: &Path) -> Vec<u8> {
    let mut emls: Vec<_> = files_below(&dir.join("data/outbox"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    emls.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    std::fs::read(emls.last().expect("a captured message")).unwrap()
}

async fn send(c: &mut Client) -> u16 {
    c.send_mail("a@example.com", &["b@example.net"], HTML)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_puts_the_new_config_in_force_for_new_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let tracking_a = "base_url = \"http://127.0.0.1:8080\"";
    std::fs::write(&path, config("", tracking_a, "")).unwrap();
    let relay = Proc::serve_at_configured_level(&path);

    // Before: pixels at base_url A, links untouched.
    let mut kept = Client::hello(relay.smtp).await;
    assert_eq!(send(&mut kept).await, 250);
    let before = last_captured(dir.path());
    assert!(pixel_urls(&before)[0].starts_with("http://127.0.0.1:8080/o/"));
    assert!(String::from_utf8_lossy(&before).contains("https://shop.example/x"));
    assert_eq!(lines_with(&relay, "DEBUG"), 0);
    // No proxy trusted yet: a forwarded-for header is not believed.
    let pixel = relay.http_addr();
    let admin = relay.admin_addr();
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap();
    let opens = || admin_get_blocking(admin, token.trim(), "/api/v1/opens?limit=10");
    assert_eq!(hit(pixel, &pixel_urls(&before)[0], "203.0.113.7"), 200);
    eventually(10, "the open from the proxy itself", || {
        opens().contains("\"ip\":\"127.0.0.1\"")
    })
    .await;
    // Loaded seconds after hand-off: a machine by the timing rule (machine_window, 30 s).
    assert_eq!(
        open_from(&opens(), "127.0.0.1")["machine_reason"],
        "early-load"
    );

    // New tracking rules (another base_url, clicks on, no timing rule), a trusted proxy, a
    // webhook, the log level, a smaller message size, and a listener address (which needs a
    // restart).
    let hook_port = free_port();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tracking_b = "base_url = \"https://t2.example\"\nclicks = true\nmachine_window = 0";
    let hook = format!(
        "[[webhooks]]\nurl = \"http://127.0.0.1:{hook_port}/hook\"\nsecret_file = \"hook.secret\"\n"
    );
    let text = config("max_message_size = 2000", tracking_b, &hook)
        .replace(
            "[http]\nlisten = \"127.0.0.1:0\"",
            "[http]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
        )
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]")
        .replace("level = \"info\"", "level = \"debug\"");
    std::fs::write(&path, text).unwrap();
    reload(&relay, "config reloaded").await;
    assert_eq!(
        lines_with(&relay, "needs a restart"),
        1,
        "one key needs a restart"
    );
    assert_eq!(lines_with(&relay, "key=smtp.listen"), 1, "and it is named");

    // Reloaded again unchanged: the pending key is named again, nothing else changes.
    reload(&relay, "config reloaded").await;
    assert_eq!(lines_with(&relay, "key=smtp.listen"), 2, "still pending");
    assert_eq!(lines_with(&relay, "changed=[]"), 1);

    // The connection opened before the signal: its next transaction takes the new rules.
    assert_eq!(send(&mut kept).await, 250);
    let after = last_captured(dir.path());
    let url = pixel_urls(&after).remove(0);
    assert!(url.starts_with("https://t2.example/o/"), "{url}");
    let text = String::from_utf8_lossy(&after);
    assert!(
        text.contains("https://t2.example/c/"),
        "links rewritten now"
    );
    assert!(!text.contains("https://shop.example/x"));
    kept.cmd("QUIT").await;

    // A new connection: the new SIZE limit and the debug level.
    let mut fresh = Client::connect(relay.smtp).await;
    fresh.reply().await;
    let (code, ehlo) = fresh.cmd("EHLO client.test").await;
    assert_eq!(code, 250);
    assert!(ehlo.contains("SIZE 2000"), "{ehlo}");
    eventually(10, "a debug line", || lines_with(&relay, "DEBUG") > 0).await;
    fresh.cmd("QUIT").await;

    // The new webhook endpoint is subscribed: an open is queued for it (nothing listens there).
    // And the proxy is trusted now: the reader's address comes from its header.
    assert_eq!(hit(pixel, &url, "203.0.113.7"), 200);
    eventually(10, "the open from the reader behind the proxy", || {
        opens().contains("\"ip\":\"203.0.113.7\"")
    })
    .await;
    // The timing rule is off now (machine_window = 0): a person.
    let open = open_from(&opens(), "203.0.113.7");
    assert_eq!(open["machine"], false, "{open}");
    eventually(10, "an outbox row for the new endpoint", || {
        admin_get_blocking(admin, token.trim(), "/api/v1/webhooks/pending").contains("\"items\":[{")
    })
    .await;

    // A broken file: the running config stays, and the log says why.
    std::fs::write(&path, "[smtp\nlisten = 1\n").unwrap();
    reload(&relay, "config reload failed").await;
    assert_eq!(
        lines_with(&relay, "syntax error at line 1"),
        1,
        "the reason is in the log"
    );
    let mut c = Client::hello(relay.smtp).await;
    assert_eq!(send(&mut c).await, 250);
    let still = last_captured(dir.path());
    assert!(pixel_urls(&still)[0].starts_with("https://t2.example/o/"));
    c.cmd("QUIT").await;

    // An allow list without this address: new connections may no longer relay. The listener
    // address is back as it runs: nothing waits for a restart any more.
    let closed = config("", tracking_b, "").replace("127.0.0.0/8", "192.0.2.0/24");
    std::fs::write(&path, closed).unwrap();
    reload(&relay, "config reloaded").await;
    assert_eq!(lines_with(&relay, "needs_restart=[]"), 1);
    let mut c = Client::hello(relay.smtp).await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").await.0, 554);
    c.cmd("QUIT").await;
    let metrics = admin_get_blocking(admin, token.trim(), "/metrics");
    for want in [
        "pixelrelay_config_reloads_total{result=\"applied\"} 3",
        "pixelrelay_config_reloads_total{result=\"failed\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    assert_eq!(relay.stop(), Some(0));
}
