//! Messages in sled: the record and its delivery (`m`, JSON), its open statistics, hand-off
//! time and open index (`s` and `x`), the time index (`t`), and what reads them.

use super::*;

/// Open ids per `x` chunk of a message's open index; the newest fewer than this many live in
/// its `s` record, so that an open rewrites one small key however often its message is opened.
pub(super) const CHUNK: usize = 128;

/// The hot per-message record under `s`, read and rewritten by every write that opens the
/// message: its open statistics and hand-off time (six big-endian u64s; a time of 0 means
/// "none"), the ids of its newest opens (`count % CHUNK` of them), and what an open event
/// repeats of the record, so that preparing an open reads this one key.
///
/// ```text
/// count human first last first_human sent_at last_id (8 each) | n(4) | n × open id(8)
/// | recipient | sender | message_id | subject        (each: len(4), u32::MAX for none, bytes)
/// [| click statistics (JSON, present once the message was clicked)]
/// ```
///
/// Clicks share the open index (`recent`, `x` chunks): a chunk fills with every
/// `CHUNK` events, opens and clicks together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct MsgStats {
    /// Every open.
    pub(super) count: u64,
    /// Opens not marked as machine.
    pub(super) human: u64,
    /// First open.
    pub(super) first: u64,
    /// Latest open.
    pub(super) last: u64,
    /// First open not marked as machine.
    pub(super) first_human: u64,
    /// When the relay handed the message upstream (the final reply, else the record time).
    pub(super) sent_at: u64,
    /// The id of the newest open counted here (0: none): replaying the opens written after
    /// the last checkpoint skips those a message's record already counts.
    pub(super) last_id: u64,
    /// The newest open ids, oldest first; older ones are in full `x` chunks.
    pub(super) recent: Vec<u64>,
    /// What an open event repeats of the record; shared, so that copying the statistics
    /// (every write that opens the message does) copies no strings.
    pub(super) context: Arc<Repeated>,
    /// Its clicks.
    pub(super) clicks: ClickStats,
}

/// The fields of a message record that each of its open events repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Repeated {
    /// The record's first recipient.
    pub(super) recipient: String,
    /// The record's sender.
    pub(super) sender: String,
    /// The record's Message-ID.
    pub(super) message_id: Option<String>,
    /// The record's subject, when subjects are kept.
    pub(super) subject: Option<String>,
    /// The record's queue id (`None` in statistics written before it was kept here).
    pub(super) queue_id: Option<String>,
}

/// Bytes of [`MsgStats`]' fixed part.
const STATS_LEN: usize = 56;
/// The length that stands for "none".
const NONE: u32 = u32::MAX;

impl MsgStats {
    pub(super) fn encode(&self) -> Vec<u8> {
        let f = [
            self.count,
            self.human,
            self.first,
            self.last,
            self.first_human,
            self.sent_at,
            self.last_id,
        ];
        // The queue id last: statistics written before it was kept end after the subject
        // (or go on with the clicks' JSON, whose `{` no length prefix starts with).
        let strings = [
            Some(&self.context.recipient),
            Some(&self.context.sender),
            self.context.message_id.as_ref(),
            self.context.subject.as_ref(),
            self.context.queue_id.as_ref(),
        ];
        let text: usize = strings.iter().flatten().map(|s| s.len()).sum();
        let mut v = Vec::with_capacity(STATS_LEN + 4 + 8 * self.recent.len() + 16 + text);
        v.extend(f.iter().flat_map(|x| x.to_be_bytes()));
        v.extend_from_slice(&(self.recent.len() as u32).to_be_bytes());
        v.extend(self.recent.iter().flat_map(|x| x.to_be_bytes()));
        for s in strings {
            match s {
                // Record fields come from one SMTP transaction, far below 4 GiB.
                Some(s) => {
                    v.extend_from_slice(&(s.len().min(NONE as usize - 1) as u32).to_be_bytes());
                    v.extend_from_slice(s.as_bytes());
                }
                None => v.extend_from_slice(&NONE.to_be_bytes()),
            }
        }
        if !self.clicks.is_empty() {
            // A derived struct of numbers and vectors: serialising it cannot fail.
            if let Ok(j) = serde_json::to_vec(&self.clicks) {
                v.extend_from_slice(&j);
            }
        }
        v
    }

