//! Tracking tokens: mint and verify. Pure, no IO, no lookups.
//!
//! A token is what follows `/o/` in a pixel URL. It carries a message's random id and proves,
//! with an HMAC under the instance secret, that this pixelrelay (or any pixelrelay holding the
//! same secret) minted it, so a hit can be checked before anything touches the store and
//! nobody can forge opens or enumerate messages.
//!
//! # Format (version 1)
//!
//! ```text
//! token = base64url-nopad( version(1) || id(16) || tag(16) )      -> always 44 characters
//! tag   = HMAC-SHA256(K, "pixelrelay/token" || purpose(1) || version(1) || id(16))[..16]
//! K     = HMAC-SHA256(key = secret file contents, "pixelrelay token key v1")
//! ```
//!
//! The purpose byte is inside the MAC, so an open token is never a valid click token. The tag is
//! truncated to 128 bits (NIST SP 800-107 allows truncation to ≥ 64 bits; 128 leaves a wide
//! margin) and compared in constant time. 33 bytes encode to exactly 44 base64 characters with
//! no leftover bits, so every token has a single valid spelling.
//!
//! This module deliberately knows nothing about the store: "is this message known?" is the
//! store's question, asked only after the token verified.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub mod click;
mod mac;

use mac::Keyed;

/// A tracked message's random identity (128 bits), the key of its store record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random() -> MessageId {
        let mut b = [0u8; 16];
        rand::fill(&mut b);
        MessageId(b)
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// From exactly 16 raw bytes (e.g. a store key); `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<MessageId> {
        <[u8; 16]>::try_from(b).ok().map(MessageId)
    }
}

impl fmt::Display for MessageId {
    /// 32 lowercase hex digits (built in one buffer: every open event prints one).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// Why a string is not a message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError;

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message id is 32 hexadecimal digits")
    }
}

impl std::error::Error for ParseIdError {}

impl FromStr for MessageId {
    type Err = ParseIdError;

    /// Parses the 32-hex-digit form that `Display` writes (either case).
    fn from_str(s: &str) -> Result<MessageId, ParseIdError> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return Err(ParseIdError);
        }
        let mut out = [0u8; 16];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = (hex_val(pair[0]).ok_or(ParseIdError)? << 4)
                | hex_val(pair[1]).ok_or(ParseIdError)?;
        }
        Ok(MessageId(out))
    }
}

/// In JSON a message id is its 32 hex digits, as everywhere it is shown.
impl serde::Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MessageId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// What a token may be used for. Bound into the MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The open-tracking pixel (`/o/{token}.gif`).
    Open,
    /// A tracked link's redirect (`/c/{token}`, [`click`]).
    Click,
}

impl Purpose {
    /// The byte that goes into the MAC. Never reuse a value for another purpose.
    fn tag_byte(self) -> u8 {
        match self {
            Purpose::Open => b'o',
            Purpose::Click => b'c',
        }
    }
}

/// Current token format.
const VERSION: u8 = 1;
/// Bytes of HMAC kept in a token.
const TAG_LEN: usize = 16;
/// Raw token: version + id + tag.
const RAW_LEN: usize = 1 + 16 + TAG_LEN;
/// Encoded length (33 bytes → 44 base64 characters, no padding needed).
pub const TOKEN_LEN: usize = 44;

/// The instance's token key, derived once from the secret file, and the keys it replaced that
/// still verify during a rotation. Cheap to clone.
#[derive(Clone)]
pub struct TokenKey {
    /// HMAC-SHA256 keyed with the derived key (the key schedule runs once).
    mac: Keyed,
    /// Older keys (`tracking.previous_secret_files`): they verify, they never mint.
    previous: Vec<Keyed>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// Derives the token key from the contents of the secret file (any length; the generated
    /// file holds 64 hex digits = 256 bits).
    pub fn from_secret(secret: &[u8]) -> TokenKey {
        TokenKey {
            mac: derive(secret),
            previous: Vec::new(),
        }
    }

