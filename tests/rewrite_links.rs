//! Click tracking in the rewrite core, on messages Python's email package and nodemailer wrote
//! (`fixtures/links/{7bit,8bit,qp,base64,nm-qp,nm-base64}.eml`, links in every context):
//! exactly the trackable links are replaced, the decoded HTML is the original but for those
//! `href` values and the pixel, and every byte outside the HTML part's body is as it was.

mod common;

use std::cell::RefCell;
use std::path::Path;

use mail_parser::{MessageParser, PartType};
use pixelrelay::rewrite::{Decision, Envelope, Links, Policy, rewrite_with_links};

const PIXEL: &str = "http://127.0.0.1:8080/o/TESTTOKEN.gif";

fn policy() -> Policy {
    common::rewrite_policy(25 << 20)
}

/// The links that must be tracked, as found (references decoded), and how each is written.
const TRACKED: [(&str, &str); 4] = [
    (
        "https://shop.example/spring?utm=mail&id=42",
        "\"https://shop.example/spring?utm=mail&amp;id=42\"",
    ),
    ("http://plain.example/", "'http://plain.example/'"),
    ("https://unquoted.example/x", "https://unquoted.example/x"),
    (
        "https://long.example/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa?x=1",
        "\"https://long.example/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa?x=1\"",
    ),
];

fn html_of(msg: &[u8]) -> String {
    let parsed = MessageParser::new().parse(msg).expect("parses");
    parsed
        .parts
        .iter()
        .find_map(|p| match &p.body {
            PartType::Html(h) => Some(h.to_string()),
            _ => None,
        })
        .expect("an HTML part")
}

/// The encoded body of the HTML part: from its header's blank line to the next boundary.
fn html_body_range(msg: &[u8]) -> std::ops::Range<usize> {
    let s = String::from_utf8_lossy(msg);
    let head = s.find("Content-Type: text/html").expect("html part");
    let start = head + s[head..].find("\r\n\r\n").expect("blank line") + 4;
    let end = start + s[start..].find("\r\n--").expect("boundary");
    start..end
}

#[test]
fn exactly_the_trackable_links_change_in_every_transfer_encoding() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/links");
    let rcpts = vec!["bob@example.net".to_string()];
    let env = Envelope {
        sender: "news@example.com",
        recipients: &rcpts,
    };
    let exclude = vec!["unsubscribe".to_string()];
    for name in ["7bit", "8bit", "qp", "base64", "nm-qp", "nm-base64"] {
        let input = std::fs::read(dir.join(format!("{name}.eml"))).expect("fixture");
        let seen = RefCell::new(Vec::new());
        let url = |i: u16, u: &str| {
            seen.borrow_mut().push((i, u.to_string()));
            Some(format!("https://t.example/c/{i}"))
        };
        let links = Links {
            exclude: &exclude,
            own_prefix: "https://t.example/c/",
            url: &url,
        };
        let r = rewrite_with_links(&env, &input, PIXEL, Some(&links), &policy());
        assert_eq!(r.decision, Decision::Tracked, "{name}");
        let out = r.message.expect("rewritten");
        let want: Vec<(u16, String)> = TRACKED
            .iter()
            .enumerate()
            .map(|(i, (u, _))| (i as u16, u.to_string()))
            .collect();
        assert_eq!(
            *seen.borrow(),
            want,
            "{name}: the links offered for tracking"
        );

        // The decoded HTML: the original, but for the tracked href values and the pixel.
        let mut expected = html_of(&input);
        for (i, (_, written)) in TRACKED.iter().enumerate() {
            let quote = &written[..usize::from(written.starts_with(['"', '\'']))];
            let with = format!("{quote}https://t.example/c/{i}{quote}");
            assert!(expected.contains(written), "{name}: {written}");
            expected = expected.replacen(written, &with, 1);
        }
        let pixel_at = expected.rfind("</body>").expect("</body>");
        let got = html_of(&out);
        assert!(
            got.contains(&format!("<img src=\"{PIXEL}\"")),
            "{name}: pixel"
        );
        let img_start = got.find("<img src=").unwrap_or(0);
        let img_end = img_start + got[img_start..].find('>').unwrap_or(0) + 1;
        let without_pixel = format!("{}{}", &got[..img_start], &got[img_end..]);
        assert_eq!(without_pixel, expected, "{name}: decoded HTML");
        assert_eq!(img_start, pixel_at, "{name}: the pixel before </body>");

        // Every byte outside the HTML part's body as it was.
        let (a, b) = (html_body_range(&input), html_body_range(&out));
        assert_eq!(
            &out[..b.start],
            &input[..a.start],
            "{name}: before the part"
        );
        assert_eq!(&out[b.end..], &input[a.end..], "{name}: after the part");
        if name.ends_with("qp") {
            // Lines it wrote itself (Python's own may run to 77).
            let before: Vec<&[u8]> = input[a.clone()].split(|&c| c == b'\n').collect();
            for line in out[b.clone()]
                .split(|&c| c == b'\n')
                .filter(|l| !before.contains(l))
            {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(
                    line.len() <= 76,
                    "{name}: a line over 76 octets: {:?}",
                    String::from_utf8_lossy(line)
                );
            }
        }
        // A second pass tracks nothing more: the message already carries the pixel.
        let again = rewrite_with_links(&env, &out, PIXEL, Some(&links), &policy());
        assert_ne!(again.decision, Decision::Tracked);
    }
}

