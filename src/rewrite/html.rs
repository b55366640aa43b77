//! Placement inside decoded HTML, and the pixel markup itself.
//!
//! Owns: where the pixel goes (before the last real `</body>`, else the last real `</html>`,
//! else the end of the part), what "real" means (not inside a comment or the text of a raw-text
//! element), the `<img>` markup, and spotting a pixel of ours that is already there.
//! Does not own: transfer encodings, line lengths or MIME structure.
//!
//! The scan is a small tokenizer, not a full HTML5 parser: it jumps from `<` to `<` and only
//! tracks what can hide a `</body>` from a browser: comments (`<!-- … -->`) and the text of
//! `<script>`, `<style>`, `<textarea>`, `<title>` and `<xmp>`, which runs to the matching end
//! tag, and another tag's attributes (a closer whose last `<` or `>` before it is a `<` that
//! opens a tag: `<img alt="</body>">`, or a quote left open). Everything else is treated as
//! markup.

use memchr::{memchr, memmem};

/// Attributes after `src`: a 1×1 image that is invisible yet still loaded. No `display:none`,
/// since some clients then skip the request.
const ATTRS: &str = r#" width="1" height="1" alt="" border="0" style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">"#;

/// Elements whose content is text up to their end tag, so a `</body>` in it is not a tag.
const RAW_TEXT: [&[u8]; 5] = [b"script", b"style", b"textarea", b"title", b"xmp"];

/// The pixel markup for `url`: pure ASCII, no space inside the URL, so every space in it
/// separates attributes and may be turned into a line break.
pub fn markup(url: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(url.len() + ATTRS.len() + 16);
    out.extend_from_slice(b"<img src=\"");
    push_attr_url(&mut out, url);
    out.push(b'"');
    out.extend_from_slice(ATTRS.as_bytes());
    out
}

/// `url` as a double-quoted attribute's value (see [`push_attr_url`]).
pub fn attr_url(url: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(url.len() + 8);
    push_attr_url(&mut out, url);
    out
}

/// [`attr_url`] taking the URL: one that needs nothing escaped (a minted click URL) is used
/// as it is, without a copy.
pub fn into_attr_url(url: String) -> Vec<u8> {
    if all_plain(url.as_bytes()) {
        url.into_bytes()
    } else {
        attr_url(&url)
    }
}

/// Whether `b` goes into a double-quoted attribute value as it is.
fn plain_attr_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e) && !matches!(b, b'&' | b'"' | b'<' | b'>')
}

/// Whether every byte of `s` is [`plain_attr_byte`]: counted without an early exit, so that
/// the compiler checks 16 or 32 bytes at a time (it runs over every minted click URL).
fn all_plain(s: &[u8]) -> bool {
    s.chunks(64)
        .all(|c| c.iter().fold(true, |ok, &b| ok & plain_attr_byte(b)))
}

/// Writes `url` so that it is safe inside a double-quoted attribute and stays ASCII:
/// `& " < >` become entities, spaces, controls and non-ASCII bytes are percent-encoded.
fn push_attr_url(out: &mut Vec<u8>, url: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Minted URLs (base64url tokens) need nothing escaped: one copy.
    if all_plain(url.as_bytes()) {
        out.extend_from_slice(url.as_bytes());
        return;
    }
    for &b in url.as_bytes() {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            0x21..=0x7e => out.push(b),
            _ => out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]),
        }
    }
}

/// True when `html` already holds a URL starting with `prefix`, written plainly or the way
/// [`markup`] writes it.
pub fn contains_pixel(html: &[u8], prefix: &str) -> bool {
    if prefix.is_empty() {
        return false;
    }
    if memmem::find(html, prefix.as_bytes()).is_some() {
        return true;
    }
    let mut escaped = Vec::with_capacity(prefix.len() + 8);
    push_attr_url(&mut escaped, prefix);
    escaped != prefix.as_bytes() && memmem::find(html, &escaped).is_some()
}

/// The byte offset in decoded `html` where the pixel goes: before the last real `</body>`,
/// else before the last real `</html>`, else at the end (before one final line break, so a
/// part that ends with a newline still does).
pub fn insertion_point(html: &[u8]) -> usize {
    let mut end = EndTags::default();
    for_each_tag(html, |lt| end.see(html, lt));
    end.point(html)
}

