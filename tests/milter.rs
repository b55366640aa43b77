//! The milter front end with a real Postfix (`smtpd_milters`) delivering to smtp-sink: a
//! single-recipient HTML message arrives with one pixel that records an open when loaded, its
//! bytes outside the pixel as sent (8-bit, quoted-printable and base64 parts); a
//! multi-recipient message and a text message arrive untouched; the opt-out header is removed;
//! with pixelrelay stopped, Postfix's `milter_default_action = accept` delivers unchanged.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::postfix::{Postfix, Sink};
use common::*;

/// A milter node: pixelrelay with its milter (and pixel listener) on known ports, no SMTP
/// listener and no `[upstream]` (delivery is Postfix's).
async fn milter_relay(sink: SocketAddr) -> (Relay, u16, u16) {
    milter_relay_with(sink, "").await
}

/// [`milter_relay`] with `smtp_extra` lines in its `[smtp]` section.
async fn milter_relay_with(sink: SocketAddr, smtp_extra: &str) -> (Relay, u16, u16) {
    let (milter, http) = (free_port(), free_port());
    let upstream = format!(
        "[upstream]\naddress = \"{sink}\"\ncommand_timeout = 5\ndata_timeout = 5\nconnect_timeout = 5\n"
    );
    let cfg = config_text(&sink.to_string(), smtp_extra)
        .replace(&upstream, "")
        .replace("listen = [\"127.0.0.1:0\"]", "listen = []")
        .replace(
            "base_url = \"http://127.0.0.1:8080\"",
            &format!("base_url = \"http://127.0.0.1:{http}\""),
        )
        .replace(
            "[http]\nlisten = \"127.0.0.1:0\"",
            &format!("[http]\nlisten = \"127.0.0.1:{http}\""),
        );
    assert!(!cfg.contains("[upstream]"), "{cfg}");
    let cfg = format!("{cfg}\n[milter]\nlisten = \"127.0.0.1:{milter}\"\n");
    let relay = start_relay(&cfg).await;
    assert!(relay.addrs.smtp.is_empty(), "a milter node takes no SMTP");
    (relay, milter, http)
}

/// A Postfix with pixelrelay as its milter, delivering to `sink`.
fn postfix_with_milter(sink: SocketAddr, milter: u16) -> Option<Postfix> {
    Postfix::start_with(
        sink,
        &[
            &format!("smtpd_milters=inet:127.0.0.1:{milter}"),
            "milter_default_action=accept",
            "milter_protocol=6",
            // No header rewriting for clients on this host: what arrives is what was sent.
            "local_header_rewrite_clients=",
            "smtp_destination_recipient_limit=50",
        ],
    )
}

/// The message as delivered: without smtp-sink's `X-` lines and the `Received:` fields
/// Postfix and smtp-sink added.
fn as_delivered(dump: &[u8]) -> Vec<u8> {
    // smtp-sink writes its dumps with bare LF line ends; the wire had CRLF.
    let mut crlf = Vec::with_capacity(dump.len() + dump.len() / 40);
    for &b in dump {
        if b == b'\n' {
            crlf.push(b'\r');
        }
        crlf.push(b);
    }
    let text = &crlf[..];
    let mut at = 0;
    // Lines before the original header: X-… from smtp-sink, then Received fields (folded).
    loop {
        let rest = &text[at..];
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |i| i + 2);
        let line = &rest[..line_end];
        let added = line.starts_with(b"X-")
            || line.starts_with(b"Received:")
            || (line.starts_with(b"\t") || line.starts_with(b" "));
        if !added || line_end == 0 {
            break;
        }
        at += line_end;
    }
    // smtp-sink ends a dump with an empty line of its own.
    let mut out = text[at..].to_vec();
    if out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/links")
            .join(name),
    )
    .expect("fixture")
}