#[test]
fn a_7bit_link_that_would_pass_998_octets_stays() {
    let rcpts = vec!["bob@example.net".to_string()];
    let env = Envelope {
        sender: "news@example.com",
        recipients: &rcpts,
    };
    let pad = "x".repeat(900);
    let msg = format!(
        "From: a@example.com\r\nTo: bob@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n<html><body><p>{pad}<a href=\"https://a.example/\">a</a></p>\r\n<p><a href=\"https://b.example/\">b</a></p></body></html>\r\n"
    );
    let url = |_: u16, u: &str| Some(format!("https://t.example/c/{}", "T".repeat(60) + u));
    let links = Links {
        exclude: &[],
        own_prefix: "https://t.example/c/",
        url: &url,
    };
    let r = rewrite_with_links(&env, msg.as_bytes(), PIXEL, Some(&links), &policy());
    let out = String::from_utf8(r.message.expect("rewritten")).expect("utf-8");
    assert!(
        out.contains("href=\"https://a.example/\""),
        "the long line's link stays"
    );
    assert!(
        !out.contains("href=\"https://b.example/\""),
        "the short line's link is tracked"
    );
    assert!(out.split("\r\n").all(|l| l.len() <= 998));
}

/// Where the pixel's markup is in decoded HTML, and the HTML without it.
fn split_pixel(dec: &str) -> (usize, String) {
    let img = dec
        .find(&format!("<img src=\"{PIXEL}\""))
        .expect("the pixel");
    let end = img + dec[img..].find('>').expect("its end") + 1;
    (img, format!("{}{}", &dec[..img], &dec[end..]))
}

/// `html` as the one part of a message, in 7bit, quoted-printable (only its `=` escaped, its
/// lines kept) and base64: (encoding, message).
fn in_every_encoding(html: &str) -> Vec<(&'static str, String)> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(html)
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned() + "\r\n")
        .collect::<String>();
    [
        ("7bit", html.to_string()),
        ("quoted-printable", html.replace('=', "=3D")),
        ("base64", b64),
    ]
    .into_iter()
    .map(|(cte, body)| {
        (cte, format!("From: news@example.com\r\nTo: bob@example.net\r\nSubject: links\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body}"))
    })
    .collect()
}

