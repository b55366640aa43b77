//! The tags of decoded HTML, as a browser's tokenizer finds them.
//!
//! Owns: which `<` open a tag and where each tag ends (its `>`, found past quoted attribute
//! values), what hides markup (comments, bogus comments such as `<!DOCTYPE …>` and `<?…>`,
//! the text of raw-text and RCDATA elements) and a tag's attributes. Does not own: what the
//! tags mean (the pixel's place is [`super::html`]'s, links are [`super::links`]'s).
//!
//! This is the HTML5 tokenizer's reading of tags, not a parser: a tag is `<` then an ASCII
//! letter (`</` then a letter for an end tag), its name runs to a space, `/` or `>`, and its
//! attributes to the first `>` that is not inside a quoted value, so that `<img alt="</body>">`
//! or `<td title='<a href=…>'>` holds no tag. A tag the part ends inside is no tag, and
//! neither is anything after it (the rest is that tag's attributes). `<script>` is read as raw
//! text: its escaped states (`<!--` inside a script) are not followed, which only matters for
//! a `</script>` written inside a comment inside a script.
//! A property test holds the walk to html5ever's tokenizer (Servo's) over generated markup.

use std::ops::Range;

use memchr::{memchr, memmem};

/// Elements whose content is text up to their end tag (raw text and RCDATA in HTML5), so a
/// `</body>` or `<a href>` in it is no tag. `<plaintext>` is text to the end of the part.
const RAW_TEXT: [&[u8]; 8] = [
    b"script",
    b"style",
    b"textarea",
    b"title",
    b"xmp",
    b"iframe",
    b"noembed",
    b"noframes",
];

/// Calls `tag(lt, gt)` for every tag that is real markup, in order, with the offsets of its
/// `<` and of the `>` that ends it. Tags inside comments, other tags' attributes and the text
/// of raw-text elements are not visited (those elements' own start and end tags are).
///
/// Returns where the part ends inside markup, if it does: the `<` of a tag, comment or bogus
/// comment that never ends, of a raw-text element whose text runs to the end (or
/// `<plaintext>`), or of a last `<`, `</`, `<!`, `<?`. Anything written at the end of such a
/// part would be read as part of that markup (a pixel after `</BODY ` would be an attribute of
/// that tag; after `</` a bogus comment).
pub(super) fn for_each_tag(html: &[u8], mut tag: impl FnMut(usize, usize)) -> Option<usize> {
    // Offsets before this are inside a tag, comment or raw text already read.
    let mut resume = 0;
    while let Some(lt) = next_lt(html, resume) {
        let rest = &html[lt + 1..];
        let Some(&first) = rest.first() else {
            return Some(lt);
        };
        let end_tag = first == b'/' && rest.get(1).is_some_and(u8::is_ascii_alphabetic);
        if first.is_ascii_alphabetic() || end_tag {
            let name_at = lt + 1 + usize::from(end_tag);
            // The part ending inside a tag: no tag, and the rest is its attributes.
            let Some(gt) = tag_end(html, name_at) else {
                return Some(lt);
            };
            tag(lt, gt);
            resume = gt + 1;
            // Only names that start like a raw-text element's are read.
            if !end_tag && matches!(first | 0x20, b's' | b't' | b'x' | b'i' | b'n' | b'p') {
                let name = &html[name_at..name_end(html, name_at)];
                if name.eq_ignore_ascii_case(b"plaintext") {
                    return Some(lt);
                }
                if let Some(raw) = RAW_TEXT.iter().find(|n| name.eq_ignore_ascii_case(n)) {
                    match skip_raw_text(html, resume, raw) {
                        Some(next) => resume = next,
                        None => return Some(lt),
                    }
                }
            }
            continue;
        }
        let skip_to = match first {
            b'!' if rest.starts_with(b"!--") => comment_end(html, lt + 4),
            // `</>` is nothing at all.
            b'/' if rest.get(1) == Some(&b'>') => Some(lt + 3),
            // `<!DOCTYPE …>`, `<![CDATA[…]]>`, `<?…>`, `</ …>`: bogus comments, to the first `>`.
            b'!' | b'?' | b'/' => memchr(b'>', &html[lt + 2..]).map(|i| lt + 2 + i + 1),
            // A `<` that opens nothing is text.
            _ => Some(lt + 1),
        };
        match skip_to {
            Some(next) => resume = next,
            None => return Some(lt),
        }
    }
    None
}