/// The decoded HTML part of `m`.
fn html_of(m: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse(m)
        .and_then(|p| p.body_html(0).map(|h| h.into_owned()))
        .expect("an HTML part")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_with_the_milter_delivers_tracked_and_untouched_mail() {
    let Some(sink) = Sink::start().await else {
        return;
    };
    let (relay, milter, http) = milter_relay(sink.addr).await;
    let Some(pf) = postfix_with_milter(sink.addr, milter) else {
        return;
    };
    let mta: SocketAddr = format!("127.0.0.1:{}", pf.port).parse().unwrap();
    wait_listening(mta).await;
    let mut c = Client::hello(mta).await;
    let mut sent = Vec::new();
    for name in ["8bit.eml", "qp.eml", "base64.eml", "nm-qp.eml"] {
        let m = [format!("Case: {name}\r\n").as_bytes(), &fixture(name)].concat();
        let (code, text) = c
            .send_mail("news@example.com", &["bob@example.net"], &m)
            .await;
        assert_eq!(code, 250, "{name}: {text}");
        sent.push((name, m));
    }
    // Two recipients: untouched. A text message: untouched. An opt-out: header removed.
    let two = fixture("8bit.eml");
    let (code, _) = c
        .send_mail(
            "news@example.com",
            &["bob@example.net", "eve@example.org"],
            &two,
        )
        .await;
    assert_eq!(code, 250);
    let text_only =
        b"From: a@example.com\r\nTo: b@example.net\r\nSubject: plain\r\n\r\njust text\r\n";
    assert_eq!(
        c.send_mail("a@example.com", &["b@example.net"], text_only)
            .await
            .0,
        250
    );
    // Two opt-out fields: both go (the milter deletes the last first).
    let opted = [
        &b"X-Track-Opens: no\r\nX-Track-Opens: no\r\n"[..],
        &fixture("8bit.eml"),
    ]
    .concat();
    assert_eq!(
        c.send_mail("a@example.com", &["b@example.net"], &opted)
            .await
            .0,
        250
    );
    c.cmd("QUIT").await;
    // The two-recipient message arrives as one delivery (recipient limit 50).
    eventually(60, "every message at the sink", || sink.dumps().len() == 7).await;
    let dumps: Vec<Vec<u8>> = sink.dumps();
    let by_subject = |needle: &[u8]| -> Vec<&Vec<u8>> {
        dumps
            .iter()
            .filter(|d| d.windows(needle.len()).any(|w| w == needle))
            .collect()
    };
    // The four tracked ones: one pixel each, the HTML otherwise as sent, every byte outside
    // the HTML part as sent.
    let tracked: Vec<&Vec<u8>> = dumps.iter().filter(|d| !pixel_urls(d).is_empty()).collect();
    assert_eq!(tracked.len(), 4, "four tracked copies");
    for (name, original) in &sent {
        let case = format!("Case: {name}\r\n");
        let got = dumps
            .iter()
            .map(|d| as_delivered(d))
            .find(|d| d.starts_with(case.as_bytes()))
            .unwrap_or_else(|| panic!("{name} at the sink"));
        assert_eq!(pixel_urls(&got).len(), 1, "{name}: one pixel");
        let url = pixel_urls(&got).remove(0);
        let pixel = html_of(&got);
        let img = pixel.find("<img src=\"").expect("pixel markup");
        let end = img + pixel[img..].find('>').unwrap() + 1;
        let without = format!("{}{}", &pixel[..img], &pixel[end..]);
        assert_eq!(
            without,
            html_of(original),
            "{name}: HTML as sent but for the pixel"
        );
        // Every byte outside the HTML part's body as sent: the change starts inside it and
        // ends inside it.
        let (a, b) = html_body(original);
        let (pre, post) = common_ends(original, &got);
        assert!(
            pre >= a,
            "{name}: a byte before the HTML part changed ({pre} < {a})"
        );
        assert!(
            post >= original.len() - b,
            "{name}: a byte after the HTML part changed"
        );
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{http}/o/")),
            "{url}"
        );
    }
    // Loading one pixel records an open for that message.
    let url = pixel_urls(&as_delivered(tracked[0])).remove(0);
    let (status, _, _) = http_get(
        &url,
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0",
    )
    .await;
    assert_eq!(status, 200);
    let opens = admin_json(&relay, "/api/v1/opens?limit=10").await;
    assert_eq!(opens["items"].as_array().map(Vec::len), Some(1), "{opens}");
    let msgs = admin_json(&relay, "/api/v1/messages?limit=20").await;
    let items = msgs["items"].as_array().unwrap();
    assert_eq!(items.len(), 7, "every message recorded: {msgs}");
    assert_eq!(items.iter().filter(|m| m["tracked"] == true).count(), 4);
    assert!(
        items.iter().any(|m| m["skip_reason"] == "recipients"),
        "{msgs}"
    );
    assert!(
        items.iter().any(|m| m["skip_reason"] == "opt_out"),
        "{msgs}"
    );
    // The milter's series count what it answered.
    let metrics = admin_text(&relay, "/metrics").await;
    let series = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    assert_eq!(
        series("pixelrelay_milter_messages_total{decision=\"tracked\",reason=\"\"}"),
        4,
        "{metrics}"
    );
    assert_eq!(
        series("pixelrelay_milter_messages_total{decision=\"skipped\",reason=\"recipients\"}"),
        1,
        "{metrics}"
    );
    assert_eq!(
        series("pixelrelay_milter_eom_duration_seconds_count"),
        7,
        "{metrics}"
    );
    assert_eq!(
        series("pixelrelay_milter_connection_errors_total"),
        0,
        "{metrics}"
    );
    // Queue ids are Postfix's.
    let log = pf.maillog();
    for m in items {
        let q = m["queue_id"].as_str().unwrap();
        assert!(
            log.contains(&format!("{q}: ")),
            "queue id {q} not Postfix's:\n{log}"
        );
    }
    // Untouched: the two-recipient copy and the text message, byte for byte after the header
    // Postfix added; the opt-out copy without its header.
    let two_got = by_subject(b"X-Rcpt-Args: <eve@example.org>");
    assert_eq!(two_got.len(), 1);
    assert_eq!(
        as_delivered(two_got[0]),
        two,
        "multi-recipient mail untouched"
    );
    let plain = by_subject(b"just text");
    assert_eq!(as_delivered(plain[0]), text_only.to_vec());
    let opted_got = dumps
        .iter()
        .map(|d| as_delivered(d))
        .find(|d| pixel_urls(d).is_empty() && d.len() + 38 == opted.len())
        .expect("the opted-out copy");
    assert_eq!(
        opted_got,
        opted[38..].to_vec(),
        "opt-out header removed, nothing else"
    );
    relay.stop().await;

    // pixelrelay stopped: Postfix accepts (milter_default_action = accept) and delivers as sent.
    let m = send_one(mta, &sink, "qp.eml", 8).await;
    assert!(
        sink.dumps()
            .iter()
            .filter(|d| pixel_urls(d).is_empty())
            .any(|d| as_delivered(d) == m),
        "delivered unchanged"
    );
    drop(pf);
}

