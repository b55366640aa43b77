//! What the journal holds besides pixel hits: a message's record, written before the upstream
//! sees the message, and the upstream's final reply to it. Pure encoding; the journal carries
//! them and the indexer moves them into the store in journal order, so it always meets a
//! message's record before any open of it.
//!
//! # Format
//!
//! The first byte of a journal payload says what it is: 1 and 2 a pixel hit (`hit::Hit`),
//! [`MESSAGE_V1`] a message record, [`FINISH_V1`] a final reply. Integers little-endian,
//! strings as `len: u16 ‖ UTF-8 bytes`:
//!
//! - message: `0x10 ‖ id(16) ‖ at_ms(8) ‖ size(8) ‖ flags(1) ‖ queue_id ‖ sender ‖
//!   n_recipients(u16) ‖ recipients… ‖ [message_id] ‖ [subject] ‖ [skip_reason]`; flags: 1
//!   tracked, 2 message_id present, 4 subject present, 8 skip_reason present. The subject is
//!   written only when `store.subjects` is on.
//! - final reply: `0x11 ‖ id(16) ‖ at_ms(8) ‖ accepted(1) ‖ reply`.

use super::hit::Hit;
use crate::store::{Delivery, MessageRecord};
use crate::token::MessageId;

/// A message record.
const MESSAGE_V1: u8 = 0x10;
/// The upstream's final reply to a message.
const FINISH_V1: u8 = 0x11;

/// One journal payload, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A pixel hit.
    Hit(Hit<'static>),
    /// A message, as the relay recorded it before relaying.
    Message(MessageRecord),
    /// The upstream's final reply to a message.
    Finish(MessageId, Delivery),
}

impl Entry {
    /// Decodes a journal payload; `None` for anything that is not one.
    pub fn decode(b: &[u8]) -> Option<Entry> {
        match *b.first()? {
            MESSAGE_V1 => decode_message(&b[1..]).map(Entry::Message),
            FINISH_V1 => decode_finish(&b[1..]).map(|(id, d)| Entry::Finish(id, d)),
            _ => Hit::decode(b).map(Entry::Hit),
        }
    }
}

/// Appends `s` as `len: u16 ‖ bytes`, cut to 65 535 bytes on a character boundary.
fn put_str(b: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.extend_from_slice(&(end as u16).to_le_bytes());
    b.extend_from_slice(&s.as_bytes()[..end]);
}

/// The bytes [`encode_message`] appends at most.
pub fn message_len(rec: &MessageRecord) -> usize {
    let strs = rec.queue_id.len()
        + rec.sender.len()
        + rec.recipients.iter().map(String::len).sum::<usize>()
        + rec.message_id.as_ref().map_or(0, String::len)
        + rec.subject.as_ref().map_or(0, String::len)
        + rec.skip_reason.as_ref().map_or(0, String::len);
    36 + strs + 2 * (6 + rec.recipients.len())
}

/// Appends the journal payload of a message record; the subject only when `subjects`.
pub fn encode_message(rec: &MessageRecord, subjects: bool, b: &mut Vec<u8>) {
    let subject = rec.subject.as_deref().filter(|_| subjects);
    b.push(MESSAGE_V1);
    b.extend_from_slice(rec.id.as_bytes());
    b.extend_from_slice(&rec.at_ms.to_le_bytes());
    b.extend_from_slice(&rec.size.to_le_bytes());
    let flags = u8::from(rec.tracked)
        | (u8::from(rec.message_id.is_some()) << 1)
        | (u8::from(subject.is_some()) << 2)
        | (u8::from(rec.skip_reason.is_some()) << 3);
    b.push(flags);
    put_str(b, &rec.queue_id);
    put_str(b, &rec.sender);
    let n = rec.recipients.len().min(u16::MAX as usize);
    b.extend_from_slice(&(n as u16).to_le_bytes());
    for r in &rec.recipients[..n] {
        put_str(b, r);
    }
    for s in [
        rec.message_id.as_deref(),
        subject,
        rec.skip_reason.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        put_str(b, s);
    }
}

/// The bytes [`encode_finish`] appends at most.
pub fn finish_len(d: &Delivery) -> usize {
    28 + d.reply.len()
}

