//! Quoted-printable (RFC 2045 §6.7): decoding, and splicing ASCII into the encoded form.
//!
//! Owns: the decoder used for placement, the mapping from a decoded offset back to the encoded
//! text, and the splice. The splice is provably equivalent to decode → insert → re-encode while
//! touching one physical line only: that line's encoded bytes before the insertion point are
//! kept, the inserted text follows encoded with soft line breaks (every line ≤ 76 columns),
//! then a soft break and the rest of the original line, unchanged, on a line of its own (it is
//! no longer than the original line). Soft breaks decode to nothing, so the decoded result is
//! the original with the insertion, and all other lines stay byte-identical.

use memchr::{memchr_iter, memchr2, memrchr};

use super::edit::Edit;

/// Longest encoded line, including the `=` of a soft break (RFC 2045 §6.7 rule 5).
pub const MAX_LINE: usize = 76;

/// One physical line of the encoded body.
struct Line {
    /// First byte of the line.
    start: usize,
    /// End of the encoded content: before trailing whitespace and a soft-break `=`.
    content_end: usize,
    /// End of the line before its terminator (CRLF or LF).
    raw_end: usize,
    /// Just past the terminator.
    end: usize,
    /// Ends with `=`: the line break is not part of the data.
    soft: bool,
}

/// The line occupying `enc[start..end]` (`end` just past its `\n`, or the end of `enc`).
fn line_at(enc: &[u8], start: usize, end: usize) -> Line {
    let raw_end = if end > start && enc[end - 1] == b'\n' {
        if end - 1 > start && enc[end - 2] == b'\r' {
            end - 2
        } else {
            end - 1
        }
    } else {
        end
    };
    let mut content_end = raw_end;
    while content_end > start && matches!(enc[content_end - 1], b' ' | b'\t') {
        content_end -= 1;
    }
    let soft = content_end > start && enc[content_end - 1] == b'=';
    if soft {
        content_end -= 1;
    }
    Line {
        start,
        content_end,
        raw_end,
        end,
        soft,
    }
}

/// Splits `enc` into physical lines, first to last (what [`LineMap`] records).
#[cfg(test)]
fn lines(enc: &[u8]) -> impl Iterator<Item = Line> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= enc.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &enc[start..]).map_or(enc.len(), |i| start + i + 1);
        let line = line_at(enc, start, end);
        start = end;
        Some(line)
    })
}

/// The same lines, last to first.
fn lines_rev(enc: &[u8]) -> impl Iterator<Item = Line> + '_ {
    let mut end = enc.len();
    std::iter::from_fn(move || {
        if end == 0 {
            return None;
        }
        let search_end = if enc[end - 1] == b'\n' { end - 1 } else { end };
        let start = memrchr(b'\n', &enc[..search_end]).map_or(0, |i| i + 1);
        let line = line_at(enc, start, end);
        end = start;
        Some(line)
    })
}

/// Each byte's value as a hex digit (either case), 0xff for the others.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'A' as usize + i] = 10 + i as u8;
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The byte an `=` at `content[i]` stands for, when followed by two hex digits.
fn escape_at(content: &[u8], i: usize) -> Option<u8> {
    let [hi, lo] = *content.get(i + 1..i + 3)?.first_chunk::<2>()?;
    // One test for both digits.
    let (hi, lo) = (HEX_VALUE[usize::from(hi)], HEX_VALUE[usize::from(lo)]);
    ((hi | lo) < 16).then_some(hi << 4 | lo)
}

/// Decodes one line's content (no terminator, no soft break) onto `out`. An `=` not followed by
/// two hex digits stands for itself, as most readers treat it.
#[cfg(test)]
fn decode_content(content: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'=', &content[i..]) {
        out.extend_from_slice(&content[i..i + off]);
        let eq = i + off;
        match escape_at(content, eq) {
            Some(b) => {
                out.push(b);
                i = eq + 3;
            }
            None => {
                out.push(b'=');
                i = eq + 1;
            }
        }
    }
    out.extend_from_slice(&content[i..]);
}

/// Decoded length of one line's content.
fn decoded_len(content: &[u8]) -> usize {
    let mut escapes = 0;
    let mut skip_to = 0;
    for eq in memchr_iter(b'=', content) {
        if eq >= skip_to && escape_at(content, eq).is_some() {
            escapes += 1;
            skip_to = eq + 3;
        }
    }
    content.len() - 2 * escapes
}