    pub(super) fn decode(b: &[u8]) -> Result<MsgStats, StoreError> {
        let mut r = Cursor(b);
        let [count, human, first, last, first_human, sent_at, last_id] =
            get_u64s(r.take(STATS_LEN)?, "message statistics")?;
        let n = r.u32()? as usize;
        let recent = u64s(r.take(n.checked_mul(8).ok_or_else(corrupt)?)?);
        let context = Arc::new(Repeated {
            recipient: r.string()?.unwrap_or_default(),
            sender: r.string()?.unwrap_or_default(),
            message_id: r.string()?,
            subject: r.string()?,
            // Absent in older statistics: nothing left, or the clicks' JSON next.
            queue_id: match r.0.first() {
                None | Some(b'{') => None,
                Some(_) => r.string()?,
            },
        });
        let clicks = if r.0.is_empty() {
            ClickStats::default()
        } else {
            serde_json::from_slice(r.0).map_err(|_| corrupt())?
        };
        Ok(MsgStats {
            count,
            human,
            first,
            last,
            first_human,
            sent_at,
            last_id,
            recent,
            context,
            clicks,
        })
    }

    /// Takes what an open event repeats from `r`.
    pub(super) fn set_record(&mut self, r: &MessageRecord) {
        self.context = Arc::new(Repeated {
            recipient: r.recipients.first().cloned().unwrap_or_default(),
            sender: r.sender.clone(),
            message_id: r.message_id.clone(),
            subject: r.subject.clone(),
            queue_id: Some(r.queue_id.clone()),
        });
    }

    pub(super) fn view(&self) -> OpenStats {
        let t = |v: u64| (v != 0).then_some(v);
        OpenStats {
            count: self.count,
            human: self.human,
            first_at: t(self.first),
            last_at: t(self.last),
            first_human_at: t(self.first_human),
        }
    }

    /// Events in the index: opens and clicks.
    fn events(&self) -> u64 {
        self.count + self.clicks.count
    }

    /// Indexes event `open_id` (its statistics counted by the caller); a chunk of ids that
    /// became full is returned (with its number) for an `x` key.
    pub(super) fn index(&mut self, open_id: u64) -> Option<(u32, Vec<u8>)> {
        self.last_id = open_id;
        self.recent.push(open_id);
        if self.recent.len() < CHUNK {
            return None;
        }
        let full = std::mem::take(&mut self.recent);
        let n = (self.events() / CHUNK as u64).saturating_sub(1) as u32;
        Some((n, put_u64s(&full)))
    }

    /// Counts one open with id `open_id` at `at_ms`; a chunk of ids that became full is
    /// returned (with its number) for an `x` key.
    pub(super) fn add(&mut self, open_id: u64, at_ms: u64, human: bool) -> Option<(u32, Vec<u8>)> {
        if self.count == 0 {
            self.first = at_ms;
        }
        if human {
            if self.human == 0 {
                self.first_human = at_ms;
            }
            self.human += 1;
        }
        self.count += 1;
        self.last = self.last.max(at_ms);
        self.index(open_id)
    }
}

fn corrupt() -> StoreError {
    StoreError::Corrupt("message statistics")
}

/// Reads a [`MsgStats`] record front to back.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    fn string(&mut self) -> Result<Option<String>, StoreError> {
        match self.u32()? {
            NONE => Ok(None),
            n => {
                let b = self.take(n as usize)?;
                Ok(Some(String::from_utf8(b.to_vec()).map_err(|_| corrupt())?))
            }
        }
    }
}

/// Big-endian u64s back to back (a trailing partial one ignored).
pub(super) fn u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect()
}

/// The record and delivery of a message as stored under `m`: the API's [`Message`] without
/// its open statistics, which live in `s` so that an open never rewrites this key.
pub(super) use crate::store::shared::MessageEvent as StoredRef;

pub(super) fn encode_message(m: &Message) -> Result<Vec<u8>, StoreError> {
    encode(&StoredRef {
        record: &m.record,
        delivery: &m.delivery,
    })
}

/// The `message` webhook event: the admin API's message (tracking decision, upstream reply)
/// without its open statistics, which are always zero-ish at that moment and change later.
pub(super) fn message_event(m: &Message) -> StoredRef<'_> {
    StoredRef {
        record: &m.record,
        delivery: &m.delivery,
    }
}

pub(super) fn message_key(id: &MessageId) -> Vec<u8> {
    key(P_MESSAGE, &[id.as_bytes()])
}

pub(super) fn stats_key(id: &MessageId) -> Vec<u8> {
    key(P_STATS, &[id.as_bytes()])
}

pub(super) fn chunk_key(id: &MessageId, n: u32) -> Vec<u8> {
    key(P_CHUNK, &[id.as_bytes(), &n.to_be_bytes()])
}

