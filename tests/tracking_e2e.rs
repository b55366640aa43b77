//! Tracking end to end: real clients send HTML mail through the relay, the upstream receives
//! exactly one pixel whose token verifies, and loading it — with real user agents and with
//! headless Chromium opening the delivered HTML — records classified opens in the store.

mod common;

use common::*;
use std::process::Command;

use pixelrelay::token::{Purpose, TokenKey};
use pixelrelay::track::OpenEvent;

/// A relay whose pixel listener runs on a known port, so that `base_url` points at it.
async fn tracked_relay(up: &FakeUpstream, extra_store: &str) -> (Relay, u16) {
    let http = free_port();
    let cfg = with_ports(config_text(&up.addr.to_string(), ""), http, None);
    let cfg = format!("{cfg}\n[store]\nsubjects = true\n{extra_store}\n");
    (start_relay(&cfg).await, http)
}

/// `config` with its pixel listener (and `base_url`) on port `http`, and its admin listener on
/// `admin` when given.
fn with_ports(config: String, http: u16, admin: Option<u16>) -> String {
    let config = config
        .replace(
            "base_url = \"http://127.0.0.1:8080\"",
            &format!("base_url = \"http://127.0.0.1:{http}\""),
        )
        .replace(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"127.0.0.1:{http}\""),
        );
    match admin {
        Some(a) => config.replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"127.0.0.1:{a}\""),
        ),
        None => config,
    }
}

fn key(relay: &Relay) -> TokenKey {
    let secret = pixelrelay::secret::read(&relay.dir.path().join("data/secret.key")).unwrap();
    TokenKey::from_secret(&secret)
}