/// Where the comment whose text starts at `body` (just after `<!--`) ends: after its `-->` or
/// `--!>`; `<!-->` and `<!--->` are empty comments. `None` when it never ends.
fn comment_end(html: &[u8], body: usize) -> Option<usize> {
    let tail = html.get(body..)?;
    if tail.starts_with(b">") {
        return Some(body + 1);
    }
    if tail.starts_with(b"->") {
        return Some(body + 2);
    }
    let mut j = body;
    loop {
        let dashes = j + memmem::find(html.get(j..)?, b"--")?;
        match html.get(dashes + 2..) {
            Some([b'>', ..]) => return Some(dashes + 3),
            Some([b'!', b'>', ..]) => return Some(dashes + 4),
            _ => j = dashes + 1,
        }
    }
}

/// Where the name of the tag that starts at `name_at` ends (a space, `/` or `>` ends it; a
/// quote or `=` is part of it).
fn name_end(html: &[u8], name_at: usize) -> usize {
    html[name_at..]
        .iter()
        .position(|&b| is_space(b) || b == b'/' || b == b'>')
        .map_or(html.len(), |i| name_at + i)
}

/// The offset of the `>` that ends the tag whose name starts at `name_at`, or `None` when the
/// part ends first. A `>` before any quote ends it in every state of the tokenizer (a name
/// runs to it too); past a quote, the attributes are read one by one from the name's end so
/// that a quoted value's `>` is passed over.
fn tag_end(html: &[u8], name_at: usize) -> Option<usize> {
    for (i, &b) in html.get(name_at..)?.iter().enumerate() {
        match b {
            b'>' => return Some(name_at + i),
            b'"' | b'\'' => break,
            _ => {}
        }
    }
    let mut attrs = Attributes {
        html,
        at: name_end(html, name_at),
    };
    for _ in attrs.by_ref() {}
    (html.get(attrs.at) == Some(&b'>')).then_some(attrs.at)
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

/// HTML's whitespace between attributes (a CR counts: the tokenizer sees it as a line feed).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0c)
}

/// `s` starts with tag name `name` (ASCII case-insensitive) followed by a tag-name terminator.
pub(super) fn is_tag(s: &[u8], name: &[u8]) -> bool {
    s.len() > name.len()
        && s[..name.len()].eq_ignore_ascii_case(name)
        && (is_space(s[name.len()]) || matches!(s[name.len()], b'>' | b'/'))
}

/// From `from`, just after a raw-text element's start tag, returns the offset of its end tag
/// (`</name` and a terminator), or `None` when the element never ends (the rest of the part is
/// its text).
fn skip_raw_text(html: &[u8], from: usize, name: &[u8]) -> Option<usize> {
    let mut j = from;
    loop {
        let pos = j + memmem::find(html.get(j..)?, b"</")?;
        if is_tag(&html[pos + 2..], name) {
            return Some(pos);
        }
        j = pos + 2;
    }
}

