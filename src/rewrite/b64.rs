//! Base64 bodies (RFC 2045 §6.8): strict decoding, and a splice that re-encodes only the tail.
//!
//! Owns: the decoder used for placement and the splice. The encoded text is kept verbatim up to
//! the 4-character group holding the insertion point (whole groups decode to the same bytes
//! wherever they sit), and only the rest is re-encoded, continuing the current line and
//! wrapping at the part's own line length (the length of its first line), with its own line
//! ending. Whatever followed the last base64 character (usually a final line break) is kept.
//! A body that is not clean base64 (stray characters, data after padding) is refused rather
//! than guessed at.

/// `TABLE[c]` is the 6-bit value of base64 character `c`, [`WS`] for whitespace, else [`BAD`].
const TABLE: [u8; 256] = {
    let mut t = [BAD; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t[b' ' as usize] = WS;
    t[b'\t' as usize] = WS;
    t[b'\r' as usize] = WS;
    t[b'\n' as usize] = WS;
    t[b'=' as usize] = PAD;
    t
};
const BAD: u8 = 0xff;
const WS: u8 = 0xfe;
const PAD: u8 = 0xfd;
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Line length used when the body is one line, so its own length says nothing.
pub const DEFAULT_LINE: usize = 76;

/// Decodes a base64 body. `None` when it holds anything but base64, whitespace and trailing
/// padding, or ends in a lone character.
pub fn decode(enc: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(enc.len() / 4 * 3 + 3);
    let mut acc: u32 = 0;
    let mut n = 0u8;
    let mut padded = false;
    for &c in enc {
        let v = TABLE[usize::from(c)];
        if v < 64 {
            if padded {
                return None;
            }
            acc = acc << 6 | u32::from(v);
            n += 1;
            if n == 4 {
                out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
                acc = 0;
                n = 0;
            }
        } else if v == PAD {
            padded = true;
        } else if v == BAD {
            return None;
        }
    }
    match n {
        0 => {}
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => return None,
    }
    Some(out)
}

/// Where the re-encoded tail starts: (byte offset of data character `target`, or just past the
/// last one; data characters before it on its line; length of the first line).
fn find_group(enc: &[u8], target: usize) -> (usize, usize, usize) {
    let mut count = 0;
    let mut col = 0;
    let mut first_line = None;
    let mut at = None;
    let mut last_end = 0;
    for (i, &c) in enc.iter().enumerate() {
        let v = TABLE[usize::from(c)];
        if v < 64 {
            if count == target && at.is_none() {
                at = Some((i, col));
            }
            count += 1;
            col += 1;
            last_end = i + 1;
        } else if c == b'\n' {
            if first_line.is_none() && count > 0 {
                first_line = Some(col);
            }
            if at.is_none() {
                col = 0;
            }
        }
    }
    // Only a line break before the last data character makes the first line a line length.
    let line = match first_line {
        Some(l) if l > 0 && l < count => l,
        _ => DEFAULT_LINE,
    };
    match at {
        Some((i, col)) => (i, col, line),
        None => (last_end, col_at(enc, last_end), line),
    }
}

/// Data characters between the last line break before `end` and `end`.
fn col_at(enc: &[u8], end: usize) -> usize {
    let start = memchr::memrchr(b'\n', &enc[..end]).map_or(0, |i| i + 1);
    enc[start..end]
        .iter()
        .filter(|&&c| TABLE[usize::from(c)] < 64)
        .count()
}

/// Writes `enc` (whose decoding is `dec`) with `insert` added at decoded offset `p` to `out`.
pub fn splice(enc: &[u8], dec: &[u8], p: usize, insert: &[u8], nl: &[u8], out: &mut Vec<u8>) {
    let p = p.min(dec.len());
    let group = p / 3;
    let (start, mut col, line) = find_group(enc, group * 4);
    // What followed the last base64 character or padding (usually the final line break).
    let trailer = enc
        .iter()
        .rposition(|&c| TABLE[usize::from(c)] != WS)
        .map_or(enc.len(), |i| i + 1);
    out.extend_from_slice(&enc[..start]);
    let mut tail = dec[group * 3..p]
        .iter()
        .chain(insert)
        .chain(&dec[p..])
        .copied();
    let mut push = |c: u8, out: &mut Vec<u8>| {
        if col >= line {
            out.extend_from_slice(nl);
            col = 0;
        }
        out.push(c);
        col += 1;
    };
    while let Some(a) = tail.next() {
        let b = tail.next();
        let c = b.and_then(|_| tail.next());
        let acc = u32::from(a) << 16 | u32::from(b.unwrap_or(0)) << 8 | u32::from(c.unwrap_or(0));
        push(ALPHABET[(acc >> 18) as usize & 63], out);
        push(ALPHABET[(acc >> 12) as usize & 63], out);
        push(
            if b.is_some() {
                ALPHABET[(acc >> 6) as usize & 63]
            } else {
                b'='
            },
            out,
        );
        push(
            if c.is_some() {
                ALPHABET[acc as usize & 63]
            } else {
                b'='
            },
            out,
        );
        if c.is_none() {
            break;
        }
    }
    out.extend_from_slice(&enc[trailer..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_lines(data: &[u8], line: usize) -> Vec<u8> {
        let mut out = Vec::new();
        splice(b"", b"", 0, data, b"\r\n", &mut out);
        // Re-wrap through a one-line splice to the requested width.
        let flat: Vec<u8> = out
            .into_iter()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let mut wrapped = Vec::new();
        for chunk in flat.chunks(line) {
            wrapped.extend_from_slice(chunk);
            wrapped.extend_from_slice(b"\r\n");
        }
        wrapped
    }

    #[test]
    fn decodes_and_rejects() {
        assert_eq!(decode(b"SGVs\r\nbG8=\r\n"), Some(b"Hello".to_vec()));
        assert_eq!(decode(b"SGVsbA"), Some(b"Hell".to_vec()));
        assert_eq!(decode(b"SGVsb"), None);
        assert_eq!(decode(b"SGVs=bG8="), None);
        assert_eq!(decode(b"SGV*"), None);
    }

    #[test]
    fn splice_keeps_prefix_and_line_length() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for line in [76usize, 72, 64] {
            let enc = encode_lines(&data, line);
            assert_eq!(decode(&enc).as_deref(), Some(&data[..]));
            for p in [0usize, 1, 2, 3, 500, 998, 999, 1000] {
                let mut out = Vec::new();
                splice(&enc, &data, p, b"<img>", b"\r\n", &mut out);
                let want = [&data[..p], b"<img>", &data[p..]].concat();
                assert_eq!(decode(&out), Some(want), "line={line} p={p}");
                let whole = p / 3 * 4;
                let kept = whole + whole / line * 2;
                assert_eq!(&out[..kept], &enc[..kept]);
                let lens: Vec<usize> = out.split(|&c| c == b'\n').map(|l| l.len()).collect();
                assert!(
                    lens[..lens.len() - 2].iter().all(|&l| l == line + 1),
                    "line={line} p={p}"
                );
                assert!(out.ends_with(b"\r\n"));
            }
        }
    }
}
