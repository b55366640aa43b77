//! Opens in sled: committing events with their message statistics, counters and outbox rows
//! in one transaction (`opens`, `opens_by_message`, `message_opens`, `meta`), the open-id
//! scheme, and listing.

use super::*;

/// The four totals every open updates, stored apart from the rest (32 bytes, no JSON).
#[derive(Debug, Clone, Copy)]
pub(super) struct OpenCounters {
    /// See [`Counters`].
    pub(super) opens: u64,
    /// See [`Counters`].
    pub(super) machine_opens: u64,
    /// See [`Counters`].
    pub(super) unique_opens: u64,
    /// See [`Counters`].
    pub(super) unique_human_opens: u64,
}

impl Counters {
    /// Counts an open's verdict in the kind, reason and proxy breakdowns.
    pub(super) fn count_verdict(&mut self, ev: &OpenEvent) {
        if ev.kind() == crate::track::OpenKind::Proxied {
            self.proxied_opens += 1;
        }
        if let Some(r) = ev.machine_reason.as_deref().filter(|_| ev.machine) {
            *self.by_reason.entry(r.to_string()).or_default() += 1;
        }
        if let Some(p) = ev.proxy {
            self.by_proxy
                .entry(p.as_str().to_string())
                .or_default()
                .add(ev.machine);
        }
    }

    pub(super) fn clone_open(&self) -> OpenCounters {
        OpenCounters {
            opens: self.opens,
            machine_opens: self.machine_opens,
            unique_opens: self.unique_opens,
            unique_human_opens: self.unique_human_opens,
        }
    }
}

impl OpenCounters {
    pub(super) fn encode(&self) -> Vec<u8> {
        put_u64s(&[
            self.opens,
            self.machine_opens,
            self.unique_opens,
            self.unique_human_opens,
        ])
    }

    pub(super) fn apply(&self, c: &mut Counters) {
        c.opens = self.opens;
        c.machine_opens = self.machine_opens;
        c.unique_opens = self.unique_opens;
        c.unique_human_opens = self.unique_human_opens;
    }
}

pub(super) fn decode_open_counters(b: &[u8], c: &mut Counters) -> Result<(), StoreError> {
    let [opens, machine_opens, unique_opens, unique_human_opens] = get_u64s(b, "open counters")?;
    OpenCounters {
        opens,
        machine_opens,
        unique_opens,
        unique_human_opens,
    }
    .apply(c);
    Ok(())
}

/// The next open id: strictly after `last`, and at least `at_ms` in its high bits.
pub(super) fn next_open_id(last: u64, at_ms: u64) -> u64 {
    last.saturating_add(1).max(at_ms << OPEN_ID_SHIFT)
}

pub(super) fn format_open_id(id: u64) -> String {
    format!("{id:016x}")
}

pub(super) fn parse_open_id(s: &str) -> Result<u64, StoreError> {
    if s.len() != 16 {
        return Err(StoreError::BadCursor(s.to_string()));
    }
    u64::from_str_radix(s, 16).map_err(|_| StoreError::BadCursor(s.to_string()))
}

pub(super) fn decode_open_id(k: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(k).ok().map(u64::from_be_bytes)
}

pub(super) fn open_index_key(id: &MessageId, open_id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(id.as_bytes());
    k[16..].copy_from_slice(&open_id.to_be_bytes());
    k
}

