//! The DATA reader: turns the client's dot-stuffed byte stream into the message content.
//!
//! Pure and incremental: `feed` takes whatever bytes arrived (a command may be split across
//! reads anywhere) and says how many it consumed, so bytes pipelined after the end of data are
//! left for the command parser.
//!
//! Smuggling defence (the SMTP-smuggling research, 2023): only `<CRLF>.<CRLF>` ends the data.
//! A dot line preceded or followed by a bare `<LF>` or `<CR>` is content, and dot-unstuffing
//! happens only at the start of CRLF-delimited lines. Bare `<LF>`/`<CR>` are recorded so that
//! the session can reject them or normalise them to `<CRLF>` (`smtp.bare_newline`); the
//! upstream client dot-stuffs on the way out, so a dot line inside the content can never end
//! the upstream's copy of the message early.
//!
//! Size: content past `limit` is not stored (the reader keeps scanning for the end so the
//! session can answer 552 and go on).

/// Incremental DATA reader.
#[derive(Debug)]
pub struct DataReader {
    /// Where the unstuffed content goes.
    content: Vec<u8>,
    /// Most content bytes stored (beyond: `overflow`).
    limit: usize,
    /// Where we are relative to a line start.
    state: State,
    /// Last raw byte consumed (to tell CRLF from a bare LF across reads).
    prev: u8,
    /// Content bytes dropped because of the size limit.
    overflow: bool,
    /// A bare LF or bare CR was seen.
    bare_newline: bool,
    /// Length of the current line so far.
    line_len: usize,
    /// Longest line seen (without its line end).
    longest_line: usize,
}

/// Position relative to the start of a CRLF-delimited line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first byte of a line.
    LineStart,
    /// After a `.` at line start.
    Dot,
    /// After `.` `<CR>` at line start.
    DotCr,
    /// Inside a line.
    Body,
}

/// What the reader found once the end of data was seen.
#[derive(Debug)]
pub struct Finished {
    /// The content, unstuffed (whatever was already in the buffer given to `new` first).
    pub content: Vec<u8>,
    /// The message exceeded the limit; `content` is truncated.
    pub overflow: bool,
    /// A bare `<LF>` or `<CR>` occurred in the content.
    pub bare_newline: bool,
    /// Longest line in octets, without its line end.
    pub longest_line: usize,
}

impl DataReader {
    /// Starts reading into `content` (which may already hold a prepended header), storing at
    /// most `limit` bytes of message beyond what it already holds.
    pub fn new(content: Vec<u8>, limit: usize) -> DataReader {
        let limit = content.len().saturating_add(limit);
        DataReader {
            content,
            limit,
            state: State::LineStart,
            prev: b'\n',
            overflow: false,
            bare_newline: false,
            line_len: 0,
            longest_line: 0,
        }
    }

    /// Bytes of content stored so far.
    pub fn len(&self) -> usize {
        self.content.len()
    }

