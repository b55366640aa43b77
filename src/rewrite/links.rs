//! The links of decoded HTML that click tracking may replace (`tracking.clicks`).
//!
//! Owns: which `<a href>` values are trackable and where each sits, byte for byte, in the
//! decoded part. Does not own: tokens, transfer encodings or the edit itself.
//!
//! A link is trackable when it is the `href` of an `<a>` tag that is real markup (not inside a
//! comment or the text of `<script>`, `<style>`, `<textarea>`, `<title>` or `<xmp>`, found by
//! the same scan that places the pixel, nor inside an earlier tag's attributes, such as a
//! value whose quote swallowed it), its URL is `http:` or `https:` once HTML character
//! references are decoded and surrounding whitespace trimmed (so `mailto:`, `tel:`, `#frag`,
//! relative and `javascript:` links stay), the tag carries no `data-track="off"` (any case;
//! the attribute is kept), and no pattern of `exclude` occurs in the URL (ASCII
//! case-insensitive: by default unsubscribe links, so that a scanner's click never
//! unsubscribes anyone). A skipped link is not touched at all.

use std::ops::Range;

pub use super::refs::decode_references;

use super::html::EndTags;
use super::refs::decode_references_into;
use super::tags::{Attributes, for_each_tag, is_tag};

/// The URL patterns left alone when `tracking.click_exclude` is not set.
pub const DEFAULT_EXCLUDE: [&str; 3] = ["unsubscribe", "optout", "opt-out"];

/// One trackable link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The `href` value's bytes in the decoded HTML, without its quotes: what a rewrite
    /// replaces.
    pub value: Range<usize>,
    /// The URL it stands for (character references decoded, whitespace trimmed).
    pub url: String,
}

/// The trackable links of `html`, in document order.
pub fn trackable(html: &[u8], exclude: &[String]) -> Vec<Link> {
    let mut out = Vec::new();
    for_each_trackable(html, exclude, |l| {
        out.push(l);
        true
    });
    out
}

/// Calls `f` with each trackable link of `html` in document order, until it returns `false`
/// (one link at a time: nothing is collected).
pub fn for_each_trackable(html: &[u8], exclude: &[String], mut f: impl FnMut(Link) -> bool) {
    scan(html, exclude, |value, url| {
        f(Link {
            value,
            url: url.to_string(),
        })
    });
}

/// [`for_each_trackable`] with each link's URL lent (decoded into one buffer that every link
/// reuses), returning the pixel's insertion point ([`super::html::insertion_point`]) found in
/// the same pass over the tags.
pub(super) fn scan(
    html: &[u8],
    exclude: &[String],
    mut f: impl FnMut(Range<usize>, &str) -> bool,
) -> usize {
    let mut go = true;
    let mut end = EndTags::default();
    let mut url = String::new();
    // The walk visits real tags only: an `<a` inside another tag's attribute value (`<img
    // alt='<a href=…>'>`, a quote left open) is text to a browser and no link. The pixel's
    // placement looks at every `</body>` as the pixel-only rewrite does, so that both put it
    // in the same place.
    let unfinished = for_each_tag(html, |lt, gt| {
        let rest = &html[lt + 1..];
        match rest.first() {
            Some(b'a' | b'A') if go && is_tag(rest, b"a") => {
                if let Some((value, found)) = link_of(html, lt + 2, gt, exclude, &mut url) {
                    go = f(value, &url[found]);
                }
            }
            Some(b'/') => end.see(html, lt),
            _ => {}
        }
    });
    end.point(html, unfinished)
}

/// Whether `needle` occurs in `hay`, ASCII letters compared without case (no allocation: it
/// runs for every link and every pattern). Candidates are found by the needle's first byte in
/// either case, so most of the URL is passed over by `memchr`.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if needle.len() > hay.len() {
        return false;
    }
    let last_start = hay.len() - needle.len();
    memchr::memchr2_iter(
        first.to_ascii_lowercase(),
        first.to_ascii_uppercase(),
        &hay[..=last_start],
    )
    .any(|at| hay[at + 1..at + needle.len()].eq_ignore_ascii_case(rest))
}

/// Where a link's `href` value is in the HTML and where its URL is in the buffer it was
/// decoded into.
type Found = (Range<usize>, Range<usize>);

