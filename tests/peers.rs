//! Real peers not written here: swaks, Python's smtplib and lettre as clients, Postfix's
//! smtp-sink as an upstream, and a private Postfix instance using pixelrelay as its relayhost.

mod common;

use common::postfix::{Postfix, Sink};
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

fn write_config(dir: &Path, upstream: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, config_text(&upstream.to_string(), "")).unwrap();
    path
}

#[tokio::test]
async fn swaks_and_smtplib_through_the_binary_into_smtp_sink() {
    let Some(sink) = Sink::start().await else {
        return;
    };
    let Some(swaks) = need("swaks") else { return };
    let dir = tempfile::tempdir().unwrap();
    let relay = Proc::serve(&write_config(dir.path(), sink.addr));

    let msg = dir.path().join("msg.eml");
    std::fs::write(
        &msg,
        "From: a@example.com\r\nTo: b@example.net\r\nSubject: swaks\r\n\r\nhello from swaks\r\n.dot line\r\n",
    )
    .unwrap();
    let out = Command::new(&swaks)
        .args([
            "--server",
            &relay.smtp.to_string(),
            "--from",
            "a@example.com",
            "--to",
            "b@example.net",
        ])
        .arg("--data")
        .arg(format!("@{}", msg.display()))
        .args(["--helo", "client.test", "--silent", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swaks failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let py = format!(
        "import smtplib\ns = smtplib.SMTP('127.0.0.1', {port})\ns.ehlo('py.test')\n\
         r = s.sendmail('c@example.com', ['d@example.net'], b'Subject: smtplib\\r\\n\\r\\nhello from smtplib\\r\\n')\n\
         assert r == {{}}, r\ns.quit()\n",
        port = relay.smtp.port()
    );
    let out = Command::new("python3").arg("-c").arg(&py).output().unwrap();
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    eventually(10, "two dumps", || sink.dumps().len() == 2).await;
    let all: Vec<String> = sink
        .dumps()
        .iter()
        .map(|d| String::from_utf8_lossy(d).to_string())
        .collect();
    let swaks_dump = all
        .iter()
        .find(|d| d.contains("hello from swaks"))
        .expect("swaks message at the sink");
    assert!(
        swaks_dump.contains("\n.dot line"),
        "dot line intact: {swaks_dump:?}"
    );
    assert!(
        swaks_dump.contains("(pixelrelay) with ESMTP id"),
        "Received header added"
    );
    assert!(all.iter().any(|d| d.contains("hello from smtplib")));
    assert_eq!(relay.stop(), Some(0), "graceful exit on SIGTERM");
}

#[tokio::test]
async fn lettre_client_through_the_relay() {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    let email = Message::builder()
        .from("Alice <a@example.com>".parse().unwrap())
        .to("Bob <b@example.net>".parse().unwrap())
        .subject("lettre")
        .body("hello from lettre\r\n".to_string())
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(relay.smtp().port())
        .build();
    let resp = mailer.send(email).await.expect("lettre send");
    assert!(resp.is_positive());
    let got = up.messages();
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].data).contains("hello from lettre"));
    relay.stop().await;
}

#[tokio::test]
async fn real_postfix_uses_pixelrelay_as_relayhost() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    let Some(pf) = Postfix::start(relay.smtp()) else {
        return;
    };
    let mta: SocketAddr = format!("127.0.0.1:{}", pf.port).parse().unwrap();
    wait_listening(mta).await;
    let mut c = Client::hello(mta).await;
    // Two recipients: Postfix splits them into one delivery each (recipient limit 1).
    let msg = b"From: a@example.com\r\nTo: b@example.net, c@example.org\r\nSubject: via postfix\r\n\r\nbody through postfix\r\n";
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<c@example.org>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&dot_stuff(msg)).await;
    assert_eq!(c.reply().await.0, 250);
    c.cmd("QUIT").await;
    let log = || pf.maillog();
    eventually(60, "two deliveries through pixelrelay", || {
        up.messages().len() == 2
    })
    .await;
    let got = up.messages();
    let mut rcpts: Vec<String> = got.iter().flat_map(|g| g.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec!["b@example.net", "c@example.org"],
        "one recipient per delivery"
    );
    for g in &got {
        let text = String::from_utf8_lossy(&g.data);
        assert!(
            text.starts_with("Received: from mta.localhost"),
            "our header first: {text}"
        );
        assert!(text.contains("body through postfix"));
    }
    eventually(20, "status=sent in the Postfix log", || {
        log().matches("status=sent").count() == 2
    })
    .await;
    drop(pf);
    relay.stop().await;
}

/// `[log] format = "json"`: one JSON object per line, with the transaction's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_has_one_line_per_transaction() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[log]\nformat = \"json\"\n",
            config_text(&up.addr.to_string(), "")
        ),
    )
    .unwrap();
    let relay = Proc::serve(&path);
    let mut c = Client::hello(relay.smtp).await;
    let (code, _) = c
        .send_mail(
            "a@example.com",
            &["b@example.net"],
            b"Subject: log\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(code, 250);
    c.cmd("QUIT").await;
    let log = relay.log.clone();
    eventually(10, "the relayed line", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"relayed\""))
    })
    .await;
    let line = log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("\"relayed\""))
        .cloned()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
    assert_eq!(v["from"], "a@example.com");
    assert_eq!(v["rcpts"], "b@example.net");
    assert!(
        v["queue_id"].as_str().is_some_and(|q| q.len() == 16),
        "{line}"
    );
    assert!(
        v["reply"].as_str().is_some_and(|r| r.starts_with("250")),
        "{line}"
    );
    for key in ["client", "size", "duration_ms", "tracking", "changed"] {
        assert!(!v[key].is_null(), "{key} missing: {line}");
    }
    assert_eq!(relay.stop(), Some(0));
}