    /// The same key, still accepting the tokens minted under each of `older` (the contents of
    /// older secret files): a rotation keeps the pixels of mail already sent working while new
    /// mail gets tokens under the new key. Tokens carry no key id: a forged one costs one MAC
    /// per key to refuse.
    pub fn with_previous<S: AsRef<[u8]>>(mut self, older: &[S]) -> TokenKey {
        self.previous = older.iter().map(|s| derive(s.as_ref())).collect();
        self
    }

    /// Mints the URL-safe token for `id` (44 characters).
    pub fn mint(&self, purpose: Purpose, id: &MessageId) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..17].copy_from_slice(&id.0);
        let tag = self.tag(purpose, VERSION, id);
        raw[17..].copy_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a token; the message id if it is authentic and minted for `purpose`.
    /// Never panics, whatever the input.
    pub fn verify(&self, purpose: Purpose, token: &str) -> Option<MessageId> {
        if token.len() != TOKEN_LEN {
            return None;
        }
        let mut raw = [0u8; RAW_LEN];
        let n = URL_SAFE_NO_PAD
            .decode_slice(token.as_bytes(), &mut raw)
            .ok()?;
        if n != RAW_LEN || raw[0] != VERSION {
            return None;
        }
        let id = MessageId::from_slice(&raw[1..17])?;
        std::iter::once(&self.mac)
            .chain(&self.previous)
            // Compared in constant time.
            .any(|key| key.verify_truncated(&[&signed(purpose, raw[0], &id)], &raw[17..]))
            .then_some(id)
    }

    /// The full 32-byte MAC over purpose, version and id.
    fn tag(&self, purpose: Purpose, version: u8, id: &MessageId) -> [u8; 32] {
        self.mac.mac(&[&signed(purpose, version, id)])
    }
}

/// What the MAC covers, in order.
fn signed(purpose: Purpose, version: u8, id: &MessageId) -> [u8; 34] {
    let mut b = [0u8; 34];
    b[..16].copy_from_slice(b"pixelrelay/token");
    b[16] = purpose.tag_byte();
    b[17] = version;
    b[18..].copy_from_slice(&id.0);
    b
}

