//! The rewrite core: decides whether a message gets a tracking pixel and, if so, splices
//! `<img>` markup into its first HTML part. Pure: no IO, no SMTP, no clock, so the SMTP relay,
//! the capture mode and a future milter front end all call the same function.
//!
//! Owns the decision rules (below, in the order they are checked; the first that applies is
//! the reason recorded) and the splice of the rewritten part back into the original bytes.
//!
//! | # | rule | decision |
//! |---|------|----------|
//! | 1 | the header block cannot be read | `Skipped(Unparseable)` |
//! | 2 | not exactly one accepted recipient | `Skipped(Recipients)` |
//! | 3 | the opt-out header says `no`, `false`, `0` or `off` | `Skipped(OptOut)` |
//! | 4 | `sender_domains` is non-empty and the MAIL FROM domain is not in it | `Skipped(SenderDomain)` |
//! | 5 | the recipient's domain is in `exclude_recipient_domains` | `Skipped(RecipientDomain)` |
//! | 6 | larger than `max_rewrite_size` | `Skipped(TooLarge)` |
//! | 7 | a top-level `DKIM-Signature` and `on_dkim_signed = "skip"` | `Skipped(DkimSigned)` |
//! | 8 | neither the scan nor mail-parser finds a message (or mail-parser panics: see `mime::parse`) | `Skipped(Unparseable)` |
//! | 9 | `multipart/signed` or S/MIME signed-data anywhere | `Skipped(Signed)` |
//! | 10 | `multipart/encrypted`, PGP or S/MIME enveloped data anywhere | `Skipped(Encrypted)` |
//! | 11 | no `text/html` part outside attachments and attached messages | `Skipped(NoHtml)` |
//! | 12 | the part's body does not follow an empty line, its transfer encoding is unknown, or its base64 is not clean | `Skipped(Unparseable)` |
//! | 13 | a charset that is not ASCII-compatible (UTF-16/32, UCS-2/4, UTF-7, EBCDIC), or a body with NUL bytes or a UTF-16 byte-order mark | `Skipped(Charset)` |
//! | 14 | the part already holds a URL starting with `pixel_prefix` | `Skipped(AlreadyTracked)` |
//! | 15 | only mail-parser found the part, and with the part rewritten it reads the message differently (a malformed structure the insertion would change) | `Skipped(Unparseable)` |
//! | - | otherwise | `Tracked` |
//!
//! The opt-out header (any value, every occurrence, top-level header only) is removed from the
//! output whatever the decision: `message` is then `Some` even for a skipped message. Its value
//! is read as its first word, case-insensitively: `no`, `false`, `0`, `off` opt out; anything
//! else (`yes`, `true`, empty, unknown words) means "track as usual", since only an explicit
//! refusal is a refusal. Domains are compared exactly (lowercase, no subdomain matching); a
//! bounce (empty MAIL FROM) has no domain, so a non-empty `sender_domains` skips it.
//!
//! Bytes outside the rewritten part's body are never touched. Within it, see `raw.rs`
//! (7bit/8bit/binary), `qp.rs` and `b64.rs` for how the markup is encoded, and `html.rs` for
//! where it goes.
//!
//! Layout: `headers.rs` (top-level header fields, byte-exact), `scan.rs` (which part, from
//! header fields and boundary lines alone: the fast path), `mime.rs` (which part, via
//! mail-parser's full parse, for whatever the scan is unsure of), `html.rs` (placement,
//! markup), `raw.rs`, `qp.rs`, `b64.rs` (one per encoding).

pub mod b64;
pub mod edit;
mod headers;
mod html;
pub mod links;
mod mime;
mod part;
pub mod qp;
mod raw;
mod refs;
mod scan;
mod tags;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use mail_parser::MessageParser;

use crate::config::OnDkimSigned;

/// The envelope as the upstream accepted it.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// MAIL FROM address (may be empty for bounces).
    pub sender: &'a str,
    /// RCPT TO addresses the upstream accepted.
    pub recipients: &'a [String],
}

