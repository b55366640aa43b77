//! Edits to a decoded part (a tracked link's `href` value replaced, the pixel inserted), and
//! applying them to the decoded text. The transfer encodings apply them to their encoded form
//! (`qp::edit`, `b64::edit`) so that the decoded result is exactly what [`apply`] gives.

use std::ops::Range;

/// Decoded bytes `range` replaced by `with` (an insertion when `range` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// What is replaced, as offsets into the decoded part.
    pub range: Range<usize>,
    /// What replaces it.
    pub with: Vec<u8>,
}

/// Whether `edits` are in order, none overlapping another or reaching past `len`.
pub fn well_formed(edits: &[Edit], len: usize) -> bool {
    let mut at = 0;
    edits.iter().all(|e| {
        let ok = e.range.start >= at && e.range.start <= e.range.end && e.range.end <= len;
        at = e.range.end.max(at);
        ok
    })
}

/// `dec` with `edits` applied.
pub fn apply(dec: &[u8], edits: &[Edit]) -> Vec<u8> {
    apply_from(dec, 0, edits)
}

/// `dec[from..]` with `edits` applied (those are offsets into the whole of `dec`, none
/// starting before `from`).
pub fn apply_from(dec: &[u8], from: usize, edits: &[Edit]) -> Vec<u8> {
    let grow: usize = edits
        .iter()
        .map(|e| e.with.len().saturating_sub(e.range.len()))
        .sum();
    let mut out = Vec::with_capacity(dec.len().saturating_sub(from) + grow);
    apply_into(dec, from, edits, &mut out);
    out
}

/// [`apply_from`], appended to `out`.
pub fn apply_into(dec: &[u8], from: usize, edits: &[Edit], out: &mut Vec<u8>) {
    let mut at = from.min(dec.len());
    for e in edits {
        let start = e.range.start.clamp(at, dec.len());
        out.extend_from_slice(&dec[at..start]);
        out.extend_from_slice(&e.with);
        at = e.range.end.clamp(start, dec.len());
    }
    out.extend_from_slice(&dec[at..]);
}

#[cfg(test)]
mod tests {
    use super::super::{b64, qp};
    use super::*;
    use proptest::prelude::*;

    fn edit(at: usize, cut: usize, with: &str) -> Edit {
        Edit {
            range: at..at + cut,
            with: with.as_bytes().to_vec(),
        }
    }

    #[test]
    fn apply_replaces_and_inserts_in_order() {
        let d = b"0123456789";
        assert_eq!(
            apply(d, &[edit(1, 2, "ab"), edit(5, 0, "X"), edit(8, 2, "")]),
            b"0ab34X567"
        );
        assert_eq!(apply_from(d, 4, &[edit(5, 1, "yy")]), b"4yy6789");
        assert!(well_formed(&[edit(1, 2, ""), edit(3, 0, "")], 10));
        assert!(!well_formed(&[edit(3, 2, ""), edit(4, 0, "")], 10));
        assert!(!well_formed(&[edit(9, 2, "")], 10));
    }

    /// Lines of a quoted-printable body, at most 76 octets each.
    fn qp_lines_ok(b: &[u8]) -> bool {
        b.split(|&c| c == b'\n')
            .all(|l| l.strip_suffix(b"\r").unwrap_or(l).len() <= qp::MAX_LINE)
    }

    /// Random edits of `dec` that keep clear of line breaks (as a link's `href` value does).
    fn edits_of(dec: &[u8], picks: &[(usize, usize, usize)]) -> Vec<Edit> {
        let mut out: Vec<Edit> = Vec::new();
        let withs = [
            "https://t.example/c/AQcH-_x",
            "",
            "=3D ",
            "<img src=\"x\">",
            "a b\t",
        ];
        for &(at, cut, w) in picks {
            let start = at % (dec.len() + 1);
            let end = (start + cut % 12).min(dec.len());
            if out.last().is_some_and(|e: &Edit| e.range.end > start)
                || dec[start..end].iter().any(|&c| c == b'\r' || c == b'\n')
            {
                continue;
            }
            out.push(Edit {
                range: start..end,
                with: withs[w % withs.len()].as_bytes().to_vec(),
            });
        }
        out.sort_by_key(|e| e.range.start);
        let mut at = 0;
        out.retain(|e| {
            let keep = e.range.start >= at;
            if keep {
                at = e.range.end;
            }
            keep
        });
        out
    }

