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

/// The encoder as it was, one byte at a time: what the block encoder must write.
fn byte_at_a_time(enc: &[u8], dec: &[u8], group: usize, tail: &[u8], nl: &[u8]) -> Vec<u8> {
    let total = dec.len() / 3 * 4 + [0, 2, 3][dec.len() % 3];
    let (start, mut col, line) = find_group(enc, group * 4, total);
    let trailer = enc
        .iter()
        .rposition(|&c| TABLE[usize::from(c)] != WS)
        .map_or(enc.len(), |i| i + 1);
    let mut out = enc[..start].to_vec();
    let mut push = |c: u8, out: &mut Vec<u8>| {
        if col >= line {
            out.extend_from_slice(nl);
            col = 0;
        }
        out.push(c);
        col += 1;
    };
    for g in tail.chunks(3) {
        let b = |i: usize| u32::from(g.get(i).copied().unwrap_or(0));
        let acc = b(0) << 16 | b(1) << 8 | b(2);
        push(ALPHABET[(acc >> 18) as usize & 63], &mut out);
        push(ALPHABET[(acc >> 12) as usize & 63], &mut out);
        push(
            if g.len() > 1 {
                ALPHABET[(acc >> 6) as usize & 63]
            } else {
                b'='
            },
            &mut out,
        );
        push(
            if g.len() > 2 {
                ALPHABET[acc as usize & 63]
            } else {
                b'='
            },
            &mut out,
        );
    }
    out.extend_from_slice(&enc[trailer..]);
    out
}

proptest::proptest! {
    #[test]
    fn the_block_encoder_writes_what_the_byte_encoder_wrote(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700),
        line in 1usize..90,
        whole_groups in proptest::bool::ANY,
        edits in proptest::collection::vec(
            (0usize..700, 0usize..12, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
            1..4,
        ),
    ) {
        // Lines of whole groups, or of any width (groups cut across line breaks).
        let enc = encode_lines(&data, if whole_groups { line * 4 } else { line });
        let mut at = 0;
        let mut sorted = Vec::new();
        let mut starts: Vec<_> = edits.into_iter().collect();
        starts.sort_by_key(|e| e.0);
        for (start, cut, with) in starts {
            let start = start.clamp(at, data.len());
            let end = (start + cut).min(data.len());
            sorted.push(super::super::edit::Edit { range: start..end, with });
            at = end;
        }
        let mut got = Vec::new();
        edit(&enc, &data, &sorted, b"\r\n", &mut got);
        let group = sorted[0].range.start / 3;
        let mut tail = Vec::new();
        let mut at = group * 3;
        for e in &sorted {
            tail.extend_from_slice(&data[at..e.range.start]);
            tail.extend_from_slice(&e.with);
            at = e.range.end;
        }
        tail.extend_from_slice(&data[at..]);
        proptest::prop_assert_eq!(got, byte_at_a_time(&enc, &data, group, &tail, b"\r\n"));
    }
}

proptest::proptest! {
    /// The vectorised decoder of the common shape says nothing the general one would not:
    /// on real encodings (any line width, CRLF or LF, the odd byte changed) and on noise
    /// made of base64's own characters, padding and whitespace.
    #[test]
    fn the_line_decoder_agrees_with_the_general_one(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4000),
        line in 1usize..90,
        lf in proptest::bool::ANY,
        flips in proptest::collection::vec((0usize..6000, 0usize..12), 0..3),
        noise in proptest::collection::vec(proptest::sample::select(
            b"AQw09+/=\r\n \t*".to_vec()), 0..40),
    ) {
        let mut enc = encode_lines(&data, line);
        if lf {
            enc.retain(|&c| c != b'\r');
        }
        // An untouched encoding is the common shape: the line decoder takes it.
        proptest::prop_assert_eq!(decode_lines(&enc), Some(data.clone()));
        for (at, with) in flips {
            if !enc.is_empty() {
                let at = at % enc.len();
                enc[at] = b"A=\r\n \t*/QB+9"[with];
            }
        }
        proptest::prop_assert_eq!(decode(&enc), decode_any(&enc));
        proptest::prop_assert_eq!(decode(&noise), decode_any(&noise));
    }
}

#[test]
fn a_body_on_one_long_line_is_decoded_a_stage_at_a_time() {
    let data: Vec<u8> = (0..30_001u32).map(|i| (i * 7 % 256) as u8).collect();
    let one_line = encode_lines(&data, 50_000);
    assert_eq!(one_line.iter().filter(|&&c| c == b'\n').count(), 1);
    assert_eq!(decode_lines(&one_line), Some(data));
}

#[test]
fn padding_before_the_end_is_refused_wherever_the_decoder_cuts() {
    // Two encodings end to end: the first one's padding lands at every offset around the
    // line decoder's first cut.
    for n in 2900..3100 {
        let data: Vec<u8> = (0..n).map(|i| (i * 13 % 256) as u8).collect();
        let mut enc = encode_lines(&data[..n - 1 - n % 3], 76);
        enc.extend_from_slice(&encode_lines(b"tail", 76));
        assert_eq!(decode_any(&enc), None, "n={n}");
        assert_eq!(decode(&enc), None, "n={n}");
    }
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
