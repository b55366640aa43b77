//! Messages in sled: the record as stored (`messages`, JSON), its open statistics and hand-off
//! time (`message_opens`, 48 bytes), the time index (`messages_by_time`), and what reads them.

use super::*;

/// A message as stored in `messages` (the id is the key; open statistics live in
/// `message_opens` so that an open never rewrites this record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Stored {
    /// See [`Message`].
    pub(super) queue_id: String,
    /// See [`Message`].
    #[serde(rename = "at", with = "rfc3339_ms")]
    pub(super) at_ms: u64,
    /// See [`Message`].
    pub(super) sender: String,
    /// See [`Message`].
    pub(super) recipients: Vec<String>,
    /// See [`Message`].
    pub(super) message_id: Option<String>,
    /// See [`Message`].
    pub(super) subject: Option<String>,
    /// See [`Message`].
    pub(super) size: u64,
    /// See [`Message`].
    pub(super) tracked: bool,
    /// See [`Message`].
    pub(super) skip_reason: Option<String>,
    /// See [`Message`].
    pub(super) delivery: Option<Delivery>,
}

impl Stored {
    pub(super) fn into_message(self, id: &MessageId, stats: &MsgStats) -> Message {
        Message {
            id: id.to_string(),
            queue_id: self.queue_id,
            at_ms: self.at_ms,
            sender: self.sender,
            recipients: self.recipients,
            message_id: self.message_id,
            subject: self.subject,
            size: self.size,
            tracked: self.tracked,
            skip_reason: self.skip_reason,
            delivery: self.delivery,
            opens: stats.view(),
        }
    }
}

/// The hot per-message record in `message_opens`: six big-endian u64s (48 bytes), rewritten
/// by every open. A time of 0 means "none".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
}

impl MsgStats {
    pub(super) fn encode(&self) -> Vec<u8> {
        let f = [
            self.count,
            self.human,
            self.first,
            self.last,
            self.first_human,
            self.sent_at,
        ];
        put_u64s(&f)
    }

    pub(super) fn decode(b: &[u8]) -> Result<MsgStats, StoreError> {
        let [count, human, first, last, first_human, sent_at] =
            get_u64s(b, "message_opens record")?;
        Ok(MsgStats {
            count,
            human,
            first,
            last,
            first_human,
            sent_at,
        })
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
}

/// The `message` webhook event: the admin API's message (tracking decision, upstream reply)
/// without its open statistics, which are always zero-ish at that moment and change later.
pub(super) fn message_event(m: &Message) -> Result<serde_json::Value, serde_json::Error> {
    let mut v = serde_json::to_value(m)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("opens");
    }
    Ok(v)
}