/// What the tracking policy allows; built once from `[tracking]`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Prefix every pixel URL of this instance starts with (`{base_url}/o/`): used to spot a
    /// message that already carries one of our pixels.
    pub pixel_prefix: String,
    /// DKIM-signed mail policy.
    pub on_dkim_signed: OnDkimSigned,
    /// Opt-out header name (case-insensitive); always removed before forwarding.
    pub opt_out_header: String,
    /// When non-empty, only these sender domains are tracked (lowercase).
    pub sender_domains: Vec<String>,
    /// Recipient domains never tracked (lowercase).
    pub exclude_recipient_domains: Vec<String>,
    /// Larger messages are not rewritten.
    pub max_rewrite_size: u64,
}

/// Why a message was forwarded without a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Tracking is switched off.
    Disabled,
    /// Not exactly one accepted recipient.
    Recipients,
    /// No HTML part that is not an attachment.
    NoHtml,
    /// `multipart/signed` somewhere in the tree.
    Signed,
    /// `multipart/encrypted` somewhere in the tree.
    Encrypted,
    /// Carries a `DKIM-Signature` and the policy says skip.
    DkimSigned,
    /// Carries the opt-out header.
    OptOut,
    /// Sender domain not in `tracking.sender_domains`.
    SenderDomain,
    /// Recipient domain in `tracking.exclude_recipient_domains`.
    RecipientDomain,
    /// Larger than `tracking.max_rewrite_size`.
    TooLarge,
    /// The HTML part already holds one of our pixels.
    AlreadyTracked,
    /// The HTML part's charset is not ASCII-compatible (UTF-16/32).
    Charset,
    /// The parser could not make sense of the message.
    Unparseable,
    /// The store could not record the message, so it went out without a pixel.
    Store,
    /// The memory budget for messages in flight had no room for the rewritten copy.
    Memory,
}

impl SkipReason {
    /// Stable name for logs, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Disabled => "disabled",
            SkipReason::Recipients => "recipients",
            SkipReason::NoHtml => "no_html",
            SkipReason::Signed => "signed",
            SkipReason::Encrypted => "encrypted",
            SkipReason::DkimSigned => "dkim_signed",
            SkipReason::OptOut => "opt_out",
            SkipReason::SenderDomain => "sender_domain",
            SkipReason::RecipientDomain => "recipient_domain",
            SkipReason::TooLarge => "too_large",
            SkipReason::AlreadyTracked => "already_tracked",
            SkipReason::Charset => "charset",
            SkipReason::Unparseable => "unparseable",
            SkipReason::Store => "store_error",
            SkipReason::Memory => "memory",
        }
    }
}

/// The tracking decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The pixel was inserted.
    Tracked,
    /// Forwarded without a pixel, for this reason.
    Skipped(SkipReason),
}

/// Header facts the store keeps about every relayed message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageInfo {
    /// `Message-ID:` as written, with angle brackets.
    pub message_id: Option<String>,
    /// Decoded `Subject:`.
    pub subject: Option<String>,
}

/// What `rewrite` produced.
#[derive(Debug, Clone)]
pub struct Rewritten {
    /// The bytes to forward, or `None` to forward the input unchanged (no copy).
    pub message: Option<Vec<u8>>,
    /// Tracked or skipped, and why.
    pub decision: Decision,
    /// Header facts, when the headers could be parsed.
    pub info: MessageInfo,
}

/// Click tracking for one message: which links stay, and the tracked URL of each other one.
pub struct Links<'a> {
    /// URL patterns left alone (`tracking.click_exclude`, see [`links::trackable`]).
    pub exclude: &'a [String],
    /// Links already pointing here (`{base_url}/c/`) are left as they are.
    pub own_prefix: &'a str,
    /// The tracked URL for the link at a position (from 0, among the tracked links) going to
    /// a URL; `None` leaves that link as it is.
    pub url: &'a dyn Fn(u16, &str) -> Option<String>,
}

