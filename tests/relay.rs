//! The relay end to end over loopback: a real listener, the in-process fake upstream.
//! What the upstream holds must match exactly what the client was told.

mod common;

use common::*;
use std::time::Duration;

fn html_message(body: &str) -> Vec<u8> {
    format!(
        "From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\nMessage-ID: <m1@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn relays_byte_exact_with_received_header() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    let mut c = Client::hello(relay.smtp()).await;
    let body = "line one\r\n.starts with a dot\r\n..two dots\r\n.\r\nnot the end\r\n8bit: caf\u{e9} \u{2603}\r\n\r\n";
    let msg = html_message(body);
    let (code, text) = c.send_mail("a@example.com", &["b@example.net"], &msg).await;
    assert_eq!(code, 250, "{text}");
    assert!(
        text.contains("queued as FAKE"),
        "client gets the upstream's own reply: {text}"
    );
    let got = up.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, "a@example.com");
    assert_eq!(got[0].rcpts, vec!["b@example.net"]);
    assert_eq!(strip_received(&got[0].data), &msg[..]);
    let received = String::from_utf8_lossy(&got[0].data[..200]).to_string();
    assert!(
        received.contains("by relay.test (pixelrelay) with ESMTP id"),
        "{received}"
    );
    assert!(received.contains("for <b@example.net>"), "{received}");
    c.cmd("QUIT").await;
    relay.stop().await;
}

#[tokio::test]
async fn ten_megabyte_message_is_byte_exact() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    let mut c = Client::hello(relay.smtp()).await;
    let mut msg = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0u32;
    while msg.len() < 10 * 1024 * 1024 {
        // Lines of varying length, some starting with dots, some 8-bit.
        let line = match i % 5 {
            0 => format!(".{i} dotted\r\n"),
            1 => format!("{} \u{fc}ber\r\n", "x".repeat((i % 900) as usize)),
            _ => format!("{i:08} the quick brown fox\r\n"),
        };
        msg.extend_from_slice(line.as_bytes());
        i += 1;
    }
    let (code, _) = c.send_mail("a@example.com", &["b@example.net"], &msg).await;
    assert_eq!(code, 250);
    let got = up.messages();
    assert_eq!(strip_received(&got[0].data).len(), msg.len());
    assert!(strip_received(&got[0].data) == &msg[..]);
    relay.stop().await;
}

#[tokio::test]
async fn per_recipient_replies_are_the_upstreams() {
    let up = FakeUpstream::start().await;
    up.set(|s| {
        s.rcpt_overrides.push((
            "nobody@example.net".into(),
            Act::reply("550 5.1.1 <nobody@example.net>: unknown user"),
        ));
        s.rcpt_overrides.push((
            "later@example.net".into(),
            Act::reply("450 4.2.0 try later"),
        ));
    });
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    let mut c = Client::hello(relay.smtp()).await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    let (code, text) = c.cmd("RCPT TO:<nobody@example.net>").await;
    assert_eq!(
        (code, text.as_str()),
        (550, "5.1.1 <nobody@example.net>: unknown user")
    );
    assert_eq!(c.cmd("RCPT TO:<later@example.net>").await.0, 450);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&dot_stuff(&html_message("x"))).await;
    assert_eq!(c.reply().await.0, 250);
    let got = up.messages();
    assert_eq!(got[0].rcpts, vec!["b@example.net"]);
    relay.stop().await;
}

#[tokio::test]
async fn parameters_pass_through_verbatim() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    let mut c = Client::hello(relay.smtp()).await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=abc+2B1")
            .await
            .0,
        250
    );
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@example.net")
            .await
            .0,
        250
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&dot_stuff(&html_message("x"))).await;
    assert_eq!(c.reply().await.0, 250);
    let got = up.messages();
    assert_eq!(
        got[0].lines[0],
        "MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=abc+2B1"
    );
    assert_eq!(
        got[0].lines[1],
        "RCPT TO:<b@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@example.net"
    );
    relay.stop().await;
}

