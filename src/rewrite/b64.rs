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
const DEFAULT_LINE: usize = 76;

/// Decodes a base64 body. `None` when it holds anything but base64, whitespace and trailing
/// padding, or ends in a lone character.
pub fn decode(enc: &[u8]) -> Option<Vec<u8>> {
    decode_lines(enc).or_else(|| decode_any(enc))
}

/// The shape nearly every mailer writes (lines of base64 characters ending in CRLF or LF,
/// canonical padding at the very end only): the lines' characters gathered a few KiB at a time
/// and decoded by the vectorised decoder. `None` for any other shape, which [`decode_any`] then
/// decides on: what this accepts, that accepts alike (a property test holds the two together).
fn decode_lines(enc: &[u8]) -> Option<Vec<u8>> {
    /// Characters gathered before they are decoded (a multiple of 4).
    const STAGE: usize = 4096;
    let mut out = Vec::with_capacity(enc.len() / 4 * 3 + 3);
    let mut stage = Vec::with_capacity(STAGE + DEFAULT_LINE + 2);
    // Decodes the stage's whole groups but the last character's (all of it at the end, so the
    // body's last group, which may be padded, is decoded last): padding is refused anywhere
    // but in that group.
    let flush = |stage: &mut Vec<u8>, out: &mut Vec<u8>, last: bool| -> Option<()> {
        let whole = if last {
            stage.len()
        } else {
            stage.len().saturating_sub(1) / 4 * 4
        };
        let before = out.len();
        base64_simd::STANDARD
            .decode_append(&stage[..whole], out)
            .ok()?;
        if !last && out.len() - before != whole / 4 * 3 {
            return None;
        }
        stage.drain(..whole);
        Some(())
    };
    // A line's characters onto the stage, a stage at a time (a body written as one long line
    // stays within the stage too).
    let push = |stage: &mut Vec<u8>, out: &mut Vec<u8>, mut chars: &[u8]| -> Option<()> {
        while !chars.is_empty() {
            let take = chars.len().min(STAGE);
            stage.extend_from_slice(&chars[..take]);
            chars = &chars[take..];
            if stage.len() >= STAGE {
                flush(stage, out, false)?;
            }
        }
        Some(())
    };
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', enc) {
        let line = &enc[start..nl];
        push(
            &mut stage,
            &mut out,
            line.strip_suffix(b"\r").unwrap_or(line),
        )?;
        start = nl + 1;
    }
    push(&mut stage, &mut out, &enc[start..])?;
    flush(&mut stage, &mut out, true)?;
    Some(out)
}

/// Decodes any body [`decode`] accepts, a character at a time where it must.
fn decode_any(enc: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; enc.len() / 4 * 3 + 3];
    let mut o = 0;
    let mut acc: u32 = 0;
    let mut n = 0u8;
    let mut padded = false;
    let mut i = 0;
    while i < enc.len() {
        // Fast path: four data characters in a row, the common case inside a line.
        if n == 0
            && let Some(q) = enc.get(i..i + 4)
        {
            let v = [
                TABLE[usize::from(q[0])],
                TABLE[usize::from(q[1])],
                TABLE[usize::from(q[2])],
                TABLE[usize::from(q[3])],
            ];
            if (v[0] | v[1] | v[2] | v[3]) < 64 && !padded {
                let w = u32::from(v[0]) << 18
                    | u32::from(v[1]) << 12
                    | u32::from(v[2]) << 6
                    | u32::from(v[3]);
                out[o..o + 3].copy_from_slice(&[(w >> 16) as u8, (w >> 8) as u8, w as u8]);
                o += 3;
                i += 4;
                continue;
            }
        }
        let v = TABLE[usize::from(enc[i])];
        i += 1;
        if v < 64 {
            if padded {
                return None;
            }
            acc = acc << 6 | u32::from(v);
            n += 1;
            if n == 4 {
                out[o..o + 3].copy_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
                o += 3;
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
        2 => {
            out[o] = (acc >> 4) as u8;
            o += 1;
        }
        3 => {
            out[o..o + 2].copy_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]);
            o += 2;
        }
        _ => return None,
    }
    out.truncate(o);
    Some(out)
}