/// Encoded offset within `content` after `k` decoded bytes.
fn offset_after(content: &[u8], k: usize) -> usize {
    let (mut i, mut n) = (0, 0);
    while n < k && i < content.len() {
        i += if content[i] == b'=' && escape_at(content, i).is_some() {
            3
        } else {
            1
        };
        n += 1;
    }
    i
}

/// Decodes a quoted-printable body; trailing whitespace on a line is transport padding and
/// dropped, hard line breaks are kept as written. One pass over the body (the same result as
/// decoding [`lines`] one by one, which `locate` relies on; a test holds the two together).
pub fn decode(enc: &[u8]) -> Vec<u8> {
    decode_with(enc, None)
}

/// Where each physical line of a body starts: `[offset in the body, offset in its decoding]`
/// of the line's first byte, first to last (one entry per line, as [`lines`] splits them).
pub type LineMap = Vec<[u32; 2]>;

/// [`decode`], and the body's [`LineMap`], which [`edit`] finds the lines an edit touches by
/// without decoding anything again. The map is empty for a body past 4 GiB (then [`edit`]
/// refuses, and the caller falls back to the pixel's splice).
pub fn decode_mapped(enc: &[u8]) -> (Vec<u8>, LineMap) {
    let mut map = Vec::new();
    if u32::try_from(enc.len()).is_err() {
        return (decode(enc), map);
    }
    let out = decode_with(enc, Some(&mut map));
    (out, map)
}

fn decode_with(enc: &[u8], mut map: Option<&mut LineMap>) -> Vec<u8> {
    // Decoding never grows the text. Sized at the encoded length (which saves a pass): the
    // caller frees it before it allocates the output when the pixel alone goes in, and keeps
    // it for link edits, whose peak the memory test holds within the relay's reservation.
    let mut out = Vec::with_capacity(enc.len());
    // A line starts at `at`, `out` holding its decoding so far (offsets fit in u32: checked).
    let mut line_at_here = |at: usize, out: &Vec<u8>| {
        if let Some(m) = map.as_deref_mut()
            && at < enc.len()
        {
            m.push([at as u32, out.len() as u32]);
        }
    };
    line_at_here(0, &out);
    let mut i = 0;
    loop {
        let Some(j) = next_escape_or_break(enc, i) else {
            push_trimmed(&mut out, &enc[i..]);
            return out;
        };
        if enc[j] == b'\n' {
            let chunk = &enc[i..j];
            match chunk.strip_suffix(b"\r") {
                Some(c) => {
                    push_trimmed(&mut out, c);
                    out.extend_from_slice(b"\r\n");
                }
                None => {
                    push_trimmed(&mut out, chunk);
                    out.push(b'\n');
                }
            }
            i = j + 1;
            line_at_here(i, &out);
            continue;
        }
        out.extend_from_slice(&enc[i..j]);
        if let Some(b) = escape_at(enc, j) {
            out.push(b);
            i = j + 3;
            continue;
        }
        // A soft break: `=`, optional padding, then the line end or the end of the body.
        let mut k = j + 1;
        while k < enc.len() && matches!(enc[k], b' ' | b'\t') {
            k += 1;
        }
        match &enc[k..] {
            [] => return out,
            [b'\n', ..] => {
                i = k + 1;
                line_at_here(i, &out);
            }
            [b'\r', b'\n', ..] => {
                i = k + 2;
                line_at_here(i, &out);
            }
            _ => {
                out.push(b'=');
                i = j + 1;
            }
        }
    }
}

