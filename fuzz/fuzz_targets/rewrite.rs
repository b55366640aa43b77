//! Fuzz target for the rewrite core: any bytes, any policy switch, no panic; a tracked output
//! must parse, must not be tracked a second time, and a skip without an opt-out header must
//! forward the input unchanged.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use pixelrelay::config::OnDkimSigned;
use pixelrelay::rewrite::{Decision, Envelope, Policy, SkipReason, rewrite, strip_opt_out};

const URL: &str = "http://127.0.0.1:8080/o/TESTTOKEN.gif";

/// libfuzzer-sys aborts on every panic. mail-parser 0.11 has a `debug_assert!` that fires on
/// some malformed multiparts; `rewrite` catches it (`catch_unwind`, a regression test covers
/// it), so only panics raised inside mail-parser's own sources are let through to that catch.
/// Any other panic still aborts and is reported as a crash.
static HOOK: Once = Once::new();

fn tolerate_mail_parser_debug_asserts() {
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_mail_parser = info
                .location()
                .is_some_and(|l| l.file().contains("/mail-parser-0.11"));
            if !in_mail_parser {
                abort(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    tolerate_mail_parser_debug_asserts();
    let Some((&flags, msg)) = data.split_first() else {
        return;
    };
    let policy = Policy {
        pixel_prefix: "http://127.0.0.1:8080/o/".into(),
        on_dkim_signed: if flags & 1 == 0 {
            OnDkimSigned::Skip
        } else {
            OnDkimSigned::Track
        },
        opt_out_header: "X-Track-Opens".into(),
        sender_domains: Vec::new(),
        exclude_recipient_domains: Vec::new(),
        max_rewrite_size: if flags & 2 == 0 { u64::MAX } else { 4096 },
    };
    let rcpts = vec!["bob@example.net".to_string()];
    let env = Envelope {
        sender: "news@example.com",
        recipients: &rcpts,
    };
    let first = rewrite(&env, msg, URL, &policy);
    // The opt-out header goes whatever the decision, so compare against the input without it.
    let stripped = strip_opt_out(msg, &policy.opt_out_header);
    let base_len = stripped.as_ref().map_or(msg.len(), Vec::len);
    match (&first.decision, &first.message) {
        (Decision::Tracked, Some(out)) => {
            assert!(
                out.len() > base_len,
                "a tracked message must gain the pixel"
            );
            let second = rewrite(&env, out, URL, &policy);
            assert_ne!(
                second.decision,
                Decision::Tracked,
                "a second pixel was inserted"
            );
            if policy.max_rewrite_size == u64::MAX {
                assert_eq!(
                    second.decision,
                    Decision::Skipped(SkipReason::AlreadyTracked)
                );
            }
        }
        (Decision::Tracked, None) => panic!("tracked without output"),
        (Decision::Skipped(_), Some(out)) => {
            assert_eq!(
                Some(out),
                stripped.as_ref(),
                "a skip may only remove the opt-out header"
            )
        }
        (Decision::Skipped(_), None) => assert!(stripped.is_none(), "the opt-out header was kept"),
    }
});
