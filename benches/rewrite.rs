//! Rewrite throughput on a ~100 KB HTML newsletter (multipart/alternative, the HTML part in
//! 7bit, 8bit, quoted-printable or base64), plus the skip path for a multi-recipient message
//! and, as a reference point, mail-parser's own parse of each message (the rewrite runs it
//! once, so it bounds the rewrite's throughput).
//! Targets (issue 3): 7bit ≥ 1 GB/s, QP and base64 ≥ 300 MB/s.
//!
//! With click tracking (`rewrite_100k_clicks`): every link of the page replaced by a minted
//! click URL; `rewrite_100k_clicks_sparse` the same on a page with a link every ~1.5 KB.
//! `rewrite_100k_clicks/7bit_premade_tokens` gives every link one URL minted beforehand: the
//! dense 7bit rewrite without its MACs; `7bit_tokens_alone` mints the page's tokens and does
//! nothing else, and `7bit_sha256_floor` runs SHA-256's compression three times per link, the
//! least an HMAC-SHA256 token carrying the URL can cost.
//!
//! `cargo bench --bench rewrite` (add `-- --quick` for a fast look).

use std::hint::black_box;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pixelrelay::config::OnDkimSigned;
use pixelrelay::rewrite::{Decision, Envelope, Policy, rewrite};

const URL: &str = "http://127.0.0.1:8080/o/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.gif";

fn policy() -> Policy {
    Policy {
        pixel_prefix: "http://127.0.0.1:8080/o/".into(),
        on_dkim_signed: OnDkimSigned::Skip,
        opt_out_header: "X-Track-Opens".into(),
        sender_domains: Vec::new(),
        exclude_recipient_domains: Vec::new(),
        max_rewrite_size: 64 << 20,
    }
}

/// A newsletter-like page of about `size` bytes: tables, links, styles, some non-ASCII text,
/// CRLF lines under 100 octets.
pub fn newsletter(size: usize) -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\r\n<html><head><meta charset=\"utf-8\"><title>Weekly</title>\r\n<style>td{font-family:Arial;} /* </body> */</style></head>\r\n<body>\r\n<table width=\"100%\" cellpadding=\"0\" cellspacing=\"0\">\r\n",
    );
    let mut i = 0;
    while s.len() < size {
        s.push_str(&format!(
            "<tr><td class=\"item\"><a href=\"https://example.com/a/{i}?utm_source=news&amp;utm_medium=email\">Story {i}</a></td></tr>\r\n<tr><td>Caf\u{e9} pricing = simple; na\u{ef}ve readers get 50% off, \u{201c}today\u{201d} only.</td></tr>\r\n"
        ));
        i += 1;
    }
    s.push_str(
        "</table>\r\n<!-- footer </body> -->\r\n<p>Unsubscribe</p>\r\n</body>\r\n</html>\r\n",
    );
    s
}

fn qp(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 5 / 4);
    for (i, line) in s.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let mut col = 0;
        for &b in line.as_bytes() {
            let tok = if b == b'=' || !(0x20..=0x7e).contains(&b) {
                format!("={b:02X}")
            } else {
                (b as char).to_string()
            };
            if col + tok.len() > 75 {
                out.push_str("=\r\n");
                col = 0;
            }
            out.push_str(&tok);
            col += tok.len();
        }
    }
    out
}

fn b64(s: &str) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(s);
    flat.as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned() + "\r\n")
        .collect()
}

/// The page of [`newsletter`] with a link every ~1.5 KB instead of every ~210 bytes: each
/// story has a paragraph of text, as a real newsletter's do.
pub fn newsletter_sparse(size: usize) -> String {
    let para = "<tr><td>Caf\u{e9} pricing = simple; na\u{ef}ve readers get 50% off, \u{201c}today\u{201d} only. We looked at what changed this week and what did not, and wrote it down in plain words.</td></tr>\r\n".repeat(9);
    let mut s = newsletter(0);
    let end = s.rfind("</table>").unwrap_or(s.len());
    let tail = s.split_off(end);
    let mut i = 0;
    while s.len() + tail.len() < size {
        s.push_str(&format!(
            "<tr><td class=\"item\"><a href=\"https://example.com/a/{i}?utm_source=news&amp;utm_medium=email\">Story {i}</a></td></tr>\r\n{para}"
        ));
        i += 1;
    }
    s + &tail
}