#[tokio::test]
async fn pipelined_commands_get_replies_in_order() {
    let up = FakeUpstream::start().await;
    up.set(|s| {
        s.rcpt_overrides
            .push(("bad@example.net".into(), Act::reply("550 5.1.1 no")))
    });
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    let mut c = Client::hello(relay.smtp()).await;
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<bad@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 550);
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 354);
    let mut data = dot_stuff(&html_message("pipelined"));
    data.extend_from_slice(b"NOOP\r\nQUIT\r\n");
    c.send(&data).await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 221);
    assert_eq!(up.messages().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn smuggled_end_of_data_stays_inside_one_message() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    for seq in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r.\r",
        b"\r.\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r\n\x00.\r\n",
        b"\r\n.\x00\r\n",
        b"\n.\r\r\n",
    ] {
        let before = up.messages().len();
        let mut c = Client::hello(relay.smtp()).await;
        assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
        assert_eq!(c.cmd("RCPT TO:<b@example.net>").await.0, 250);
        assert_eq!(c.cmd("DATA").await.0, 354);
        let mut raw = b"Subject: smuggle\r\n\r\nhello".to_vec();
        raw.extend_from_slice(seq);
        raw.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n");
        c.send(&raw).await;
        let (code, text) = c.reply().await;
        assert_eq!(code, 250, "{seq:?}: {text}");
        c.cmd("QUIT").await;
        let got = up.messages();
        assert_eq!(
            got.len(),
            before + 1,
            "{seq:?}: upstream must see exactly one message"
        );
        let last = &got[before];
        assert_eq!(last.rcpts, vec!["b@example.net"]);
        let body = String::from_utf8_lossy(&last.data).to_string();
        assert!(
            body.contains("MAIL FROM:<evil@example.com>"),
            "{seq:?}: smuggled text is data"
        );
        // Canonical CRLF upstream: no bare LF or CR survives normalisation.
        let d = &last.data;
        for (i, &b) in d.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(d[i - 1], b'\r', "{seq:?}: bare LF upstream");
            }
            if b == b'\r' {
                assert_eq!(d.get(i + 1), Some(&b'\n'), "{seq:?}: bare CR upstream");
            }
        }
    }
    relay.stop().await;
}

#[tokio::test]
async fn bare_newline_reject_mode() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(
        &up.addr.to_string(),
        "bare_newline = \"reject\"",
    ))
    .await;
    let mut c = Client::hello(relay.smtp()).await;
    let (code, _) = c
        .send_mail(
            "a@example.com",
            &["b@example.net"],
            b"Subject: x\r\n\r\nbare\nlf\r\n",
        )
        .await;
    assert_eq!(code, 550);
    assert!(up.messages().is_empty());
    // The session goes on.
    let (code, _) = c
        .send_mail(
            "a@example.com",
            &["b@example.net"],
            b"Subject: x\r\n\r\nfine\r\n",
        )
        .await;
    assert_eq!(code, 250);
    relay.stop().await;
}