/// The prefix of message `id`'s `x` chunks.
pub(super) fn chunk_prefix(id: &MessageId) -> Vec<u8> {
    key(P_CHUNK, &[id.as_bytes()])
}

pub(super) fn time_key(at_ms: u64, id: &MessageId) -> Vec<u8> {
    key(P_TIME, &[&at_ms.to_be_bytes(), id.as_bytes()])
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A message cursor (48 hex digits: `at_ms ‖ id`) as the time-index key it names.
pub(super) fn parse_message_cursor(s: &str) -> Result<Vec<u8>, StoreError> {
    let bad = || StoreError::BadCursor(s.to_string());
    if s.len() != 48 || !s.is_ascii() {
        return Err(bad());
    }
    let mut k = vec![P_TIME];
    for i in (0..48).step_by(2) {
        k.push(u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad())?);
    }
    Ok(k)
}

/// What one write changes of the messages it touches, read once from the tree.
#[derive(Default)]
struct Pending {
    /// id → (record and delivery, statistics), as they will be written.
    msgs: HashMap<MessageId, (Option<Message>, MsgStats)>,
}

impl Pending {
    fn get<'a>(
        &'a mut self,
        inner: &Inner,
        id: &MessageId,
    ) -> Result<&'a mut (Option<Message>, MsgStats), StoreError> {
        match self.msgs.entry(*id) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let m = match inner.data.get(message_key(id))? {
                    Some(v) => Some(decode::<Message>(&v)?),
                    None => None,
                };
                let s = inner.msg_stats(id)?.unwrap_or_default();
                Ok(e.insert((m, s)))
            }
        }
    }
}

/// Puts `recs` into `pending` (a record seen again replaces the first, under its new time key)
/// and their time keys into `batch`; new messages are counted in `counters`.
fn stage_records(
    inner: &Inner,
    recs: &[&MessageRecord],
    pending: &mut Pending,
    counters: &mut Counters,
    batch: &mut sled::Batch,
) -> Result<(), StoreError> {
    for rec in recs {
        let (m, ms) = pending.get(inner, &rec.id)?;
        let mut record = (*rec).clone();
        if !inner.cfg.subjects {
            record.subject = None;
        }
        match m {
            Some(old) => {
                batch.remove(time_key(old.record.at_ms, &rec.id));
                old.record = record;
            }
            None => {
                counters.recorded += 1;
                *m = Some(Message {
                    record,
                    delivery: None,
                    opens: OpenStats::default(),
                    clicks: ClickStats::default(),
                });
            }
        }
        if let Some(m) = m.as_ref() {
            ms.set_record(&m.record);
            if m.delivery.is_none() {
                ms.sent_at = rec.at_ms;
            }
        }
        batch.insert(time_key(rec.at_ms, &rec.id), EMPTY);
    }
    Ok(())
}

