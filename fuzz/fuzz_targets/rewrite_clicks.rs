//! Fuzz target for click tracking in the rewrite core: any bytes, every link offered a
//! distinct tracked URL. Nothing may panic; the rewrite with links decides as the rewrite with
//! the pixel alone does; a tracked output is not tracked again; and, decoded, the part with
//! the links tracked is the part with the pixel alone but for the `href` values of trackable
//! links, each replaced by the URL minted for it (links the rewrite leaves as written, for
//! room or line length, stay as they are).
#![no_main]

use std::cell::RefCell;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use pixelrelay::config::OnDkimSigned;
use pixelrelay::rewrite::{
    Decision, Envelope, Links, Policy, SkipReason, html_part_decoded, links, rewrite,
    rewrite_with_links,
};

const URL: &str = "http://127.0.0.1:8080/o/TESTTOKEN.gif";
const MINTED: &str = "https://t.example/c/";

/// As in the `rewrite` target: mail-parser 0.11's `debug_assert!`s are caught by the rewrite.
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

/// The tracked URL of link `i`: distinct for every `i` (the `x` ends the number).
fn minted(i: usize) -> String {
    format!("{MINTED}{i}x")
}

fuzz_target!(|data: &[u8]| {
    tolerate_mail_parser_debug_asserts();
    let Some((&flags, msg)) = data.split_first() else {
        return;
    };
    // An input that already holds a minted URL would make the oracle ambiguous.
    if memchr::memmem::find(msg, b"t.example/c/").is_some() {
        return;
    }
    let policy = Policy {
        pixel_prefix: "http://127.0.0.1:8080/o/".into(),
        on_dkim_signed: OnDkimSigned::Track,
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
    let exclude = vec!["unsubscribe".to_string()];
    let seen = RefCell::new(Vec::new());
    let url = |i: u16, u: &str| {
        seen.borrow_mut().push(u.to_string());
        assert_eq!(usize::from(i) + 1, seen.borrow().len(), "links numbered in order");
        Some(minted(usize::from(i)))
    };
    let with_links = Links {
        exclude: &exclude,
        own_prefix: MINTED,
        url: &url,
    };
    let pixel = rewrite(&env, msg, URL, &policy);
    let clicks = rewrite_with_links(&env, msg, URL, Some(&with_links), &policy);
    assert_eq!(pixel.decision, clicks.decision, "links change the decision");
    let (Decision::Tracked, Some(p_out), Some(c_out)) =
        (&clicks.decision, &pixel.message, &clicks.message)
    else {
        return;
    };
    let again = rewrite_with_links(&env, c_out, URL, Some(&with_links), &policy);
    assert_ne!(again.decision, Decision::Tracked, "tracked twice");
    if policy.max_rewrite_size == u64::MAX {
        assert_eq!(again.decision, Decision::Skipped(SkipReason::AlreadyTracked));
    }
    let p_dec = html_part_decoded(p_out).expect("the pixel-only output's part decodes");
    let c_dec = html_part_decoded(c_out).expect("the tracked output's part decodes");
    // The trackable links of the pixel-only part (the pixel is no link) are the ones the
    // rewrite offered, in order; those it applied carry their minted URL.
    let found: Vec<links::Link> = links::trackable(&p_dec, &exclude)
        .into_iter()
        .filter(|l| !l.url.starts_with(MINTED))
        .collect();
    let seen = seen.borrow();
    assert!(seen.len() <= found.len(), "more links offered than found");
    for (l, u) in found.iter().zip(seen.iter()) {
        assert_eq!(&l.url, u, "the URL offered for a link");
    }
    let text = String::from_utf8_lossy(&c_dec);
    let mut expected = Vec::with_capacity(c_dec.len());
    let mut at = 0;
    for (j, l) in found.iter().enumerate().take(seen.len()) {
        let m = minted(j);
        match text.matches(m.as_str()).count() {
            0 => continue,
            1 => {}
            n => panic!("link {j}'s URL written {n} times"),
        }
        expected.extend_from_slice(&p_dec[at..l.value.start]);
        expected.extend_from_slice(m.as_bytes());
        at = l.value.end;
    }
    expected.extend_from_slice(&p_dec[at..]);
    assert!(
        expected == c_dec,
        "decoded part differs beyond the tracked href values:\n{}\n---\n{}",
        String::from_utf8_lossy(&expected),
        text
    );
});
