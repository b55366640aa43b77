//! Click tokens: a tracked link's message, position and destination, signed.
//!
//! A click token is what follows `/c/` in a tracked link. It carries the original URL itself,
//! under the same key and MAC as the pixel's token, so any node holding the key redirects
//! without a lookup, and no URL that was not in a message can ever be a destination: changing
//! one byte of the URL (or of anything else) breaks the MAC.
//!
//! # Format (version 1)
//!
//! ```text
//! token = base64url-nopad( version(1) || id(16) || link(2) || url(n) || tag(16) )
//! tag   = HMAC-SHA256(K, "pixelrelay/token" || 'c' || version(1) || id(16) || link(2)
//!                        || n(2) || url(n))[..16]
//! ```
//!
//! `link` is the link's position among the part's tracked links (from 0), big-endian; `url`
//! the URL as found in the message (references decoded), UTF-8, 10 to [`MAX_URL`] bytes, and
//! `http:` or `https:` (checked when minting and again when verifying). The base64 decoder
//! refuses non-canonical trailing bits, so every token has one spelling.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{MessageId, Purpose, TAG_LEN, TokenKey, VERSION};

/// The longest URL a link may have to be tracked (longer ones stay as they are).
pub const MAX_URL: usize = 2048;
/// Bytes before the URL: version, id, link.
const HEAD: usize = 1 + 16 + 2;

/// What a verified click token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// The message.
    pub id: MessageId,
    /// The link's position among the part's tracked links, from 0.
    pub link: u16,
    /// Where the link goes.
    pub url: String,
}

/// Whether `url` may be a click's destination: `http:` or `https:` with something after it,
/// at most [`MAX_URL`] bytes.
pub fn trackable_url(url: &str) -> bool {
    let lower = |s: &str, p: &str| {
        s.len() > p.len() && s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p))
    };
    url.len() <= MAX_URL && (lower(url, "http://") || lower(url, "https://"))
}

impl TokenKey {
    /// Mints the token of link `link` of message `id` going to `url`; `None` when `url` may not
    /// be tracked ([`trackable_url`]).
    pub fn mint_click(&self, id: &MessageId, link: u16, url: &str) -> Option<String> {
        self.mint_click_url("", id, link, url)
    }

