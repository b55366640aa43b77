//! Property tests for the rewrite core: random HTML, built so the placement rule's spot is
//! known by construction, in random MIME trees (assembled with mail-builder) and transfer
//! encodings (encoded here, independently of the code under test), with CRLF or LF line ends.
//! Checked: (a) the output parses; (b) mail-parser's decoding of the rewritten part is the
//! original HTML with exactly the pixel markup at the expected spot; (c) every byte outside that
//! part's body is unchanged; (d) a second rewrite adds nothing; (e) no output line exceeds 998
//! octets, and quoted-printable lines stay within 76 columns. With click tracking, the same
//! HTML's links are replaced and, mapped back, the decoded part is the original but for the
//! pixel, every byte outside it unchanged. 256 cases each by default;
//! `PROPTEST_CASES=5000 cargo test --test rewrite_props` digs deeper.

mod common;

use base64::Engine as _;
use common::to_lf;
use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::{BodyPart, MimePart};
use mail_parser::{MessageParser, MimeHeaders};
use pixelrelay::rewrite::{
    Decision, Envelope, Links, Policy, SkipReason, rewrite, rewrite_with_links,
};
use proptest::prelude::*;

const URL: &str = "http://127.0.0.1:8080/o/TESTTOKEN.gif";
const MARKUP: &str = r#"<img src="http://127.0.0.1:8080/o/TESTTOKEN.gif" width="1" height="1" alt="" border="0" style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">"#;

/// The one anchor the generator writes, as it stands in the HTML.
const LINK_HREF: &str = "href=\"http://x/?a=1&b=2\"";

fn policy() -> Policy {
    common::rewrite_policy(64 << 20)
}

/// Where the generated HTML says the pixel must go.
#[derive(Debug, Clone, Copy)]
enum Closer {
    Body,
    Html,
    None,
}

/// Segments that never contain a real `</body>` or `</html>`.
fn neutral() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 .,;:!?'\"=&>é東-]{0,60}",
        2 => prop::sample::select(vec!["<p>", "</p>", "<div class=\"a\">", "</div>", "<br>", "<a href=\"http://x/?a=1&b=2\">", "</a>", "<b>", "</b>", "<body>", "<html>", "</bodyx>", "</ body>", "</htmlx>"]).prop_map(str::to_string),
        2 => prop::sample::select(vec![
            "<!-- </body> -->",
            "<!--</html>-->",
            "<!---->",
            "<script>var s = '</body></html>';</script>",
            "<SCRIPT type=\"x\">if (a</b) {}</script >",
            "<style>/* </body> */</style>",
            "<textarea name=t></body></textarea>",
            "<title></BODY></title>",
        ]).prop_map(str::to_string),
        2 => Just("\r\n".to_string()),
    ]
}

fn body_closer() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "</body>",
        "</BODY>",
        "</Body >",
        "</body\r\n>",
        "</body foo=\"1\">",
    ])
}

fn html_closer() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["</html>", "</HTML >"])
}

/// HTML plus the decoded offset where the pixel belongs.
fn html() -> impl Strategy<Value = (String, usize)> {
    let segs = || prop::collection::vec(neutral(), 0..30);
    let real = prop_oneof![
        neutral(),
        body_closer().prop_map(str::to_string),
        html_closer().prop_map(str::to_string)
    ];
    (
        prop_oneof![Just(Closer::Body), Just(Closer::Html), Just(Closer::None)],
        prop::collection::vec(real, 0..30),
        segs(),
        segs(),
        body_closer(),
        html_closer(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(kind, with_real, plain_head, tail, bc, hc, html_after, final_nl)| {
                let mut s = String::new();
                let p;
                match kind {
                    Closer::Body => {
                        s.push_str(&with_real.concat());
                        p = s.len();
                        s.push_str(bc);
                        s.push_str(&tail.concat());
                        if html_after {
                            s.push_str(hc);
                        }
                    }
                    Closer::Html => {
                        s.push_str(&plain_head.concat());
                        p = s.len();
                        s.push_str(hc);
                        s.push_str(&tail.concat());
                    }
                    Closer::None => {
                        s.push_str(&plain_head.concat());
                        s.push_str(&tail.concat());
                        p = usize::MAX;
                    }
                }
                if final_nl {
                    s.push_str("\r\n");
                }
                let p = if p == usize::MAX {
                    s.strip_suffix("\r\n").map_or(s.len(), str::len)
                } else {
                    p
                };
                (s, p)
            },
        )
}

#[derive(Debug, Clone, Copy)]
enum Cte {
    Raw,
    Qp(usize),
    Base64(usize),
}

fn cte() -> impl Strategy<Value = Cte> {
    prop_oneof![
        Just(Cte::Raw),
        (20usize..=76).prop_map(Cte::Qp),
        prop::sample::select(vec![76usize, 72, 64, 60]).prop_map(Cte::Base64),
    ]
}

/// A straightforward quoted-printable encoder, lines at most `width` columns.
fn qp_encode(s: &str, width: usize) -> String {
    let mut out = String::new();
    for (i, line) in s.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let bytes = line.as_bytes();
        let mut col = 0;
        for (j, &b) in bytes.iter().enumerate() {
            let last = j + 1 == bytes.len();
            let tok = if b == b'='
                || !(0x20..=0x7e).contains(&b)
                || (last && (b == b' ' || b == b'\t'))
            {
                format!("={b:02X}")
            } else {
                (b as char).to_string()
            };
            if col + tok.len() > width - 1 {
                out.push_str("=\r\n");
                col = 0;
            }
            out.push_str(&tok);
            col += tok.len();
        }
    }
    out
}

