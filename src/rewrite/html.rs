//! Placement inside decoded HTML, and the pixel markup itself.
//!
//! Owns: where the pixel goes (before the last real `</body>`, else the last real `</html>`,
//! else before markup the part ends inside, else the end of the part), what "real" means (not
//! inside a comment or the text of a raw-text element), the `<img>` markup, and spotting a
//! pixel of ours that is already there.
//! Does not own: transfer encodings, line lengths or MIME structure.
//!
//! The closers are the tags a browser's tokenizer finds ([`super::tags`]): not inside a
//! comment, the text of `<script>`, `<style>`, `<textarea>`, `<title>` and the like, or another
//! tag's attributes (`<img alt="</body>">`, or a quote left open that swallows the rest).

use memchr::memmem;

use super::tags::{for_each_tag, is_tag};

/// Attributes after `src`: a 1×1 image that is invisible yet still loaded. No `display:none`,
/// since some clients then skip the request.
const ATTRS: &str = r#" width="1" height="1" alt="" border="0" style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">"#;

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
/// else before the last real `</html>`, else before the markup the part ends inside (a tag,
/// comment or raw-text element that never ends), else at the end (before one final line
/// break, so a part that ends with a newline still does).
pub fn insertion_point(html: &[u8]) -> usize {
    let mut end = EndTags::default();
    let unfinished = for_each_tag(html, |lt, _| end.see(html, lt));
    end.point(html, unfinished)
}

/// The last real `</body>` and `</html>` of a part, seen tag by tag (so that a scan that
/// visits the tags for another reason finds the insertion point in the same pass).
#[derive(Default)]
pub(super) struct EndTags {
    last_body: Option<usize>,
    last_html: Option<usize>,
}

impl EndTags {
    /// Notes the tag whose `<` is at `lt` (a real one: [`for_each_tag`] visits no other).
    pub(super) fn see(&mut self, html: &[u8], lt: usize) {
        let rest = &html[lt + 1..];
        if rest.first() == Some(&b'/') {
            match rest.get(1).copied() {
                Some(b'b' | b'B') if is_tag(&rest[1..], b"body") => self.last_body = Some(lt),
                Some(b'h' | b'H') if is_tag(&rest[1..], b"html") => self.last_html = Some(lt),
                _ => {}
            }
        }
    }

    /// The insertion point once every tag has been seen ([`insertion_point`]), given where
    /// the part ends inside markup, if it does (what [`for_each_tag`] returns): without a
    /// closer, the pixel goes before that markup rather than into it.
    pub(super) fn point(&self, html: &[u8], unfinished: Option<usize>) -> usize {
        self.last_body
            .or(self.last_html)
            .or(unfinished)
            .unwrap_or_else(|| end_point(html))
    }
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
        // However much a quote left open swallows, `>` included; the pixel goes before that
        // tag, not into it at the end.
        let h = "<body>x<a href='http://a/</body>\r\n";
        assert_eq!(at(h), 7);
        let h = "<body>x<a href='http://a/</body></html>\r\n";
        assert_eq!(at(h), 7);
        let h = "<body>x</body><img alt=\"a > b </body>\"></html>";
        assert_eq!(at(h), 7);
        // A `<` that opens no tag does not hide what follows.
        let h = "<body>1 < 2</body>";
        assert_eq!(at(h), 11);
    }

    #[test]
    fn a_part_that_ends_inside_markup_gets_the_pixel_before_it() {
        // At the end, the pixel would be an attribute of the unfinished `</BODY`, text of the
        // style, or (after `</`) in a bogus comment: no client would load it.
        for (h, before) in [
            ("<p>x</p>\r\n</BODY \r\n", "</BODY"),
            ("<p>x</p><a href=\"http://e/\r\n", "<a"),
            ("<p>x</p><style>p{}\r\n", "<style"),
            ("<p>x</p><!-- note\r\n", "<!--"),
            ("<p>x</p><!DOCTYPE\r\n", "<!DOCTYPE"),
            ("<p>x</p><plaintext>x</p>\r\n", "<plaintext"),
            ("<p>x</p></", "</"),
        ] {
            assert_eq!(at(h), h.rfind(before).unwrap_or(0), "{h:?}");
        }
        // A closer before the unfinished markup is still the place.
        let h = "<body>x</body><!-- note\r\n";
        assert_eq!(at(h), 7);
        // Text at the end is no markup.
        assert_eq!(at("<p>1 < 2\r\n"), 8);
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
