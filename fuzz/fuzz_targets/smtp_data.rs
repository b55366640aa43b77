//! The DATA reader on arbitrary bytes split at arbitrary points: the outcome does not depend on
//! how the stream was split; only `<CRLF>.<CRLF>` ends the data; and content that is dot-stuffed
//! again (as the upstream client does) reads back to itself, so no upstream can see a message
//! end where the client's did not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixelrelay::smtp::data::DataReader;

fn run(input: &[u8], splits: &[usize]) -> (Vec<u8>, usize, bool, bool) {
    let mut r = DataReader::new(Vec::new(), 1 << 20);
    let mut used = 0;
    let mut cuts: Vec<usize> = splits.iter().map(|s| s % (input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut start = 0;
    for cut in cuts {
        if cut < start {
            continue;
        }
        let (n, end) = r.feed(&input[start..cut]);
        used += n;
        if end {
            let f = r.finish();
            return (f.content, used, true, f.bare_newline);
        }
        start = cut;
    }
    let f = r.finish();
    (f.content, used, false, f.bare_newline)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let splits: Vec<usize> = data[..4].iter().map(|&b| b as usize * 7).collect();
    let input = &data[4..];
    let whole = run(input, &[]);
    let split = run(input, &splits);
    assert_eq!(whole, split, "the split changed the outcome");
    let (content, used, ended, bare) = whole;
    if ended {
        let consumed = &input[..used];
        assert!(consumed == b".\r\n" || consumed.ends_with(b"\r\n.\r\n"), "ended without CRLF.CRLF");
        // Re-stuff as the upstream client does and read it back.
        if !bare {
            let mut wire = Vec::new();
            let mut at_start = true;
            for &b in &content {
                if at_start && b == b'.' {
                    wire.push(b'.');
                }
                wire.push(b);
                at_start = b == b'\n';
            }
            wire.extend_from_slice(b".\r\n");
            let (again, n, end, _) = run(&wire, &[]);
            assert!(end && n == wire.len(), "the re-stuffed message ended early or late");
            assert_eq!(again, content);
        }
    }
});