fn b64_encode(s: &str, width: usize) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut out = String::new();
    for chunk in flat.as_bytes().chunks(width) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        out.push_str("\r\n");
    }
    out
}

fn html_part(html: &str, cte: Cte) -> MimePart<'static> {
    let ct = ContentType::new("text/html").attribute("charset", "utf-8");
    let (body, name) = match cte {
        Cte::Raw => (
            html.to_string(),
            if html.is_ascii() { "7bit" } else { "8bit" },
        ),
        Cte::Qp(w) => (qp_encode(html, w), "quoted-printable"),
        Cte::Base64(w) => (b64_encode(html, w), "base64"),
    };
    MimePart::new(ct, BodyPart::Text(body.into())).transfer_encoding(name)
}

fn text(t: &'static str) -> MimePart<'static> {
    MimePart::new(ContentType::new("text/plain"), t)
}

/// The MIME tree around the HTML part; every decoy HTML is an attachment or inside a message.
fn tree(shape: u8, html: MimePart<'static>) -> MimePart<'static> {
    let png: &'static [u8] = b"\x89PNG\r\n\x1a\nfake";
    let decoy = || {
        MimePart::new(
            ContentType::new("text/html"),
            "<html><body>decoy</body></html>",
        )
        .attachment("d.html")
    };
    match shape % 6 {
        0 => html,
        1 => MimePart::new("multipart/alternative", vec![text("plain"), html]),
        2 => MimePart::new(
            "multipart/mixed",
            vec![
                MimePart::new(
                    "multipart/alternative",
                    vec![
                        text("plain"),
                        MimePart::new(
                            "multipart/related",
                            vec![html, MimePart::new("image/png", png).cid("l@x")],
                        ),
                    ],
                ),
                MimePart::new("application/pdf", &b"%PDF"[..]).attachment("a.pdf"),
            ],
        ),
        3 => MimePart::new(
            "multipart/mixed",
            vec![
                decoy(),
                MimePart::new("multipart/alternative", vec![text("plain"), html]),
            ],
        ),
        4 => {
            let inner = b"Subject: inner\r\nContent-Type: text/html\r\n\r\n<html><body>inner</body></html>\r\n".to_vec();
            MimePart::new(
                "multipart/mixed",
                vec![
                    MimePart::new("message/rfc822", inner).transfer_encoding("7bit"),
                    html,
                ],
            )
        }
        _ => MimePart::new(
            "multipart/related",
            vec![html, MimePart::new("image/png", png).cid("l@x")],
        ),
    }
}

/// The first top-level text/html part that is not an attachment: (offset_body, offset_end, decoded).
fn html_of(msg: &[u8]) -> Option<(usize, usize, String)> {
    let parsed = MessageParser::new().parse(msg)?;
    let part = parsed.parts.iter().find(|p| {
        p.is_content_type("text", "html")
            && !p.content_disposition().is_some_and(|d| d.is_attachment())
    })?;
    Some((
        part.offset_body as usize,
        part.offset_end as usize,
        part.text_contents()?.to_string(),
    ))
}

/// `got` is `want` with the markup broken across lines (7bit long lines): between its
/// attributes, before its `>`, and where the original line leaves no room, before `<img` or
/// after the markup.
fn same_but_wrapped(got: &str, want: &str) -> bool {
    let squash = |s: &str| {
        let mut s = s.replace("\r\n", " ").replace('\n', " ");
        while s.contains("  ") {
            s = s.replace("  ", " ");
        }
        let open = &MARKUP[..MARKUP.find(' ').unwrap_or(0)];
        let close = &MARKUP[MARKUP.len() - 12..];
        s.replace(" >", ">")
            .replace(&format!(" {open}"), open)
            .replace(&format!("{close} "), close)
    };
    squash(got) == squash(want)
}

proptest! {

    #[test]
    fn rewrite_properties((html, p) in html(), cte in cte(), shape in any::<u8>(), lf in any::<bool>()) {
        let msg = MessageBuilder::new()
            .from("news@example.com")
            .to("bob@example.net")
            .subject("props")
            .message_id("props@example.com")
            .body(tree(shape, html_part(&html, cte)))
            .write_to_vec()
            .unwrap_or_default();
        let input = if lf { to_lf(&msg) } else { msg };
        let (start, end, decoded_in) = html_of(&input).ok_or_else(|| TestCaseError::fail("input has no HTML part"))?;
        // The input decodes to our HTML (LF-converted where the conversion reaches the text).
        let p = if decoded_in == html {
            p
        } else {
            let lf_html = html.replace("\r\n", "\n");
            prop_assert_eq!(&decoded_in, &lf_html, "test encoder or generator disagree with mail-parser");
            p - html[..p].matches("\r\n").count()
        };

        let rcpts = vec!["bob@example.net".to_string()];
        let env = Envelope { sender: "news@example.com", recipients: &rcpts };
        let r = rewrite(&env, &input, URL, &policy());
        prop_assert_eq!(r.decision, Decision::Tracked);
        let out = r.message.ok_or_else(|| TestCaseError::fail("tracked without output"))?;

        // (a) parses, (b) decoded part = original + markup at p.
        let (start_out, end_out, decoded_out) = html_of(&out).ok_or_else(|| TestCaseError::fail("output has no HTML part"))?;
        let want = format!("{}{MARKUP}{}", &decoded_in[..p], &decoded_in[p..]);
        prop_assert!(decoded_out == want || (matches!(cte, Cte::Raw) && same_but_wrapped(&decoded_out, &want)),
            "decoded output differs:\n got: {:?}\nwant: {:?}", decoded_out, want);
        // (c) bytes outside the part's body are identical.
        prop_assert_eq!(start_out, start);
        prop_assert_eq!(&out[..start], &input[..start]);
        prop_assert_eq!(&out[end_out..], &input[end..]);
        // (d) a second pass inserts nothing.
        let again = rewrite(&env, &out, URL, &policy());
        prop_assert_eq!(again.decision, Decision::Skipped(SkipReason::AlreadyTracked));
        prop_assert!(again.message.is_none());
        // (e) line limits.
        let lines = |b: &[u8]| b.split(|&c| c == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l).len()).collect::<Vec<_>>();
        let longest_in = lines(&input).into_iter().max().unwrap_or(0);
        if longest_in <= 998 {
            prop_assert!(lines(&out).into_iter().all(|l| l <= 998));
        }
        match cte {
            Cte::Qp(_) => prop_assert!(lines(&out[start_out..end_out]).into_iter().all(|l| l <= 76)),
            Cte::Base64(w) => {
                // A one-line body says nothing about its width: the default, 76, applies.
                let width = if input[start..end].iter().filter(|&&c| c == b'\n').count() > 1 { w } else { 76 };
                prop_assert!(lines(&out[start_out..end_out]).into_iter().all(|l| l <= width));
            }
            Cte::Raw => {}
        }
    }

    #[test]
    fn links_change_and_nothing_else((html, p) in html(), cte in cte(), shape in any::<u8>(), lf in any::<bool>()) {
        // The generator's only anchor, `<a href="http://x/?a=1&b=2">`, is never inside a
        // comment or raw-text element: every one of its hrefs is trackable by construction.
        let msg = MessageBuilder::new()
            .from("news@example.com")
            .to("bob@example.net")
            .subject("props")
            .body(tree(shape, html_part(&html, cte)))
            .write_to_vec()
            .unwrap_or_default();
        let input = if lf { to_lf(&msg) } else { msg };
        let (start, end, decoded_in) = html_of(&input).ok_or_else(|| TestCaseError::fail("input has no HTML part"))?;
        let p = if decoded_in == html { p } else { p - html[..p].matches("\r\n").count() };
        let anchors = decoded_in.matches(LINK_HREF).count();
        let rcpts = vec!["bob@example.net".to_string()];
        let env = Envelope { sender: "news@example.com", recipients: &rcpts };
        let offered = std::cell::RefCell::new(Vec::new());
        let url = |i: u16, u: &str| {
            offered.borrow_mut().push(u.to_string());
            Some(format!("https://t.example/c/{i}"))
        };
        let exclude = vec!["unsubscribe".to_string()];
        let links = Links { exclude: &exclude, own_prefix: "https://t.example/c/", url: &url };
        let r = rewrite_with_links(&env, &input, URL, Some(&links), &policy());
        prop_assert_eq!(r.decision, Decision::Tracked);
        let out = r.message.ok_or_else(|| TestCaseError::fail("tracked without output"))?;
        prop_assert!(offered.borrow().iter().all(|u| u == "http://x/?a=1&b=2"), "{:?}", offered.borrow());
        let (start_out, end_out, decoded_out) = html_of(&out).ok_or_else(|| TestCaseError::fail("output has no HTML part"))?;
        // Back from the tracked URLs and without the pixel: the input's HTML.
        let mut replaced = 0;
        let mut back = decoded_out.clone();
        for i in 0..anchors {
            let t = format!("href=\"https://t.example/c/{i}\"");
            if back.contains(&t) {
                back = back.replacen(&t, LINK_HREF, 1);
                replaced += 1;
            }
        }
        match cte {
            // A link that would take a 7bit/8bit line past 998 octets stays as written.
            Cte::Raw => prop_assert!(replaced <= anchors),
            _ => prop_assert_eq!(replaced, anchors, "every link tracked"),
        }
        let want = format!("{}{MARKUP}{}", &decoded_in[..p], &decoded_in[p..]);
        prop_assert!(back == want || (matches!(cte, Cte::Raw) && same_but_wrapped(&back, &want)),
            "nothing but the hrefs and the pixel changed:\n got: {:?}\nwant: {:?}", back, want);
        // Every byte outside the part's body as it was; line limits kept.
        prop_assert_eq!(&out[..start], &input[..start]);
        prop_assert_eq!(start_out, start);
        prop_assert_eq!(&out[end_out..], &input[end..]);
        let lines = |b: &[u8]| b.split(|&c| c == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l).len()).collect::<Vec<_>>();
        if lines(&input).into_iter().max().unwrap_or(0) <= 998 {
            prop_assert!(lines(&out).into_iter().all(|l| l <= 998));
        }
        if let Cte::Qp(_) = cte {
            prop_assert!(lines(&out[start_out..end_out]).into_iter().all(|l| l <= 76));
        }
    }

    #[test]
    fn never_panics_on_mangled_mail((html, _p) in html(), cte in cte(), shape in any::<u8>(), cut in any::<prop::sample::Index>(), junk in prop::collection::vec(any::<u8>(), 0..8)) {
        let msg = MessageBuilder::new()
            .from("news@example.com")
            .to("bob@example.net")
            .subject("props")
            .body(tree(shape, html_part(&html, cte)))
            .write_to_vec()
            .unwrap_or_default();
        // Truncate somewhere and splice in random bytes: the rewriter must still return.
        let at = cut.index(msg.len() + 1);
        let mangled = [&msg[..at], &junk[..], &msg[at..]].concat();
        let rcpts = vec!["bob@example.net".to_string()];
        let env = Envelope { sender: "news@example.com", recipients: &rcpts };
        let r = rewrite(&env, &mangled, URL, &policy());
        if r.decision == Decision::Tracked {
            let out = r.message.ok_or_else(|| TestCaseError::fail("tracked without output"))?;
            prop_assert!(out.len() > mangled.len());
            prop_assert_ne!(rewrite(&env, &out, URL, &policy()).decision, Decision::Tracked);
        }
    }
}
