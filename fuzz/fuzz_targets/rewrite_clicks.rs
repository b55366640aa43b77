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
    Decision, Envelope, Links, Policy, SkipReason, html_part_decoded, insertion_point, links,
    rewrite, rewrite_with_links,
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
    // The part as the rewrite decoded it, and where it put the pixel.
    let orig = html_part_decoded(msg).expect("a tracked message's part decodes");
    let p_dec = html_part_decoded(p_out).expect("the pixel-only output's part decodes");
    let c_dec = html_part_decoded(c_out).expect("the tracked output's part decodes");
    let p = insertion_point(&orig);
    assert!(p_dec.len() > orig.len(), "the pixel-only part gained nothing");
    let markup = &p_dec[p..p + (p_dec.len() - orig.len())];
    assert!(
        p_dec[..p] == orig[..p] && p_dec[p + markup.len()..] == orig[p..],
        "the pixel-only part is more than the part with the pixel inserted"
    );
    // The links the rewrite offered, in order, are the part's trackable links.
    let found: Vec<links::Link> = links::trackable(&orig, &exclude)
        .into_iter()
        .filter(|l| !l.url.starts_with(MINTED))
        .collect();
    let seen = seen.borrow();
    assert!(seen.len() <= found.len(), "more links offered than found");
    for (l, u) in found.iter().zip(seen.iter()) {
        assert_eq!(&l.url, u, "the URL offered for a link");
    }
    // Expected: the part with the pixel inserted and each link whose minted URL is in the
    // output replaced by it (none may hold the pixel's place); nothing else changed. Before
    // and after the pixel byte for byte; the pixel itself may be wrapped differently on a
    // 7bit line the links made longer (spaces between its attributes become line breaks).
    let text = String::from_utf8_lossy(&c_dec);
    let mut edited = Vec::with_capacity(c_dec.len());
    // Where the pixel's place lands in the edited part.
    let mut p_at = None;
    let mut at = 0;
    for (j, l) in found.iter().enumerate().take(seen.len()) {
        let m = minted(j);
        match text.matches(m.as_str()).count() {
            0 => continue,
            1 => {}
            n => panic!("link {j}'s URL written {n} times"),
        }
        assert!(
            !(l.value.start < p && p < l.value.end),
            "link {j} edited around the pixel's place"
        );
        if p_at.is_none() && p < l.value.end {
            p_at = Some(edited.len() + (p - at));
        }
        edited.extend_from_slice(&orig[at..l.value.start]);
        edited.extend_from_slice(m.as_bytes());
        at = l.value.end;
    }
    let p_at = p_at.unwrap_or(edited.len() + (p - at));
    edited.extend_from_slice(&orig[at..]);
    let (before, after) = edited.split_at(p_at);
    let mid = c_dec.len().checked_sub(before.len() + after.len());
    let same = mid.is_some_and(|_| c_dec.starts_with(before) && c_dec.ends_with(after));
    assert!(
        same,
        "decoded part differs beyond the tracked href values and the pixel:\n{}\n<PIXEL>\n{}\n---\n{}",
        String::from_utf8_lossy(before),
        String::from_utf8_lossy(after),
        text
    );
    let squeeze = |b: &[u8]| -> Vec<u8> {
        b.iter().copied().filter(|c| !matches!(c, b' ' | b'\r' | b'\n')).collect()
    };
    let pixel = &c_dec[before.len()..c_dec.len() - after.len()];
    assert_eq!(squeeze(pixel), squeeze(markup), "the pixel");
});