/// The MAC keyed for tokens from the contents of a secret file.
fn derive(secret: &[u8]) -> Keyed {
    Keyed::new(&Keyed::new(secret).mac(&[b"pixelrelay token key v1"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> TokenKey {
        TokenKey::from_secret(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn mint_then_verify_round_trips() {
        let k = key();
        let id = MessageId::random();
        let t = k.mint(Purpose::Open, &id);
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{t}"
        );
        assert_eq!(k.verify(Purpose::Open, &t), Some(id));
        // Deterministic: same key and id give the same token.
        assert_eq!(k.mint(Purpose::Open, &id), t);
    }

    #[test]
    fn known_answer_pins_the_format() {
        // Changing the format invalidates every pixel already sent: this must fail loudly.
        // Cross-checked with Python: hmac.new(hmac.new(b"test-secret", b"pixelrelay token key v1",
        // sha256).digest(), b"pixelrelay/token" b"o" b"\x01" + b"\x11" * 16, sha256).digest()[:16].
        let k = TokenKey::from_secret(b"test-secret");
        let id = MessageId([0x11; 16]);
        let t = k.mint(Purpose::Open, &id);
        assert_eq!(t, "ARERERERERERERERERERERGvh2KiEiewGq1QE4f40xMd");
        assert_eq!(k.verify(Purpose::Open, &t), Some(id));
        assert_eq!(&t, &k.mint(Purpose::Open, &id));
    }

    #[test]
    fn another_secret_rejects() {
        let id = MessageId::random();
        let t = key().mint(Purpose::Open, &id);
        assert_eq!(
            TokenKey::from_secret(b"another secret").verify(Purpose::Open, &t),
            None
        );
    }

    #[test]
    fn a_rotated_key_verifies_the_old_tokens_and_mints_new_ones() {
        let id = MessageId::random();
        let old = TokenKey::from_secret(b"old secret");
        let older = TokenKey::from_secret(b"older secret");
        let (t_old, t_older) = (old.mint(Purpose::Open, &id), older.mint(Purpose::Open, &id));
        let k = TokenKey::from_secret(b"new secret")
            .with_previous(&[&b"old secret"[..], b"older secret"]);
        assert_eq!(k.verify(Purpose::Open, &t_old), Some(id));
        assert_eq!(k.verify(Purpose::Open, &t_older), Some(id));
        // New tokens are the new key's alone.
        let t = k.mint(Purpose::Open, &id);
        assert_eq!(
            t,
            TokenKey::from_secret(b"new secret").mint(Purpose::Open, &id)
        );
        assert_eq!(old.verify(Purpose::Open, &t), None);
        // A key dropped from the list stops verifying.
        let k = TokenKey::from_secret(b"new secret").with_previous(&[b"old secret"]);
        assert_eq!(k.verify(Purpose::Open, &t_older), None);
    }

    #[test]
    fn truncated_extended_and_garbage_reject() {
        let k = key();
        let t = k.mint(Purpose::Open, &MessageId::random());
        for n in 0..t.len() {
            assert_eq!(k.verify(Purpose::Open, &t[..n]), None, "prefix {n}");
        }
        assert_eq!(k.verify(Purpose::Open, &format!("{t}A")), None);
        assert_eq!(k.verify(Purpose::Open, &format!("{t}=")), None);
        assert_eq!(k.verify(Purpose::Open, &"A".repeat(44)), None);
        assert_eq!(k.verify(Purpose::Open, &"é".repeat(22)), None);
        assert_eq!(k.verify(Purpose::Open, &t.replace(|_| true, "+")), None);
    }

    #[test]
    fn every_bit_flip_rejects() {
        let k = key();
        let id = MessageId::random();
        let t = k.mint(Purpose::Open, &id);
        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() * 8 {
            raw[i / 8] ^= 1 << (i % 8);
            let forged = URL_SAFE_NO_PAD.encode(&raw);
            assert_eq!(k.verify(Purpose::Open, &forged), None, "bit {i}");
            raw[i / 8] ^= 1 << (i % 8);
        }
        assert_eq!(
            k.verify(Purpose::Open, &URL_SAFE_NO_PAD.encode(&raw)),
            Some(id)
        );
    }

    #[test]
    fn swapped_id_with_old_tag_rejects() {
        let k = key();
        let a = URL_SAFE_NO_PAD
            .decode(k.mint(Purpose::Open, &MessageId([1; 16])))
            .unwrap();
        let mut b = a.clone();
        b[1..17].copy_from_slice(&[2; 16]);
        assert_eq!(k.verify(Purpose::Open, &URL_SAFE_NO_PAD.encode(&b)), None);
    }

    #[test]
    fn message_id_hex_round_trips() {
        let id = MessageId::random();
        assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
        assert_eq!(id.to_string().to_uppercase().parse::<MessageId>(), Ok(id));
        assert!("xyz".parse::<MessageId>().is_err());
        assert!("g".repeat(32).parse::<MessageId>().is_err());
        assert!("0".repeat(31).parse::<MessageId>().is_err());
        assert!("é".repeat(16).parse::<MessageId>().is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_verify(s in ".{0,60}") {
            prop_assert_eq!(key().verify(Purpose::Open, &s), None);
        }

        #[test]
        fn any_id_round_trips(bytes in proptest::array::uniform16(any::<u8>())) {
            let id = MessageId(bytes);
            let k = key();
            prop_assert_eq!(k.verify(Purpose::Open, &k.mint(Purpose::Open, &id)), Some(id));
        }

        #[test]
        fn mutated_tokens_never_verify(bytes in proptest::array::uniform16(any::<u8>()), pos in 0usize..44, c in "[A-Za-z0-9_-]") {
            let k = key();
            let t = k.mint(Purpose::Open, &MessageId(bytes));
            let mut m: Vec<char> = t.chars().collect();
            let c = c.chars().next().unwrap();
            prop_assume!(m[pos] != c);
            m[pos] = c;
            let m: String = m.into_iter().collect();
            prop_assert_eq!(k.verify(Purpose::Open, &m), None);
        }
    }
}
