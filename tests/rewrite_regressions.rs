//! Inputs that once broke a rewrite invariant, kept so they never do again. Each test names
//! where the input came from (proptest shrink or fuzz artifact) and what went wrong.

use pixelrelay::config::OnDkimSigned;
use pixelrelay::rewrite::{Decision, Envelope, Policy, SkipReason, rewrite};

const URL: &str = "http://127.0.0.1:8080/o/TESTTOKEN.gif";

fn run(msg: &[u8]) -> pixelrelay::rewrite::Rewritten {
    let policy = Policy {
        pixel_prefix: "http://127.0.0.1:8080/o/".into(),
        on_dkim_signed: OnDkimSigned::Skip,
        opt_out_header: "X-Track-Opens".into(),
        sender_domains: Vec::new(),
        exclude_recipient_domains: Vec::new(),
        max_rewrite_size: 1 << 20,
    };
    let rcpts = vec!["bob@example.net".to_string()];
    rewrite(
        &Envelope {
            sender: "news@example.com",
            recipients: &rcpts,
        },
        msg,
        URL,
        &policy,
    )
}

/// proptest `never_panics_on_mangled_mail`: a non-ASCII line after the header, with no empty
/// line, made mail-parser read the whole base64 body as header and report an empty body at the
/// very end. The pixel was appended after the real body, and a second pass appended another.
#[test]
fn stray_bytes_instead_of_the_empty_line() {
    let mut msg = b"From: <news@example.com>\r\nTo: <bob@example.net>\r\nSubject: props\r\nMessage-ID: <18eae44f33916824.671a41eb6f50b1a4.54dd9cc2ffb80e89@vm>\r\nDate: Tue, 24 Nov 2026 05:33:50 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=\"utf-8\"\r\nContent-Transfer-Encoding: base64\r\n\xb8N\x91\xa9\r\n".to_vec();
    msg.extend_from_slice(b"JmEwMCYwQTDmnbFBPWEmQSzDqSxBPSZhYWEmMMOpYT0sIEFhQTBh5p2xYUE9YcOpPT1BIEEwIGEm\r\nQUHmnbEwQSZhQeadsWE9YcOpQUFB5p2xLEFB5p2xIGEm5p2xQSAwPWE9MDAw5p2xPSzmnbEgQT1h\r\nYUHmnbHmnbHmnbHDqQ0KPHNjcmlwdD52YXIgcyA9ICc8L2JvZHk+PC9odG1sPic7PC9zY3JpcHQ+\r\nw6kmYSBhw6kww6lhYWHDqSBBQWHDqT1h5p2xPSxhYSxBYWFhQTDmnbEgPT3DqeadsWHDqUFhLCY9\r\nPHN0eWxlPi8qIDwvYm9keT4gKi88L3N0eWxlPuadsTA9YTBhYT0mJuadsUEgQT0mICwmQUHDqWE9\r\nw6lhMEHDqQ==\r\n");
    for lf in [false, true] {
        let input = if lf {
            String::from_utf8_lossy(&msg)
                .replace("\r\n", "\n")
                .into_bytes()
        } else {
            msg.clone()
        };
        let r = run(&input);
        assert_eq!(
            r.decision,
            Decision::Skipped(SkipReason::Unparseable),
            "lf={lf}"
        );
        assert!(r.message.is_none());
        assert_eq!(
            r.info.message_id.as_deref(),
            Some("<18eae44f33916824.671a41eb6f50b1a4.54dd9cc2ffb80e89@vm>")
        );
    }
}

/// cargo-fuzz `rewrite` (crash-8b887de5…): nested multiparts with a truncated inner boundary
/// trip a `debug_assert!` inside mail-parser 0.11 ("Invalid part ID, could not find
/// multipart."). In a debug build that was a panic out of `rewrite`. mail-parser is now built
/// without its debug assertions in every profile (`Cargo.toml`), so tests read it as the relay
/// does, and `rewrite` still runs it under `catch_unwind` against any other slip.
#[test]
fn mail_parser_debug_assert_is_not_a_panic() {
    let msg = include_bytes!("data/rewrite/fuzz-mail-parser-debug-assert.eml");
    // `run` itself must return (a panic fails the test); a second pass never adds a pixel.
    let r = run(msg);
    if let Some(out) = r.message {
        assert_ne!(run(&out).decision, Decision::Tracked);
    }
}

/// cargo-fuzz `rewrite` (crash-73f5d410…), a harness bug worth keeping as a case: a long,
/// folded, garbled `X-Track-Opens` value is not a refusal, so the message is tracked, and since
/// the header is removed the output is shorter than the input despite the pixel.
#[test]
fn long_opt_out_header_is_removed_and_the_message_tracked() {
    let msg = include_bytes!("data/rewrite/fuzz-long-opt-out-header.eml");
    let r = run(msg);
    assert_eq!(r.decision, Decision::Tracked);
    let out = r.message.unwrap_or_default();
    assert!(out.len() < msg.len());
    let lower = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(!lower.contains("x-track-opens"));
    assert!(lower.contains("/o/testtoken.gif"));
    assert_eq!(
        run(&out).decision,
        Decision::Skipped(SkipReason::AlreadyTracked)
    );
}

/// A malformed structure only mail-parser reads (found by the click fuzz target, minimised):
/// what the pixel adds completes a delimiter line, and the output read as a message with no
/// HTML part. A rewrite that would change how mail-parser
/// reads the message is not made: it goes as it came.
#[test]
fn a_rewrite_that_changes_how_mail_parser_reads_the_message_is_not_made() {
    // The boundary is `<`: the part's body is `--`, and the pixel after it made a delimiter.
    let msg = b"Content-Type:multipart;boundary=<\n\n--<Content-Type:text/html\n\n--";
    let rcpts = vec!["b@example.net".to_string()];
    let env = Envelope {
        sender: "a@example.com",
        recipients: &rcpts,
    };
    let policy = Policy {
        pixel_prefix: "http://127.0.0.1:8080/o/".into(),
        on_dkim_signed: OnDkimSigned::Track,
        opt_out_header: "X-Track-Opens".into(),
        sender_domains: Vec::new(),
        exclude_recipient_domains: Vec::new(),
        max_rewrite_size: u64::MAX,
    };
    let url = "http://127.0.0.1:8080/o/T.gif";
    let r = rewrite(&env, msg, url, &policy);
    assert_eq!(r.decision, Decision::Skipped(SkipReason::Unparseable));
    assert!(r.message.is_none(), "relayed as it came");
}