impl SledStore {
    /// Commits open events (message id and event without id/first/count; `None` for an
    /// unknown message) in one transaction, with the journal position `mark` when they come
    /// from the journal, then feeds the open log and live followers.
    pub(super) fn commit_events(
        &self,
        events: Vec<Option<(MessageId, &OpenEvent)>>,
        mark: Option<Position>,
    ) -> Result<Vec<Option<OpenEvent>>, StoreError> {
        let inner = &*self.inner;
        let mut st = inner.lock();
        let mut last = st.last_open;
        let events: Vec<Option<(MessageId, u64, &OpenEvent)>> = events
            .into_iter()
            .map(|ev| {
                ev.map(|(id, ev)| {
                    last = next_open_id(last, ev.at_ms);
                    (id, last, ev)
                })
            })
            .collect();
        let trees = (
            &inner.message_opens,
            &inner.opens,
            &inner.opens_by_message,
            &inner.meta,
            &inner.outbox,
        );
        let (done, oc, breakdown, last_event, written) =
            trees.transaction(|(stats, opens, by_msg, meta, outbox)| {
                let mut cache: HashMap<MessageId, MsgStats> = HashMap::new();
                let mut oc = st.counters.clone_open();
                let mut breakdown = st.counters.clone();
                let mut last_event = st.last_event;
                let mut written = 0;
                let mut out = Vec::with_capacity(events.len());
                for ev in &events {
                    let Some((id, open_id, ev)) = ev else {
                        out.push(None);
                        continue;
                    };
                    let at_ms = ev.at_ms;
                    let ms = match cache.entry(*id) {
                        Entry::Occupied(e) => e.into_mut(),
                        // Absent only if the message was purged since it was read above.
                        Entry::Vacant(e) => match stats.get(id.as_bytes())? {
                            Some(v) => e.insert(MsgStats::decode(&v)?),
                            None => {
                                out.push(None);
                                continue;
                            }
                        },
                    };
                    let human = !ev.machine;
                    let first = ms.count == 0;
                    let first_human = human && ms.human == 0;
                    ms.count += 1;
                    if first {
                        ms.first = at_ms;
                    }
                    ms.last = ms.last.max(at_ms);
                    if human {
                        ms.human += 1;
                        if first_human {
                            ms.first_human = at_ms;
                        }
                    }
                    let mut ev = (*ev).clone();
                    ev.id = format_open_id(*open_id);
                    ev.first = first;
                    ev.count = ms.count;
                    oc.opens += 1;
                    oc.machine_opens += u64::from(!human);
                    oc.unique_opens += u64::from(first);
                    oc.unique_human_opens += u64::from(first_human);
                    let day = crate::clock::day(at_ms);
                    breakdown.by_day.entry(day).or_default().add(ev.machine);
                    breakdown
                        .by_client
                        .entry(ev.client.clone())
                        .or_default()
                        .add(ev.machine);
                    breakdown
                        .by_device
                        .entry(ev.device.as_str().to_string())
                        .or_default()
                        .add(ev.machine);
                    breakdown.count_verdict(&ev);
                    let json = encode(&ev)?;
                    written += outbox::write_event(
                        outbox,
                        &st.hooks,
                        &mut last_event,
                        "open",
                        at_ms,
                        &ev,
                    )?;
                    opens.insert(&open_id.to_be_bytes(), json.as_slice())?;
                    by_msg.insert(open_index_key(id, *open_id).as_slice(), EMPTY)?;
                    out.push(Some((ev, json)));
                }
                for (id, ms) in &cache {
                    stats.insert(id.as_bytes(), ms.encode().as_slice())?;
                }
                meta.insert(OPEN_COUNTERS, oc.encode().as_slice())?;
                // The per-day/client/device breakdowns live in the JSON counters: once per batch.
                meta.insert(COUNTERS, encode(&breakdown)?)?;
                if written > 0 {
                    meta.insert(outbox::LAST_EVENT, put_u64s(&[last_event]))?;
                }
                if let Some(mark) = mark {
                    meta.insert(JOURNAL_MARK, mark.encode().as_slice())?;
                }
                Ok((out, oc, breakdown, last_event, written))
            })?;
        st.counters.by_day = breakdown.by_day;
        st.counters.by_client = breakdown.by_client;
        st.counters.by_device = breakdown.by_device;
        st.counters.proxied_opens = breakdown.proxied_opens;
        st.counters.by_reason = breakdown.by_reason;
        st.counters.by_proxy = breakdown.by_proxy;
        oc.apply(&mut st.counters);
        st.last_open = last;
        st.last_event = last_event;
        self.outbox_written(&st, written);
        let mut result = Vec::with_capacity(done.len());
        for item in done {
            let Some((event, json)) = item else {
                result.push(None);
                continue;
            };
            if let Some(log) = &inner.open_log {
                // The open is committed; a full disk here must not undo it, so log and carry on.
                if let Err(e) = log.append_raw(json) {
                    tracing::warn!(error = %e, "cannot append to store.open_log");
                }
            }
            // Cloned only for live followers. One that subscribes after this check reads the
            // event from the store: it is committed, and followers read their backlog after
            // subscribing.
            if inner.feed.receiver_count() > 0 {
                let _ = inner.feed.send(event.clone());
            }
            result.push(Some(event));
        }
        Ok(result)
    }

    /// Opens, newest first, strictly before `cursor` (an open id) or from the newest.
    pub(super) fn list_opens(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError> {
        let range = (Bound::Unbounded, open_bound(cursor)?);
        let items = decode_opens(self.inner.opens.range(range).rev(), limit)?;
        let next_cursor = if items.len() == limit {
            items.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Opens strictly after `cursor` (or from the oldest), oldest first: the backlog of a
    /// follower.
    pub(super) fn opens_after(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OpenEvent>, StoreError> {
        let range = (open_bound(cursor)?, Bound::Unbounded);
        decode_opens(self.inner.opens.range(range), limit)
    }

    /// The id of the newest open (16 zeros when there is none): a cursor meaning "from now".
    pub(super) fn last_open_cursor(&self) -> String {
        format_open_id(self.inner.lock().last_open)
    }
}

/// The key bound that excludes the open `cursor` names, or no bound without one.
fn open_bound(cursor: Option<&str>) -> Result<Bound<[u8; 8]>, StoreError> {
    Ok(match cursor {
        Some(c) => Bound::Excluded(parse_open_id(c)?.to_be_bytes()),
        None => Bound::Unbounded,
    })
}

/// The first `limit` open events of a key-ordered scan of `opens`.
fn decode_opens(
    scan: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    limit: usize,
) -> Result<Vec<OpenEvent>, StoreError> {
    scan.take(limit)
        .map(|kv| decode::<OpenEvent>(&kv?.1))
        .collect()
}