/// The milter holds messages within the memory budget it shares with the relay
/// (`smtp.max_inflight_bytes`): a message the budget has no room to rewrite goes through
/// unchanged, recorded with the reason `memory`, never rejected or deferred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_memory_budget_cannot_hold_goes_unchanged() {
    let Some(sink) = Sink::start().await else {
        return;
    };
    // Room to buffer the 1.5 KB message but not for its rewrite (three times it).
    let (relay, milter, _) = milter_relay_with(
        sink.addr,
        "max_message_size = 4000\nmax_inflight_bytes = 4000\n",
    )
    .await;
    let Some(pf) = postfix_with_milter(sink.addr, milter) else {
        return;
    };
    let mta: SocketAddr = format!("127.0.0.1:{}", pf.port).parse().unwrap();
    wait_listening(mta).await;
    let sent = send_one(mta, &sink, "nm-qp.eml", 1).await;
    assert!(sent.len() > 1334 && sent.len() < 4000, "{}", sent.len());
    let got = as_delivered(&sink.dumps()[0]);
    assert!(
        pixel_urls(&got).is_empty(),
        "no pixel without memory for it"
    );
    assert_eq!(html_of(&got), html_of(&sent), "the HTML went as sent");
    let msgs = admin_json(&relay, "/api/v1/messages?limit=5").await;
    assert_eq!(msgs["items"][0]["skip_reason"], "memory", "{msgs}");
    let metrics = admin_text(&relay, "/metrics").await;
    assert!(
        metrics
            .contains("pixelrelay_milter_messages_total{decision=\"skipped\",reason=\"memory\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("pixelrelay_smtp_inflight_refused_total 0"),
        "the refusal is counted: {metrics}"
    );
    drop(pf);
    relay.stop().await;
}

