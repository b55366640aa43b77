//! 7bit, 8bit and binary parts: the body is its own decoding, so the markup is inserted as is.
//!
//! Owns: keeping the line that receives the markup within 998 octets (RFC 5322 §2.1.1).
//! When it would not fit, the markup is broken between its attributes, where a line break is
//! whitespace inside a tag and changes nothing for HTML. Only when the original line is itself
//! within a few octets of the limit does a break land before `<img` or after `>`.

use memchr::{memchr, memrchr};

/// Longest line, without its CRLF, that SMTP must carry.
pub const MAX_LINE: usize = 998;

/// Of `edits` (in order), those that keep every line of `body` within [`MAX_LINE`] when
/// applied: a link's URL cannot be broken across lines, so an edit that would make its line
/// too long (or that spans a line break) is left out.
pub fn fitting(body: &[u8], edits: Vec<super::edit::Edit>) -> Vec<super::edit::Edit> {
    // The line being filled: its start and its length so far with the edits kept on it.
    let mut current: Option<(usize, usize)> = None;
    edits
        .into_iter()
        .filter(|e| {
            let start = e.range.start.min(body.len());
            let end = e.range.end.clamp(start, body.len());
            if memchr(b'\n', &body[start..end]).is_some() {
                return false;
            }
            let line_start = memrchr(b'\n', &body[..start]).map_or(0, |i| i + 1);
            let len = match current {
                Some((s, len)) if s == line_start => len,
                _ => {
                    let line_end = memchr(b'\n', &body[end..]).map_or(body.len(), |i| end + i);
                    let cr = usize::from(body[..line_end].ends_with(b"\r"));
                    line_end - line_start - cr
                }
            };
            let after = len - (end - start) + e.with.len();
            let ok = after <= MAX_LINE;
            current = Some((line_start, if ok { after } else { len }));
            ok
        })
        .collect()
}

/// Writes `body` with `markup` inserted at `p` to `out`, using `nl` for any line break added.
pub fn splice(body: &[u8], p: usize, markup: &[u8], nl: &[u8], out: &mut Vec<u8>) {
    let p = p.min(body.len());
    let (head, tail) = body.split_at(p);
    let start = out.len();
    out.extend_from_slice(head);
    splice_into(out, start, tail, markup, nl);
}

/// [`splice`] for a body whose part before the insertion point is already in `out` (from
/// `start`): appends `markup`, then `tail`, the body after it.
pub fn splice_into(out: &mut Vec<u8>, start: usize, tail: &[u8], markup: &[u8], nl: &[u8]) {
    let head = &out[start.min(out.len())..];
    let prefix = head.len() - memrchr(b'\n', head).map_or(0, |i| i + 1);
    let suffix = match memchr(b'\n', tail) {
        Some(i) if i > 0 && tail[i - 1] == b'\r' => i - 1,
        Some(i) => i,
        None => tail.len(),
    };
    if prefix + markup.len() + suffix <= MAX_LINE {
        out.extend_from_slice(markup);
    } else {
        wrap(markup, prefix, suffix, nl, out);
    }
    out.extend_from_slice(tail);
}

/// Writes `markup` starting at column `col`, with `suffix` octets to follow on the last line,
/// turning separating spaces into line breaks where a line would pass [`MAX_LINE`].
fn wrap(markup: &[u8], mut col: usize, suffix: usize, nl: &[u8], out: &mut Vec<u8>) {
    // Pieces between spaces, with the closing `>` as a piece of its own (a break may precede it).
    let body = markup.strip_suffix(b">").unwrap_or(markup);
    let has_gt = body.len() < markup.len();
    let mut pieces: Vec<(&[u8], &[u8])> = Vec::with_capacity(8);
    for (i, piece) in body.split(|&b| b == b' ').enumerate() {
        pieces.push((if i == 0 { b"" } else { b" " }, piece));
    }
    if has_gt {
        pieces.push((b"", b">"));
    }
    let n = pieces.len();
    for (i, (sep, piece)) in pieces.into_iter().enumerate() {
        let follow = if i + 1 == n { suffix } else { 0 };
        if col > 0 && col + sep.len() + piece.len() + follow > MAX_LINE {
            out.extend_from_slice(nl);
            col = 0;
        } else {
            out.extend_from_slice(sep);
            col += sep.len();
        }
        out.extend_from_slice(piece);
        col += piece.len();
    }
    if suffix > 0 && col + suffix > MAX_LINE {
        out.extend_from_slice(nl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn longest_line(b: &[u8]) -> usize {
        b.split(|&c| c == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
            .max()
            .unwrap_or(0)
    }

    const M: &[u8] = b"<img src=\"http://x/o/t.gif\" width=\"1\" alt=\"\">";

    #[test]
    fn short_lines_get_plain_insertion() {
        let mut out = Vec::new();
        splice(b"a\r\nb</body>\r\n", 4, M, b"\r\n", &mut out);
        let want = [&b"a\r\nb"[..], M, b"</body>\r\n"].concat();
        assert_eq!(out, want);
    }

    #[test]
    fn long_lines_break_between_attributes() {
        for before in [0usize, 1, 500, 950, 960, 990, 994, 996, 998] {
            for after in [7usize, 20, 500, 950, 990] {
                if before + after > MAX_LINE {
                    continue;
                }
                let mut body = vec![b'x'; before];
                body.extend_from_slice(b"</body>");
                body.extend(std::iter::repeat_n(b'y', after - 7));
                body.extend_from_slice(b"\r\n");
                let mut out = Vec::new();
                splice(&body, before, M, b"\r\n", &mut out);
                assert!(
                    longest_line(&out) <= MAX_LINE,
                    "before={before} after={after}"
                );
                // Removing the added line breaks gives the markup back, modulo the spaces they replaced.
                let joined: Vec<u8> = out
                    .iter()
                    .copied()
                    .filter(|&c| c != b'\r' && c != b'\n')
                    .collect();
                let plain: Vec<u8> = [&body[..before], M, &body[before..]].concat();
                let plain: Vec<u8> = plain
                    .into_iter()
                    .filter(|&c| c != b'\r' && c != b'\n')
                    .collect();
                let strip = |v: &[u8]| {
                    v.iter()
                        .copied()
                        .filter(|&c| c != b' ')
                        .collect::<Vec<u8>>()
                };
                assert_eq!(strip(&joined), strip(&plain));
            }
        }
    }
}