/// Number of base64 characters (not padding or whitespace) in `line`.
fn data_count(line: &[u8]) -> usize {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    if memchr::memchr3(b' ', b'\t', b'=', body).is_none() && memchr::memchr(b'\r', body).is_none() {
        body.len()
    } else {
        body.iter().filter(|&&c| TABLE[usize::from(c)] < 64).count()
    }
}

/// Lines of `enc` as (start, end just past `\n`), last to first.
fn lines_rev(enc: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut end = enc.len();
    std::iter::from_fn(move || {
        if end == 0 {
            return None;
        }
        let search_end = if enc[end - 1] == b'\n' { end - 1 } else { end };
        let start = memchr::memrchr(b'\n', &enc[..search_end]).map_or(0, |i| i + 1);
        let line = (start, end);
        end = start;
        Some(line)
    })
}

/// Where the re-encoded tail starts: (byte offset of data character `target`, or just past the
/// last one; data characters before it on its line; the line length to wrap at). `total` is
/// the number of data characters. Walks from the end, where the pixel usually goes, or from
/// the start when `target` is in the first half.
fn find_group(enc: &[u8], target: usize, total: usize) -> (usize, usize, usize) {
    // The first line that holds data sets the width, if another line follows it.
    let mut line = DEFAULT_LINE;
    let mut start = 0;
    while start < enc.len() {
        let end = memchr::memchr(b'\n', &enc[start..]).map_or(enc.len(), |i| start + i + 1);
        let n = data_count(&enc[start..end]);
        if n > 0 {
            // A width past SMTP's 998-octet limit is not one to copy.
            if n < total && end < enc.len() && n <= 998 {
                line = n;
            }
            break;
        }
        start = end;
    }
    // Data character `target` on the line at `start..end` whose first one is number `first`.
    let on_line = |start: usize, end: usize, first: usize| {
        let mut k = first;
        for (j, &c) in enc[start..end].iter().enumerate() {
            if TABLE[usize::from(c)] < 64 {
                if k == target {
                    return Some((start + j, k - first, line));
                }
                k += 1;
            }
        }
        None
    };
    if target < total / 2 {
        // In the first half (the first tracked link of a message): from the start.
        let mut before = 0;
        let mut start = 0;
        while start < enc.len() {
            let end = memchr::memchr(b'\n', &enc[start..]).map_or(enc.len(), |i| start + i + 1);
            let n = data_count(&enc[start..end]);
            if target < before + n
                && let Some(found) = on_line(start, end, before)
            {
                return found;
            }
            before += n;
            start = end;
        }
    } else if target < total {
        let mut after = 0;
        for (start, end) in lines_rev(enc) {
            let n = data_count(&enc[start..end]);
            let first = total - after - n;
            if target >= first
                && let Some(found) = on_line(start, end, first)
            {
                return found;
            }
            after += n;
        }
    }
    let last_end = enc
        .iter()
        .rposition(|&c| TABLE[usize::from(c)] < 64)
        .map_or(0, |i| i + 1);
    (last_end, col_at(enc, last_end), line)
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
    let pieces = [&dec[group * 3..p], insert, &dec[p..]];
    reencode_from(enc, dec, group, &pieces, nl, out);
}

/// Writes `enc` (whose decoding is `dec`) with `edits` (sorted, not overlapping, within
/// `dec`) applied to `out`: kept verbatim up to the group holding the first edit, re-encoded
/// from there.
pub fn edit(enc: &[u8], dec: &[u8], edits: &[super::edit::Edit], nl: &[u8], out: &mut Vec<u8>) {
    let Some(first) = edits.first() else {
        out.extend_from_slice(enc);
        return;
    };
    let group = first.range.start.min(dec.len()) / 3;
    let from = group * 3;
    // The edited text from `from` on, as pieces of `dec` and of the edits: streamed into the
    // encoder, never copied whole.
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(2 * edits.len() + 1);
    let mut at = from.min(dec.len());
    for e in edits {
        let start = e.range.start.clamp(at, dec.len());
        pieces.push(&dec[at..start]);
        pieces.push(&e.with);
        at = e.range.end.clamp(start, dec.len());
    }
    pieces.push(&dec[at..]);
    reencode_from(enc, dec, group, &pieces, nl, out);
}