/// Appends the journal payload of a final reply.
pub fn encode_finish(id: &MessageId, d: &Delivery, b: &mut Vec<u8>) {
    b.push(FINISH_V1);
    b.extend_from_slice(id.as_bytes());
    b.extend_from_slice(&d.at_ms.to_le_bytes());
    b.push(u8::from(d.accepted));
    put_str(b, &d.reply);
}

/// A cursor over a payload.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn id(&mut self) -> Option<MessageId> {
        MessageId::from_slice(self.take(16)?)
    }

    fn string(&mut self) -> Option<String> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn decode_message(b: &[u8]) -> Option<MessageRecord> {
    let mut c = Cur(b);
    let id = c.id()?;
    let at_ms = c.u64()?;
    let size = c.u64()?;
    let flags = c.u8()?;
    let queue_id = c.string()?;
    let sender = c.string()?;
    let n = c.u16()?;
    let recipients = (0..n).map(|_| c.string()).collect::<Option<Vec<_>>>()?;
    let mut opt = |bit: u8| -> Option<Option<String>> {
        if flags & bit != 0 {
            c.string().map(Some)
        } else {
            Some(None)
        }
    };
    let message_id = opt(2)?;
    let subject = opt(4)?;
    let skip_reason = opt(8)?;
    c.done().then_some(MessageRecord {
        id,
        queue_id,
        at_ms,
        sender,
        recipients,
        message_id,
        subject,
        size,
        tracked: flags & 1 != 0,
        skip_reason,
    })
}

fn decode_finish(b: &[u8]) -> Option<(MessageId, Delivery)> {
    let mut c = Cur(b);
    let id = c.id()?;
    let at_ms = c.u64()?;
    let accepted = c.u8()? != 0;
    let reply = c.string()?;
    c.done().then_some((
        id,
        Delivery {
            accepted,
            reply,
            at_ms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> MessageRecord {
        MessageRecord {
            id: MessageId::random(),
            queue_id: "4F2A1".into(),
            at_ms: 1_795_493_183_123,
            sender: "news@example.com".into(),
            recipients: vec!["bob@example.net".into(), "ünï@example.org".into()],
            message_id: Some("<abc@example.com>".into()),
            subject: Some("Grüße".into()),
            size: 12_345,
            tracked: true,
            skip_reason: None,
        }
    }

    fn encoded(r: &MessageRecord, subjects: bool) -> Vec<u8> {
        let mut b = Vec::new();
        encode_message(r, subjects, &mut b);
        assert!(
            b.len() <= message_len(r),
            "{} > {}",
            b.len(),
            message_len(r)
        );
        b
    }

    #[test]
    fn message_records_round_trip() {
        let r = rec();
        assert_eq!(
            Entry::decode(&encoded(&r, true)),
            Some(Entry::Message(r.clone()))
        );
        let mut bare = r.clone();
        bare.message_id = None;
        bare.subject = None;
        bare.tracked = false;
        bare.skip_reason = Some("recipients".into());
        bare.recipients.clear();
        assert_eq!(
            Entry::decode(&encoded(&bare, true)),
            Some(Entry::Message(bare))
        );
    }

    #[test]
    fn the_subject_reaches_the_disk_only_when_kept() {
        let r = rec();
        let b = encoded(&r, false);
        let subject: &[u8] = "Grüße".as_bytes();
        assert!(!b.windows(subject.len()).any(|w| w == subject));
        let Some(Entry::Message(back)) = Entry::decode(&b) else {
            panic!("no message")
        };
        assert_eq!(back.subject, None);
    }

    #[test]
    fn final_replies_round_trip() {
        let id = MessageId::random();
        let d = Delivery {
            accepted: false,
            reply: "550 5.1.1 no such user".into(),
            at_ms: 7,
        };
        let mut b = Vec::new();
        encode_finish(&id, &d, &mut b);
        assert!(b.len() <= finish_len(&d));
        assert_eq!(Entry::decode(&b), Some(Entry::Finish(id, d)));
    }

    #[test]
    fn truncated_or_padded_entries_do_not_decode() {
        let r = rec();
        let b = encoded(&r, true);
        for cut in 1..b.len() {
            assert_eq!(Entry::decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut longer = b;
        longer.push(0);
        assert_eq!(Entry::decode(&longer), None);
        assert_eq!(Entry::decode(&[]), None);
        assert_eq!(Entry::decode(&[0x12, 0, 0]), None);
    }
}
