//! Tracking tokens: mint and verify. Pure, no IO, no lookups.
//!
//! (Skeleton: the full implementation lands with the rewrite work.)

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
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Loading the open pixel.
    Open,
}

/// The instance's token key. (Skeleton: the real MAC lands with the pixel work.)
#[derive(Clone)]
pub struct TokenKey(#[allow(dead_code)] Vec<u8>);

impl TokenKey {
    /// Derives the key from the secret file's contents.
    pub fn from_secret(secret: &[u8]) -> TokenKey {
        TokenKey(secret.to_vec())
    }

    /// A token for `id`.
    pub fn mint(&self, _purpose: Purpose, id: &MessageId) -> String {
        id.to_string()
    }
}