/// The first `=` or `\n` of `enc` from `from` on. Escapes come every few bytes in encoded HTML
/// (`=3D` in every attribute), so the next sixteen bytes are looked at eight at a time before
/// `memchr2` is called for a longer stretch.
fn next_escape_or_break(enc: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let mut i = from;
    for _ in 0..2 {
        let Some(chunk) = enc.get(i..i + 8) else {
            break;
        };
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        let (eq, nl) = (x ^ (u64::from(b'=') * ONES), x ^ (u64::from(b'\n') * ONES));
        // The lowest flagged byte is the first match (a borrow only flags bytes above one).
        let found = ((eq.wrapping_sub(ONES) & !eq) | (nl.wrapping_sub(ONES) & !nl)) & HIGH;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr2(b'=', b'\n', &enc[i..]).map(|k| i + k)
}

/// Appends `chunk` without its trailing spaces and tabs.
fn push_trimmed(out: &mut Vec<u8>, chunk: &[u8]) {
    let keep = chunk
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    out.extend_from_slice(&chunk[..keep]);
}

/// Finds where decoded offset `p` lies in `enc`, whose decoding is `total` bytes long:
/// (line start, encoded offset, line raw end). A point at a soft break is placed at the start
/// of the next line. Walks from the end, since the pixel goes near the end of the part.
fn locate(enc: &[u8], total: usize, p: usize) -> Option<(usize, usize, usize)> {
    let mut dec_end = total;
    let mut last = true;
    for line in lines_rev(enc) {
        let content = &enc[line.start..line.content_end];
        let len = decoded_len(content);
        let with_break = if line.soft {
            len
        } else {
            len + (line.end - line.raw_end)
        };
        let dec_start = dec_end.checked_sub(with_break)?;
        if p >= dec_start && (p < dec_start + len || (p == dec_start + len && (!line.soft || last)))
        {
            let e = line.start + offset_after(content, p - dec_start);
            return Some((line.start, e, line.raw_end));
        }
        if p > dec_start + len && p < dec_end {
            return None; // inside a line break
        }
        dec_end = dec_start;
        last = false;
    }
    (p == 0 && dec_end == 0).then_some((0, 0, 0))
}

/// Writes `enc` with `insert` (ASCII) added at decoded offset `p` to `out`. Returns false, with
/// `out` untouched, when `p` is not a character boundary of the decoded text.
/// `total` is the length of `decode(enc)`.
pub fn splice(
    enc: &[u8],
    total: usize,
    p: usize,
    insert: &[u8],
    nl: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let Some((line_start, e, raw_end)) = locate(enc, total, p) else {
        return false;
    };
    out.extend_from_slice(&enc[..e]);
    let mut col = e - line_start;
    for &b in insert {
        let esc;
        let tok: &[u8] = if b == b'=' || !(0x20..=0x7e).contains(&b) {
            esc = [b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]];
            &esc
        } else {
            std::slice::from_ref(&b)
        };
        // Leave room for the `=` of a soft break.
        if col > 0 && col + tok.len() > MAX_LINE - 1 {
            out.push(b'=');
            out.extend_from_slice(nl);
            col = 0;
        }
        out.extend_from_slice(tok);
        col += tok.len();
    }
    if e < raw_end {
        out.push(b'=');
        out.extend_from_slice(nl);
    }
    out.extend_from_slice(&enc[e..]);
    true
}

/// Writes `enc` (whose decoding is `dec`) with `edits` (decoded offsets, sorted, not
/// overlapping) applied to `out`. An edit re-encodes only the physical lines it touches
/// (from the line its start is on to the line its end is on, which soft breaks join), wrapped
/// at [`MAX_LINE`] with soft breaks and ending as the last of them ended; every other line stays
/// byte for byte. Returns false, with `out` untouched, when an edit starts or ends inside a hard
/// line break or reaches across one.
pub fn edit(
    enc: &[u8],
    dec: &[u8],
    map: &[[u32; 2]],
    edits: &[Edit],
    nl: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let total = dec.len();
    let n = map.len();
    // Line `k` of the body.
    let line = |k: usize| {
        let end = map.get(k + 1).map_or(enc.len(), |m| m[0] as usize);
        line_at(enc, map[k][0] as usize, end)
    };
    // Line `k`'s decoded start and the decoded length of its content (its break left out).
    let span = |k: usize| {
        let l = line(k);
        let start = map[k][1] as usize;
        let next = map.get(k + 1).map_or(total, |m| m[1] as usize);
        let brk = if l.soft { 0 } else { l.end - l.raw_end };
        (start, next.saturating_sub(start + brk))
    };
    // The map must be the body's own (what `decode_mapped` gave for it); ordered offsets
    // within the body and its decoding are what keep every slice below in bounds.
    let consistent = map.first().is_none_or(|m| *m == [0, 0])
        && map
            .windows(2)
            .all(|w| w[0][0] < w[1][0] && w[1][0] as usize <= enc.len() && w[0][1] <= w[1][1])
        && map.last().is_none_or(|m| m[1] as usize <= total);
    if !consistent || (n == 0 && !enc.is_empty()) || !super::edit::well_formed(edits, total) {
        return false;
    }
    if n == 0 {
        // An empty body: what is inserted is all there is.
        encode_run(&super::edit::apply(b"", edits), false, nl, out);
        return true;
    }
    // The first line whose content holds (or ends at) decoded offset `p`, for offsets
    // asked in order (the edits are sorted): a walk forward from the line found last.
    let mut cursor = 0;
    let mut line_of = |p: usize| {
        while cursor < n {
            let (start, len) = span(cursor);
            if start + len >= p {
                return (start <= p).then_some(cursor);
            }
            cursor += 1;
        }
        None
    };
    // Runs of lines to re-encode, each with the edits in it.
    let mut runs: Vec<(usize, usize, &[Edit])> = Vec::new();
    let mut first = 0;
    for (k, e) in edits.iter().enumerate() {
        let (Some(a), Some(b)) = (line_of(e.range.start), line_of(e.range.end)) else {
            return false;
        };
        if (a..b).any(|k| !line(k).soft) {
            return false;
        }
        match runs.last_mut() {
            Some(run) if a <= run.1 => {
                run.1 = run.1.max(b);
                run.2 = &edits[first..=k];
            }
            _ => {
                first = k;
                runs.push((a, b, &edits[k..=k]));
            }
        }
    }
    let mut copied = 0;
    // One buffer for every run (a link-dense part has hundreds).
    let mut edited = Vec::new();
    for (a, b, run_edits) in runs {
        let (first_line, last) = (line(a), line(b));
        out.extend_from_slice(&enc[copied..first_line.start]);
        // The run's decoded text: its lines are joined by soft breaks, which decode to
        // nothing, so it lies whole in `dec`.
        let from = span(a).0;
        let (last_start, last_len) = span(b);
        let text = &dec[from..last_start + last_len];
        // The run's edits, their offsets taken from the start of the run.
        edited.clear();
        let mut at = 0;
        for e in run_edits {
            let start = (e.range.start - from).clamp(at, text.len());
            edited.extend_from_slice(&text[at..start]);
            edited.extend_from_slice(&e.with);
            at = (e.range.end - from).clamp(start, text.len());
        }
        edited.extend_from_slice(&text[at..]);
        let own_nl = &enc[first_line.raw_end..first_line.end];
        let soft_nl = if own_nl.is_empty() { nl } else { own_nl };
        encode_run(&edited, last.soft, soft_nl, out);
        if last.soft {
            out.push(b'=');
        }
        out.extend_from_slice(&enc[last.raw_end..last.end]);
        copied = last.end;
    }
    out.extend_from_slice(&enc[copied..]);
    true
}