#[tokio::test]
async fn limits_and_sequence_errors() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(
        &up.addr.to_string(),
        "max_message_size = 1000\nmax_recipients = 2\nmax_errors = 8",
    ))
    .await;
    let mut c = Client::connect(relay.smtp()).await;
    assert_eq!(c.reply().await.0, 220);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com>").await.0,
        503,
        "MAIL before EHLO"
    );
    let (code, ehlo) = c.cmd("EHLO client.test").await;
    assert_eq!(code, 250);
    for kw in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(ehlo.lines().any(|l| l == kw), "{kw} missing from {ehlo}");
    }
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net>").await.0,
        503,
        "RCPT before MAIL"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.com> SIZE=5000").await.0, 552);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 503, "DATA before RCPT");
    assert_eq!(c.cmd("RCPT TO:<b1@example.net>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<b2@example.net>").await.0, 250);
    assert_eq!(c.cmd("RCPT TO:<b3@example.net>").await.0, 452);
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&dot_stuff(&vec![b'x'; 2000])).await;
    assert_eq!(c.reply().await.0, 552);
    assert!(
        up.messages().is_empty(),
        "an oversized message never reaches the upstream"
    );
    assert_eq!(c.cmd("VRFY bob").await.0, 252);
    assert_eq!(c.cmd("HELP").await.0, 214);
    assert_eq!(c.cmd("NOOP").await.0, 250);
    assert_eq!(
        c.cmd(&format!("NOOP {}", "x".repeat(600))).await.0,
        500,
        "line too long"
    );
    assert_eq!(c.cmd("FROB").await.0, 500);
    assert_eq!(c.cmd("MAIL FROM:bad").await.0, 501);
    assert_eq!(
        c.cmd("FROB").await.0,
        500,
        "the eighth error still gets its reply"
    );
    assert_eq!(
        c.reply().await.0,
        421,
        "then too many errors closes the session"
    );
    assert!(c.rest().await.is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn upstream_failures_give_4xx_and_nothing_is_held() {
    // (stage to script, act, expected client code at that stage)
    let cases: Vec<(&str, Act, u16)> = vec![
        ("greeting", Act::reply("554 go away"), 451),
        ("greeting", Act::Drop, 451),
        ("mail", Act::reply("451 4.3.0 busy"), 451),
        ("mail", Act::reply("550 5.7.1 sender rejected"), 550),
        ("mail", Act::Stall, 451),
        ("rcpt", Act::Drop, 451),
        ("rcpt", Act::Stall, 451),
        ("data", Act::reply("554 5.5.1 no"), 554),
        ("data", Act::Drop, 451),
        ("end", Act::reply("452 4.3.1 full"), 452),
        ("end", Act::reply("550 5.7.1 spam"), 550),
        ("end", Act::Drop, 451),
        ("end", Act::Stall, 451),
    ];
    for (stage, act, want) in cases {
        let up = FakeUpstream::start().await;
        up.set(|s| match stage {
            "greeting" => s.greeting = act.clone(),
            "mail" => s.mail = act.clone(),
            "rcpt" => s.rcpt = act.clone(),
            "data" => s.data = act.clone(),
            _ => s.end = act.clone(),
        });
        let cfg = config_text(&up.addr.to_string(), "")
            .replace("command_timeout = 5", "command_timeout = 1")
            .replace("data_timeout = 5", "data_timeout = 1");
        let relay = start_relay(&cfg).await;
        let mut c = Client::hello(relay.smtp()).await;
        let started = std::time::Instant::now();
        let (code, text) = c
            .send_mail("a@example.com", &["b@example.net"], &html_message("x"))
            .await;
        assert_eq!(code, want, "{stage} {act:?}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{stage} {act:?} hung"
        );
        assert!(
            up.messages().is_empty(),
            "{stage} {act:?}: upstream holds a message the client was told failed"
        );
        // The session survives and the next transaction works once the upstream behaves.
        up.set(|s| *s = Script::default());
        let (code, text) = c
            .send_mail("a@example.com", &["b@example.net"], &html_message("again"))
            .await;
        assert_eq!(code, 250, "{stage} {act:?} recovery: {text}");
        assert_eq!(up.messages().len(), 1);
        relay.stop().await;
    }
}

#[tokio::test]
async fn a_pipelined_envelope_is_relayed_with_each_reply_in_its_place() {
    for pipelining in [true, false] {
        let up = FakeUpstream::start().await;
        up.set(|s| {
            s.pipelining = pipelining;
            s.rcpt_overrides = vec![(
                "gone@example.net".into(),
                Act::reply("550 5.1.1 no such user"),
            )];
        });
        let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
        let mut c = Client::hello(relay.smtp()).await;
        // Everything up to DATA in one write, as Postfix sends it.
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<gone@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
            .await;
        let mut codes = Vec::new();
        for _ in 0..4 {
            codes.push(c.reply().await.0);
        }
        assert_eq!(codes, vec![250, 550, 250, 354], "pipelining={pipelining}");
        c.send(&dot_stuff(&html_message("grouped"))).await;
        assert_eq!(c.reply().await.0, 250, "pipelining={pipelining}");
        let got = up.messages();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rcpts, vec!["b@example.net"]);
        // A refused sender: the pipelined RCPT and DATA get 503, nothing is relayed, and the
        // connection still works.
        up.set(|s| s.mail = Act::reply("550 5.7.1 sender refused"));
        c.send(b"MAIL FROM:<x@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
            .await;
        let mut codes = Vec::new();
        for _ in 0..3 {
            codes.push(c.reply().await.0);
        }
        assert_eq!(codes, vec![550, 503, 503], "pipelining={pipelining}");
        up.set(|s| s.mail = Act::reply("250 2.1.0 Ok"));
        let (code, text) = c
            .send_mail("a@example.com", &["b@example.net"], &html_message("again"))
            .await;
        assert_eq!(code, 250, "pipelining={pipelining}: {text}");
        assert_eq!(up.messages().len(), 2);
        relay.stop().await;
    }
}

#[tokio::test]
async fn upstream_down_gives_451() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let relay = start_relay(&config_text(&addr.to_string(), "")).await;
    let mut c = Client::hello(relay.smtp()).await;
    let (code, text) = c.cmd("MAIL FROM:<a@example.com>").await;
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.4.1"), "{text}");
    relay.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reset() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    for i in 0..5 {
        let mut c = Client::hello(relay.smtp()).await;
        let (code, _) = c
            .send_mail(
                "a@example.com",
                &["b@example.net"],
                &html_message(&format!("n{i}")),
            )
            .await;
        assert_eq!(code, 250);
        // An aborted transaction: the pooled connection is RSET before reuse.
        assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
        assert_eq!(c.cmd("RSET").await.0, 250);
        c.cmd("QUIT").await;
    }
    assert_eq!(up.messages().len(), 5);
    assert_eq!(
        up.connection_count(),
        1,
        "one pooled upstream connection serves sequential sessions"
    );
    relay.stop().await;
}