/// Decides and, when eligible, inserts the pixel pointing at `pixel_url`.
///
/// `message` is the unstuffed DATA content; CRLF or LF line ends both work, and any line break
/// the rewrite adds uses the ending the message already uses. Never panics, whatever the
/// input; allocates at most a few times the message size.
pub fn rewrite(env: &Envelope<'_>, message: &[u8], pixel_url: &str, policy: &Policy) -> Rewritten {
    rewrite_with_links(env, message, pixel_url, None, policy)
}

/// [`rewrite`], and with `links` the trackable links of the part that gets the pixel replaced
/// by their tracked URLs (only the `href` values change; see [`links`]).
pub fn rewrite_with_links(
    env: &Envelope<'_>,
    message: &[u8],
    pixel_url: &str,
    links: Option<&Links<'_>>,
    policy: &Policy,
) -> Rewritten {
    let fields = headers::fields(message);
    let info = message_info(message, &fields);
    let opt_out = fields
        .iter()
        .filter(|f| {
            f.name
                .eq_ignore_ascii_case(policy.opt_out_header.as_bytes())
        })
        .any(|f| refuses(&f.unfolded()));
    // Removed from the output whatever the decision; the ranges lie in the top-level header,
    // before every part body, so the copy that drops them never meets the spliced part.
    let doomed = headers::ranges(&fields, &policy.opt_out_header);
    let checks = Checks {
        env,
        original: message,
        fields: &fields,
        headers_ok: info.is_some(),
        opt_out,
        policy,
    };
    let info = info.unwrap_or_default();
    match checks
        .run()
        .and_then(|()| insert(message, &doomed, pixel_url, links, &policy.pixel_prefix))
    {
        Ok(out) => Rewritten {
            message: Some(out),
            decision: Decision::Tracked,
            info,
        },
        Err(reason) => {
            let message = (!doomed.is_empty()).then(|| {
                let mut out = Vec::with_capacity(message.len());
                headers::copy_without(message, &doomed, &mut out);
                out
            });
            Rewritten {
                message,
                decision: Decision::Skipped(reason),
                info,
            }
        }
    }
}

/// How the fast MIME scan and mail-parser's full parse read `message`, for the differential
/// tests and the `scan` fuzz target: `Ok(true)` when the scan answered and agreed, `Ok(false)`
/// when it left the message to mail-parser, `Err` with both answers when they differ.
#[doc(hidden)]
pub fn scan_agrees(message: &[u8]) -> Result<bool, String> {
    let Some(fast) = scan::find_html(message) else {
        return Ok(false);
    };
    let slow = mime::find_html_parsed(message);
    if fast == slow {
        Ok(true)
    } else {
        Err(format!("scan: {fast:?}, mail-parser: {slow:?}"))
    }
}

/// The decoded body of the part [`rewrite`] would give the pixel (transfer encoding undone as
/// the rewrite undoes it), for the click-tracking fuzz target's oracle; `None` when there is
/// no such part or it does not decode.
#[doc(hidden)]
pub fn html_part_decoded(message: &[u8]) -> Option<Vec<u8>> {
    let part = find_html(message).ok()?;
    let body = message.get(part.body)?;
    match part.cte {
        part::Cte::Raw => Some(body.to_vec()),
        part::Cte::QuotedPrintable => Some(qp::decode(body)),
        part::Cte::Base64 => b64::decode(body),
    }
}

/// Where in decoded HTML the pixel goes (before the last `</body>`, …), for the click-tracking
/// fuzz target's oracle.
#[doc(hidden)]
pub fn insertion_point(html: &[u8]) -> usize {
    html::insertion_point(html)
}