    /// [`TokenKey::mint_click`] after `prefix` (`{base_url}/c/`), in one string: the tracked
    /// URL a rewrite puts in the message.
    pub fn mint_click_url(
        &self,
        prefix: &str,
        id: &MessageId,
        link: u16,
        url: &str,
    ) -> Option<String> {
        if !trackable_url(url) {
            return None;
        }
        let n = HEAD + url.len() + TAG_LEN;
        // On the stack for the URLs of real mail (one allocation per link: the result).
        let mut stack = [0u8; 256];
        let mut heap = Vec::new();
        let raw: &mut [u8] = if n <= stack.len() {
            &mut stack[..n]
        } else {
            heap.resize(n, 0);
            &mut heap
        };
        raw[0] = VERSION;
        raw[1..17].copy_from_slice(&id.0);
        raw[17..HEAD].copy_from_slice(&link.to_be_bytes());
        raw[HEAD..n - TAG_LEN].copy_from_slice(url.as_bytes());
        let tag = covered(&raw[..n - TAG_LEN], |parts| self.mac.mac(parts));
        raw[n - TAG_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        let mut out = String::with_capacity(prefix.len() + n.div_ceil(3) * 4);
        out.push_str(prefix);
        // Straight into the string: base64url is ASCII, nothing to check again.
        base64_simd::URL_SAFE_NO_PAD.encode_append(raw, &mut out);
        Some(out)
    }

    /// Checks a click token: what it says if it is authentic (under the current key or a
    /// previous one). Never panics, whatever the input.
    pub fn verify_click(&self, token: &str) -> Option<Click> {
        // Longer than any minted token could be: refused before decoding.
        if token.len() > (HEAD + MAX_URL + TAG_LEN).div_ceil(3) * 4 {
            return None;
        }
        let mut raw = URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
        if raw.len() < HEAD + TAG_LEN || raw[0] != VERSION {
            return None;
        }
        let (signed, tag) = raw.split_at(raw.len() - TAG_LEN);
        // Compared in constant time.
        let authentic = std::iter::once(&self.mac)
            .chain(&self.previous)
            .any(|key| covered(signed, |parts| key.verify_truncated(parts, tag)));
        if !authentic {
            return None;
        }
        let id = MessageId::from_slice(&signed[1..17])?;
        let link = u16::from_be_bytes([signed[17], signed[18]]);
        // The URL is the decoded token's middle: moved to its front, not copied out.
        raw.truncate(raw.len() - TAG_LEN);
        raw.drain(..HEAD);
        let url = String::from_utf8(raw).ok()?;
        trackable_url(&url).then_some(Click { id, link, url })
    }
}

/// What the MAC of a click token covers: the domain and purpose, then the signed bytes with
/// the URL's length before the URL (so that no two splits of the same bytes sign alike),
/// handed to `f` in two pieces.
fn covered<R>(signed: &[u8], f: impl FnOnce(&[&[u8]]) -> R) -> R {
    const DOMAIN: &[u8; 16] = b"pixelrelay/token";
    let url_len = u16::try_from(signed.len().saturating_sub(HEAD)).unwrap_or(u16::MAX);
    let (head, url) = signed.split_at(HEAD.min(signed.len()));
    let mut before = [0u8; DOMAIN.len() + 1 + HEAD + 2];
    let n = DOMAIN.len() + 1 + head.len() + 2;
    before[..DOMAIN.len()].copy_from_slice(DOMAIN);
    before[DOMAIN.len()] = Purpose::Click.tag_byte();
    before[DOMAIN.len() + 1..n - 2].copy_from_slice(head);
    before[n - 2..n].copy_from_slice(&url_len.to_be_bytes());
    f(&[&before[..n], url])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> TokenKey {
        TokenKey::from_secret(b"0123456789abcdef0123456789abcdef")
    }

    const URL: &str = "https://shop.example/spring?utm=mail&id=42";

    /// A known answer, computed outside pixelrelay (Python's `hmac` and `base64` over the
    /// format in the module's documentation): tokens already in delivered mail keep
    /// verifying whatever the minting code becomes.
    #[test]
    fn the_format_is_what_the_documentation_says() {
        let id = MessageId(std::array::from_fn(|i| i as u8));
        let want = "AQABAgMEBQYHCAkKCwwNDg8AA2h0dHBzOi8vc2hvcC5leGFtcGxlL3NwcmluZz91dG09bWFpbCZpZD00MmO-lZU-bEqKQNTMU72CR2s";
        assert_eq!(key().mint_click(&id, 3, URL).as_deref(), Some(want));
        assert_eq!(
            key().verify_click(want).map(|c| (c.id, c.link, c.url)),
            Some((id, 3, URL.to_string()))
        );
    }

    #[test]
    fn mint_then_verify_round_trips_under_current_and_previous_keys() {
        let id = MessageId::random();
        let t = key().mint_click(&id, 3, URL).unwrap();
        let want = Click {
            id,
            link: 3,
            url: URL.into(),
        };
        assert_eq!(key().verify_click(&t), Some(want.clone()));
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let rotated =
            TokenKey::from_secret(b"new").with_previous(&[b"0123456789abcdef0123456789abcdef"]);
        assert_eq!(rotated.verify_click(&t), Some(want));
        // Unicode destinations are kept as they are.
        let u = "https://b\u{fc}cher.example/\u{e9}";
        assert_eq!(
            key()
                .verify_click(&key().mint_click(&id, 0, u).unwrap())
                .unwrap()
                .url,
            u
        );
    }

    #[test]
    fn only_http_urls_of_bounded_length_are_minted() {
        let id = MessageId::random();
        for bad in [
            "mailto:a@example.com",
            "javascript:alert(1)",
            "https://",
            "/relative",
            "ftp://x.example/",
            "é",
            "httpé://x.example/",
            "https:/é/x",
        ] {
            assert_eq!(key().mint_click(&id, 0, bad), None, "{bad}");
        }
        let long = format!("https://x.example/{}", "a".repeat(MAX_URL));
        assert_eq!(key().mint_click(&id, 0, &long), None);
        let longest = format!("https://x.example/{}", "a".repeat(MAX_URL - 18));
        let t = key().mint_click(&id, 0, &longest).unwrap();
        assert_eq!(key().verify_click(&t).unwrap().url, longest);
    }

    #[test]
    fn forged_truncated_mutated_and_foreign_tokens_never_verify() {
        let id = MessageId::random();
        let t = key().mint_click(&id, 1, URL).unwrap();
        // Re-signed with another key: any URL, never accepted.
        let other = TokenKey::from_secret(b"attacker's key");
        assert_eq!(
            key().verify_click(&other.mint_click(&id, 1, "https://evil.example/").unwrap()),
            None
        );
        assert_eq!(
            key().verify_click(&other.mint_click(&id, 1, URL).unwrap()),
            None
        );
        // Every prefix, and every character changed.
        for n in 0..t.len() {
            assert_eq!(key().verify_click(&t[..n]), None, "prefix {n}");
        }
        for (i, c) in t.char_indices() {
            for r in ['A', 'f', '0', '_', '-'] {
                if r != c {
                    let mut m = t.clone();
                    m.replace_range(i..i + 1, &r.to_string());
                    assert_eq!(key().verify_click(&m), None, "char {i} -> {r}");
                }
            }
        }
        // An open token is no click token, and a click token no open token.
        assert_eq!(key().verify_click(&key().mint(Purpose::Open, &id)), None);
        assert_eq!(key().verify(Purpose::Open, &t), None);
        assert_eq!(key().verify(Purpose::Click, &t), None);
        assert_eq!(key().verify_click(&format!("{t}A")), None);
        assert_eq!(key().verify_click(&"A".repeat(10_000)), None);
    }

    #[test]
    fn ten_thousand_random_tokens_redirect_nowhere() {
        let k = key();
        let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        for _ in 0..10_000 {
            let len = 36 + (next() % 120) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let token = URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(k.verify_click(&token), None);
        }
    }

    proptest! {
        #[test]
        fn any_link_round_trips(id in proptest::array::uniform16(any::<u8>()), link in any::<u16>(),
                                path in "[a-zA-Z0-9/?=&%._~-]{1,200}") {
            let url = format!("https://h.example/{path}");
            let id = MessageId(id);
            let t = key().mint_click(&id, link, &url).unwrap();
            prop_assert_eq!(key().verify_click(&t), Some(Click { id, link, url }));
        }

        #[test]
        fn arbitrary_strings_never_verify(s in ".{0,200}") {
            prop_assert_eq!(key().verify_click(&s), None);
        }
    }
}

#[cfg(test)]
mod known_answer {
    use super::*;

    /// Tokens in mail already sent must keep verifying: the format is pinned.
    #[test]
    fn known_answer_pins_the_format() {
        let k = TokenKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let id = MessageId([7; 16]);
        let t = k
            .mint_click(&id, 2, "https://a.example/x")
            .unwrap_or_default();
        assert_eq!(
            t,
            "AQcHBwcHBwcHBwcHBwcHBwcAAmh0dHBzOi8vYS5leGFtcGxlL3j2kaK0CjWO_lxY3jO0btqk"
        );
        assert_eq!(k.verify_click(&t).map(|c| c.link), Some(2));
    }
}