#[tokio::test]
async fn client_outside_allow_networks_cannot_relay() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(
        &up.addr.to_string(),
        "allow_networks = [\"127.0.0.2/32\"]",
    ))
    .await;
    let mut c = Client::hello(relay.smtp()).await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    let (code, text) = c.cmd("RCPT TO:<b@example.net>").await;
    assert_eq!((code, text.as_str()), (554, "5.7.1 Relay access denied"));
    assert_eq!(c.cmd("DATA").await.0, 503);
    assert_eq!(
        up.connection_count(),
        0,
        "the upstream is never contacted for an unknown client"
    );
    relay.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_transaction_then_421() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    let mut busy = Client::hello(relay.smtp()).await;
    let mut idle = Client::hello(relay.smtp()).await;
    assert_eq!(busy.cmd("MAIL FROM:<a@example.com>").await.0, 250);
    assert_eq!(busy.cmd("RCPT TO:<b@example.net>").await.0, 250);
    let addr = relay.smtp();
    let stopping = tokio::spawn(relay.stop());
    // The idle session is told at once.
    let (code, _) = idle.reply().await;
    assert_eq!(code, 421);
    // The in-flight transaction completes.
    assert_eq!(busy.cmd("DATA").await.0, 354);
    busy.send(&dot_stuff(&html_message("in flight"))).await;
    assert_eq!(busy.reply().await.0, 250);
    assert_eq!(busy.reply().await.0, 421, "then the session is closed");
    stopping.await.unwrap();
    assert_eq!(up.messages().len(), 1);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn connection_limits_answer_421() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(
        &up.addr.to_string(),
        "max_connections = 3\nmax_connections_per_ip = 2",
    ))
    .await;
    let _a = Client::hello(relay.smtp()).await;
    let _b = Client::hello(relay.smtp()).await;
    let mut third = Client::connect(relay.smtp()).await;
    assert_eq!(
        third.reply().await.0,
        421,
        "a third session from one IP is refused"
    );
    // Another address still gets in, up to the global limit.
    let addr = relay.smtp();
    let other = |ip: &'static str| async move {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let stream = s.connect(addr).await.unwrap();
        let mut buf = [0u8; 3];
        tokio::io::AsyncReadExt::read_exact(&mut tokio::io::BufReader::new(stream), &mut buf)
            .await
            .unwrap();
        String::from_utf8_lossy(&buf).to_string()
    };
    assert_eq!(other("127.0.0.2").await, "220");
    drop(_a);
    drop(_b);
    relay.stop().await;
}

