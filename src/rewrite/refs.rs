//! Character references in an attribute value, decoded as a browser's tokenizer decodes them.
//!
//! Owns: what URL an `href` stands for once `&amp;`, `&eacute;`, `&#x2F;` and the like are
//! decoded. Does not own: which links are tracked ([`super::links`]).
//!
//! The HTML5 rules for a reference in an attribute value: a named one is the longest name of
//! the WHATWG table (`web_atoms`, Servo's copy) that the text after `&` starts with; one without
//! its `;` (`&copy`, `&not`: the legacy names that may omit it) stays as written when `=` or a
//! letter or digit follows, so that a query string's `&not=1` or `&copy2` is not decoded. A
//! numeric one takes every digit, its `;` is optional, and `&#0;`, surrogates and values past
//! U+10FFFF become U+FFFD, while 0x80–0x9F are read as windows-1252. Anything else (`&`, `&;`,
//! `&unknown;`) stays as written. A property test holds this to html5ever's tokenizer.

use web_atoms::NAMED_ENTITIES;

/// The longest name in the table (`CounterClockwiseContourIntegral;`).
const LONGEST_NAME: usize = 32;

/// What 0x80–0x9F stand for in a numeric reference (windows-1252); 0 where the byte is
/// undefined there and the code point stays as it is.
const WINDOWS_1252: [u16; 32] = [
    0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0, 0x017D, 0, 0, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC,
    0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178,
];

/// `value` with its character references decoded; bytes that are not UTF-8 are replaced.
pub fn decode_references(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    decode_references_into(value, &mut out);
    out
}

/// [`decode_references`] appending to `out`.
pub(super) fn decode_references_into(value: &[u8], out: &mut String) {
    // Checked strictly first: the lossy decoder walks the bytes in small steps.
    let text = match std::str::from_utf8(value) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(value),
    };
    // `&` is ASCII: a byte search finds it (and never inside a multi-byte character).
    let mut rest: &str = &text;
    while let Some(amp) = memchr::memchr(b'&', rest.as_bytes()) {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match reference(after) {
            Some((chars, len)) => {
                out.extend(chars.into_iter().flatten());
                rest = &after[len..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

/// The character(s) of the reference that `s` (what follows an `&`) starts with, and how many
/// bytes of `s` it takes; `None` when the `&` stays as written.
fn reference(s: &str) -> Option<([Option<char>; 2], usize)> {
    let one = |c: char, len: usize| Some(([Some(c), None], len));
    // What links carry, first: none of them is the start of a longer name.
    for (name, c) in [("amp;", '&'), ("lt;", '<'), ("gt;", '>'), ("quot;", '"')] {
        if s.starts_with(name) {
            return one(c, name.len());
        }
    }
    match s.as_bytes().first()? {
        b'#' => numeric(&s[1..]).map(|(c, len)| ([Some(c), None], len + 1)),
        b if b.is_ascii_alphanumeric() => named(s),
        _ => None,
    }
}

/// The longest name of the table that `s` starts with, unless it lacks its `;` and `=` or a
/// letter or digit follows (the attribute-value rule).
fn named(s: &str) -> Option<([Option<char>; 2], usize)> {
    let b = s.as_bytes();
    let mut best = None;
    for end in 1..=b.len().min(LONGEST_NAME) {
        let last = b[end - 1];
        if !(last.is_ascii_alphanumeric() || last == b';') {
            break;
        }
        // The table holds every prefix of a name too, with (0, 0).
        match NAMED_ENTITIES.get(&s[..end]) {
            None => break,
            Some(&(0, _)) => {}
            Some(&(c1, c2)) => best = Some((c1, c2, end)),
        }
        if last == b';' {
            break;
        }
    }
    let (c1, c2, len) = best?;
    let next = b.get(len).copied();
    if b[len - 1] != b';' && next.is_some_and(|n| n == b'=' || n.is_ascii_alphanumeric()) {
        return None;
    }
    Some((
        [char::from_u32(c1), char::from_u32(c2).filter(|_| c2 != 0)],
        len,
    ))
}

/// The numeric reference `s` (what follows `&#`) starts with: its character and length.
fn numeric(s: &str) -> Option<(char, usize)> {
    let b = s.as_bytes();
    let (radix, start) = match b.first() {
        Some(b'x' | b'X') => (16, 1),
        _ => (10, 0),
    };
    let digits = b[start..]
        .iter()
        .take_while(|&&d| char::from(d).is_digit(radix))
        .count();
    if digits == 0 {
        return None;
    }
    // Saturates past U+10FFFF: the value only needs to be known to be too large.
    let n = b[start..start + digits].iter().fold(0u32, |n, &d| {
        let v = char::from(d).to_digit(radix).unwrap_or(0);
        n.saturating_mul(radix).saturating_add(v).min(0x11_0000)
    });
    let mut len = start + digits;
    if b.get(len) == Some(&b';') {
        len += 1;
    }
    let c = match n {
        0 | 0xD800..=0xDFFF | 0x11_0000.. => '\u{FFFD}',
        0x80..=0x9F => match WINDOWS_1252[(n - 0x80) as usize] {
            0 => char::from_u32(n)?,
            w => char::from_u32(u32::from(w))?,
        },
        _ => char::from_u32(n)?,
    };
    Some((c, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value html5ever's tokenizer gives the `href` of `<a href="{value}">`.
    fn html5ever_href(value: &str) -> Option<String> {
        let tags = super::super::tags::tests::html5ever_tags(&format!("<a href=\"{value}\">"));
        let a = tags.first()?;
        let href = a.attrs.iter().find(|at| &*at.name.local == "href")?;
        Some(href.value.to_string())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(3000))]
        /// An `href` decodes to what a browser's tokenizer makes of it: named references with
        /// and without `;` before letters, digits, `=` and others, prefixes of longer names,
        /// numeric ones in both radixes, with and without `;`, out of range, in 0x80–0x9F.
        #[test]
        fn references_decode_as_html5ever_decodes_them(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "&", "amp", ";", "#", "x", "X", "38", "2F", "0", "128", "150", "159", "d800",
                "1114112", "99999999999", "copy", "not", "noti", "notin", "=", "a", "Z", "1",
                "lt", "gt", "quot", "eacute", "fjlig", "CounterClockwiseContourIntegral", "nbsp",
                "/", "?", "https://e.example/p?q=1", "é", " ",
            ]), 0..24)
        ) {
            let value = parts.concat();
            let want = html5ever_href(&value);
            proptest::prop_assert_eq!(Some(decode_references(value.as_bytes())), want, "{:?}", value);
        }
    }
}