/// `smtp.one_recipient_per_transaction`: a real Postfix without any recipient limit sends a
/// three-recipient message; pixelrelay takes one recipient per transaction (452 4.5.3 to the
/// others) and every copy reaches smtp-sink with a pixel of its own. How Postfix carries on
/// after the 452 (at once, or from its queue) is read from its log and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recipient_per_transaction_tracks_every_recipient_of_a_real_postfix() {
    let Some(sink) = Sink::start().await else {
        return;
    };
    let cfg = config_text(
        &sink.addr.to_string(),
        "one_recipient_per_transaction = true",
    );
    let relay = start_relay(&cfg).await;
    // Postfix's defaults for recipients (no per-destination limit of 1), a short retry.
    let Some(pf) = Postfix::start_with(
        relay.smtp(),
        &[
            "smtp_destination_recipient_limit=50",
            "queue_run_delay=1s",
            "minimal_backoff_time=1s",
            "maximal_backoff_time=2s",
        ],
    ) else {
        return;
    };
    let mta: SocketAddr = format!("127.0.0.1:{}", pf.port).parse().unwrap();
    wait_listening(mta).await;
    let mut c = Client::hello(mta).await;
    let html = "From: news@example.com\r\nTo: list@example.net\r\nSubject: three\r\nMIME-Version: 1.0\r\n\
                Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Hello</p></body></html>\r\n";
    let rcpts = ["r1@example.net", "r2@example.org", "r3@example.com"];
    let started = std::time::Instant::now();
    let (code, text) = c
        .send_mail("news@example.com", &rcpts, html.as_bytes())
        .await;
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT").await;
    eventually(60, "three copies at the sink", || sink.dumps().len() == 3).await;
    let took = started.elapsed();
    let mut seen = Vec::new();
    let mut tokens = std::collections::HashSet::new();
    for d in sink.dumps() {
        let text = String::from_utf8_lossy(&d).into_owned();
        let to: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("X-Rcpt-Args: <"))
            .filter_map(|l| l.split('>').next())
            .collect();
        assert_eq!(to.len(), 1, "one recipient per copy: {text}");
        seen.push(to[0].to_string());
        let urls = pixel_urls(&d);
        assert_eq!(urls.len(), 1, "one pixel in every copy: {text}");
        tokens.insert(urls[0].clone());
    }
    seen.sort();
    assert_eq!(seen, rcpts);
    assert_eq!(tokens.len(), 3, "a pixel of its own for each recipient");
    let log = pf.maillog();
    let deferred = log.matches("status=deferred").count();
    let immediate = log.contains("4.5.3") && deferred == 0;
    eprintln!(
        "postfix after 452 4.5.3: {} deferrals, all three copies delivered {:.1} s after submission ({})",
        deferred,
        took.as_secs_f64(),
        if immediate {
            "no queue retry"
        } else {
            "through the queue"
        }
    );
    let stats = admin_json(&relay, "/api/v1/stats").await;
    assert_eq!(stats["tracked"], 3, "{stats}");
    drop(pf);
    relay.stop().await;
}

/// `upstream.xforward`: the upstream is a real Postfix that trusts pixelrelay for XFORWARD; a
/// client on 127.0.0.2 sends through pixelrelay, and Postfix's log names that client and
/// pixelrelay's queue id (`orig_client=`, `orig_queue_id=`: what Postfix 3.7 does with
/// XFORWARD from an authorized host). Without the key, Postfix knows only pixelrelay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xforward_lets_the_upstream_postfix_see_the_original_client() {
    let Some(sink) = Sink::start().await else {
        return;
    };
    let Some(pf) = Postfix::start_with(sink.addr, &["smtpd_authorized_xforward_hosts=127.0.0.0/8"])
    else {
        return;
    };
    let mta: SocketAddr = format!("127.0.0.1:{}", pf.port).parse().unwrap();
    wait_listening(mta).await;
    for (xforward, n) in [(true, 1), (false, 2)] {
        let cfg = config_text(&mta.to_string(), "").replace(
            &format!("address = \"{mta}\""),
            &format!("address = \"{mta}\"\nxforward = {xforward}"),
        );
        let relay = start_relay(&cfg).await;
        let mut c = Client::connect_from("127.0.0.2".parse().unwrap(), relay.smtp()).await;
        assert_eq!(c.reply().await.0, 220);
        assert_eq!(c.cmd("EHLO original.client.test").await.0, 250);
        let (code, text) = c
            .send_mail(
                "a@example.com",
                &["b@example.net"],
                format!("Subject: xforward {xforward}\r\n\r\nbody\r\n").as_bytes(),
            )
            .await;
        assert_eq!(code, 250, "{text}");
        c.cmd("QUIT").await;
        eventually(30, "the message at the sink", || sink.dumps().len() == n).await;
        relay.stop().await;
    }
    let log = pf.maillog();
    let accepted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("postfix/smtpd") && l.contains(": client=unknown[127.0.0.1]"))
        .collect();
    assert_eq!(accepted.len(), 2, "{log}");
    // With XFORWARD: the original client and pixelrelay's queue id, as Postfix logs them.
    assert!(
        accepted[0].contains("orig_client=unknown[127.0.0.2]")
            && accepted[0].contains("orig_queue_id="),
        "{log}"
    );
    // Without: nothing but pixelrelay.
    assert!(!accepted[1].contains("orig_client"), "{log}");
}
