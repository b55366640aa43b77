//! Decision-rule tests for `rewrite`: one test per rule, each showing the rule can fire and that
//! the message is otherwise tracked. Encodings and placement are tested in their own files and
//! end to end in `tests/rewrite_*.rs`.

use super::*;

const URL: &str = "http://127.0.0.1:8080/o/TESTTOKEN.gif";

fn policy() -> Policy {
    Policy {
        pixel_prefix: "http://127.0.0.1:8080/o/".into(),
        on_dkim_signed: OnDkimSigned::Skip,
        opt_out_header: "X-Track-Opens".into(),
        sender_domains: Vec::new(),
        exclude_recipient_domains: Vec::new(),
        max_rewrite_size: 1 << 20,
    }
}

fn one() -> Vec<String> {
    vec!["bob@example.net".to_string()]
}

fn run_with(msg: &str, rcpts: &[String], sender: &str, policy: &Policy) -> Rewritten {
    rewrite(
        &Envelope {
            sender,
            recipients: rcpts,
        },
        msg.as_bytes(),
        URL,
        policy,
    )
}

fn run(msg: &str) -> Rewritten {
    run_with(msg, &one(), "news@example.com", &policy())
}

const HTML: &str = "From: a@example.com\r\nMessage-ID: <m1@example.com>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>hi</p></body></html>\r\n";

fn text(r: &Rewritten) -> String {
    String::from_utf8_lossy(r.message.as_deref().unwrap_or(b"")).into_owned()
}

#[test]
fn tracks_and_fills_info() {
    let r = run(HTML);
    assert_eq!(r.decision, Decision::Tracked);
    assert_eq!(r.info.message_id.as_deref(), Some("<m1@example.com>"));
    assert_eq!(r.info.subject.as_deref(), Some("café"));
    let want = HTML.replace(
        "</body>",
        &format!("{}</body>", String::from_utf8_lossy(&html::markup(URL))),
    );
    assert_eq!(text(&r), want);
}

#[test]
fn recipients_rule() {
    for rcpts in [vec![], vec!["a@x.org".to_string(), "b@x.org".to_string()]] {
        let r = run_with(HTML, &rcpts, "news@example.com", &policy());
        assert_eq!(r.decision, Decision::Skipped(SkipReason::Recipients));
        assert!(r.message.is_none());
        assert_eq!(r.info.message_id.as_deref(), Some("<m1@example.com>"));
    }
}

#[test]
fn opt_out_header_is_always_removed() {
    for (value, decision) in [
        ("no", Decision::Skipped(SkipReason::OptOut)),
        ("OFF", Decision::Skipped(SkipReason::OptOut)),
        ("0", Decision::Skipped(SkipReason::OptOut)),
        (
            "False (asked by user)",
            Decision::Skipped(SkipReason::OptOut),
        ),
        ("yes", Decision::Tracked),
        ("", Decision::Tracked),
        ("nope", Decision::Tracked),
    ] {
        let msg = HTML.replace("Subject:", &format!("x-track-opens: {value}\r\nSubject:"));
        let r = run(&msg);
        assert_eq!(r.decision, decision, "{value:?}");
        let out = text(&r);
        assert!(
            !out.to_ascii_lowercase().contains("x-track-opens"),
            "{value:?}"
        );
        assert_eq!(out.contains("TESTTOKEN"), decision == Decision::Tracked);
    }
    // Removed even when another rule skips the message.
    let msg = HTML.replace("Subject:", "X-Track-Opens: yes\r\nSubject:");
    let r = run_with(&msg, &[], "", &policy());
    assert_eq!(r.decision, Decision::Skipped(SkipReason::Recipients));
    assert_eq!(text(&r), HTML);
    assert_eq!(
        strip_opt_out(msg.as_bytes(), "X-Track-Opens").as_deref(),
        Some(HTML.as_bytes())
    );
}

