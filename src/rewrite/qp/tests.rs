use super::*;

/// The line-by-line decoding that `locate` counts with, and the line map that goes with it.
fn decode_by_lines(enc: &[u8]) -> (Vec<u8>, LineMap) {
    let mut out = Vec::new();
    let mut map = LineMap::new();
    for line in lines(enc) {
        map.push([line.start as u32, out.len() as u32]);
        decode_content(&enc[line.start..line.content_end], &mut out);
        if !line.soft {
            out.extend_from_slice(&enc[line.raw_end..line.end]);
        }
    }
    (out, map)
}

#[test]
fn one_pass_decode_matches_line_by_line() {
    // Every string of up to 5 symbols from an alphabet full of QP edge cases.
    let alphabet: [&[u8]; 8] = [b"=", b"3D", b" ", b"\t", b"\r", b"\n", b"x", b"=\r\n"];
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(s) = stack.pop() {
        let by_lines = decode_by_lines(&s);
        assert_eq!(decode(&s), by_lines.0, "{:?}", String::from_utf8_lossy(&s));
        assert_eq!(
            decode_mapped(&s),
            by_lines,
            "{:?}",
            String::from_utf8_lossy(&s)
        );
        if s.len() < 7 {
            for a in alphabet {
                stack.push([&s[..], a].concat());
            }
        }
    }
}

proptest::proptest! {
    /// The word-at-a-time search finds what `memchr2` finds.
    #[test]
    fn the_next_escape_or_break_is_the_first_one(
        text in proptest::collection::vec(proptest::sample::select(
            b"a=\n\r<\x3c\x3e\x0b\x0a\x3d\xbd\x8a\x09\x01".to_vec()), 0..60),
        from in 0usize..60,
    ) {
        let from = from.min(text.len());
        proptest::prop_assert_eq!(
            next_escape_or_break(&text, from),
            memchr2(b'=', b'\n', &text[from..]).map(|k| from + k)
        );
    }

    /// Long bodies (many words and `memchr2` calls a line) decode as line by line does.
    #[test]
    fn long_bodies_decode_as_line_by_line(
        pieces in proptest::collection::vec(proptest::sample::select(vec![
            &b"abcdefghijklmnopqrstuvwxyz"[..], b"0123456789", b"=3D", b"=C3=A9", b"=\r\n",
            b"=\n", b"= \r\n", b" ", b"\t", b"\r\n", b"\n", b"\r", b"=", b"=Z", b"  \r\n",
        ]), 0..60),
    ) {
        let enc = pieces.concat();
        let by_lines = decode_by_lines(&enc);
        proptest::prop_assert_eq!(&decode(&enc), &by_lines.0);
        proptest::prop_assert_eq!(decode_mapped(&enc), by_lines);
    }

    /// The eight-at-a-time literal scan stops where the byte-at-a-time one does.
    #[test]
    fn literal_runs_end_where_the_table_says(
        text in proptest::collection::vec(proptest::sample::select(
            b"aZ ~\t=\r\n\x00\x1f\x7f\x80\xff".to_vec()), 0..40),
        plain in 0usize..30,
        from in 0usize..40,
    ) {
        // A literal stretch first, so that whole words pass before the stop.
        let text = [&b"x".repeat(plain)[..], &text].concat();
        let from = from.min(text.len());
        let want = from + text[from..].iter().take_while(|&&b| {
            b == b'\t' || ((0x20..=0x7e).contains(&b) && b != b'=')
        }).count();
        let literal: [bool; 256] = std::array::from_fn(|b| {
            b == 9 || ((0x20..=0x7e).contains(&b) && b != usize::from(b'='))
        });
        proptest::prop_assert_eq!(literal_end(&text, from, &literal), want);
    }
}

#[test]
fn decodes_escapes_soft_breaks_and_padding() {
    assert_eq!(
        decode(b"a=3Db=\r\nc  \r\nd=\nx=ZZ="),
        b"a=bc\r\ndx=ZZ".to_vec()
    );
    assert_eq!(decode(b"=3d=4"), b"==4".to_vec());
}

#[test]
fn splice_round_trips_and_keeps_lines_short() {
    let enc = b"<p>caf=C3=A9 =3D x</p>=\r\n<p>y</p></body>\r\n<!-- tail -->\r\n";
    let dec = decode(enc);
    let p = dec.windows(7).position(|w| w == b"</body>").unwrap_or(0);
    assert_eq!(p, 24);
    let insert = b"<img src=\"http://127.0.0.1:8080/o/TESTTOKEN.gif\" width=\"1\" height=\"1\" alt=\"\" border=\"0\">";
    let mut out = Vec::new();
    assert!(splice(enc, dec.len(), p, insert, b"\r\n", &mut out));
    let want = [&dec[..p], &insert[..], &dec[p..]].concat();
    assert_eq!(decode(&out), want);
    for line in out.split(|&b| b == b'\n') {
        assert!(line.strip_suffix(b"\r").unwrap_or(line).len() <= MAX_LINE);
    }
    // Lines other than the one spliced into are untouched.
    assert!(out.starts_with(b"<p>caf=C3=A9 =3D x</p>=\r\n<p>y</p>"));
    assert!(out.ends_with(b"=\r\n</body>\r\n<!-- tail -->\r\n"));
}

#[test]
fn splice_at_every_offset() {
    let enc = b"ab=3Dc=\r\nd\r\n\r\ne=";
    let dec = decode(enc);
    for p in 0..=dec.len() {
        let mut out = Vec::new();
        if splice(enc, dec.len(), p, b"<X=Y>", b"\r\n", &mut out) {
            assert_eq!(
                decode(&out),
                [&dec[..p], b"<X=Y>", &dec[p..]].concat(),
                "p={p}"
            );
        } else {
            assert_eq!(&dec[p - 1..=p], b"\r\n", "p={p}");
        }
    }
}