/// The end of the run of bytes `literal` allows from `i` on: eight bytes at a time while none
/// of them is `=`, a control character or past `~` (tab, literal but a control character,
/// goes the byte-at-a-time way).
fn literal_end(text: &[u8], mut i: usize, literal: &[bool; 256]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    while let Some(chunk) = text.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(w);
        // Some byte below 0x20 (exact when asked of the whole word).
        let control = x.wrapping_sub(0x20 * ONES) & !x & HIGH;
        // Some byte 0x7f or above.
        let high = (((x & !HIGH) + ONES) | x) & HIGH;
        // Some `=`.
        let y = x ^ (u64::from(b'=') * ONES);
        let equals = y.wrapping_sub(ONES) & !y & HIGH;
        if control | high | equals != 0 {
            break;
        }
        i += 8;
    }
    i + text[i..]
        .iter()
        .take_while(|&&b| literal[usize::from(b)])
        .count()
}

/// Encodes `text` (no line breaks of its own) as physical lines joined by soft breaks (`=` and
/// `nl`), each at most [`MAX_LINE`] octets with room left for a final soft break. Whitespace at
/// the very end is escaped unless a soft break follows (a reader drops it before a line end).
fn encode_run(text: &[u8], soft_end: bool, nl: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Written as it is: printable ASCII but `=`, and tab.
    const LITERAL: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0x20;
        while b <= 0x7e {
            t[b] = b != b'=' as usize;
            b += 1;
        }
        t[b'\t' as usize] = true;
        t
    };
    let n = text.len();
    let mut col = 0;
    let mut i = 0;
    while i < n {
        // A run of literal bytes, copied in line-sized pieces; whitespace at the very end is
        // escaped unless a soft break follows.
        let mut j = literal_end(text, i, &LITERAL);
        if j == n && !soft_end && j > i && matches!(text[n - 1], b' ' | b'\t') {
            j -= 1;
        }
        while i < j {
            let room = (MAX_LINE - 1).saturating_sub(col);
            if room == 0 {
                out.push(b'=');
                out.extend_from_slice(nl);
                col = 0;
                continue;
            }
            let take = room.min(j - i);
            out.extend_from_slice(&text[i..i + take]);
            col += take;
            i += take;
        }
        if i < n {
            let b = text[i];
            if col > 0 && col + 3 > MAX_LINE - 1 {
                out.push(b'=');
                out.extend_from_slice(nl);
                col = 0;
            }
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            col += 3;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests;