#[test]
fn domain_rules() {
    let mut p = policy();
    p.sender_domains = vec!["example.com".into()];
    assert_eq!(
        run_with(HTML, &one(), "News@Example.COM", &p).decision,
        Decision::Tracked
    );
    for sender in ["news@other.com", "", "news@sub.example.com"] {
        assert_eq!(
            run_with(HTML, &one(), sender, &p).decision,
            Decision::Skipped(SkipReason::SenderDomain)
        );
    }
    let mut p = policy();
    p.exclude_recipient_domains = vec!["example.net".into()];
    let r = run_with(HTML, &["<Bob@EXAMPLE.net>".to_string()], "a@b.c", &p);
    assert_eq!(r.decision, Decision::Skipped(SkipReason::RecipientDomain));
    assert_eq!(
        run_with(HTML, &["bob@example.org".to_string()], "a@b.c", &p).decision,
        Decision::Tracked
    );
}

#[test]
fn size_rule() {
    let mut p = policy();
    p.max_rewrite_size = HTML.len() as u64;
    assert_eq!(
        run_with(HTML, &one(), "a@b.c", &p).decision,
        Decision::Tracked
    );
    p.max_rewrite_size -= 1;
    assert_eq!(
        run_with(HTML, &one(), "a@b.c", &p).decision,
        Decision::Skipped(SkipReason::TooLarge)
    );
}

#[test]
fn dkim_rule_follows_policy() {
    let msg = format!("DKIM-Signature: v=1; a=rsa-sha256; d=example.com;\r\n b=abc\r\n{HTML}");
    assert_eq!(
        run(&msg).decision,
        Decision::Skipped(SkipReason::DkimSigned)
    );
    let mut p = policy();
    p.on_dkim_signed = OnDkimSigned::Track;
    assert_eq!(
        run_with(&msg, &one(), "a@b.c", &p).decision,
        Decision::Tracked
    );
}

#[test]
fn structure_rules() {
    let signed = "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=s\r\n\r\n--s\r\nContent-Type: text/html\r\n\r\n<body>x</body>\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n--s--\r\n";
    assert_eq!(run(signed).decision, Decision::Skipped(SkipReason::Signed));
    let enc = signed.replace("multipart/signed", "multipart/encrypted");
    assert_eq!(run(&enc).decision, Decision::Skipped(SkipReason::Encrypted));
    let plain = "Content-Type: text/plain\r\n\r\n<body>x</body>\r\n";
    assert_eq!(run(plain).decision, Decision::Skipped(SkipReason::NoHtml));
    let attached = "Content-Type: text/html\r\nContent-Disposition: attachment; filename=a.html\r\n\r\n<body>x</body>\r\n";
    assert_eq!(
        run(attached).decision,
        Decision::Skipped(SkipReason::NoHtml)
    );
    let utf16 = "Content-Type: text/html; charset=UTF-16\r\nContent-Transfer-Encoding: base64\r\n\r\n//48AGIAPgA=\r\n";
    assert_eq!(run(utf16).decision, Decision::Skipped(SkipReason::Charset));
    let bom = utf16.replace("charset=UTF-16", "charset=utf-8");
    assert_eq!(run(&bom).decision, Decision::Skipped(SkipReason::Charset));
    let uu = "Content-Type: text/html\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n";
    assert_eq!(run(uu).decision, Decision::Skipped(SkipReason::Unparseable));
    let bad64 =
        "Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n<b>not base64</b>\r\n";
    assert_eq!(
        run(bad64).decision,
        Decision::Skipped(SkipReason::Unparseable)
    );
}

#[test]
fn never_two_pixels() {
    let once = run(HTML);
    let again = run(&text(&once));
    assert_eq!(
        again.decision,
        Decision::Skipped(SkipReason::AlreadyTracked)
    );
    assert!(again.message.is_none());
}

#[test]
fn unreadable_headers() {
    for junk in ["", "\r\n\r\nbody", "no colon here\r\n\r\n<body></body>"] {
        let r = run(junk);
        assert_eq!(
            r.decision,
            Decision::Skipped(SkipReason::Unparseable),
            "{junk:?}"
        );
        assert_eq!(r.info, MessageInfo::default());
    }
}

#[test]
fn lf_only_input_keeps_lf() {
    let lf = HTML.replace("\r\n", "\n");
    let r = run(&lf);
    assert_eq!(r.decision, Decision::Tracked);
    assert!(!text(&r).contains('\r'));
}

#[test]
fn refuses_words() {
    for v in ["no", " No ", "false;", "0", "off (comment)"] {
        assert!(refuses(v), "{v:?}");
    }
    for v in ["yes", "", "1", "nope", "on", "true"] {
        assert!(!refuses(v), "{v:?}");
    }
}