/// The last real `</body>` and `</html>` of a part, seen tag by tag (so that a scan that
/// visits the tags for another reason finds the insertion point in the same pass).
#[derive(Default)]
pub(super) struct EndTags {
    last_body: Option<usize>,
    last_html: Option<usize>,
}

impl EndTags {
    /// Notes the tag whose `<` is at `lt`.
    pub(super) fn see(&mut self, html: &[u8], lt: usize) {
        let rest = &html[lt + 1..];
        if rest.first() == Some(&b'/') {
            match rest.get(1).copied() {
                Some(b'b' | b'B') if is_tag(&rest[1..], b"body") && !in_tag(html, lt) => {
                    self.last_body = Some(lt)
                }
                Some(b'h' | b'H') if is_tag(&rest[1..], b"html") && !in_tag(html, lt) => {
                    self.last_html = Some(lt)
                }
                _ => {}
            }
        }
    }

    /// The insertion point once every tag has been seen ([`insertion_point`]).
    pub(super) fn point(&self, html: &[u8]) -> usize {
        self.last_body
            .or(self.last_html)
            .unwrap_or_else(|| end_point(html))
    }
}

/// Calls `tag` with the offset of the `<` of every tag that is real markup, in order: not
/// inside a comment, and not in the text of a raw-text element (whose start and end tags are
/// visited). Stops at a comment or raw-text element that never ends: the rest is its text.
pub(super) fn for_each_tag(html: &[u8], mut tag: impl FnMut(usize)) {
    // Offsets before this are inside a comment or raw text already skipped.
    let mut resume = 0;
    while let Some(lt) = next_lt(html, resume) {
        resume = lt + 1;
        let rest = &html[lt + 1..];
        // Most `<` open an ordinary tag: decide on the next byte before comparing names.
        match rest.first().copied() {
            Some(b'!') if rest.starts_with(b"!--") => {
                // A comment; `<!-->` and `<!--->` are empty comments in HTML5.
                let body = lt + 4;
                let tail = &html[body..];
                if tail.starts_with(b">") {
                    resume = body + 1;
                } else if tail.starts_with(b"->") {
                    resume = body + 2;
                } else {
                    match memmem::find(tail, b"-->") {
                        Some(end) => resume = body + end + 3,
                        None => return,
                    }
                }
                continue;
            }
            Some(b's' | b'S' | b't' | b'T' | b'x' | b'X') => {
                if let Some(name) = RAW_TEXT.iter().find(|n| is_tag(rest, n)) {
                    tag(lt);
                    match skip_raw_text(html, lt + 1 + name.len(), name) {
                        Some(next) => resume = next,
                        None => return,
                    }
                    continue;
                }
            }
            _ => {}
        }
        tag(lt);
    }
}

/// The offset of the first `<` at or after `from`.
///
/// `<` is dense in HTML (one every 20 bytes or so), where restarting a vectorised `memchr` for
/// each one costs more than it saves; this reads eight bytes at a time and finds the byte with
/// an exact zero-byte test, no setup per call.
fn next_lt(html: &[u8], from: usize) -> Option<usize> {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const LT: u64 = 0x3c3c_3c3c_3c3c_3c3c;
    let rest = html.get(from..)?;
    let mut words = rest.chunks_exact(8);
    let mut at = from;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_le_bytes(b) ^ LT;
        // High bit set exactly in the bytes of `x` that are zero, i.e. the '<' bytes.
        let zero = !(((x & LOW7) + LOW7) | x | LOW7);
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    memchr(b'<', words.remainder()).map(|i| at + i)
}

/// The end of the part, before one final line break.
fn end_point(html: &[u8]) -> usize {
    if html.ends_with(b"\r\n") {
        html.len() - 2
    } else if html.ends_with(b"\n") {
        html.len() - 1
    } else {
        html.len()
    }
}

/// `s` starts with tag name `name` (ASCII case-insensitive) followed by a tag-name terminator.
pub(super) fn is_tag(s: &[u8], name: &[u8]) -> bool {
    s.len() > name.len()
        && s[..name.len()].eq_ignore_ascii_case(name)
        && matches!(
            s[name.len()],
            b'>' | b'/' | b' ' | b'\t' | b'\r' | b'\n' | 0x0c
        )
}

