//! Structure-only MIME scan: the hot path of [`super::find_html`].
//!
//! Owns reading the MIME tree from header fields and boundary lines alone (no body is decoded,
//! nothing is allocated per body byte: one `memmem` pass per multipart level), and the answer to
//! the same question `mime::find_html_parsed` answers with mail-parser: which part gets the
//! pixel, or why none does.
//!
//! The scan is strict where mail-parser is lenient. Whenever the two readings could differ it
//! does not guess: it returns `None` and the caller asks mail-parser. It gives up on
//! - a header block it cannot read plainly: a line without a colon, a name with spaces or
//!   control bytes, a bare CR, a whitespace-only line, no empty line before the end; or one
//!   that mail-parser's own header parser reads as other fields (its value parsers can run
//!   past a line end on malformed input; header blocks are small, so this check is cheap);
//! - a repeated `Content-Type`, `Content-Transfer-Encoding` or `Content-Disposition`;
//! - a `Content-Type` or `Content-Disposition` whose type is not a plain token, and parameters
//!   it must read (boundary, charset, smime-type) written with comments, RFC 2231 sections,
//!   escapes or encoded words;
//! - a boundary string found anywhere but at the start of a line, a delimiter line followed by
//!   anything but spaces, a multipart without its close delimiter, or a boundary string after
//!   it; `multipart/digest`; an encoded `message/rfc822`, or one whose content is itself
//!   only a `message/rfc822`;
//! - an HTML part with an empty body or a transfer encoding other than 7bit, 8bit, binary,
//!   quoted-printable or base64; nesting deeper than `MAX_DEPTH`.
//!
//! Where it answers, it answers exactly as the mail-parser path does: `tests/rewrite_scan.rs`
//! and the `scan` fuzz target hold the two to that over generated trees, the golden fixtures,
//! the corpus and mutated inputs.

use std::ops::Range;

use mail_parser::MessageParser;
use memchr::memmem;

use super::SkipReason;
use super::part::{Cte, HtmlPart, ascii_compatible};

/// Deeper trees go to mail-parser.
const MAX_DEPTH: usize = 24;

/// The part that gets the pixel (`Ok`), the reason there is none (`Err`), or `None` when the
/// message needs mail-parser's reading.
pub fn find_html(msg: &[u8]) -> Option<Result<HtmlPart, SkipReason>> {
    let mut top = Walk::default();
    let head = header(msg, 0, msg.len())?;
    if head.fields.is_empty() || wraps_message(msg, &head)? {
        return None;
    }
    entity(msg, head, msg.len(), 0, false, &mut top)?;
    // mail-parser's order: the top-level message's parts first, then attached messages, last
    // found first.
    let mut protection = top.protection;
    let mut stack = std::mem::take(&mut top.nested);
    while let Some((region, depth)) = stack.pop() {
        let mut inner = Walk::default();
        let head = header(msg, region.start, region.end)?;
        if wraps_message(msg, &head)? {
            return None;
        }
        entity(msg, head, region.end, depth, false, &mut inner)?;
        if protection.is_none() {
            protection = inner.protection;
        }
        stack.extend(inner.nested);
    }
    if let Some(reason) = protection {
        return Some(Err(reason));
    }
    let Some(html) = top.html else {
        return Some(Err(SkipReason::NoHtml));
    };
    if !html.charset_ok {
        return Some(Err(SkipReason::Charset));
    }
    Some(Ok(HtmlPart {
        body: html.body,
        cte: html.cte,
    }))
}

/// A message that is itself only a `message/rfc822` wrapper: mail-parser's reading of those
/// (a message directly inside a message) loses track of where the outer parts resume, so they
/// are left to it rather than read differently here.
fn wraps_message(msg: &[u8], head: &Head) -> Option<bool> {
    match &head.content_type {
        Some(v) => Some(ContentType::parse(msg, v.clone())?.kind(msg) == Kind::Message),
        None => Some(false),
    }
}

/// What one message's walk found.
#[derive(Default)]
struct Walk {
    /// First signed/encrypted part in MIME order.
    protection: Option<SkipReason>,
    /// First visible `text/html` leaf.
    html: Option<Html>,
    /// Bodies of attached messages, in MIME order, with their depth.
    nested: Vec<(Range<usize>, usize)>,
}

struct Html {
    body: Range<usize>,
    cte: Cte,
    charset_ok: bool,
}