/// Sends fixture `name` through Postfix at `mta` to one recipient and waits until the sink
/// holds `dumps` messages; the message as sent.
async fn send_one(mta: SocketAddr, sink: &Sink, name: &str, dumps: usize) -> Vec<u8> {
    let mut c = Client::hello(mta).await;
    let m = fixture(name);
    let (code, text) = c
        .send_mail("news@example.com", &["bob@example.net"], &m)
        .await;
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT").await;
    eventually(60, "the message at the sink", || {
        sink.dumps().len() == dumps
    })
    .await;
    m
}

/// Where the first HTML part's body lies in `m`.
fn html_body(m: &[u8]) -> (usize, usize) {
    let parsed = mail_parser::MessageParser::default()
        .parse(m)
        .expect("parses");
    let part = parsed
        .parts
        .iter()
        .find(|p| p.is_text_html())
        .expect("an HTML part");
    (part.offset_body as usize, part.offset_end as usize)
}

/// How many bytes `a` and `b` share at the start and at the end.
fn common_ends(a: &[u8], b: &[u8]) -> (usize, usize) {
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let post = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    (pre, post)
}

/// Debian's OpenDKIM as a signing milter, listening on `port`, with a fresh key for
/// `example.com` (selector `sel`) in `dir`; the child process and the public key (`p=`).
fn opendkim(dir: &Path, port: u16) -> Option<(std::process::Child, String)> {
    let bin = need("opendkim")?;
    let genkey = need("opendkim-genkey")?;
    let st = std::process::Command::new(genkey)
        .args(["-b", "2048", "-d", "example.com", "-s", "sel", "-D"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "opendkim-genkey");
    let txt = std::fs::read_to_string(dir.join("sel.txt")).unwrap();
    // `sel._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=MIIB…" "…" )`: the quoted
    // strings joined, then the p= tag.
    let joined: String = txt.split('"').skip(1).step_by(2).collect();
    let p = joined
        .split(';')
        .find_map(|t| t.trim().strip_prefix("p="))
        .expect("p= in sel.txt")
        .to_string();
    let conf = dir.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Syslog no\nBackground no\nMode s\nSocket inet:{port}@127.0.0.1\nDomain example.com\n\
             Selector sel\nKeyFile {}\nCanonicalization relaxed/relaxed\nRequireSafeKeys false\n\
             InternalHosts 127.0.0.0/8\nPidFile {}\n",
            dir.join("sel.private").display(),
            dir.join("opendkim.pid").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .arg("-f")
        .arg("-x")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("opendkim");
    Some((child, p))
}

/// DKIM with pixelrelay before OpenDKIM in `smtpd_milters`: the message is signed after the
/// pixel went in, so an independent verifier (dkimpy, given the public key instead of DNS)
/// finds the signature valid with the pixel inside the signed body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opendkim_after_pixelrelay_signs_the_body_with_the_pixel() {
    let Some(sink) = Sink::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dkim_port = free_port();
    let Some((mut dkim, public)) = opendkim(dir.path(), dkim_port) else {
        return;
    };
    wait_listening(format!("127.0.0.1:{dkim_port}").parse().unwrap()).await;
    let (relay, milter, _) = milter_relay(sink.addr).await;
    let Some(pf) = Postfix::start_with(
        sink.addr,
        &[
            &format!("smtpd_milters=inet:127.0.0.1:{milter}, inet:127.0.0.1:{dkim_port}"),
            "milter_default_action=accept",
            "local_header_rewrite_clients=",
        ],
    ) else {
        return;
    };
    let mta: SocketAddr = format!("127.0.0.1:{}", pf.port).parse().unwrap();
    wait_listening(mta).await;
    send_one(mta, &sink, "qp.eml", 1).await;
    let got = as_delivered(&sink.dumps()[0]);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("DKIM-Signature:"), "signed: {text}");
    assert_eq!(pixel_urls(&got).len(), 1, "the pixel is in the message");
    let msg = dir.path().join("signed.eml");
    std::fs::write(&msg, &got).unwrap();
    let script = format!(
        "import dkim, sys\n\
         msg = open(sys.argv[1], 'rb').read()\n\
         key = b'v=DKIM1; k=rsa; p={public}'\n\
         ok = dkim.verify(msg, dnsfunc=lambda name, timeout=5: key)\n\
         print('valid' if ok else 'INVALID')\n\
         sys.exit(0 if ok else 1)\n"
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .arg(&msg)
        .output()
        .expect("python3 with dkimpy");
    assert!(
        out.status.success(),
        "dkimpy: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the signature would fail had the pixel been inserted after it: the body hash
    // covers it. Flip one byte of the pixel's URL and verify again.
    let at = text.find("/o/").expect("pixel URL") + 3;
    let mut tampered = got.clone();
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&msg, &tampered).unwrap();
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .arg(&msg)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a changed pixel must break the signature"
    );
    let _ = dkim.kill();
    let _ = dkim.wait();
    drop(pf);
    relay.stop().await;
}

