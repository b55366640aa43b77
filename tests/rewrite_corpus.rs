//! Corpus test for the rewrite core: every file under `$PIXELRELAY_CORPUS` (walked recursively,
//! e.g. `../shared/corpus`, holding mail-parser's test messages, malformed ones included) goes
//! through `rewrite` without panicking. A tracked message differs from its input only inside
//! one `text/html` body, whose decoding gains exactly one pixel and nothing else; any other
//! message is forwarded byte-identical. With click tracking on, a tracked message differs from
//! the pixel-only rewrite in `href` values alone. Set but missing directory: failure. Unset:
//! skipped with a message saying so.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{corpus_dir, files_below};
use mail_parser::{MessageParser, MimeHeaders};
use pixelrelay::rewrite::{
    Decision, Envelope, Links, Policy, SkipReason, rewrite, rewrite_with_links,
};

const URL: &str = "http://127.0.0.1:8080/o/TESTTOKEN.gif";

fn policy() -> Policy {
    common::rewrite_policy(64 << 20)
}

/// The decoded body of the top-level part whose encoded body spans `range`, if it is HTML.
fn html_at(msg: &[u8], start: usize) -> Option<Vec<u8>> {
    let parsed = MessageParser::new().parse(msg)?;
    let part = parsed
        .parts
        .iter()
        .find(|p| p.offset_body as usize == start && p.is_content_type("text", "html"))?;
    Some(part.contents().to_vec())
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// With click tracking too: the same decision, the same bytes outside the HTML part's body,
/// and the decoded part the pixel-only one but for `href` values, each changed one now a
/// tracked URL for a link the part held. Returns how many links were tracked.
fn with_clicks(
    env: &Envelope<'_>,
    input: &[u8],
    pixel_only: &[u8],
    start: usize,
    name: &str,
) -> usize {
    let offered = std::cell::RefCell::new(Vec::new());
    let url = |i: u16, u: &str| {
        offered.borrow_mut().push(u.to_string());
        Some(format!("https://t.example/c/{i}"))
    };
    let exclude = vec!["unsubscribe".to_string()];
    let links = Links {
        exclude: &exclude,
        own_prefix: "https://t.example/c/",
        url: &url,
    };
    let r = rewrite_with_links(env, input, URL, Some(&links), &policy());
    assert_eq!(r.decision, Decision::Tracked, "{name}: with clicks");
    let out = r
        .message
        .unwrap_or_else(|| panic!("{name}: tracked without output"));
    assert_eq!(
        &out[..start],
        &pixel_only[..start],
        "{name}: before the part"
    );
    let (a, b) = (
        html_at(pixel_only, start).unwrap_or_else(|| panic!("{name}: part")),
        html_at(&out, start).unwrap_or_else(|| panic!("{name}: part with links")),
    );
    let (a, b) = (String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    let norm = |s: &str| mask_hrefs(&s.replace(['\r', '\n'], ""));
    assert_eq!(norm(&b), norm(&a), "{name}: more than href values changed");
    let tracked = b.matches("https://t.example/c/").count();
    assert_eq!(tracked, offered.borrow().len(), "{name}: tracked links");
    for u in offered.borrow().iter() {
        assert!(
            u.starts_with("http://") || u.starts_with("https://"),
            "{name}: {u}"
        );
    }
    // The rest of the message after the part, byte for byte.
    let tail = |m: &[u8]| {
        let parsed = MessageParser::new().parse(m).unwrap();
        let p = parsed
            .parts
            .iter()
            .find(|p| p.offset_body as usize == start)
            .unwrap();
        m[p.offset_end as usize..].to_vec()
    };
    assert_eq!(tail(&out), tail(pixel_only), "{name}: after the part");
    tracked
}

/// `s` with every `href` attribute's value replaced by `#` (quoted or not).
fn mask_hrefs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.to_ascii_lowercase().find("href") {
        let after = &rest[at + 4..];
        let t = after.trim_start();
        let Some(v) = t.strip_prefix('=') else {
            out.push_str(&rest[..at + 4]);
            rest = after;
            continue;
        };
        let v = v.trim_start();
        let end = match v.chars().next() {
            Some(q @ ('"' | '\'')) => v[1..].find(q).map_or(v.len(), |e| e + 2),
            _ => v
                .find(|c: char| c.is_ascii_whitespace() || c == '>')
                .unwrap_or(v.len()),
        };
        out.push_str(&rest[..at]);
        out.push_str("href=#");
        rest = &v[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn corpus_messages() {
    let Some(dir) = corpus_dir() else { return };
    let files = files_below(&dir);
    assert!(!files.is_empty(), "no files under {}", dir.display());
    let rcpts = vec!["bob@example.net".to_string()];
    let env = Envelope {
        sender: "news@example.com",
        recipients: &rcpts,
    };
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for path in &files {
        let input = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.display().to_string();
        let r = rewrite(&env, &input, URL, &policy());
        let label = match r.decision {
            Decision::Tracked => "tracked",
            Decision::Skipped(reason) => reason.as_str(),
        };
        *counts.entry(label).or_default() += 1;
        // The Subject is decoded from its own fields; mail-parser reading the whole header
        // block must agree.
        if let Some(whole) = MessageParser::new().parse_headers(&input[..]) {
            assert_eq!(
                r.info.subject.as_deref(),
                whole.subject(),
                "{name}: subject"
            );
        }
        if matches!(
            r.decision,
            Decision::Skipped(SkipReason::Unparseable | SkipReason::Charset)
        ) {
            println!("{name}: {label}");
        }
        match (r.decision, r.message) {
            (Decision::Tracked, Some(out)) => {
                // The change is confined to one HTML body: find it from both ends.
                let pre = common_prefix(&input, &out);
                let suf = common_prefix(
                    &input.iter().rev().copied().collect::<Vec<_>>(),
                    &out.iter().rev().copied().collect::<Vec<_>>(),
                );
                let suf = suf.min(input.len() - pre).min(out.len() - pre);
                let parsed = MessageParser::new()
                    .parse(&input)
                    .unwrap_or_else(|| panic!("{name}: tracked but unparseable"));
                let part = parsed
                    .parts
                    .iter()
                    .filter(|p| p.is_content_type("text", "html"))
                    .find(|p| {
                        p.offset_body as usize <= pre && input.len() - suf <= p.offset_end as usize
                    })
                    .unwrap_or_else(|| panic!("{name}: change outside every HTML body"));
                let start = part.offset_body as usize;
                let before = part.contents().to_vec();
                let after = html_at(&out, start)
                    .unwrap_or_else(|| panic!("{name}: rewritten part not found"));
                let after = String::from_utf8_lossy(&after).into_owned();
                assert_eq!(after.matches(URL).count(), 1, "{name}: pixel count");
                let img = after
                    .find("<img src=\"http://127.0.0.1:8080/o/")
                    .unwrap_or(0);
                let end = img + after[img..].find('>').map_or(0, |i| i + 1);
                let removed = format!("{}{}", &after[..img], &after[end..]);
                let norm = |s: &str| s.replace(['\r', '\n'], "");
                assert_eq!(
                    norm(&removed),
                    norm(&String::from_utf8_lossy(&before)),
                    "{name}: HTML changed beyond the pixel"
                );
                let again = rewrite(&env, &out, URL, &policy());
                assert_eq!(
                    again.decision,
                    Decision::Skipped(SkipReason::AlreadyTracked),
                    "{name}: second pass"
                );
                *counts.entry("links tracked").or_default() +=
                    with_clicks(&env, &input, &out, start, &name);
            }
            (Decision::Tracked, None) => panic!("{name}: tracked without output"),
            (Decision::Skipped(reason), out) => {
                assert!(
                    out.is_none(),
                    "{name}: skipped ({}) but changed",
                    reason.as_str()
                );
                // No missed HTML: mail-parser's own top-level HTML bodies must agree.
                if reason == SkipReason::NoHtml
                    && let Some(m) = MessageParser::new().parse(&input)
                {
                    let inline_html = m.html_bodies().any(|p| {
                        p.is_content_type("text", "html")
                            && !p.content_disposition().is_some_and(|d| d.is_attachment())
                    });
                    assert!(
                        !inline_html,
                        "{name}: mail-parser sees an inline HTML body we skipped"
                    );
                }
            }
        }
    }
    println!("corpus: {} files, {counts:?}", files.len());
    assert!(
        counts.get("tracked").copied().unwrap_or(0) > 0,
        "no corpus message was tracked: {counts:?}"
    );
}