/// One entity (message or part) whose header `head` has been read and whose body ends at
/// `end`. `hidden`: inside an attachment.
fn entity(
    msg: &[u8],
    head: Head,
    end: usize,
    depth: usize,
    hidden: bool,
    walk: &mut Walk,
) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let ctype = match head.content_type {
        Some(v) => Some(ContentType::parse(msg, v)?),
        None => None,
    };
    let hidden = hidden
        || match head.disposition {
            Some(v) => disposition_is_attachment(&msg[v])?,
            None => false,
        };
    let body = head.body_start..end;
    let Some(ct) = ctype else {
        // No Content-Type: text/plain, a leaf.
        return Some(());
    };
    if walk.protection.is_none() {
        walk.protection = ct.protection(msg)?;
    }
    match ct.kind(msg) {
        Kind::Multipart => {
            if ct.is(msg, "multipart", "digest") {
                return None;
            }
            let boundary = ct.param(msg, b"boundary")??;
            if boundary.is_empty() {
                return None;
            }
            children(msg, body, boundary, depth, hidden, walk)
        }
        Kind::Message => {
            if head.cte.is_some_and(|v| cte(&msg[v]) != Some(Cte::Raw)) {
                return None;
            }
            walk.nested.push((body, depth + 1));
            Some(())
        }
        Kind::Leaf => {
            if hidden || walk.html.is_some() || !ct.is(msg, "text", "html") {
                return Some(());
            }
            if body.is_empty() {
                return None;
            }
            let cte = match head.cte {
                Some(v) => cte(&msg[v])?,
                None => Cte::Raw,
            };
            let charset_ok = match ct.param(msg, b"charset")? {
                Some(c) => ascii_compatible(std::str::from_utf8(c).ok()?),
                None => true,
            };
            walk.html = Some(Html {
                body,
                cte,
                charset_ok,
            });
            Some(())
        }
    }
}

/// The parts of a multipart whose body is `body`, each walked in order.
fn children(
    msg: &[u8],
    body: Range<usize>,
    boundary: &[u8],
    depth: usize,
    hidden: bool,
    walk: &mut Walk,
) -> Option<()> {
    let mut delim = Vec::with_capacity(boundary.len() + 2);
    delim.extend_from_slice(b"--");
    delim.extend_from_slice(boundary);
    let finder = memmem::Finder::new(&delim);
    let region = &msg[body.clone()];
    let mut hits = finder.find_iter(region).map(|p| p + body.start);
    // The first delimiter opens the first part; the preamble before it is ignored.
    let first = hits.next()?;
    let mut part_start = delimiter(msg, body.start, first, delim.len(), body.end)?.open()?;
    loop {
        let at = hits.next()?;
        let line = delimiter(msg, body.start, at, delim.len(), body.end)?;
        let head = header(msg, part_start, at)?;
        let end = leaf_end(msg, head.body_start, at);
        entity(msg, head, end, depth + 1, hidden, walk)?;
        match line {
            Delimiter::Open(next) => part_start = next,
            Delimiter::Close => {
                // Whatever follows the close delimiter is epilogue, but not another delimiter.
                return hits.next().is_none().then_some(());
            }
        }
    }
}

enum Delimiter {
    /// A part starts at this offset.
    Open(usize),
    /// `--boundary--`.
    Close,
}

impl Delimiter {
    fn open(self) -> Option<usize> {
        match self {
            Delimiter::Open(at) => Some(at),
            Delimiter::Close => None,
        }
    }
}

/// Reads the delimiter line found at `at`: it must start a line, and be followed by `--` or by
/// optional spaces and the line end.
fn delimiter(msg: &[u8], start: usize, at: usize, len: usize, end: usize) -> Option<Delimiter> {
    if at != start && msg.get(at.checked_sub(1)?) != Some(&b'\n') {
        return None;
    }
    let mut i = at + len;
    if msg.get(i..i + 2) == Some(b"--") && i + 2 <= end {
        return Some(Delimiter::Close);
    }
    while i < end && matches!(msg[i], b' ' | b'\t') {
        i += 1;
    }
    if i < end && msg[i] == b'\r' {
        i += 1;
    }
    (i < end && msg[i] == b'\n').then_some(Delimiter::Open(i + 1))
}

/// Where a part's body ends when the next delimiter starts at `at`: before the line break that
/// belongs to the delimiter (mail-parser's `offset_end`).
fn leaf_end(msg: &[u8], body_start: usize, at: usize) -> usize {
    if at <= body_start {
        return body_start;
    }
    // `msg[at - 1]` is the '\n' that starts the delimiter's line.
    if at >= body_start + 2 && msg[at - 2] == b'\r' {
        at - 2
    } else {
        at - 1
    }
}