pub fn message(cte: &str, size: usize) -> Vec<u8> {
    message_of(cte, newsletter(size))
}

/// A message whose HTML part is `html` in encoding `cte`.
fn message_of(cte: &str, html: String) -> Vec<u8> {
    let body = match cte {
        "quoted-printable" => qp(&html),
        "base64" => b64(&html),
        // 7bit: the same page with its few non-ASCII characters as entities.
        "7bit" => html
            .replace('\u{e9}', "&eacute;")
            .replace('\u{ef}', "&iuml;")
            .replace('\u{201c}', "&ldquo;")
            .replace('\u{201d}', "&rdquo;"),
        _ => html,
    };
    format!(
        "From: News <news@example.com>\r\nTo: bob@example.net\r\nSubject: Weekly\r\nMessage-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlain version.\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body}\r\n--b1--\r\n"
    )
    .into_bytes()
}

/// The HTML size that makes the whole message close to 100 KB in encoding `cte`.
fn html_size(cte: &str) -> usize {
    match cte {
        "quoted-printable" => 100_000 * 100 / 108,
        "base64" => 100_000 * 3 / 4 - 1_500,
        _ => 100_000,
    }
}

fn bench(c: &mut Criterion) {
    let rcpts = vec!["bob@example.net".to_string()];
    let two = vec!["bob@example.net".to_string(), "eve@example.net".to_string()];
    let policy = policy();
    let mut group = c.benchmark_group("rewrite_100k");
    for cte in ["7bit", "8bit", "quoted-printable", "base64"] {
        let msg = message(cte, html_size(cte));
        let env = Envelope {
            sender: "news@example.com",
            recipients: &rcpts,
        };
        assert_eq!(
            rewrite(&env, &msg, URL, &policy).decision,
            Decision::Tracked,
            "{cte}"
        );
        group.throughput(Throughput::Bytes(msg.len() as u64));
        group.bench_function(cte, |b| {
            b.iter(|| rewrite(&env, black_box(&msg), URL, &policy))
        });
        // Reference point: mail-parser's full parse of the same message.
        group.bench_function(format!("{cte}/mail_parser_parse"), |b| {
            b.iter(|| {
                mail_parser::MessageParser::new()
                    .parse(black_box(&msg[..]))
                    .map(|m| m.parts.len())
            })
        });
    }
    let msg = message("8bit", 100_000);
    let env = Envelope {
        sender: "news@example.com",
        recipients: &two,
    };
    group.throughput(Throughput::Bytes(msg.len() as u64));
    group.bench_function("skip_two_recipients", |b| {
        b.iter(|| rewrite(&env, black_box(&msg), URL, &policy))
    });
    group.finish();
}