/// The attributes of a tag from `at` (just after its name): (name, value range without
/// quotes; `None` when the attribute has no value), up to the tag's `>`, where `at` is left
/// (or at the end of the part). The states of the HTML5 tokenizer's attribute reading.
pub(super) struct Attributes<'a> {
    pub(super) html: &'a [u8],
    pub(super) at: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (&'a [u8], Option<Range<usize>>);

    fn next(&mut self) -> Option<Self::Item> {
        let h = self.html;
        let gap = |b: u8| is_space(b) || b == b'/';
        while self.at < h.len() && gap(h[self.at]) {
            self.at += 1;
        }
        if self.at >= h.len() || h[self.at] == b'>' {
            return None;
        }
        let start = self.at;
        // An `=` where a name starts is the name's first character.
        if h[self.at] == b'=' {
            self.at += 1;
        }
        while self.at < h.len() && !gap(h[self.at]) && !matches!(h[self.at], b'>' | b'=') {
            self.at += 1;
        }
        let name = &h[start..self.at];
        let mut j = self.at;
        while j < h.len() && is_space(h[j]) {
            j += 1;
        }
        if h.get(j) != Some(&b'=') {
            return Some((name, None));
        }
        j += 1;
        while j < h.len() && is_space(h[j]) {
            j += 1;
        }
        let value = match h.get(j).copied() {
            Some(q @ (b'"' | b'\'')) => {
                let end = memchr(q, &h[j + 1..]).map_or(h.len(), |e| j + 1 + e);
                self.at = (end + 1).min(h.len());
                j + 1..end
            }
            _ => {
                let mut end = j;
                while end < h.len() && !is_space(h[end]) && h[end] != b'>' {
                    end += 1;
                }
                self.at = end;
                j..end
            }
        };
        Some((name, Some(value)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The tags the walk visits, as written from `<` to `>`.
    fn tags(html: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for_each_tag(html.as_bytes(), |lt, gt| out.push(&html[lt..=gt]));
        out
    }

    #[test]
    fn a_tag_ends_at_the_first_gt_outside_its_quoted_values() {
        assert_eq!(
            tags(r#"<img alt="a > b </body>" src=x><p title='<a href="http://e/">'>t</p>"#),
            [
                r#"<img alt="a > b </body>" src=x>"#,
                r#"<p title='<a href="http://e/">'>"#,
                "</p>"
            ]
        );
        // A quote inside an unquoted value or a name opens nothing.
        assert_eq!(tags("<a href=x\"y>z</a>"), ["<a href=x\"y>", "</a>"]);
        assert_eq!(tags("<a b\"c=\"d>\">"), ["<a b\"c=\"d>\">"]);
        // An `=` that starts a name: `="x>` is one name, so its `>` ends the tag.
        assert_eq!(tags("<a =\"x>y\">"), ["<a =\"x>"]);
    }

    #[test]
    fn a_quote_left_open_swallows_the_rest() {
        assert_eq!(tags("<p>x<a href='http://a/</body></html>"), ["<p>"]);
        assert_eq!(tags("<p>x<a href"), ["<p>"]);
    }

    #[test]
    fn comments_and_bogus_comments_hide_what_they_hold() {
        assert_eq!(
            tags("<!DOCTYPE html><!-- <b> --><i><!-- x --!><u><!--><s><!---><q>"),
            ["<i>", "<u>", "<s>", "<q>"]
        );
        // `<? <a>` is a bogus comment that ends at the `>` of `<a>`; `?>` is text.
        assert_eq!(tags("<? <a> ?><b>"), ["<b>"]);
        assert_eq!(tags("</ b><c></><d>"), ["<c>", "<d>"]);
        assert_eq!(tags("<!-- never ends <b>"), Vec::<&str>::new());
        assert_eq!(tags("1 < 2 <3 <b>"), ["<b>"]);
    }

    #[test]
    fn raw_text_runs_to_its_end_tag() {
        assert_eq!(
            tags("<script>'<b>'</scripts></script ><IFRAME src=x><a></iframe><b>"),
            [
                "<script>",
                "</script >",
                "<IFRAME src=x>",
                "</iframe>",
                "<b>"
            ]
        );
        assert_eq!(tags("<title>a<b>"), ["<title>"]);
        assert_eq!(tags("<plaintext><b></plaintext>"), ["<plaintext>"]);
    }

    #[test]
    fn attributes_are_read_as_the_tokenizer_reads_them() {
        let h = br#"<a href = "x y" b=c/ d e='f>g' =h>"#;
        let attrs: Vec<(String, Option<String>)> = Attributes { html: h, at: 2 }
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    v.map(|v| String::from_utf8_lossy(&h[v]).into_owned()),
                )
            })
            .collect();
        let want = [
            ("href", Some("x y")),
            ("b", Some("c/")),
            ("d", None),
            ("e", Some("f>g")),
            ("=h", None),
        ];
        let want: Vec<(String, Option<String>)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
            .collect();
        assert_eq!(attrs, want);
    }

    /// The tags html5ever's tokenizer emits for `html`, switching to raw text after the start
    /// tags whose content a tree builder would read as text (the oracle of this module's walk
    /// and of [`super::super::refs`]).
    pub(in crate::rewrite) fn html5ever_tags(html: &str) -> Vec<html5ever::tokenizer::Tag> {
        use html5ever::tokenizer::states::RawKind;
        use html5ever::tokenizer::{
            BufferQueue, EndTag, Tag, TagToken, Token, TokenSink, TokenSinkResult, Tokenizer,
        };
        use std::cell::RefCell;

        struct Sink(RefCell<Vec<Tag>>);
        impl TokenSink for Sink {
            type Handle = ();
            fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
                let TagToken(tag) = token else {
                    return TokenSinkResult::Continue;
                };
                let kind = match (tag.kind, &*tag.name) {
                    (EndTag, _) => TokenSinkResult::Continue,
                    // Read as raw text here too (see the module's note on scripts).
                    (_, "script" | "style" | "xmp" | "iframe" | "noembed" | "noframes") => {
                        TokenSinkResult::RawData(RawKind::Rawtext)
                    }
                    (_, "textarea" | "title") => TokenSinkResult::RawData(RawKind::Rcdata),
                    (_, "plaintext") => TokenSinkResult::Plaintext,
                    _ => TokenSinkResult::Continue,
                };
                self.0.borrow_mut().push(tag);
                kind
            }
        }
        let input = BufferQueue::default();
        input.push_back(html.into());
        let tok = Tokenizer::new(Sink(RefCell::new(Vec::new())), Default::default());
        let _ = tok.feed(&input);
        tok.end();
        tok.sink.0.take()
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]
        /// The walk visits exactly the tags a browser's tokenizer finds, in order: markup made
        /// of the pieces that move tag boundaries (quotes, `=`, `>`, comments, bogus comments,
        /// raw text, names that only start like a raw-text element's).
        #[test]
        fn the_walk_finds_the_tags_html5ever_finds(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "<a", "<A ", "<b>", "</b>", "</a>", "<p", "</", "<", ">", " ", "\"", "'", "=",
                "x", "/", "href=", "alt=\"", "<!--", "-->", "--!>", "-", "!", "<!", "<?",
                "<!DOCTYPE html>", "<script>", "</script>", "<script", "</script", "<scripts>",
                "<style>", "</style>", "<title>", "</title>", "<textarea>", "</textarea>",
                "<iframe>", "</iframe>", "<xmp>", "</xmp>", "<plaintext>", "</body>", "<body>",
                "\r\n", "\t", "1", "é", "<3", "</>",
            ]), 0..40)
        ) {
            let html = parts.concat();
            let mut ours = Vec::new();
            for_each_tag(html.as_bytes(), |lt, _| {
                let end = html.as_bytes()[lt + 1] == b'/';
                let at = lt + 1 + usize::from(end);
                let name: String = html[at..]
                    .chars()
                    .take_while(|&c| !(c.is_ascii_whitespace() || c == '/' || c == '>'))
                    .collect();
                ours.push((end, name.to_ascii_lowercase()));
            });
            let theirs: Vec<(bool, String)> = html5ever_tags(&html)
                .into_iter()
                .map(|t| (t.kind == html5ever::tokenizer::EndTag, t.name.to_string()))
                .collect();
            proptest::prop_assert_eq!(ours, theirs, "{:?}", html);
        }
    }
}