/// A part's header block: the three fields the scan reads (as value ranges) and where the body
/// starts.
#[derive(Debug)]
struct Head {
    /// Where each field starts.
    fields: Vec<usize>,
    content_type: Option<Range<usize>>,
    cte: Option<Range<usize>>,
    disposition: Option<Range<usize>>,
    /// The empty line that ends the block.
    blank_line: usize,
    body_start: usize,
}

/// Reads the header block starting at `start`, which must end with an empty line before `end`.
fn header(msg: &[u8], start: usize, end: usize) -> Option<Head> {
    let mut head = Head {
        fields: Vec::new(),
        content_type: None,
        cte: None,
        disposition: None,
        blank_line: 0,
        body_start: 0,
    };
    let mut i = start;
    loop {
        let rest = msg.get(i..end)?;
        match rest {
            [b'\n', ..] => {
                head.blank_line = i;
                head.body_start = i + 1;
                return confirmed(msg, start, end, head);
            }
            [b'\r', b'\n', ..] => {
                head.blank_line = i;
                head.body_start = i + 2;
                return confirmed(msg, start, end, head);
            }
            [] | [b' ' | b'\t', ..] => return None,
            _ => {}
        }
        // Field name: printable ASCII up to the colon.
        let colon = memchr::memchr2(b':', b'\n', rest)?;
        if rest[colon] != b':' || colon == 0 || !rest[..colon].iter().all(|&b| b > 32 && b < 127) {
            return None;
        }
        let name = &rest[..colon];
        let value_start = i + colon + 1;
        // Value: to the end of the line, plus continuation lines.
        let mut j = value_start;
        let value_end = loop {
            let nl = j + memchr::memchr(b'\n', msg.get(j..end)?)?;
            let line = &msg[j..nl];
            let text = line.strip_suffix(b"\r").unwrap_or(line);
            if memchr::memchr(b'\r', text).is_some() {
                return None;
            }
            if j != value_start && text.iter().all(|b| matches!(b, b' ' | b'\t')) {
                return None;
            }
            j = nl + 1;
            if !matches!(msg.get(j), Some(b' ' | b'\t')) || j >= end {
                break j - (line.len() - text.len()) - 1;
            }
        };
        let slot = if name.eq_ignore_ascii_case(b"Content-Type") {
            Some(&mut head.content_type)
        } else if name.eq_ignore_ascii_case(b"Content-Transfer-Encoding") {
            Some(&mut head.cte)
        } else if name.eq_ignore_ascii_case(b"Content-Disposition") {
            Some(&mut head.disposition)
        } else {
            None
        };
        if let Some(slot) = slot {
            if slot.is_some() {
                return None;
            }
            *slot = Some(value_start..value_end);
        }
        head.fields.push(i);
        i = j;
    }
}

/// `head` as read here, if mail-parser's header parser reads the same fields from `start`.
///
/// Its value parsers (dates, addresses, ids) can run past a line end on malformed input and
/// then read body lines as header fields; the header block is small, so asking it costs little
/// next to the body it would otherwise decode.
fn confirmed(msg: &[u8], start: usize, end: usize, head: Head) -> Option<Head> {
    let block = &msg[start..end];
    let parsed = std::panic::catch_unwind(|| MessageParser::new().parse_headers(block))
        .ok()
        .flatten();
    let theirs = match &parsed {
        Some(m) => m.parts.first().map_or(&[][..], |p| &p.headers[..]),
        None => &[][..],
    };
    let same = theirs.len() == head.fields.len()
        && theirs.iter().zip(&head.fields).all(|(h, &at)| {
            h.offset_field as usize + start == at
                && h.offset_end as usize + start <= head.blank_line
        });
    same.then_some(head)
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Multipart,
    Message,
    Leaf,
}

/// `type/subtype` and the parameter list of a `Content-Type` value, as offsets into the
/// message.
struct ContentType {
    ty: Range<usize>,
    sub: Range<usize>,
    params: Range<usize>,
}

impl ContentType {
    fn parse(msg: &[u8], value: Range<usize>) -> Option<ContentType> {
        let v = &msg[..value.end];
        let mut i = skip_ws(v, value.start);
        let ty = token(v, i);
        i = ty.end;
        if ty.is_empty() || v.get(i) != Some(&b'/') {
            return None;
        }
        let sub = token(v, i + 1);
        if sub.is_empty() {
            return None;
        }
        i = skip_ws(v, sub.end);
        if i < v.len() && v[i] != b';' {
            return None;
        }
        Some(ContentType {
            ty,
            sub,
            params: i..value.end,
        })
    }

