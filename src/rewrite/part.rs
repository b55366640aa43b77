//! The part that gets the pixel, as both ways of finding it (the structure-only scan in
//! `scan.rs`, mail-parser's full parse in `mime.rs`) report it: its encoded body range and
//! transfer encoding, and which charsets take ASCII markup.

use std::ops::Range;

/// Content-Transfer-Encoding of the chosen part, as far as the rewrite cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cte {
    /// 7bit, 8bit, binary or none: the body is the decoded text.
    Raw,
    /// quoted-printable.
    QuotedPrintable,
    /// base64.
    Base64,
}

/// The part that gets the pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtmlPart {
    /// Encoded body, as offsets into the message.
    pub body: Range<usize>,
    /// How the body is encoded.
    pub cte: Cte,
}

/// False for charsets in which ASCII markup is not the same bytes (UTF-16/32, UCS-2/4, UTF-7,
/// EBCDIC code pages), where inserting `<img …>` would corrupt the text.
pub fn ascii_compatible(charset: &str) -> bool {
    let c = charset.trim().trim_matches('"').to_ascii_lowercase();
    let c = c.replace('_', "-");
    let bad_prefixes = [
        "utf-16", "utf16", "utf-32", "utf32", "ucs-2", "ucs2", "ucs-4", "ucs4", "utf-7", "utf7",
    ];
    let bad_exact = [
        "unicode",
        "unicodefffe",
        "iso-10646-ucs-2",
        "iso-10646-ucs-4",
        "csunicode",
        "csucs4",
        "ibm037",
        "cp037",
        "ibm500",
        "cp500",
        "ibm1026",
        "cp1026",
        "ibm1047",
        "cp1047",
    ];
    !(bad_prefixes.iter().any(|p| c.starts_with(p))
        || bad_exact.contains(&c.as_str())
        || c.starts_with("ebcdic"))
}