/// Whether the `<` at `lt` lies inside an earlier tag (`<img alt='<a href=…>'>`, `<img
/// alt="</body>">`): the last `<` or `>` before it is a `<` that opens a tag. A browser reads
/// such a `<` as part of that tag's attribute names or values, not as a tag of its own. (Asked
/// only of the tags that matter, `<a` and the closers: the walk from `<` to `<` does not track
/// attribute values.)
pub(super) fn in_tag(html: &[u8], lt: usize) -> bool {
    memchr::memrchr2(b'<', b'>', &html[..lt]).is_some_and(|q| {
        html[q] == b'<'
            && html
                .get(q + 1)
                .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'/')
    })
}

/// From just after `<name` of a raw-text start tag, returns the offset of its end tag
/// (`</name`), or `None` when the element never ends (the rest of the part is its text).
fn skip_raw_text(html: &[u8], from: usize, name: &[u8]) -> Option<usize> {
    let gt = from + memchr(b'>', html.get(from..)?)?;
    // A self-closing `<script/>` is still a start tag in HTML; its text runs to `</script`.
    let mut j = gt + 1;
    loop {
        let pos = j + memmem::find(html.get(j..)?, b"</")?;
        if is_tag(&html[pos + 2..], name) {
            return Some(pos);
        }
        j = pos + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(html: &str) -> usize {
        insertion_point(html.as_bytes())
    }

    #[test]
    fn last_body_wins_case_insensitive_with_attributes() {
        let h = "<html><body>a</body>b</BODY >c</html>";
        assert_eq!(at(h), h.find("</BODY").unwrap_or(0));
        let h = "<body>x</body\n foo>";
        assert_eq!(at(h), 7);
    }

    #[test]
    fn html_then_end() {
        assert_eq!(at("<html>x</HTML>\r\n"), 7);
        assert_eq!(at("plain\r\n"), 5);
        assert_eq!(at("plain\n"), 5);
        assert_eq!(at("plain"), 5);
        assert_eq!(at("</bodyx>"), 8);
    }

    #[test]
    fn hidden_closers_are_ignored() {
        let h = "<body>x</body><!-- </body> --><script>var a='</body>';</script><textarea></body></textarea>";
        assert_eq!(at(h), 7);
        let h = "<body>x<style>p{}</body></STYLE></body>";
        assert_eq!(at(h), h.rfind("</body>").unwrap_or(0));
        // An unterminated comment hides everything after it.
        let h = "<body>x</body><!-- </body>";
        assert_eq!(at(h), 7);
        // `<!-->` is an empty comment, so the closer after it counts.
        let h = "<body><!--></body>";
        assert_eq!(at(h), 11);
        // `<scripts>` is not a script element.
        let h = "<body><scripts></body>";
        assert_eq!(at(h), 15);
    }

    #[test]
    fn closers_inside_another_tags_attributes_are_ignored() {
        // In a quoted value, and swallowed by a quote left open.
        let h = "<body>x</body><img alt=\"</body>\"></html>";
        assert_eq!(at(h), 7);
        let h = "<body>x<a href='http://a/</body>\r\n";
        assert_eq!(at(h), h.len() - 2);
        // Only the last `<` or `>` before a closer is looked at: a `>` swallowed with it hides
        // the tag it is in.
        let h = "<body>x<a href='http://a/</body></html>\r\n";
        assert_eq!(at(h), h.find("</html>").unwrap_or(0));
        // A `<` that opens no tag does not hide what follows.
        let h = "<body>1 < 2</body>";
        assert_eq!(at(h), 11);
    }

    #[test]
    fn markup_is_ascii_and_escaped() {
        let m = markup("http://h/o/a&b\"c d\u{e9}.gif");
        let s = String::from_utf8(m).unwrap_or_default();
        assert!(s.starts_with("<img src=\"http://h/o/a&amp;b&quot;c%20d%C3%A9.gif\" width=\"1\""));
        assert!(s.is_ascii());
        assert!(!s.contains("display:none"));
    }

    #[test]
    fn pixel_detection() {
        assert!(contains_pixel(
            b"<img src=\"http://h/o/x.gif\">",
            "http://h/o/"
        ));
        assert!(contains_pixel(
            b"<img src=\"http://h/?a&amp;b/o/x.gif\">",
            "http://h/?a&b/o/"
        ));
        assert!(!contains_pixel(
            b"<img src=\"http://h/p/x.gif\">",
            "http://h/o/"
        ));
        assert!(!contains_pixel(b"anything", ""));
    }
}