    #[test]
    fn qp_edits_touch_only_their_lines() {
        let enc: &[u8] = b"<p>caf=C3=A9 <a href=3D\"https://shop.example/a-rather-long-path/th=\r\nat-wraps?x=3D1\">x</a></p>\r\n<p>untouched line</p>\r\n<a href=3D\"http://b.ex=\r\nample/\">b</a>\r\n";
        let (dec, map) = qp::decode_mapped(enc);
        let url = |host: &str| {
            let s = String::from_utf8_lossy(&dec).into_owned();
            let i = s.find(host).unwrap_or(0);
            let j = i + s[i..].find('"').unwrap_or(0);
            i..j
        };
        let edits = vec![
            Edit {
                range: url("https://shop"),
                with: b"https://t.example/c/ONE".to_vec(),
            },
            Edit {
                range: url("http://b.ex"),
                with: b"https://t.example/c/TWO".to_vec(),
            },
        ];
        let mut out = Vec::new();
        assert!(qp::edit(enc, &dec, &map, &edits, b"\r\n", &mut out));
        assert_eq!(qp::decode(&out), apply(&dec, &edits));
        assert!(qp_lines_ok(&out));
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("\r\n<p>untouched line</p>\r\n"), "{s}");
        assert!(s.starts_with("<p>caf=C3=A9 <a href=3D\""), "{s}");
    }

    /// Whether the `\n` before decoded offset `p` is a hard line break of `enc` ending the
    /// body's decoding there (nothing after it but the end): conservative, for the property's
    /// account of refusals.
    fn enc_breaks_at(_enc: &[u8], dec: &[u8], p: usize) -> bool {
        p == dec.len()
    }

    proptest! {
        #[test]
        fn qp_edits_decode_to_the_edited_text(
            pieces in proptest::collection::vec(proptest::sample::select(vec![
                "a", "href=3D\"", "https://x.example/", "=\r\n", "=\n", "\r\n", "\n", "=C3=A9",
                " ", "\t", "=3D", "= ", "x  \r\n", "y=\r\n", "0123456789012345678901234567890123456789",
            ]), 0..30),
            picks in proptest::collection::vec((0usize..2000, 0usize..40, 0usize..5), 0..5),
        ) {
            let enc = pieces.concat().into_bytes();
            let (dec, map) = qp::decode_mapped(&enc);
            prop_assert_eq!(&dec, &qp::decode(&enc));
            let edits = edits_of(&dec, &picks);
            let mut out = Vec::new();
            if qp::edit(&enc, &dec, &map, &edits, b"\r\n", &mut out) {
                prop_assert_eq!(qp::decode(&out), apply(&dec, &edits));
                if qp_lines_ok(&enc) {
                    prop_assert!(qp_lines_ok(&out), "{:?}", String::from_utf8_lossy(&out));
                }
            } else {
                prop_assert!(out.is_empty());
                // Refused only for an edit that starts or ends inside a line break, or after
                // the last one.
                let inside = |p: usize| {
                    (p > 0 && dec[p - 1] == b'\r' && dec.get(p) == Some(&b'\n'))
                        || (p == dec.len() && dec.last() == Some(&b'\n'))
                        || (p > 0 && dec[p - 1] == b'\n' && enc_breaks_at(&enc, &dec, p))
                };
                prop_assert!(
                    edits.iter().any(|e| inside(e.range.start) || inside(e.range.end)),
                    "refused {:?} of {:?}", edits, String::from_utf8_lossy(&enc)
                );
            }
            if edits.is_empty() {
                prop_assert!(qp::edit(&enc, &dec, &map, &edits, b"\r\n", &mut Vec::new()));
            }
        }

        #[test]
        fn base64_edits_decode_to_the_edited_text(
            data in proptest::collection::vec(any::<u8>(), 0..400),
            line in proptest::sample::select(vec![64usize, 72, 76]),
            picks in proptest::collection::vec((0usize..2000, 0usize..40, 0usize..5), 0..5),
        ) {
            let mut flat = Vec::new();
            b64::splice(b"", b"", 0, &data, b"", &mut flat);
            let flat: Vec<u8> = flat.into_iter().filter(|c| !c.is_ascii_whitespace()).collect();
            let mut enc = Vec::new();
            for chunk in flat.chunks(line) {
                enc.extend_from_slice(chunk);
                enc.extend_from_slice(b"\r\n");
            }
            let edits = edits_of(&data, &picks);
            let mut out = Vec::new();
            b64::edit(&enc, &data, &edits, b"\r\n", &mut out);
            prop_assert_eq!(b64::decode(&out), Some(apply(&data, &edits)));
            // Whole groups before the first edit are kept as they were, and so are the lines
            // before the one the first edit's group is on (a line may be continued).
            let first = edits.first().map_or(data.len(), |e| e.range.start);
            let whole = first / 3 * 4;
            let chars = |b: &[u8]| -> Vec<u8> { b.iter().copied().filter(|c| !c.is_ascii_whitespace()).collect() };
            prop_assert_eq!(&chars(&out)[..whole], &chars(&enc)[..whole]);
            let kept = whole.saturating_sub(1) / line * (line + 2);
            prop_assert_eq!(&out[..kept], &enc[..kept]);
        }
    }
}