/// Whether [`rewrite`] may copy the body of `message`: false when the fast MIME scan alone
/// can tell that it has no HTML part to take a pixel (the rewrite then copies at most the
/// header block less the opt-out header); true when it has one, or only a full parse can say.
pub fn may_copy_body(message: &[u8]) -> bool {
    !matches!(scan::find_html(message), Some(Err(_)))
}

/// Whether the message's header block has a field `name` (any case).
pub fn has_header(message: &[u8], name: &str) -> bool {
    !headers::ranges(&headers::fields(message), name).is_empty()
}

/// Removes every occurrence of the opt-out header `name`, for callers that forward without
/// calling [`rewrite`] (tracking disabled). `None` when the message has no such header.
pub fn strip_opt_out(message: &[u8], name: &str) -> Option<Vec<u8>> {
    headers::remove(message, name)
}

/// True when an opt-out header value refuses tracking: its first word is `no`, `false`, `0` or
/// `off` (any case). Every other value, `yes` included, lets the message be tracked as usual.
pub fn refuses(value: &str) -> bool {
    let word = value
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .next()
        .unwrap_or("");
    ["no", "false", "0", "off"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

/// The envelope and header rules, checked before any MIME parsing.
struct Checks<'a> {
    env: &'a Envelope<'a>,
    original: &'a [u8],
    fields: &'a [headers::Field<'a>],
    headers_ok: bool,
    opt_out: bool,
    policy: &'a Policy,
}

impl Checks<'_> {
    fn run(&self) -> Result<(), SkipReason> {
        let p = self.policy;
        if !self.headers_ok {
            return Err(SkipReason::Unparseable);
        }
        let [recipient] = self.env.recipients else {
            return Err(SkipReason::Recipients);
        };
        if self.opt_out {
            return Err(SkipReason::OptOut);
        }
        if !p.sender_domains.is_empty() && !p.sender_domains.contains(&domain(self.env.sender)) {
            return Err(SkipReason::SenderDomain);
        }
        if p.exclude_recipient_domains.contains(&domain(recipient)) {
            return Err(SkipReason::RecipientDomain);
        }
        if self.original.len() as u64 > p.max_rewrite_size {
            return Err(SkipReason::TooLarge);
        }
        let signed = self
            .fields
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case(b"DKIM-Signature"));
        if signed && p.on_dkim_signed == OnDkimSigned::Skip {
            return Err(SkipReason::DkimSigned);
        }
        Ok(())
    }
}

/// Finds the part to rewrite, or the reason there is none: by the structure-only scan
/// (`scan.rs`) when it can be sure, else by mail-parser's full parse (`mime.rs`).
fn find_html(msg: &[u8]) -> Result<part::HtmlPart, SkipReason> {
    scan::find_html(msg).unwrap_or_else(|| mime::find_html_parsed(msg))
}

