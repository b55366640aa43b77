//! MIME structure, read with mail-parser 0.11: which part gets the pixel, and whether any part
//! forbids touching the message.
//!
//! Owns: the signed/encrypted check over the whole tree (attached messages included), the choice
//! of the first `text/html` part in MIME order that is not an attachment, and that part's body
//! range (mail-parser's `offset_body..offset_end`, still encoded), transfer encoding and
//! charset. Parts inside a `message/rfc822` are never chosen: they belong to another message,
//! and their offsets may point into a decoded copy rather than the bytes we forward.
//! The fast path is `scan.rs`, which answers from header fields and boundary lines; what it
//! cannot be sure of comes here (`super::find_html` chooses).
//! Does not own decoding or placement. The parsed tree is dropped before the caller allocates
//! its output, so the parser's copies and ours are never alive together.

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};

use super::SkipReason;
use super::part::{Cte, HtmlPart, ascii_compatible};

/// [`find_html`] by mail-parser's full parse alone: the slow path, and the oracle the scan is
/// tested against.
pub fn find_html_parsed(msg: &[u8]) -> Result<HtmlPart, SkipReason> {
    let parsed = parse(msg).ok_or(SkipReason::Unparseable)?;
    if let Some(reason) = protected(&parsed) {
        return Err(reason);
    }
    let part = first_html(&parsed).ok_or(SkipReason::NoHtml)?;
    let body = part.offset_body as usize..part.offset_end as usize;
    if body.start > body.end || body.end > msg.len() {
        return Err(SkipReason::Unparseable);
    }
    // The body must follow the empty line that ends the part's header. When stray bytes make
    // mail-parser read the body as header, it reports an empty body at the end of the part;
    // inserting there would put the pixel after the real content, and again on every pass.
    let head = &msg[..body.start];
    if !(head.ends_with(b"\n\r\n") || head.ends_with(b"\n\n")) {
        return Err(SkipReason::Unparseable);
    }
    let cte = match part
        .content_transfer_encoding()
        .map(|s| s.trim().to_ascii_lowercase())
    {
        None => Cte::Raw,
        Some(s) if s.is_empty() || s == "7bit" || s == "8bit" || s == "binary" => Cte::Raw,
        Some(s) if s == "quoted-printable" => Cte::QuotedPrintable,
        Some(s) if s == "base64" => Cte::Base64,
        Some(_) => return Err(SkipReason::Unparseable),
    };
    let charset = part.content_type().and_then(|ct| ct.attribute("charset"));
    if !charset.is_none_or(ascii_compatible) {
        return Err(SkipReason::Charset);
    }
    Ok(HtmlPart { body, cte })
}

/// mail-parser's full parse, with a panic inside it treated as "cannot make sense of it".
///
/// mail-parser 0.11 promises not to panic, yet a `debug_assert!` in its multipart parser
/// ("Invalid part ID, could not find multipart.") fires on some malformed nesting (found by
/// fuzzing; see `tests/rewrite_regressions.rs`). Release builds skip it, debug builds and any
/// future slip would take the relay's task down with a message that must still be delivered.
pub fn parse(msg: &[u8]) -> Option<Message<'_>> {
    std::panic::catch_unwind(|| MessageParser::new().parse(msg))
        .ok()
        .flatten()
}

/// `multipart/signed`, `multipart/encrypted` or S/MIME `application/pkcs7-mime` anywhere in the
/// tree, attached messages included.
fn protected(msg: &Message<'_>) -> Option<SkipReason> {
    let mut stack = vec![msg];
    while let Some(m) = stack.pop() {
        for part in &m.parts {
            if let Some(r) = protection(part) {
                return Some(r);
            }
            if let PartType::Message(inner) = &part.body {
                stack.push(inner);
            }
        }
    }
    None
}

fn protection(part: &MessagePart<'_>) -> Option<SkipReason> {
    let ct = part.content_type()?;
    let sub = ct.subtype().unwrap_or("");
    let is = |t: &str, s: &str| ct.ctype().eq_ignore_ascii_case(t) && sub.eq_ignore_ascii_case(s);
    if is("multipart", "signed") {
        Some(SkipReason::Signed)
    } else if is("multipart", "encrypted") || is("application", "pgp-encrypted") {
        Some(SkipReason::Encrypted)
    } else if is("application", "pkcs7-mime") || is("application", "x-pkcs7-mime") {
        let signed = ct
            .attribute("smime-type")
            .is_some_and(|t| t.eq_ignore_ascii_case("signed-data"));
        Some(if signed {
            SkipReason::Signed
        } else {
            SkipReason::Encrypted
        })
    } else {
        None
    }
}

/// The first `text/html` part in MIME order that is not an attachment and not inside an
/// attached message. A multipart marked as an attachment hides its whole subtree.
fn first_html<'m>(msg: &'m Message<'m>) -> Option<&'m MessagePart<'m>> {
    let mut stack = vec![0u32];
    // Each part is visited at most once in a tree; the budget guards against a malformed one.
    let mut budget = msg.parts.len();
    while let Some(id) = stack.pop() {
        budget = budget.checked_sub(1)?;
        let part = msg.parts.get(id as usize)?;
        if part
            .content_disposition()
            .is_some_and(|cd| cd.is_attachment())
        {
            continue;
        }
        match &part.body {
            PartType::Multipart(children) => stack.extend(children.iter().rev()),
            PartType::Message(_) => {}
            _ if part.is_content_type("text", "html") => return Some(part),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets() {
        for ok in [
            "utf-8",
            "UTF-8",
            "iso-8859-1",
            "Shift_JIS",
            "windows-1252",
            "us-ascii",
            "\"koi8-r\"",
        ] {
            assert!(ascii_compatible(ok), "{ok}");
        }
        for bad in [
            "UTF-16",
            "utf-16le",
            "UTF-32BE",
            "ucs-2",
            "UTF-7",
            "\"utf-16\"",
            "IBM037",
            "ebcdic-cp-us",
        ] {
            assert!(!ascii_compatible(bad), "{bad}");
        }
    }

    #[test]
    fn offsets_point_at_the_encoded_body() {
        let m = b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>a=3Db</p>\r\n--b--\r\n";
        let part = find_html_parsed(m);
        let Ok(part) = part else { panic!("{part:?}") };
        assert_eq!(&m[part.body.clone()], b"<p>a=3Db</p>");
        assert_eq!(part.cte, Cte::QuotedPrintable);
        let single = b"Content-Type: text/html\r\n\r\n<p>x</p>\r\n";
        let Ok(part) = find_html_parsed(single) else {
            panic!()
        };
        assert_eq!(&single[part.body], b"<p>x</p>\r\n");
    }
}