    /// Whether nothing has been stored yet.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
    }

    /// Bytes the content can hold without growing.
    pub fn capacity(&self) -> usize {
        self.content.capacity()
    }

    /// Makes room for `additional` more bytes of content, exactly (the caller has reserved
    /// them from the memory budget, and `feed` then never grows the buffer past them).
    pub fn reserve_exact(&mut self, additional: usize) {
        if !self.overflow {
            self.content.reserve_exact(additional);
        }
    }

    /// Stores nothing more and frees what is stored: the caller has no memory for the rest.
    /// The reader goes on looking for the end of data, as past the size limit.
    pub fn stop_storing(&mut self) {
        self.overflow = true;
        self.content = Vec::new();
    }

    /// Consumes bytes from `input`. Returns how many were consumed and whether the end of data
    /// (`<CRLF>.<CRLF>`) was reached; on `true` the bytes after the terminator are not consumed.
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::LineStart => {
                    if b == b'.' {
                        self.state = State::Dot;
                        self.prev = b;
                        i += 1;
                        continue;
                    }
                    self.state = State::Body;
                }
                State::Dot => {
                    if b == b'\r' {
                        self.state = State::DotCr;
                        self.prev = b;
                        i += 1;
                        continue;
                    }
                    // The dot was stuffing: drop it and treat `b` as the line's first byte.
                    self.state = State::Body;
                }
                State::DotCr => {
                    if b == b'\n' {
                        return (i + 1, true);
                    }
                    // `.` `<CR>` then something else: the dot was stuffing, the CR is content.
                    self.bare_newline = true;
                    self.push(b"\r");
                    self.line_len += 1;
                    self.state = State::Body;
                }
                State::Body => {}
            }
            // Inside a line: copy up to and including the next LF in one go.
            let rest = &input[i..];
            match memchr::memchr(b'\n', rest) {
                Some(pos) => {
                    let line = &rest[..=pos];
                    let before = if pos > 0 { rest[pos - 1] } else { self.prev };
                    self.note_bare_cr(&line[..pos]);
                    self.push(line);
                    if before == b'\r' {
                        let len = (self.line_len + pos).saturating_sub(1);
                        self.longest_line = self.longest_line.max(len);
                        self.line_len = 0;
                        self.state = State::LineStart;
                    } else {
                        // A bare LF: content, not a line end for unstuffing or termination.
                        self.bare_newline = true;
                        self.line_len += pos + 1;
                        self.longest_line = self.longest_line.max(self.line_len);
                    }
                    self.prev = b'\n';
                    i += pos + 1;
                }
                None => {
                    self.note_bare_cr(rest);
                    self.push(rest);
                    self.line_len += rest.len();
                    self.longest_line = self.longest_line.max(self.line_len);
                    self.prev = rest[rest.len() - 1];
                    i = input.len();
                }
            }
        }
        (i, false)
    }

    /// Records a CR inside `bytes` that is not followed by LF (a trailing CR is decided later).
    fn note_bare_cr(&mut self, bytes: &[u8]) {
        if self.bare_newline {
            return;
        }
        // A CR carried over from the previous read and followed by something other than LF.
        if self.prev == b'\r'
            && bytes.first().is_some_and(|&b| b != b'\n')
            && self.state == State::Body
        {
            self.bare_newline = true;
        }
        for pos in memchr::memchr_iter(b'\r', bytes) {
            if pos + 1 < bytes.len() && bytes[pos + 1] != b'\n' {
                self.bare_newline = true;
                return;
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.content.len() + bytes.len() > self.limit {
            self.overflow = true;
            // Free the memory at once: the message will be refused.
            self.content = Vec::new();
            return;
        }
        self.content.extend_from_slice(bytes);
    }

    /// Ends reading; call after `feed` returned `true`.
    pub fn finish(self) -> Finished {
        Finished {
            content: self.content,
            overflow: self.overflow,
            bare_newline: self.bare_newline,
            longest_line: self.longest_line,
        }
    }
}

/// Rewrites bare `<LF>` and bare `<CR>` as `<CRLF>` (for `smtp.bare_newline = "normalize"`).
pub fn normalize_newlines(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64);
    let mut i = 0;
    while i < content.len() {
        match content[i] {
            b'\r' if content.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `step` and returns (content, consumed, ended).
    fn run(input: &[u8], step: usize) -> (Finished, usize, bool) {
        let mut r = DataReader::new(Vec::new(), 1 << 20);
        let mut used = 0;
        for chunk in input.chunks(step.max(1)) {
            let (n, end) = r.feed(chunk);
            used += n;
            if end {
                return (r.finish(), used, true);
            }
            assert_eq!(n, chunk.len());
        }
        (r.finish(), used, false)
    }

    #[test]
    fn unstuffs_and_stops_at_crlf_dot_crlf_for_every_split() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        for step in 1..input.len() {
            let (f, used, end) = run(input, step);
            assert!(end, "step {step}");
            assert_eq!(
                f.content, b"Subject: x\r\n\r\n.leading dot\r\n",
                "step {step}"
            );
            assert_eq!(&input[used..], b"QUIT\r\n", "step {step}");
            assert!(!f.bare_newline);
        }
    }

    #[test]
    fn smuggling_sequences_do_not_end_data() {
        for seq in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r",
            b"\r.\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\r\n\x00.\r\n",
            b"\r\n.\x00\r\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<evil@example.com>\r\n");
            for step in [1, 3, input.len()] {
                let (f, _, end) = run(&input, step);
                assert!(!end, "{seq:?} ended data (step {step})");
                assert!(
                    f.content.ends_with(b"MAIL FROM:<evil@example.com>\r\n"),
                    "{seq:?}"
                );
            }
        }
    }

    #[test]
    fn dot_cr_x_keeps_the_cr_and_flags_it() {
        let (f, _, end) = run(b"a\r\n.\rX\r\n.\r\n", 1);
        assert!(end);
        assert_eq!(f.content, b"a\r\n\rX\r\n");
        assert!(f.bare_newline);
    }

    #[test]
    fn bare_lf_and_cr_are_flagged_and_normalised() {
        let (f, _, _) = run(b"a\nb\r\n.\r\n", 2);
        assert!(f.bare_newline);
        assert_eq!(normalize_newlines(&f.content), b"a\r\nb\r\n");
        let (f, _, _) = run(b"a\rb\r\n.\r\n", 1);
        assert!(f.bare_newline);
        assert_eq!(normalize_newlines(&f.content), b"a\r\nb\r\n");
        let (f, _, _) = run(b"a\r\nb\r\n.\r\n", 1);
        assert!(!f.bare_newline);
    }

    #[test]
    fn empty_message_and_longest_line() {
        let (f, used, end) = run(b".\r\n", 1);
        assert!(end && f.content.is_empty() && used == 3);
        let (f, _, _) = run(b"abc\r\n12345\r\n.\r\n", 4);
        assert_eq!(f.longest_line, 5);
    }

    #[test]
    fn overflow_stops_storing_but_finds_the_end() {
        let mut r = DataReader::new(b"Received: x\r\n".to_vec(), 10);
        let (n, end) = r.feed(b"0123456789abcdef\r\n.\r\nNOOP\r\n");
        assert!(end);
        assert_eq!(n, 21, "stops right after the terminator");
        let f = r.finish();
        assert!(f.overflow);
        assert!(f.content.is_empty());
    }
}