/// The lowercase domain of an address (`user@Example.COM.` → `example.com`); empty when none.
fn domain(addr: &str) -> String {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    a.rsplit_once('@')
        .map_or("", |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Message-ID as written (the `<…>` part when there is one) and the decoded Subject; `None`
/// when there is no header block to speak of.
fn message_info(message: &[u8], fields: &[headers::Field<'_>]) -> Option<MessageInfo> {
    if fields.is_empty() {
        return None;
    }
    // Only the Subject needs the parser (RFC 2047 words): it gets those fields alone, not
    // the whole header block with its Received chain.
    let mut head = Vec::new();
    for f in fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(b"Subject"))
    {
        head.extend_from_slice(&message[f.range.clone()]);
    }
    let subject = if head.is_empty() {
        None
    } else {
        head.extend_from_slice(b"\r\n");
        // See `mime::parse` for why the parser runs under `catch_unwind`.
        std::panic::catch_unwind(|| MessageParser::new().parse_headers(&head[..]))
            .ok()
            .flatten()
            .and_then(|parsed| parsed.subject().map(str::to_string))
    };
    let message_id = fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(b"Message-ID"))
        .and_then(|f| {
            let v = f.unfolded();
            let bracketed = v
                .find('<')
                .and_then(|s| v[s..].find('>').map(|e| v[s..=s + e].to_string()));
            bracketed.or_else(|| (!v.is_empty()).then_some(v))
        });
    Some(MessageInfo {
        message_id,
        subject,
    })
}

/// Finds the HTML part of `msg`, inserts the pixel (and replaces the tracked links) and
/// splices the part back, leaving out the header fields in `doomed`.
fn insert(
    msg: &[u8],
    doomed: &[std::ops::Range<usize>],
    pixel_url: &str,
    links: Option<&Links<'_>>,
    pixel_prefix: &str,
) -> Result<Vec<u8>, SkipReason> {
    let fast = scan::find_html(msg);
    // Found by mail-parser's full parse: the structure is irregular enough that what is
    // inserted may change how it reads (checked at the end).
    let parsed = fast.is_none();
    let part = fast.unwrap_or_else(|| mime::find_html_parsed(msg))?;
    let body = &msg[part.body.clone()];
    // With links, a QP body's line map too: its edits find their lines by it.
    let mut qp_lines = qp::LineMap::new();
    let decoded: Cow<'_, [u8]> = match part.cte {
        part::Cte::Raw => Cow::Borrowed(body),
        part::Cte::QuotedPrintable if links.is_some() => {
            let (d, map) = qp::decode_mapped(body);
            qp_lines = map;
            Cow::Owned(d)
        }
        part::Cte::QuotedPrintable => Cow::Owned(qp::decode(body)),
        part::Cte::Base64 => Cow::Owned(b64::decode(body).ok_or(SkipReason::Unparseable)?),
    };
    if decoded.starts_with(b"\xfe\xff")
        || decoded.starts_with(b"\xff\xfe")
        || memchr::memchr(0, &decoded).is_some()
    {
        return Err(SkipReason::Charset);
    }
    if html::contains_pixel(&decoded, pixel_prefix) {
        return Err(SkipReason::AlreadyTracked);
    }
    // With links, one pass over the tags finds both them and the pixel's place.
    let (p, mut link_edits) = match links {
        Some(l) => link_edits(&decoded, l, msg.len() / 2),
        None => (html::insertion_point(&decoded), Vec::new()),
    };
    // A `</body>` the placement saw inside a link's value (a quote left open swallowed it):
    // that link stays as written, so that no edit holds the pixel's place.
    link_edits.retain(|e| !(e.range.start < p && p < e.range.end));
    let total = decoded.len();
    let markup = html::markup(pixel_url);
    let nl = headers::line_ending(body, headers::line_ending(msg, b"\r\n"));
    // The base64 splice reads the decoded text again, and so do the QP and raw ones with
    // links; free a QP copy the pixel alone does not need before the output buffer is
    // allocated, so at most one message-sized buffer is added to the input. (Shadowing alone
    // would keep the old buffer alive to the end.)
    let decoded = if part.cte == part::Cte::QuotedPrintable && link_edits.is_empty() {
        drop(decoded);
        Cow::Borrowed(&[][..])
    } else {
        decoded
    };
    // The markup and the links grow by a third in base64 and a little in QP (URLs are
    // mostly ASCII letters), plus line breaks: 3/2 of what they add leaves room.
    let added: usize = link_edits
        .iter()
        .map(|e| e.with.len().saturating_sub(e.range.len()))
        .sum();
    let grow = match part.cte {
        part::Cte::Raw => added,
        _ => added + added / 2,
    };
    let mut out = Vec::with_capacity(msg.len() + 2 * markup.len() + grow + 16);
    headers::copy_without(&msg[..part.body.start], doomed, &mut out);
    let body_start = out.len();
    let pixel = edit::Edit {
        range: p..p,
        with: markup,
    };
    splice_part(
        &part, body, &decoded, &qp_lines, total, link_edits, pixel, nl, &mut out,
    )?;
    let body_end = out.len();
    out.extend_from_slice(&msg[part.body.end..]);
    // A malformed structure mail-parser reads leniently (a part running over a delimiter, a
    // boundary that what was inserted completes) can read differently once the part has
    // changed: then the message goes as it came.
    if parsed && mime::find_html_parsed(&out).map(|p| p.body) != Ok(body_start..body_end) {
        return Err(SkipReason::Unparseable);
    }
    Ok(out)
}