    fn is(&self, msg: &[u8], ty: &str, sub: &str) -> bool {
        msg[self.ty.clone()].eq_ignore_ascii_case(ty.as_bytes())
            && msg[self.sub.clone()].eq_ignore_ascii_case(sub.as_bytes())
    }

    fn kind(&self, msg: &[u8]) -> Kind {
        if msg[self.ty.clone()].eq_ignore_ascii_case(b"multipart") {
            Kind::Multipart
        } else if self.is(msg, "message", "rfc822") || self.is(msg, "message", "global") {
            Kind::Message
        } else {
            Kind::Leaf
        }
    }

    /// The value of parameter `name`: `Some(None)` when absent, `None` when the parameter list
    /// is not plain enough to be sure (comments, RFC 2231 sections, escapes, encoded words, a
    /// repeated name).
    fn param<'m>(&self, msg: &'m [u8], name: &[u8]) -> Option<Option<&'m [u8]>> {
        let v = &msg[self.params.clone()];
        let mut found = None;
        let mut i = 0;
        loop {
            i = skip_ws(v, i);
            if i == v.len() {
                return Some(found);
            }
            if v[i] != b';' {
                return None;
            }
            i = skip_ws(v, i + 1);
            if i == v.len() {
                return Some(found);
            }
            let n = token(v, i);
            if n.is_empty() {
                return None;
            }
            i = skip_ws(v, n.end);
            if v.get(i) != Some(&b'=') {
                return None;
            }
            i = skip_ws(v, i + 1);
            let value = if v.get(i) == Some(&b'"') {
                let close = i + 1 + memchr::memchr(b'"', &v[i + 1..])?;
                let inner = &v[i + 1..close];
                if inner.iter().any(|&b| b == b'\\' || !(32..127).contains(&b)) {
                    return None;
                }
                i = close + 1;
                inner
            } else {
                let t = token(v, i);
                if t.is_empty() {
                    return None;
                }
                i = t.end;
                &v[t]
            };
            if value.windows(2).any(|w| w == b"=?") {
                return None;
            }
            if v[n].eq_ignore_ascii_case(name) {
                if found.is_some() {
                    return None;
                }
                found = Some(value);
            }
        }
    }

    /// Signed or encrypted, as `mime::protection` reads it.
    fn protection(&self, msg: &[u8]) -> Option<Option<SkipReason>> {
        let is = |t, s| self.is(msg, t, s);
        Some(if is("multipart", "signed") {
            Some(SkipReason::Signed)
        } else if is("multipart", "encrypted") || is("application", "pgp-encrypted") {
            Some(SkipReason::Encrypted)
        } else if is("application", "pkcs7-mime") || is("application", "x-pkcs7-mime") {
            let signed = self
                .param(msg, b"smime-type")?
                .is_some_and(|t| t.eq_ignore_ascii_case(b"signed-data"));
            Some(if signed {
                SkipReason::Signed
            } else {
                SkipReason::Encrypted
            })
        } else {
            None
        })
    }
}

/// `attachment` or not, from a `Content-Disposition` value; `None` when its type is not a plain
/// token. Parameters (filenames in every encoding) do not matter and are not read.
fn disposition_is_attachment(v: &[u8]) -> Option<bool> {
    let i = skip_ws(v, 0);
    let t = token(v, i);
    if t.is_empty() {
        return None;
    }
    let j = skip_ws(v, t.end);
    if j < v.len() && v[j] != b';' {
        return None;
    }
    Some(v[t].eq_ignore_ascii_case(b"attachment"))
}

/// The transfer encodings the rewrite handles; `None` for anything else (even with a comment).
fn cte(v: &[u8]) -> Option<Cte> {
    let v = v.trim_ascii();
    if v.eq_ignore_ascii_case(b"7bit")
        || v.eq_ignore_ascii_case(b"8bit")
        || v.eq_ignore_ascii_case(b"binary")
    {
        Some(Cte::Raw)
    } else if v.eq_ignore_ascii_case(b"quoted-printable") {
        Some(Cte::QuotedPrintable)
    } else if v.eq_ignore_ascii_case(b"base64") {
        Some(Cte::Base64)
    } else {
        None
    }
}

/// Skips spaces, tabs and the line breaks of folded lines.
fn skip_ws(v: &[u8], mut i: usize) -> usize {
    while i < v.len() && matches!(v[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// An RFC 2045 token starting at `i` (possibly empty).
fn token(v: &[u8], i: usize) -> Range<usize> {
    let mut j = i;
    while j < v.len() && is_token(v[j]) {
        j += 1;
    }
    i..j
}

fn is_token(b: u8) -> bool {
    b > 32 && b < 127 && !b"()<>@,;:\\\"/[]?=".contains(&b)
}