/// The link of the `<a` tag whose attributes start at `from` and which ends at `gt`, if it is
/// trackable: its value's range in `html`, and where in `url`, which it is decoded into, its
/// URL is.
fn link_of(
    html: &[u8],
    from: usize,
    gt: usize,
    exclude: &[String],
    url: &mut String,
) -> Option<Found> {
    let attrs = Attributes {
        html: &html[..gt],
        at: from,
    };
    let mut href = None;
    let mut opted_out = false;
    for (name, value) in attrs {
        if name.eq_ignore_ascii_case(b"href") && href.is_none() {
            // The first of duplicate attributes is the one a browser keeps.
            href = value;
        } else if name.eq_ignore_ascii_case(b"data-track") {
            opted_out |= value.is_some_and(|v| html[v].eq_ignore_ascii_case(b"off"));
        }
    }
    let value = href?;
    if opted_out {
        return None;
    }
    url.clear();
    decode_references_into(&html[value.clone()], url);
    // Trimmed by range: nothing copied per link.
    let end = url
        .trim_end_matches(|c: char| c.is_ascii_whitespace())
        .len();
    let start = end
        - url[..end]
            .trim_start_matches(|c: char| c.is_ascii_whitespace())
            .len();
    let found = &url[start..end];
    let scheme_ok = ["http://", "https://"].iter().any(|s| {
        found
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    });
    let excluded = exclude
        .iter()
        .any(|p| !p.is_empty() && contains_ignore_ascii_case(found.as_bytes(), p.as_bytes()));
    (scheme_ok && !excluded && found.len() > "https://".len()).then_some((value, start..end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The pattern test says what a lowercase copy and a substring search would.
        #[test]
        fn exclude_patterns_match_without_case(hay in "[a-zA-Z-]{0,24}", needle in "[a-zA-Z-]{0,4}") {
            let want = hay.to_ascii_lowercase().contains(&needle.to_ascii_lowercase());
            prop_assert_eq!(contains_ignore_ascii_case(hay.as_bytes(), needle.as_bytes()), want);
        }

        /// The pass that finds the links also finds the pixel's place, where the pixel's own
        /// scan would put it: markup pieces that move it (body and html end tags, comments,
        /// raw text that hides tags) in any order and case.
        #[test]
        fn the_link_scan_finds_the_insertion_point(pieces in proptest::collection::vec(prop_oneof![
            Just("</body>"), Just("</BODY >"), Just("</html>"), Just("</Html\n>"), Just("<body>"),
            Just("<!-- </body> -->"), Just("<!--"), Just("-->"), Just("<script>"), Just("</script>"),
            Just("<style>"), Just("</style>"), Just("<a href=\"https://x.example/\">"), Just("</a>"),
            Just("<"), Just("</"), Just("text"), Just("\r\n"), Just("</bodyx>"), Just("<textarea>"),
        ], 0..24)) {
            let html = pieces.concat();
            let found = scan(html.as_bytes(), &[], |_, _| true);
            prop_assert_eq!(found, super::super::html::insertion_point(html.as_bytes()), "{}", html);
        }
    }

    fn urls(html: &str) -> Vec<String> {
        let exclude: Vec<String> = DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect();
        trackable(html.as_bytes(), &exclude)
            .into_iter()
            .map(|l| {
                // The range is exactly the value as written.
                assert!(l.value.end <= html.len());
                l.url
            })
            .collect()
    }

    #[test]
    fn http_and_https_links_in_any_quoting() {
        let h = r#"<p><a href="https://a.example/x">a</a> <A HREF='http://b.example/'>b</A>
            <a class=x href=https://c.example/?q=1>c</a><a
            href = "https://d.example/"
            >d</a></p>"#;
        assert_eq!(
            urls(h),
            [
                "https://a.example/x",
                "http://b.example/",
                "https://c.example/?q=1",
                "https://d.example/"
            ]
        );
    }

    #[test]
    fn the_range_is_the_value_as_written() {
        let h = r#"<a title="x>y" href="https://a.example/?a=1&amp;b=2">"#;
        let l = &trackable(h.as_bytes(), &[])[0];
        assert_eq!(&h[l.value.clone()], "https://a.example/?a=1&amp;b=2");
        assert_eq!(l.url, "https://a.example/?a=1&b=2");
    }

    #[test]
    fn other_schemes_fragments_and_relative_links_stay() {
        let h = r##"<a href="mailto:x@example.com">m</a><a href="tel:+123">t</a>
            <a href="#top">f</a><a href="/relative">r</a><a href="javascript:alert(1)">j</a>
            <a href="ftp://f.example/">f</a><a>no href</a><a href>empty</a><a href="https://">bare</a>"##;
        assert!(urls(h).is_empty(), "{:?}", urls(h));
    }

    #[test]
    fn hidden_links_stay() {
        let h = r#"<!-- <a href="https://c.example/">c</a> -->
            <script>var s = '<a href="https://s.example/">';</script>
            <style>/* <a href="https://st.example/"> */</style>
            <textarea><a href="https://t.example/"></textarea>
            <a href="https://real.example/">r</a>"#;
        assert_eq!(urls(h), ["https://real.example/"]);
    }

    #[test]
    fn opted_out_and_excluded_links_stay() {
        let h = r#"<a data-track="off" href="https://o.example/">o</a>
            <a href="https://o2.example/" DATA-TRACK='OFF'>o2</a>
            <a href="https://x.example/Unsubscribe?u=1">u</a>
            <a href="https://x.example/opt-out">u</a>
            <a href="https://x.example/" data-track="on">kept</a>"#;
        assert_eq!(urls(h), ["https://x.example/"]);
        let only = vec!["list-manage".to_string()];
        let h = r#"<a href="https://us1.list-manage.com/track">l</a><a href="https://x.example/unsubscribe">u</a>"#;
        let got: Vec<String> = trackable(h.as_bytes(), &only)
            .into_iter()
            .map(|l| l.url)
            .collect();
        assert_eq!(got, ["https://x.example/unsubscribe"]);
    }

    #[test]
    fn references_and_whitespace_are_decoded_to_find_the_url() {
        let h = "<a href=\" &#104;ttps://e.example/?a=1&amp;b=&#x32;&unknown; \">x</a><a href=\"HTTPS://U.EXAMPLE/\">u</a>";
        assert_eq!(
            urls(h),
            ["https://e.example/?a=1&b=2&unknown;", "HTTPS://U.EXAMPLE/"]
        );
        assert_eq!(
            decode_references(b"a&amp;b&lt;&#0;&#xZZ;&"),
            "a&b<\u{fffd}&#xZZ;&"
        );
        // The whole table, and the attribute-value rule for names without their `;`.
        assert_eq!(
            decode_references(b"caf&eacute;&copy&not=1&copy2&#x2F&#150;&fjlig;"),
            "caf\u{e9}\u{a9}&not=1&copy2/\u{2013}fj"
        );
    }

    #[test]
    fn the_first_of_duplicate_hrefs_counts_and_area_is_not_a() {
        let h = r#"<a href="https://one.example/" href="https://two.example/">x</a>
            <abbr href="https://abbr.example/">x</abbr><area href="https://area.example/">"#;
        assert_eq!(urls(h), ["https://one.example/"]);
    }

    proptest::proptest! {
        /// Any input built from the pieces links are made of: no panic, and every link's
        /// range is in bounds and is what its URL was decoded from.
        #[test]
        fn any_markup_gives_links_that_are_what_they_span(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "<a ", "<A ", "href=", "HREF = ", "\"", "'", ">", "</a>", "https://e.example/",
                "http://h.example/p?x=1&amp;y", "mailto:m", "data-track=off", "<!--", "-->",
                "<script>", "</script>", "&#x68;", "unsubscribe", " ", "\n", "é", "/", "=",
            ]), 0..40)
        ) {
            let html = parts.concat();
            for l in trackable(html.as_bytes(), &[]) {
                proptest::prop_assert!(l.value.end <= html.len());
                let decoded = decode_references(&html.as_bytes()[l.value.clone()]);
                proptest::prop_assert_eq!(decoded.trim_matches(|c: char| c.is_ascii_whitespace()), l.url.as_str());
                proptest::prop_assert!(l.url.to_ascii_lowercase().starts_with("http"));
            }
        }
    }

    #[test]
    fn unterminated_markup_does_not_panic() {
        for h in [
            "<a href=\"https://x.example/",
            "<a href='",
            "<a href=",
            "<a",
            "<a href=\"https://x.example/\" data-track=",
            "<!-- <a href=\"https://x.example/\">",
        ] {
            let _ = urls(h);
        }
        assert!(urls("<a href=https://x.example/").is_empty());
        // Non-ASCII where the scheme would be (a proptest once found `href="é>`).
        assert!(urls("<a href=\"é\">x</a><a href=\"httpé://x\">y</a><a href=é>").is_empty());
        assert_eq!(urls("<a href=https://x.example/>"), ["https://x.example/"]);
    }
}