/// The pixel's insertion point in `decoded` (found by the same pass), and the edits that
/// replace the tracked links' `href` values, adding `room` bytes at most in all: the links
/// after that stay as written, so that a link-dense message's rewrite stays within what the
/// relay reserves for it whatever its transfer encoding.
fn link_edits(decoded: &[u8], l: &Links<'_>, mut room: usize) -> (usize, Vec<edit::Edit>) {
    let mut out = Vec::new();
    let mut i = 0u16;
    let p = links::scan(decoded, l.exclude, |value, url| {
        if !l.own_prefix.is_empty() && url.starts_with(l.own_prefix) {
            return true;
        }
        if let Some(url) = (l.url)(i, url) {
            let with = html::into_attr_url(url);
            let Some(left) = room.checked_sub(with.len().saturating_sub(value.len())) else {
                return false;
            };
            room = left;
            out.push(edit::Edit { range: value, with });
        }
        match i.checked_add(1) {
            Some(n) => {
                i = n;
                true
            }
            None => false,
        }
    });
    (p, out)
}

/// Writes the part's body with the pixel inserted and the link edits applied, in its own
/// transfer encoding. Without link edits the pixel's own splices run (they keep every other
/// line as it was); links that cannot be applied (a 7bit line that would pass 998 octets, a
/// quoted-printable edit across a hard break) are left as they are.
#[allow(clippy::too_many_arguments)]
fn splice_part(
    part: &part::HtmlPart,
    body: &[u8],
    decoded: &[u8],
    qp_lines: &[[u32; 2]],
    total: usize,
    mut link_edits: Vec<edit::Edit>,
    pixel: edit::Edit,
    nl: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SkipReason> {
    let p = pixel.range.start;
    match part.cte {
        part::Cte::Raw => {
            link_edits = raw::fitting(body, link_edits);
            if link_edits.is_empty() {
                raw::splice(body, p, &pixel.with, nl, out);
            } else {
                let shift: isize = link_edits
                    .iter()
                    .filter(|e| e.range.end <= p)
                    .map(|e| e.with.len() as isize - e.range.len() as isize)
                    .sum();
                // Edited straight into the output; only what follows the pixel is copied
                // aside (the pixel sits near the end of the part).
                let start = out.len();
                edit::apply_into(body, 0, &link_edits, out);
                let at = (start + p.saturating_add_signed(shift)).min(out.len());
                let tail = out.split_off(at);
                raw::splice_into(out, start, &tail, &pixel.with, nl);
            }
        }
        part::Cte::QuotedPrintable => {
            let start = out.len();
            if !link_edits.is_empty() {
                let all = with_pixel(link_edits, pixel.clone());
                if qp::edit(body, decoded, qp_lines, &all, nl, out) {
                    return Ok(());
                }
                out.truncate(start);
            }
            if !qp::splice(body, total, p, &pixel.with, nl, out) {
                return Err(SkipReason::Unparseable);
            }
        }
        part::Cte::Base64 => {
            if link_edits.is_empty() {
                b64::splice(body, decoded, p, &pixel.with, nl, out);
            } else {
                b64::edit(body, decoded, &with_pixel(link_edits, pixel), nl, out);
            }
        }
    }
    Ok(())
}

/// The link edits with the pixel's insertion among them, in order.
fn with_pixel(mut edits: Vec<edit::Edit>, pixel: edit::Edit) -> Vec<edit::Edit> {
    let at = edits.partition_point(|e| e.range.end <= pixel.range.start);
    edits.insert(at, pixel);
    edits
}