impl SledStore {
    /// Message records, then final replies, in ONE batch, with the journal position `mark`
    /// when they come from the journal: what the indexer commits per run. All or nothing.
    pub(super) fn commit_messages(
        &self,
        recs: &[&MessageRecord],
        done: &[(&MessageId, &Delivery)],
        mark: Option<Position>,
    ) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut st = inner.lock();
        let mut batch = sled::Batch::default();
        let mut pending = Pending::default();
        let mut counters = st.counters.clone();
        let mut last_event = st.last_event;
        let mut written = 0;
        stage_records(inner, recs, &mut pending, &mut counters, &mut batch)?;
        for (id, delivery) in done {
            let (m, ms) = pending.get(inner, id)?;
            let Some(m) = m else {
                return Err(StoreError::NotFound(**id));
            };
            let first_reply = m.delivery.is_none();
            m.delivery = Some((*delivery).clone());
            ms.sent_at = delivery.at_ms;
            if first_reply {
                counters.count_delivery(&m.record, delivery);
                written += outbox::write_event(
                    &mut batch,
                    &st.hooks,
                    &mut last_event,
                    "message",
                    delivery.at_ms,
                    &message_event(m),
                )?;
            }
        }
        for (id, (m, ms)) in &pending.msgs {
            if let Some(m) = m {
                batch.insert(message_key(id), encode_message(m)?);
            }
            batch.insert(stats_key(id), ms.encode());
        }
        if written > 0 {
            batch.insert(outbox::LAST_EVENT, put_u64s(&[last_event]));
        }
        batch.insert(COUNTERS, encode(&counters)?);
        if let Some(mark) = mark {
            batch.insert(JOURNAL_MARK, mark.encode().as_slice());
        }
        inner.data.apply_batch(batch)?;
        // Their statistics are on disk now, newest open included.
        inner.forget_dirty(pending.msgs.keys());
        st.counters = counters;
        st.last_event = last_event;
        self.outbox_written(&st, written);
        Ok(())
    }

    /// A message's open ids, oldest first: its full chunks, then the newest in `s`.
    pub(super) fn open_ids(&self, id: &MessageId, ms: &MsgStats) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        for kv in self.inner.data.scan_prefix(chunk_prefix(id)) {
            ids.extend(u64s(&kv?.1));
        }
        ids.extend_from_slice(&ms.recent);
        Ok(ids)
    }

    /// One message with all its opens, oldest first.
    pub(super) fn get_message(
        &self,
        id: &MessageId,
    ) -> Result<Option<MessageWithOpens>, StoreError> {
        let Some((message, ms)) = self.get_stored(id)? else {
            return Ok(None);
        };
        let events = self.opens_by_id(&self.open_ids(id, &ms)?)?;
        Ok(Some(MessageWithOpens::split(message, events)))
    }

    /// Messages, newest first, strictly before `cursor`, that pass `filter`. A page scans at
    /// most 10 000 messages, so a page of a rare filter may be short yet carry a cursor.
    pub(super) fn list_messages(
        &self,
        filter: &MessageFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Message>, StoreError> {
        let mut end = match cursor {
            Some(c) => parse_message_cursor(c)?,
            None => vec![P_TIME + 1],
        };
        if let Some(until) = filter.until_ms {
            // Keys sort by time first: everything before `until` sorts below `t ‖ until ‖ 0…0`.
            let k = key(P_TIME, &[&until.to_be_bytes()]);
            if k < end {
                end = k;
            }
        }
        let start = match filter.since_ms {
            Some(since) => key(P_TIME, &[&since.to_be_bytes()]),
            None => vec![P_TIME],
        };
        let lower = |s: &Option<String>| s.as_ref().map(|r| r.to_ascii_lowercase());
        let (rcpt, sender) = (lower(&filter.rcpt), lower(&filter.sender));
        let mut items = Vec::new();
        let mut last_key = None;
        for (scanned, kv) in self.inner.data.range(start..end).rev().enumerate() {
            if items.len() == limit || scanned == SCAN_LIMIT {
                return Ok(Page {
                    items,
                    next_cursor: last_key.map(|k: sled::IVec| hex(&k[1..])),
                });
            }
            let (k, _) = kv?;
            let Some(id) = k.get(9..).and_then(MessageId::from_slice) else {
                continue;
            };
            let Some((m, _)) = self.get_stored(&id)? else {
                continue;
            };
            last_key = Some(k);
            let r = &m.record;
            let rcpt_ok = rcpt.as_ref().is_none_or(|want| {
                r.recipients
                    .iter()
                    .any(|x| x.to_ascii_lowercase().contains(want.as_str()))
            });
            let sender_ok = sender
                .as_ref()
                .is_none_or(|s| r.sender.to_ascii_lowercase().contains(s.as_str()));
            let opens = if filter.people {
                m.opens.human
            } else {
                m.opens.count
            };
            let opened_ok = filter.opened.is_none_or(|o| o == (opens > 0));
            if rcpt_ok && sender_ok && opened_ok {
                items.push(m);
            }
        }
        Ok(Page {
            items,
            next_cursor: None,
        })
    }

    /// A message with its open statistics (and the raw statistics record).
    pub(super) fn get_stored(
        &self,
        id: &MessageId,
    ) -> Result<Option<(Message, MsgStats)>, StoreError> {
        let Some(v) = self.inner.data.get(message_key(id))? else {
            return Ok(None);
        };
        let stats = self.inner.msg_stats(id)?.unwrap_or_default();
        let mut m: Message = decode(&v)?;
        m.opens = stats.view();
        m.clicks = stats.clicks.clone();
        Ok(Some((m, stats)))
    }

    /// What an open of message `id` needs from the store before it is recorded: the hand-off
    /// time (for the early-load rule) and the message fields an open event repeats. `None` if
    /// the message is unknown.
    pub(super) fn open_context(&self, id: &MessageId) -> Result<Option<OpenContext>, StoreError> {
        let Some(ms) = self.inner.msg_stats(id)? else {
            return Ok(None);
        };
        Ok(Some(OpenContext {
            id: *id,
            sent_at: ms.sent_at,
            recipient: ms.context.recipient.clone(),
            sender: ms.context.sender.clone(),
            message_id: ms.context.message_id.clone(),
            subject: ms.context.subject.clone(),
            queue_id: ms.context.queue_id.clone(),
        }))
    }
}
