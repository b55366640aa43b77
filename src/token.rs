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
