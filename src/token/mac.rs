//! HMAC-SHA256 (RFC 2104) for tokens, keyed once.
//!
//! Every pixel and every tracked link costs one MAC: a link-dense newsletter mints hundreds per
//! message, and each redirect verifies one. The key's two padded blocks are compressed once
//! per key; a MAC then pads its message by hand into blocks on the stack and runs SHA-256's
//! compression function over them: the message's blocks (two for a typical link) and one for
//! the outer hash. Nothing is cloned, buffered or copied piece by piece on the way, which is
//! what the general-purpose `hmac` type spends about as long on as on the hashing itself.
//!
//! The result is HMAC-SHA256 exactly: a property test holds it to the `hmac` crate for any key
//! and message, and the tokens' known answers (computed with Python) pin it too.

use sha2::{Digest, Sha256};

/// SHA-256's block size.
const BLOCK: usize = 64;
/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
/// Messages up to this long are padded on the stack (a link's signed bytes are ~100).
const STACK_BLOCKS: usize = 4;

/// HMAC-SHA256 under one key: the hash states after the key's inner and outer pads.
#[derive(Clone)]
pub struct Keyed {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl Keyed {
    /// Keys the MAC (any key length: a key longer than a block is hashed first).
    pub fn new(key: &[u8]) -> Keyed {
        let mut k0 = [0u8; BLOCK];
        if key.len() > BLOCK {
            k0[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k0[..key.len()].copy_from_slice(key);
        }
        let pad = |x: u8| {
            let mut state = IV;
            sha2::block_api::compress256(&mut state, &[k0.map(|b| b ^ x)]);
            state
        };
        Keyed {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    /// The MAC of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // The message, 0x80, zeros, then the bit length of key block and message: whole blocks.
        let padded = (len + 9).div_ceil(BLOCK) * BLOCK;
        let mut stack = [0u8; STACK_BLOCKS * BLOCK];
        let mut heap = Vec::new();
        let buf: &mut [u8] = if padded <= stack.len() {
            &mut stack[..padded]
        } else {
            heap.resize(padded, 0);
            &mut heap
        };
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        buf[len] = 0x80;
        let bits = ((BLOCK + len) as u64).wrapping_mul(8);
        buf[padded - 8..].copy_from_slice(&bits.to_be_bytes());
        let mut inner = self.inner;
        sha2::block_api::compress256(&mut inner, buf.as_chunks::<BLOCK>().0);
        // The outer hash: the key block, then the inner digest (32 bytes) padded to one block.
        let mut last = [0u8; BLOCK];
        last[..32].copy_from_slice(&digest(&inner));
        last[32] = 0x80;
        last[BLOCK - 8..].copy_from_slice(&(((BLOCK + 32) * 8) as u64).to_be_bytes());
        let mut outer = self.outer;
        sha2::block_api::compress256(&mut outer, &[last]);
        digest(&outer)
    }

    /// Whether `tag` is the first `tag.len()` bytes (at least 16) of the MAC of `parts`,
    /// compared in constant time.
    pub fn verify_truncated(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let full = self.mac(parts);
        if tag.len() < 16 || tag.len() > full.len() {
            return false;
        }
        let diff = full.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// A state's bytes, big-endian word by word.
fn digest(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, KeyInit, Mac};
    use proptest::prelude::*;

    fn reference(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let Ok(mut m) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
            unreachable!("HMAC accepts keys of any length")
        };
        m.update(msg);
        m.finalize().into_bytes().into()
    }

    /// RFC 4231, test cases 2 and 6 (a short key; a key longer than a block).
    #[test]
    fn rfc_4231_known_answers() {
        let hex = |s: &str| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
                .collect::<Vec<u8>>()
        };
        let k = Keyed::new(b"Jefe");
        assert_eq!(
            k.mac(&[b"what do ya want ", b"for nothing?"]).to_vec(),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        let k = Keyed::new(&[0xaa; 131]);
        assert_eq!(
            k.mac(&[b"Test Using Larger Than Block-Size Key - Hash Key First"])
                .to_vec(),
            hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    #[test]
    fn truncated_tags_verify_and_short_or_wrong_ones_do_not() {
        let k = Keyed::new(b"key");
        let full = k.mac(&[b"msg"]);
        assert!(k.verify_truncated(&[b"msg"], &full[..16]));
        assert!(k.verify_truncated(&[b"msg"], &full));
        assert!(!k.verify_truncated(&[b"msg"], &full[..15]));
        assert!(!k.verify_truncated(&[b"msh"], &full[..16]));
        let mut bad = full;
        bad[3] ^= 1;
        assert!(!k.verify_truncated(&[b"msg"], &bad[..16]));
    }

    proptest! {
        /// Any key, any message cut anywhere into parts: the `hmac` crate's answer. Lengths
        /// cross every padding boundary (55/56 bytes in a block) and the stack's size.
        #[test]
        fn the_mac_is_hmac_sha256(
            key in proptest::collection::vec(any::<u8>(), 0..150),
            msg in proptest::collection::vec(any::<u8>(), 0..400),
            cut in any::<proptest::sample::Index>(),
        ) {
            let c = cut.index(msg.len() + 1);
            let (a, b) = msg.split_at(c);
            prop_assert_eq!(Keyed::new(&key).mac(&[a, b]), reference(&key, &msg));
        }
    }

    #[test]
    fn every_length_around_the_block_edges() {
        let key = b"pixelrelay";
        let k = Keyed::new(key);
        let msg: Vec<u8> = (0..=300u16).map(|i| i as u8).collect();
        for n in 0..=msg.len() {
            assert_eq!(k.mac(&[&msg[..n]]), reference(key, &msg[..n]), "length {n}");
        }
    }
}