/// `html` rewritten with every link tracked (link `i` becoming `https://t.example/c/{i}`), in
/// each transfer encoding: the URLs offered for tracking and the HTML part as delivered,
/// decoded.
fn tracked_in_every_encoding(html: &str) -> Vec<(&'static str, Vec<String>, String)> {
    let rcpts = vec!["bob@example.net".to_string()];
    let env = Envelope {
        sender: "news@example.com",
        recipients: &rcpts,
    };
    in_every_encoding(html)
        .into_iter()
        .map(|(cte, input)| {
            let seen = RefCell::new(Vec::new());
            let url = |i: u16, u: &str| {
                seen.borrow_mut().push(u.to_string());
                Some(format!("https://t.example/c/{i}"))
            };
            let links = Links {
                exclude: &[],
                own_prefix: "https://t.example/c/",
                url: &url,
            };
            let r = rewrite_with_links(&env, input.as_bytes(), PIXEL, Some(&links), &policy());
            assert_eq!(r.decision, Decision::Tracked, "{cte}");
            let out = r.message.expect("rewritten");
            let dec = pixelrelay::rewrite::html_part_decoded(&out).expect("decodes");
            (cte, seen.take(), String::from_utf8(dec).expect("utf-8"))
        })
        .collect()
}

/// A quote left open swallows the markup after it into the attribute's value, as a browser
/// reads it: an `<a href>` inside that value is text, not a second link. It is neither
/// offered for tracking nor edited inside the first link's new value (which would glue two
/// tracked URLs into one broken link), in every transfer encoding; nor is one inside another
/// tag's attribute value (an `alt` text stays as written).
#[test]
fn a_link_inside_another_links_attribute_value_is_text() {
    let html = "<html><body>\r\n<p><a href='http://a.example/x <a href=http://b.example/y>u</a> '>t</a></p>\r\n<p><a title=\"<a href=http://c.example/z>\" href=\"http://d.example/\">d</a></p>\r\n<p><img alt='<a href=\"http://e.example/\">' src=\"cid:e\"></p>\r\n</body></html>\r\n";
    for (cte, seen, dec) in tracked_in_every_encoding(html) {
        assert_eq!(
            seen,
            vec![
                "http://a.example/x <a href=http://b.example/y>u</a>".to_string(),
                "http://d.example/".to_string()
            ],
            "{cte}: the links a browser sees"
        );
        let want = html
            .replace(
                "'http://a.example/x <a href=http://b.example/y>u</a> '",
                "'https://t.example/c/0'",
            )
            .replace("\"http://d.example/\"", "\"https://t.example/c/1\"");
        let (img, without_pixel) = split_pixel(&dec);
        assert!(
            without_pixel[img..].starts_with("</body>"),
            "{cte}: pixel before </body>"
        );
        assert_eq!(without_pixel, want, "{cte}: decoded part");
    }
}

/// A `</body>` inside a link's quoted value, even after a `>`, is part of the URL as a browser
/// reads it: not the pixel's place (which is then the real `</html>`), and the link is tracked
/// like any other, in every transfer encoding. (Read by looking back from the closer, it once
/// was the pixel's place, and the pixel went inside the tracked URL or after it.)
#[test]
fn a_closer_inside_a_links_value_is_part_of_its_url() {
    let html = "<html><body>\r\n<p><a href=\"http://a.example/x\">a</a></p>\r\n<p><a href=\"http://b.example/>x</body>\">b</a></html>\r\n";
    for (cte, seen, dec) in tracked_in_every_encoding(html) {
        assert_eq!(seen.len(), 2, "{cte}: both links offered");
        let (img, without_pixel) = split_pixel(&dec);
        let want = html
            .replace("\"http://a.example/x\"", "\"https://t.example/c/0\"")
            .replace(
                "\"http://b.example/>x</body>\"",
                "\"https://t.example/c/1\"",
            );
        assert_eq!(without_pixel, want, "{cte}: both links tracked");
        assert_eq!(img, want.find("</html>").expect("</html>"), "{cte}: pixel");
    }
}