/// A single-part HTML message of about `size` bytes.
fn html_of_size(size: usize) -> Vec<u8> {
    let mut html = String::from("<html><body>\r\n");
    while html.len() < size {
        html.push_str("<p>news of the week, with a few words in it</p>\r\n");
    }
    html.push_str("</body></html>\r\n");
    format!(
        "From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n{html}"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_message_the_budget_has_no_room_to_rewrite_goes_unchanged_and_is_counted() {
    let up = FakeUpstream::start().await;
    // Room for one 60 KB message, not for its rewritten copy as well.
    let relay = start_relay(&config_text(
        &up.addr.to_string(),
        "max_message_size = 100000\nmax_inflight_bytes = 150000",
    ))
    .await;
    let mut c = Client::hello(relay.smtp()).await;
    let big = html_of_size(60_000);
    let (code, text) = c.send_mail("a@example.com", &["b@example.net"], &big).await;
    assert_eq!(code, 250, "{text}");
    let small = html_of_size(2_000);
    let (code, text) = c
        .send_mail("a@example.com", &["b@example.net"], &small)
        .await;
    assert_eq!(code, 250, "{text}");
    // Plain text as large: it would get no pixel anyway, so it needs no room for a copy and
    // keeps its true skip reason.
    let mut text_only = b"Subject: plain\r\n\r\n".to_vec();
    while text_only.len() < 60_000 {
        text_only.extend_from_slice(b"just words, no markup at all, line after line\r\n");
    }
    let (code, text) = c
        .send_mail("a@example.com", &["b@example.net"], &text_only)
        .await;
    assert_eq!(code, 250, "{text}");
    let got = up.messages();
    assert_eq!(got.len(), 3);
    assert_eq!(strip_received(&got[0].data), &big[..], "sent as it came");
    assert_eq!(strip_received(&got[2].data), &text_only[..]);
    assert!(
        String::from_utf8_lossy(&got[1].data).contains("/o/"),
        "the small one has room and gets its pixel"
    );
    let metrics = admin_text(&relay, "/metrics").await;
    for want in [
        "pixelrelay_rewrite_decisions_total{decision=\"skipped\",reason=\"memory\"} 1",
        "pixelrelay_rewrite_decisions_total{decision=\"tracked\",reason=\"\"} 1",
        "pixelrelay_rewrite_decisions_total{decision=\"skipped\",reason=\"no_html\"} 1",
        "pixelrelay_smtp_inflight_refused_total 1",
        "pixelrelay_smtp_inflight_bytes 0",
        "pixelrelay_smtp_inflight_limit_bytes 150000",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    c.cmd("QUIT").await;
    relay.stop().await;
}

#[tokio::test]
async fn a_budget_below_the_largest_message_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        config_text(
            "127.0.0.1:25",
            "max_message_size = 100000\nmax_inflight_bytes = 50000",
        ),
    )
    .unwrap();
    let err = pixelrelay::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("smtp.max_inflight_bytes"), "{err}");
}

/// `smtp.one_recipient_per_transaction`: `LIMITS RCPTMAX=1` advertised, a second RCPT (also
/// pipelined) refused with 452 4.5.3, the message relayed to the first recipient only; off,
/// neither.
#[tokio::test]
async fn one_recipient_per_transaction_refuses_the_second_rcpt() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(
        &up.addr.to_string(),
        "one_recipient_per_transaction = true",
    ))
    .await;
    let mut c = Client::connect(relay.smtp()).await;
    assert_eq!(c.reply().await.0, 220);
    let (code, ehlo) = c.cmd("EHLO client.test").await;
    assert_eq!(code, 250);
    assert!(ehlo.lines().any(|l| l == "LIMITS RCPTMAX=1"), "{ehlo}");
    // Pipelined, as Postfix sends it.
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await.0, 250);
    assert_eq!(c.reply().await.0, 250);
    let (code, text) = c.reply().await;
    assert_eq!(code, 452);
    assert!(text.starts_with("4.5.3"), "{text}");
    assert_eq!(c.reply().await.0, 354);
    c.send(b"Subject: one\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    let got = up.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, vec!["b@example.net"]);
    // The next transaction takes the next recipient.
    let (code, _) = c
        .send_mail(
            "a@example.com",
            &["c@example.org"],
            b"Subject: two\r\n\r\nbody\r\n",
        )
        .await;
    assert_eq!(code, 250);
    relay.stop().await;

    let relay = start_relay(&config_text(&up.addr.to_string(), "")).await;
    let mut c = Client::connect(relay.smtp()).await;
    assert_eq!(c.reply().await.0, 220);
    let (_, ehlo) = c.cmd("EHLO client.test").await;
    assert!(!ehlo.contains("LIMITS"), "{ehlo}");
    let (code, _) = c
        .send_mail(
            "a@example.com",
            &["b@example.net", "c@example.org"],
            b"Subject: x\r\n\r\nb\r\n",
        )
        .await;
    assert_eq!(code, 250);
    relay.stop().await;
}
