//! The top-level header block, read byte-exactly.
//!
//! Owns: finding the fields of the message's own header (name, unfolded value, exact byte
//! range including the line ending and any folded lines), so a field can be removed without
//! touching a byte around it, and the line ending the message uses. Does not own MIME parts
//! (see `mime.rs`) or decoding of encoded words (mail-parser does that for the Subject).

use memchr::memchr;

/// One header field as it sits in the message.
pub struct Field<'a> {
    /// Field name as written, without the colon or whitespace before it.
    pub name: &'a [u8],
    /// Raw value: after the colon, up to the end of the last folded line (line endings kept).
    pub value: &'a [u8],
    /// Bytes of the whole field, from its name through its final line ending.
    pub range: std::ops::Range<usize>,
}

impl Field<'_> {
    /// The value unfolded (line breaks dropped) and trimmed.
    pub fn unfolded(&self) -> String {
        let v: Vec<u8> = self
            .value
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&v).trim().to_string()
    }
}

/// The fields of the top-level header block, in order. Lines that are neither a field nor a
/// continuation (no colon) are skipped; the block ends at the first empty line.
pub fn fields(msg: &[u8]) -> Vec<Field<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        let first_end = line_end(msg, pos);
        let line = &msg[pos..first_end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        // Folded continuation lines belong to this field.
        let mut end = first_end;
        while end < msg.len() && matches!(msg[end], b' ' | b'\t') {
            end = line_end(msg, end);
        }
        if let Some(colon) = memchr(b':', line) {
            let name = trim_end(&line[..colon]);
            if !name.is_empty() && !name.iter().any(|&b| b == b' ' || b == b'\t') {
                out.push(Field {
                    name,
                    value: &msg[pos + colon + 1..end],
                    range: pos..end,
                });
            }
        }
        pos = end;
    }
    out
}

/// The line ending of the first line of `bytes`, or `fallback` when it has none.
pub fn line_ending<'a>(bytes: &[u8], fallback: &'a [u8]) -> &'a [u8] {
    match memchr(b'\n', bytes) {
        Some(i) if i > 0 && bytes[i - 1] == b'\r' => b"\r\n",
        Some(_) => b"\n",
        None => fallback,
    }
}

/// Offset just past the line that starts at `pos`.
fn line_end(msg: &[u8], pos: usize) -> usize {
    memchr(b'\n', &msg[pos..]).map_or(msg.len(), |i| pos + i + 1)
}

fn trim_end(s: &[u8]) -> &[u8] {
    let mut e = s.len();
    while e > 0 && matches!(s[e - 1], b' ' | b'\t') {
        e -= 1;
    }
    &s[..e]
}

/// Byte ranges of every field named `name` (ASCII case-insensitive), in order.
pub fn ranges(fields: &[Field<'_>], name: &str) -> Vec<std::ops::Range<usize>> {
    if name.is_empty() {
        return Vec::new();
    }
    fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| f.range.clone())
        .collect()
}

/// Appends `src` to `out` without the bytes in `doomed` (sorted, non-overlapping; ranges
/// reaching past `src` are clipped).
pub fn copy_without(src: &[u8], doomed: &[std::ops::Range<usize>], out: &mut Vec<u8>) {
    let mut pos = 0;
    for r in doomed {
        let (start, end) = (r.start.min(src.len()), r.end.min(src.len()));
        if start >= pos {
            out.extend_from_slice(&src[pos..start]);
            pos = end;
        }
    }
    out.extend_from_slice(&src[pos..]);
}

/// Removes every field named `name` (ASCII case-insensitive). `None` when there is none.
pub fn remove(msg: &[u8], name: &str) -> Option<Vec<u8>> {
    let doomed = ranges(&fields(msg), name);
    if doomed.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(msg.len());
    copy_without(msg, &doomed, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_folding_and_exact_ranges() {
        let m =
            b"Subject: a\r\n b\r\nX-Track-Opens : no\r\nbogus line\r\nTo: x\r\n\r\nBody: no\r\n";
        let f = fields(m);
        let names: Vec<&[u8]> = f.iter().map(|f| f.name).collect();
        assert_eq!(names, vec![&b"Subject"[..], b"X-Track-Opens", b"To"]);
        assert_eq!(f[0].unfolded(), "a b");
        assert_eq!(&m[f[0].range.clone()], b"Subject: a\r\n b\r\n");
    }

    #[test]
    fn remove_is_byte_exact() {
        let m =
            b"A: 1\nx-track-opens: no\n  more\nB: 2\nX-TRACK-OPENS: yes\n\nX-Track-Opens: body\n";
        let out = remove(m, "X-Track-Opens").unwrap_or_default();
        assert_eq!(out, b"A: 1\nB: 2\n\nX-Track-Opens: body\n".to_vec());
        assert!(remove(m, "X-Other").is_none());
        assert!(remove(m, "").is_none());
    }

    #[test]
    fn line_endings() {
        assert_eq!(line_ending(b"a\r\nb", b"?"), b"\r\n");
        assert_eq!(line_ending(b"a\nb", b"?"), b"\n");
        assert_eq!(line_ending(b"ab", b"?"), b"?");
    }
}