/// Writes `enc` verbatim up to 4-character group `group`, then `pieces` (the decoded text from
/// that group on, in order) encoded, continuing that line and wrapping as the body does, then
/// whatever followed the last base64 character.
fn reencode_from(
    enc: &[u8],
    dec: &[u8],
    group: usize,
    pieces: &[&[u8]],
    nl: &[u8],
    out: &mut Vec<u8>,
) {
    let total = dec.len() / 3 * 4 + [0, 2, 3][dec.len() % 3];
    let (start, col, line) = find_group(enc, group * 4, total);
    // What followed the last base64 character or padding (usually the final line break).
    let trailer = enc
        .iter()
        .rposition(|&c| TABLE[usize::from(c)] != WS)
        .map_or(enc.len(), |i| i + 1);
    out.extend_from_slice(&enc[..start]);
    let mut w = Wrapped {
        out,
        nl,
        col,
        line: line.max(1),
        carry: [0; 3],
        held: 0,
        chars: Vec::new(),
    };
    for p in pieces {
        w.feed(p);
    }
    w.finish();
    out.extend_from_slice(&enc[trailer..]);
}

/// A base64 encoder writing lines of `line` characters (the first continuing at `col`), fed
/// the decoded text in pieces: whole 3-byte groups are encoded in blocks, a piece's last one
/// or two bytes wait for the next piece.
struct Wrapped<'a> {
    out: &'a mut Vec<u8>,
    nl: &'a [u8],
    col: usize,
    line: usize,
    carry: [u8; 3],
    held: usize,
    /// A block's characters before they are cut into lines.
    chars: Vec<u8>,
}

impl Wrapped<'_> {
    fn feed(&mut self, mut data: &[u8]) {
        while self.held > 0 && self.held < 3 && !data.is_empty() {
            self.carry[self.held] = data[0];
            self.held += 1;
            data = &data[1..];
        }
        if self.held == 3 {
            let carry = self.carry;
            self.groups(&carry);
            self.held = 0;
        }
        let whole = data.len() / 3 * 3;
        for block in data[..whole].chunks(3 * 1024) {
            self.groups(block);
        }
        for &b in &data[whole..] {
            self.carry[self.held] = b;
            self.held += 1;
        }
    }

    /// Encodes `groups` (a multiple of 3 bytes long) and writes them wrapped: encoded aside by
    /// the vectorised encoder, then cut into lines.
    fn groups(&mut self, groups: &[u8]) {
        self.chars.clear();
        base64_simd::STANDARD.encode_append(groups, &mut self.chars);
        self.write_chars();
    }

    /// Cuts `chars` into the lines: a line break whenever a line is full.
    fn write_chars(&mut self) {
        let mut rest = &self.chars[..];
        while !rest.is_empty() {
            if self.col >= self.line {
                self.out.extend_from_slice(self.nl);
                self.col = 0;
            }
            let take = (self.line - self.col).min(rest.len());
            self.out.extend_from_slice(&rest[..take]);
            self.col += take;
            rest = &rest[take..];
        }
    }

    /// The last one or two bytes, padded.
    fn finish(mut self) {
        if self.held == 0 {
            return;
        }
        // The second byte only when there is one (the carry may hold an older group's).
        let (a, b) = (
            self.carry[0],
            if self.held == 2 { self.carry[1] } else { 0 },
        );
        let acc = u32::from(a) << 16 | u32::from(b) << 8;
        self.chars.clear();
        self.chars.extend_from_slice(&[
            ALPHABET[(acc >> 18) as usize & 63],
            ALPHABET[(acc >> 12) as usize & 63],
            if self.held == 2 {
                ALPHABET[(acc >> 6) as usize & 63]
            } else {
                b'='
            },
            b'=',
        ]);
        self.write_chars();
    }
}

#[cfg(test)]
mod tests;