/// The same messages with click tracking: the page's links (one per ~160 bytes, about 600 in
/// 100 KB, far denser than a real newsletter) get click tokens until the tracked URLs have
/// added half the message (the rewrite's cap; it prints how many).
fn bench_clicks(c: &mut Criterion) {
    use pixelrelay::rewrite::{Links, rewrite_with_links};
    use pixelrelay::token::{MessageId, TokenKey};
    let rcpts = vec!["bob@example.net".to_string()];
    let policy = policy();
    let key = TokenKey::from_secret(b"bench-secret");
    let id = MessageId([7; 16]);
    let exclude = vec!["unsubscribe".to_string()];
    let minted = std::cell::Cell::new(0usize);
    let url = |i: u16, u: &str| {
        minted.set(minted.get() + 1);
        key.mint_click_url("http://127.0.0.1:8080/c/", &id, i, u)
    };
    let links = Links {
        exclude: &exclude,
        own_prefix: "http://127.0.0.1:8080/c/",
        url: &url,
    };
    // The page of `newsletter` (a link every ~210 bytes, the measure of the target), then one
    // with a link every ~1.5 KB (a real newsletter's density).
    type Page = fn(usize) -> String;
    let pages: [(&str, Page); 2] = [
        ("rewrite_100k_clicks", newsletter),
        ("rewrite_100k_clicks_sparse", newsletter_sparse),
    ];
    for (name, page) in pages {
        let mut group = c.benchmark_group(name);
        for cte in ["7bit", "quoted-printable", "base64"] {
            let msg = message_of(cte, page(html_size(cte)));
            let env = Envelope {
                sender: "news@example.com",
                recipients: &rcpts,
            };
            minted.set(0);
            let r = rewrite_with_links(&env, &msg, URL, Some(&links), &policy);
            assert_eq!(r.decision, Decision::Tracked, "{cte}");
            let found =
                pixelrelay::rewrite::links::trackable(page(html_size(cte)).as_bytes(), &exclude)
                    .len();
            // The links may add half the message: the rest stay as written. Those minted must
            // be in the message as delivered (a rewrite that fell back to the pixel alone
            // would measure as a fast one).
            let out = r.message.as_deref().expect("a rewritten message");
            let parsed = mail_parser::MessageParser::default()
                .parse(out)
                .expect("the rewritten message parses");
            let html = parsed.body_html(0).expect("its HTML part");
            let delivered = html.matches("http://127.0.0.1:8080/c/").count();
            assert_eq!(
                delivered,
                minted.get(),
                "{name} {cte}: tracked links delivered"
            );
            let tracked = minted.get();
            println!("{name} {cte}: {tracked} of {found} links tracked");
            group.throughput(Throughput::Bytes(msg.len() as u64));
            group.bench_function(cte, |b| {
                b.iter(|| rewrite_with_links(&env, black_box(&msg), URL, Some(&links), &policy))
            });
            // What the rewrite costs around the tokens: every link given one URL minted
            // beforehand (same length), so no MAC runs. Dense 7bit page only.
            if name == "rewrite_100k_clicks" && cte == "7bit" {
                let fixed = key
                    .mint_click_url(
                        "http://127.0.0.1:8080/c/",
                        &id,
                        0,
                        "https://example.com/a/100?utm_source=news&utm_medium=email",
                    )
                    .expect("a trackable URL");
                let same = |_: u16, _: &str| Some(fixed.clone());
                let premade = Links {
                    exclude: &exclude,
                    own_prefix: "http://127.0.0.1:8080/c/",
                    url: &same,
                };
                group.bench_function("7bit_premade_tokens", |b| {
                    b.iter(|| {
                        rewrite_with_links(&env, black_box(&msg), URL, Some(&premade), &policy)
                    })
                });
                // The tokens alone: the page's links minted, nothing else (throughput still
                // counted against the whole message, so the figures compare).
                let urls: Vec<String> = pixelrelay::rewrite::links::trackable(
                    page(html_size(cte)).as_bytes(),
                    &exclude,
                )
                .into_iter()
                .map(|l| l.url)
                .take(tracked)
                .collect();
                group.bench_function("7bit_tokens_alone", |b| {
                    b.iter(|| {
                        for (i, u) in urls.iter().enumerate() {
                            black_box(key.mint_click_url(
                                "http://127.0.0.1:8080/c/",
                                &id,
                                i as u16,
                                black_box(u),
                            ));
                        }
                    })
                });
                // The floor of any HMAC-SHA256 token that signs the URL: a URL of 51 bytes or
                // more puts the inner hash over two blocks whatever else is signed, and the
                // outer hash is one more. SHA-256's compression run three times per link.
                let blocks = [[0x5a_u8; 64]];
                group.bench_function("7bit_sha256_floor", |b| {
                    b.iter(|| {
                        let mut state = [0u32; 8];
                        for _ in 0..urls.len() * 3 {
                            sha2::block_api::compress256(&mut state, black_box(&blocks));
                        }
                        state
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench, bench_clicks);
criterion_main!(benches);