fn html_mail(cte: &str) -> String {
    let body = "<html><body><p>Hello Bob, caf\u{e9}!</p></body></html>";
    format!(
        "From: news@example.com\r\nTo: bob@example.net\r\nSubject: Weekly <b>news</b>\r\nMessage-ID: <e2e-{cte}@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nHello Bob\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n--b1--\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_and_smtplib_mail_gets_one_verifiable_pixel() {
    let up = FakeUpstream::start().await;
    let (relay, http) = tracked_relay(&up, "").await;

    // smtplib with a quoted-printable HTML part made by Python's email package.
    let py = format!(
        r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "news@example.com"; m["To"] = "bob@example.net"; m["Subject"] = "py"
m.set_content("text")
m.add_alternative("<html><body><p>" + "caf\u00e9 " * 40 + "</p></body></html>", subtype="html", cte="quoted-printable")
s = smtplib.SMTP("127.0.0.1", {port}); s.send_message(m); s.quit()
"#,
        port = relay.smtp().port()
    );
    let out = Command::new("python3").arg("-c").arg(&py).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // swaks with an 8bit HTML part.
    swaks_send(relay.smtp(), &html_mail("8bit"));

    let got = up.messages();
    assert!(!got.is_empty());
    let key = key(&relay);
    for g in &got {
        let urls = pixel_urls(&g.data);
        assert_eq!(
            urls.len(),
            1,
            "exactly one pixel in {}",
            String::from_utf8_lossy(&g.data)
        );
        let prefix = format!("http://127.0.0.1:{http}/o/");
        let token = urls[0]
            .strip_prefix(&prefix)
            .and_then(|t| t.strip_suffix(".gif"))
            .expect("our URL");
        assert!(
            key.verify(Purpose::Open, token).is_some(),
            "token verifies without a lookup"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn multi_recipient_and_opted_out_mail_pass_untouched() {
    let up = FakeUpstream::start().await;
    let (relay, _) = tracked_relay(&up, "").await;
    let mut c = Client::hello(relay.smtp()).await;
    let msg = html_mail("multi");
    let (code, _) = c
        .send_mail(
            "news@example.com",
            &["bob@example.net", "carol@example.net"],
            msg.as_bytes(),
        )
        .await;
    assert_eq!(code, 250);
    let opted = msg.replace(
        "MIME-Version: 1.0\r\n",
        "X-Track-Opens: no\r\nMIME-Version: 1.0\r\n",
    );
    let (code, _) = c
        .send_mail("news@example.com", &["bob@example.net"], opted.as_bytes())
        .await;
    assert_eq!(code, 250);
    let got = up.messages();
    assert_eq!(
        strip_received(&got[0].data),
        msg.as_bytes(),
        "two recipients: byte-identical"
    );
    assert!(pixel_urls(&got[1].data).is_empty());
    assert!(
        !String::from_utf8_lossy(&got[1].data).contains("X-Track-Opens"),
        "opt-out header removed"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pixel_loads_with_real_user_agents_and_chromium_are_recorded() {
    let up = FakeUpstream::start().await;
    let (relay, _) = tracked_relay(&up, "").await;
    let mut c = Client::hello(relay.smtp()).await;
    let (code, _) = c
        .send_mail(
            "news@example.com",
            &["bob@example.net"],
            html_mail("ua").as_bytes(),
        )
        .await;
    assert_eq!(code, 250);
    let delivered = up.messages().remove(0).data;
    let url = pixel_urls(&delivered).remove(0);
    // Real user agents (sources cited in src/track/classify.rs's tests).
    let agents = [
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            "Gmail",
            true,
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
            "Apple Mail",
            false,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            "Apple Mail",
            false,
        ),
        (
            "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17029; Pro)",
            "Outlook",
            false,
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.5.0",
            "Thunderbird",
            false,
        ),
    ];
    for (ua, _, _) in &agents {
        let (status, head, body) = http_get(&url, ua).await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: image/gif")
        );
        assert!(body.starts_with(b"GIF89a") || body.starts_with(b"GIF87a"));
    }
    // A real browser opening the delivered HTML part from a file.
    let html = mail_parser::MessageParser::default()
        .parse(&delivered[..])
        .unwrap();
    let page = html
        .html_part(0)
        .unwrap()
        .text_contents()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mail.html"), &page).unwrap();
    let browser = chromium(&[
        "--virtual-time-budget=5000",
        "--dump-dom",
        &format!("file://{}/mail.html", dir.path().display()),
    ]);
    let page = admin_json(&relay, "/api/v1/opens?limit=100").await;
    let opens: Vec<OpenEvent> =
        serde_json::from_value(page["items"].clone()).unwrap_or_else(|e| panic!("{e}: {page}"));
    relay.stop().await;
    if let Some(out) = &browser {
        assert!(
            out.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let want = agents.len() + usize::from(browser.is_some());
    assert_eq!(opens.len(), want, "{opens:#?}");
    // Newest first: the browser's open (if any) is first, then the agents in reverse.
    let mut by_ua: Vec<_> = opens.iter().rev().collect();
    if want > agents.len() {
        let chrome = by_ua.pop().unwrap();
        assert!(
            chrome.user_agent.contains("HeadlessChrome") || chrome.user_agent.contains("Chrome"),
            "{chrome:?}"
        );
    }
    for ((ua, client, machine), ev) in agents.iter().zip(by_ua.iter()) {
        assert_eq!(&ev.user_agent, ua);
        assert_eq!(&ev.client, client, "{ua}");
        assert_eq!(
            ev.machine,
            *machine || ev.machine_reason.as_deref() == Some("early-load"),
            "{ua}: {ev:?}"
        );
        assert_eq!(ev.recipient, "bob@example.net");
        assert_eq!(ev.subject.as_deref(), Some("Weekly <b>news</b>"));
    }
    assert!(by_ua[0].first && by_ua[0].count == 1);
    assert_eq!(by_ua[4].count, 5);
}

/// Opens stored, as (message, count) pairs oldest first, once there are `want` of them (or
/// what there is after 10 s): `pixelrelay tail --json` against the admin API.
fn opens_of(config: &std::path::Path, want: usize) -> Vec<(String, u64)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = pixelrelay_cli(&["tail", "--json", "-n", "100"], config);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opens: Vec<(String, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["message"].as_str().unwrap().to_string(),
                    v["count"].as_u64().unwrap(),
                )
            })
            .collect();
        if opens.len() >= want || std::time::Instant::now() > deadline {
            return opens;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_key_keeps_the_pixels_of_mail_already_sent() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (free_port(), free_port());
    let config = with_ports(config_text(&up.addr.to_string(), ""), http, Some(admin));
    let path = dir.path().join("relay.toml");
    let ua = "Mozilla/5.0 Thunderbird/128.0";
    let send = |smtp, to: &'static str| async move {
        let mut c = Client::hello(smtp).await;
        let (code, text) = c
            .send_mail("news@example.com", &[to], html_mail("8bit").as_bytes())
            .await;
        assert_eq!(code, 250, "{text}");
        c.cmd("QUIT").await;
    };

    std::fs::write(&path, &config).unwrap();
    let relay = Proc::serve(&path);
    send(relay.smtp, "bob@example.net").await;
    let old_url = pixel_urls(&up.messages()[0].data).remove(0);
    assert_eq!(relay.stop(), Some(0));

    // The rotation: the key in use becomes the previous one, a new key mints from now on.
    let data = dir.path().join("data");
    std::fs::rename(data.join("secret.key"), data.join("old.key")).unwrap();
    let rotated = config.replace(
        "[tracking]\n",
        "[tracking]\nprevious_secret_files = [\"data/old.key\"]\n",
    );
    std::fs::write(&path, &rotated).unwrap();
    let relay = Proc::serve(&path);
    send(relay.smtp, "ann@example.net").await;
    let new_url = pixel_urls(&up.messages()[1].data).remove(0);
    let new_token = new_url.rsplit('/').next().unwrap().trim_end_matches(".gif");
    let old_key = TokenKey::from_secret(&pixelrelay::secret::read(&data.join("old.key")).unwrap());
    assert!(
        old_key.verify(Purpose::Open, new_token).is_none(),
        "new mail gets the new key's token"
    );
    for url in [&old_url, &new_url] {
        assert_eq!(http_get(url, ua).await.0, 200);
    }
    let opens = opens_of(&path, 2);
    assert_eq!(opens.len(), 2, "both pixels count: {opens:?}");
    assert_ne!(opens[0].0, opens[1].0);
    assert_eq!(relay.stop(), Some(0));

    // The old key dropped from the list: its pixels verify no more, and record nothing.
    std::fs::write(&path, &config).unwrap();
    let relay = Proc::serve(&path);
    assert_eq!(
        http_get(&old_url, ua).await.0,
        200,
        "the same image, whatever the token"
    );
    assert_eq!(http_get(&new_url, ua).await.0, 200);
    let opens = opens_of(&path, 3);
    assert_eq!(opens.len(), 3, "{opens:?}");
    assert_eq!(
        opens[2],
        (opens[1].0.clone(), 2),
        "only the new key's pixel counted again"
    );
    assert_eq!(relay.stop(), Some(0));
    // A previous key that is missing is a config error naming the key and the file.
    let missing = config.replace(
        "[tracking]\n",
        "[tracking]\nprevious_secret_files = [\"data/gone.key\"]\n",
    );
    std::fs::write(&path, &missing).unwrap();
    let out = pixelrelay_cli(&["check-config"], &path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tracking.previous_secret_files[0]") && err.contains("gone.key"),
        "{err}"
    );
}