/// The shared corpus through Postfix with the milter: every message delivered, exactly the
/// ones pixelrelay tracked carry a pixel, one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_through_postfix_and_the_milter() {
    let Some(dir) = corpus_dir() else { return };
    let files: Vec<_> = files_below(&dir)
        .into_iter()
        .filter(|p| {
            !matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("txt" | "md" | "json" | "rs")
            )
        })
        .collect();
    let Some(sink) = Sink::start().await else {
        return;
    };
    let (relay, milter, _) = milter_relay(sink.addr).await;
    let Some(pf) = postfix_with_milter(sink.addr, milter) else {
        return;
    };
    let mta: SocketAddr = format!("127.0.0.1:{}", pf.port).parse().unwrap();
    wait_listening(mta).await;
    let mut c = Client::hello(mta).await;
    let mut sent = 0;
    for path in &files {
        let m = canonical(&std::fs::read(path).unwrap());
        let (code, text) = c.send_mail("a@example.com", &["b@example.net"], &m).await;
        // Postfix may refuse what is not mail at all; pixelrelay never does.
        if code == 250 {
            sent += 1;
        } else {
            eprintln!("{}: Postfix said {code} {text}", path.display());
        }
    }
    c.cmd("QUIT").await;
    assert!(sent >= 20, "only {sent} corpus messages accepted");
    eventually(120, "every corpus message at the sink", || {
        sink.dumps().len() == sent
    })
    .await;
    let with_pixel: Vec<usize> = sink.dumps().iter().map(|d| pixel_urls(d).len()).collect();
    assert!(
        with_pixel.iter().all(|&n| n <= 1),
        "one pixel at most: {with_pixel:?}"
    );
    let tracked = with_pixel.iter().filter(|&&n| n == 1).count() as u64;
    let stats = admin_json(&relay, "/api/v1/stats").await;
    assert_eq!(stats["recorded"].as_u64(), Some(sent as u64), "{stats}");
    // mail-parser finds the pixel in every tracked message it can parse (the malformed ones
    // may hide it), and never one in an untracked message.
    let recorded_tracked = stats["tracked"].as_u64().unwrap_or(0);
    assert!(
        tracked <= recorded_tracked && recorded_tracked > 0,
        "{tracked} of {stats}"
    );
    eprintln!(
        "corpus through Postfix + milter: {sent} delivered, {recorded_tracked} tracked ({tracked} pixels found by mail-parser)"
    );
    drop(pf);
    relay.stop().await;
}