pub(super) fn time_key(at_ms: u64, id: &MessageId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&at_ms.to_be_bytes());
    k[8..].copy_from_slice(id.as_bytes());
    k
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn parse_message_cursor(s: &str) -> Result<Vec<u8>, StoreError> {
    let bad = || StoreError::BadCursor(s.to_string());
    if s.len() != 48 || !s.is_ascii() {
        return Err(bad());
    }
    (0..48)
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

impl SledStore {
    /// Message records, then final replies, in ONE transaction, with the journal position
    /// `mark` when they come from the journal: what the indexer commits per run. All or
    /// nothing.
    pub(super) fn commit_messages(
        &self,
        recs: &[&MessageRecord],
        done: &[(&MessageId, &Delivery)],
        mark: Option<Position>,
    ) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut st = inner.lock();
        let trees = (
            &inner.messages,
            &inner.message_opens,
            &inner.messages_by_time,
            &inner.meta,
            &inner.outbox,
        );
        let (counters, last_event, written) =
            trees.transaction(|(msgs, stats, by_time, meta, outbox)| {
                let mut counters = st.counters.clone();
                let mut last_event = st.last_event;
                let mut written = 0;
                for rec in recs {
                    let id = rec.id;
                    let old: Option<Stored> =
                        msgs.get(id.as_bytes())?.map(|v| decode(&v)).transpose()?;
                    let (delivery, mut ms) = match old {
                        Some(old) => {
                            by_time.remove(time_key(old.at_ms, &id).as_slice())?;
                            let ms = match stats.get(id.as_bytes())? {
                                Some(v) => MsgStats::decode(&v)?,
                                None => MsgStats::default(),
                            };
                            (old.delivery, ms)
                        }
                        None => {
                            counters.recorded += 1;
                            (None, MsgStats::default())
                        }
                    };
                    if delivery.is_none() {
                        ms.sent_at = rec.at_ms;
                    }
                    let m = Stored {
                        queue_id: rec.queue_id.clone(),
                        at_ms: rec.at_ms,
                        sender: rec.sender.clone(),
                        recipients: rec.recipients.clone(),
                        message_id: rec.message_id.clone(),
                        subject: if inner.cfg.subjects {
                            rec.subject.clone()
                        } else {
                            None
                        },
                        size: rec.size,
                        tracked: rec.tracked,
                        skip_reason: rec.skip_reason.clone(),
                        delivery,
                    };
                    msgs.insert(id.as_bytes(), encode(&m)?)?;
                    stats.insert(id.as_bytes(), ms.encode().as_slice())?;
                    by_time.insert(time_key(rec.at_ms, &id).as_slice(), EMPTY)?;
                }
                for (id, delivery) in done {
                    let Some(raw) = msgs.get(id.as_bytes())? else {
                        return Err(abort(StoreError::NotFound(**id)));
                    };
                    let mut m: Stored = decode(&raw)?;
                    let mut ms = match stats.get(id.as_bytes())? {
                        Some(v) => MsgStats::decode(&v)?,
                        None => MsgStats::default(),
                    };
                    let first_reply = m.delivery.is_none();
                    if first_reply {
                        if !delivery.accepted {
                            counters.rejected += 1;
                        } else {
                            counters.relayed += 1;
                            if m.tracked {
                                counters.tracked += 1;
                            } else {
                                let reason = m
                                    .skip_reason
                                    .clone()
                                    .unwrap_or_else(|| "unknown".to_string());
                                *counters.skipped.entry(reason).or_default() += 1;
                            }
                        }
                    }
                    m.delivery = Some((*delivery).clone());
                    ms.sent_at = delivery.at_ms;
                    if first_reply {
                        let view = m.clone().into_message(id, &ms);
                        written += outbox::write_event(
                            outbox,
                            &st.hooks,
                            &mut last_event,
                            "message",
                            delivery.at_ms,
                            &message_event(&view).map_err(abort)?,
                        )?;
                    }
                    msgs.insert(id.as_bytes(), encode(&m)?)?;
                    stats.insert(id.as_bytes(), ms.encode().as_slice())?;
                }
                if written > 0 {
                    meta.insert(outbox::LAST_EVENT, put_u64s(&[last_event]))?;
                }
                meta.insert(COUNTERS, encode(&counters)?)?;
                if let Some(mark) = mark {
                    meta.insert(JOURNAL_MARK, mark.encode().as_slice())?;
                }
                Ok((counters, last_event, written))
            })?;
        st.counters = counters;
        st.last_event = last_event;
        self.outbox_written(&st, written);
        Ok(())
    }

    /// One message with all its opens, oldest first.
    pub(super) fn get_message(
        &self,
        id: &MessageId,
    ) -> Result<Option<MessageWithOpens>, StoreError> {
        let Some(message) = self.get_stored(id)? else {
            return Ok(None);
        };
        let mut open_events = Vec::new();
        for kv in self.inner.opens_by_message.scan_prefix(id.as_bytes()) {
            let (k, _) = kv?;
            if let Some(v) = self.inner.opens.get(&k[16..])? {
                open_events.push(decode(&v)?);
            }
        }
        Ok(Some(MessageWithOpens {
            message,
            open_events,
        }))
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
            Some(c) => Some(parse_message_cursor(c)?),
            None => None,
        };
        if let Some(until) = filter.until_ms {
            // Keys sort by time first: everything before `until` sorts below `until ‖ 0…0`.
            let k = until.to_be_bytes().to_vec();
            if end.as_ref().is_none_or(|e| k < *e) {
                end = Some(k);
            }
        }
        let end = match end {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let start = match filter.since_ms {
            Some(since) => Bound::Included(since.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let lower = |s: &Option<String>| s.as_ref().map(|r| r.to_ascii_lowercase());
        let (rcpt, sender) = (lower(&filter.rcpt), lower(&filter.sender));
        let mut items = Vec::new();
        let mut last_key = None;
        for (scanned, kv) in self
            .inner
            .messages_by_time
            .range((start, end))
            .rev()
            .enumerate()
        {
            if items.len() == limit || scanned == SCAN_LIMIT {
                return Ok(Page {
                    items,
                    next_cursor: last_key.map(|k: sled::IVec| hex(&k)),
                });
            }
            let (k, _) = kv?;
            let Some(id) = MessageId::from_slice(&k[8..]) else {
                continue;
            };
            let Some(m) = self.get_stored(&id)? else {
                continue;
            };
            last_key = Some(k);
            let rcpt_ok = rcpt.as_ref().is_none_or(|r| {
                m.recipients
                    .iter()
                    .any(|x| x.to_ascii_lowercase().contains(r.as_str()))
            });
            let sender_ok = sender
                .as_ref()
                .is_none_or(|s| m.sender.to_ascii_lowercase().contains(s.as_str()));
            let opened_ok = filter.opened.is_none_or(|o| o == (m.opens.count > 0));
            if rcpt_ok && sender_ok && opened_ok {
                items.push(m);
            }
        }
        Ok(Page {
            items,
            next_cursor: None,
        })
    }

    pub(super) fn get_stored(&self, id: &MessageId) -> Result<Option<Message>, StoreError> {
        let Some(v) = self.inner.messages.get(id.as_bytes())? else {
            return Ok(None);
        };
        let stats = match self.inner.message_opens.get(id.as_bytes())? {
            Some(v) => MsgStats::decode(&v)?,
            None => MsgStats::default(),
        };
        Ok(Some(decode::<Stored>(&v)?.into_message(id, &stats)))
    }

    /// What an open of message `id` needs from the store before it is recorded: the hand-off
    /// time (for the early-load rule) and the message fields an open event repeats. `None` if
    /// the message is unknown. Read on the request's own task, so that the one writer thread
    /// only commits.
    pub(super) fn open_context(&self, id: &MessageId) -> Result<Option<OpenContext>, StoreError> {
        let inner = &*self.inner;
        let Some(stats) = inner.message_opens.get(id.as_bytes())? else {
            return Ok(None);
        };
        let Some(raw) = inner.messages.get(id.as_bytes())? else {
            return Ok(None);
        };
        let m: Stored = decode(&raw)?;
        Ok(Some(OpenContext {
            id: *id,
            sent_at: MsgStats::decode(&stats)?.sent_at,
            recipient: m.recipients.into_iter().next().unwrap_or_default(),
            sender: m.sender,
            message_id: m.message_id,
            subject: m.subject,
        }))
    }
}
