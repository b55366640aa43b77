//! Opens in sled: committing events with their message statistics, counters and outbox rows
//! in one batch, the segments they are stored in, the open-id scheme, and listing.
//!
//! # Segments
//!
//! The opens one write commits are stored together under `o ‖ first open id`, at most
//! [`SEGMENT`] of them:
//!
//! ```text
//! 'z' | n(4) | n × (open_id(8) end(4)) | LZ4 block of the n event JSONs back to back
//!                                        (end: offset after each, uncompressed)
//! ```
//!
//! The events are compressed (LZ4, about 4× on open events: recipient, sender and user agents
//! repeat) because what sled holds in memory grows with the bytes written to it.
//!
//! Ids are ascending within a segment and every id of a segment is below the next segment's
//! key, so the segment holding open `id` is the last one whose key is at most `id`, and the
//! entry is found by binary search over the fixed-size headers; only the events a reader
//! wants are parsed. Retention rewrites a segment without the opens it purges (the key, a
//! lower bound, stays).

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

/// The id a newest-first listing starts below: the cursor's, or past every id.
fn before_id(cursor: Option<&str>) -> Result<u64, StoreError> {
    cursor.map_or(Ok(u64::MAX), parse_open_id)
}

/// The click index: `k ‖ click id(8)` for every click, so that listing clicks reads no opens.
pub(super) fn click_key(id: u64) -> Vec<u8> {
    key(P_CLICK, &[&id.to_be_bytes()])
}

pub(super) use crate::store::shared::{
    format_id as format_open_id, next_id as next_open_id, parse_id as parse_open_id,
};

/// Opens per segment at most.
pub(super) const SEGMENT: usize = 512;
/// Bytes of event JSON per segment at most (about 40 opens): sled writes a page over 128 KiB
/// as a file of its own, and rewrites a whole page when it changes, so pages stay small.
const SEGMENT_BYTES: usize = 16 * 1024;

/// `stored` cut into segments of at most [`SEGMENT`] opens and about [`SEGMENT_BYTES`].
pub(super) fn segments<B: AsRef<[u8]>>(stored: &[(u64, B)]) -> Vec<&[(u64, B)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, json)) in stored.iter().enumerate() {
        if i > start && (i - start == SEGMENT || bytes + json.as_ref().len() > SEGMENT_BYTES) {
            out.push(&stored[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += json.as_ref().len();
    }
    if start < stored.len() {
        out.push(&stored[start..]);
    }
    out
}

pub(super) fn segment_key(first: u64) -> Vec<u8> {
    key(P_SEGMENT, &[&first.to_be_bytes()])
}

/// The first byte of a compressed segment.
const COMPRESSED: u8 = b'z';

/// Encodes `(open id, event JSON)` pairs, ids ascending, as a segment.
pub(super) fn encode_segment<B: AsRef<[u8]>>(entries: &[(u64, B)]) -> Vec<u8> {
    let body: usize = entries.iter().map(|(_, j)| j.as_ref().len()).sum();
    let mut v = Vec::with_capacity(5 + 12 * entries.len() + body / 2);
    v.push(COMPRESSED);
    v.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    let mut end = 0u32;
    for (id, json) in entries {
        end = end.saturating_add(json.as_ref().len() as u32);
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
    }
    let mut bodies = Vec::with_capacity(body);
    for (_, json) in entries {
        bodies.extend_from_slice(json.as_ref());
    }
    v.extend_from_slice(&lz4_flex::block::compress(&bodies));
    v
}

/// A segment read: its headers in place, its events decompressed.
pub(super) struct Segment<'a> {
    /// The headers.
    heads: &'a [u8],
    /// The bodies.
    bodies: std::borrow::Cow<'a, [u8]>,
}

impl<'a> Segment<'a> {
    pub(super) fn parse(b: &'a [u8]) -> Result<Segment<'a>, StoreError> {
        let bad = || StoreError::Corrupt("open segment");
        let compressed = b.first() == Some(&COMPRESSED);
        let b = if compressed { &b[1..] } else { b };
        let n: [u8; 4] = b.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        let heads_end = 4 + 12 * u32::from_be_bytes(n) as usize;
        let heads = b.get(4..heads_end).ok_or_else(bad)?;
        let mut seg = Segment {
            heads,
            bodies: std::borrow::Cow::Borrowed(&b[heads_end..]),
        };
        if compressed {
            let n = seg.len();
            let len = if n == 0 { 0 } else { seg.end(n - 1) };
            // The length comes from the header, itself checked below against what decompresses.
            if len > 64 * SEGMENT_BYTES {
                return Err(bad());
            }
            let raw = lz4_flex::block::decompress(&b[heads_end..], len).map_err(|_| bad())?;
            seg.bodies = std::borrow::Cow::Owned(raw);
        }
        let n = seg.len();
        if n > 0 && seg.end(n - 1) != seg.bodies.len() {
            return Err(bad());
        }
        Ok(seg)
    }

    pub(super) fn len(&self) -> usize {
        self.heads.len() / 12
    }

    pub(super) fn id(&self, i: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.heads[12 * i..12 * i + 8]);
        u64::from_be_bytes(a)
    }

    fn end(&self, i: usize) -> usize {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.heads[12 * i + 8..12 * i + 12]);
        u32::from_be_bytes(a) as usize
    }

    /// The JSON of entry `i`.
    pub(super) fn json(&self, i: usize) -> Result<&[u8], StoreError> {
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        self.bodies
            .get(start..self.end(i))
            .ok_or(StoreError::Corrupt("open segment"))
    }

    pub(super) fn event(&self, i: usize) -> Result<OpenEvent, StoreError> {
        decode(self.json(i)?)
    }

    /// The entry of open `id`.
    pub(super) fn find(&self, id: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.id(mid).cmp(&id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The first entry with an id above `id`.
    fn after(&self, id: u64) -> usize {
        (0..self.len())
            .find(|&i| self.id(i) > id)
            .unwrap_or(self.len())
    }
}

/// The id of the newest open stored (0 when there is none).
pub(super) fn last_open_id(data: &Tree) -> Result<u64, StoreError> {
    match data.range(segment_key(0)..vec![P_SEGMENT + 1]).next_back() {
        Some(kv) => {
            let (_, v) = kv?;
            let seg = Segment::parse(&v)?;
            Ok(match seg.len() {
                0 => 0,
                n => seg.id(n - 1),
            })
        }
        None => Ok(0),
    }
}

/// The segment that would hold open `id`: the last whose key is at most `id`.
pub(super) fn segment_for(
    data: &Tree,
    id: u64,
) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
    Ok(data
        .range(segment_key(0)..=segment_key(id))
        .next_back()
        .transpose()?)
}

/// One write of opens being built under the writer lock: the batch and what it changes.
struct OpenWrite {
    /// The keys to write.
    batch: sled::Batch,
    /// Statistics of the messages opened (`None`: purged), as they will be written.
    stats: HashMap<MessageId, Option<MsgStats>>,
    /// The open totals after the write.
    totals: OpenCounters,
    /// The counters (breakdowns) after the write.
    counters: Counters,
    /// The last open id handed out.
    last: u64,
    /// The last webhook event sequence handed out.
    last_event: u64,
    /// Outbox rows written.
    written: usize,
    /// (open id, event JSON) of every open, in order.
    stored: Vec<(u64, Vec<u8>)>,
}

impl OpenWrite {
    fn new(st: &WriteState, n: usize) -> OpenWrite {
        OpenWrite {
            batch: sled::Batch::default(),
            stats: HashMap::new(),
            totals: st.counters.clone_open(),
            counters: st.counters.clone(),
            last: st.last_open,
            last_event: st.last_event,
            written: 0,
            stored: Vec::with_capacity(n),
        }
    }

    /// Adds an open of message `id`: the stored event, or `None` if the message is gone.
    fn add(
        &mut self,
        inner: &Inner,
        hooks: &[Subscription],
        id: MessageId,
        ev: &OpenEvent,
    ) -> Result<Option<OpenEvent>, StoreError> {
        let ms = match self.stats.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            // Absent if purged since its context was read.
            Entry::Vacant(e) => e.insert(inner.msg_stats(&id)?),
        };
        let Some(ms) = ms else {
            return Ok(None);
        };
        self.last = next_open_id(self.last, ev.at_ms);
        if ev.is_click() {
            let mut ev = ev.clone();
            ev.id = format_open_id(self.last);
            ms.clicks.count(&mut ev, &mut self.counters);
            if let Some((n, chunk)) = ms.index(self.last) {
                self.batch.insert(chunk_key(&id, n), chunk);
            }
            self.batch.insert(click_key(self.last), EMPTY);
            self.written += outbox::write_event(
                &mut self.batch,
                hooks,
                &mut self.last_event,
                "click",
                ev.at_ms,
                &ev,
            )?;
            self.stored.push((self.last, encode(&ev)?));
            return Ok(Some(ev));
        }
        let human = !ev.machine;
        let (first, first_human) = (ms.count == 0, human && ms.human == 0);
        if let Some((n, chunk)) = ms.add(self.last, ev.at_ms, human) {
            self.batch.insert(chunk_key(&id, n), chunk);
        }
        let mut ev = ev.clone();
        ev.id = format_open_id(self.last);
        ev.first = first;
        ev.count = ms.count;
        let t = &mut self.totals;
        t.opens += 1;
        t.machine_opens += u64::from(!human);
        t.unique_opens += u64::from(first);
        t.unique_human_opens += u64::from(first_human);
        self.counters.count_open(&ev);
        self.written += outbox::write_event(
            &mut self.batch,
            hooks,
            &mut self.last_event,
            "open",
            ev.at_ms,
            &ev,
        )?;
        self.stored.push((self.last, encode(&ev)?));
        Ok(Some(ev))
    }

    /// The finished batch: segments, full chunks of open ids, counters, the journal `mark`.
    /// The messages' statistics wait in memory for the next checkpoint.
    fn batch(&mut self, mark: Option<Position>) -> Result<sled::Batch, StoreError> {
        let mut batch = std::mem::take(&mut self.batch);
        for seg in segments(&self.stored) {
            batch.insert(segment_key(seg[0].0), encode_segment(seg));
        }
        if !self.stored.is_empty() {
            batch.insert(OPEN_COUNTERS, self.totals.encode());
            // The per-day/client/device breakdowns live in the JSON counters: once per write.
            batch.insert(COUNTERS, encode(&self.counters)?);
        }
        if self.written > 0 {
            batch.insert(outbox::LAST_EVENT, put_u64s(&[self.last_event]));
        }
        if let Some(mark) = mark {
            batch.insert(JOURNAL_MARK, mark.encode().as_slice());
        }
        Ok(batch)
    }
}

impl SledStore {
    /// Commits open events (message id and event without id/first/count; `None` for an
    /// unknown message) in one batch, with the journal position `mark` when they come from
    /// the journal, then feeds the open log and live followers.
    pub(super) fn commit_events(
        &self,
        events: Vec<Option<(MessageId, &OpenEvent)>>,
        mark: Option<Position>,
    ) -> Result<Vec<Option<OpenEvent>>, StoreError> {
        let inner = &*self.inner;
        let mut st = inner.lock();
        let mut w = OpenWrite::new(&st, events.len());
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            out.push(match ev {
                Some((id, ev)) => w.add(inner, &st.hooks, id, ev)?,
                None => None,
            });
        }
        inner.data.apply_batch(w.batch(mark)?)?;
        {
            let mut dirty = inner.dirty_mut();
            for (id, ms) in w.stats.drain() {
                if let Some(ms) = ms {
                    dirty.insert(id, ms);
                }
            }
        }
        w.totals.apply(&mut w.counters);
        st.counters = w.counters;
        st.last_open = w.last;
        st.last_event = w.last_event;
        self.outbox_written(&st, w.written);
        if let Err(e) = self.maybe_checkpoint(&mut st) {
            // The opens are committed; their statistics stay in memory for the next try.
            tracing::warn!(error = %e, "store: cannot checkpoint message statistics");
        }
        // Still under the writer lock: the open log and the feed get the events in id order.
        if let Some(log) = &inner.open_log {
            for (_, json) in w.stored {
                // The open is committed; a full disk here must not undo it, so log and carry on.
                if let Err(e) = log.append_raw(json) {
                    tracing::warn!(error = %e, "cannot append to store.open_log");
                }
            }
        }
        // Cloned only for live followers. One that subscribes after this check reads the
        // events from the store: they are committed, and followers read their backlog after
        // subscribing.
        if inner.feed.receiver_count() > 0 {
            for ev in out.iter().flatten() {
                let _ = inner.feed.send(ev.clone());
            }
        }
        drop(st);
        Ok(out)
    }

    /// The events of opens `ids` (ascending), skipping any purged. Each segment is read and
    /// decompressed once for all the ids it holds.
    pub(super) fn opens_by_id(&self, ids: &[u64]) -> Result<Vec<OpenEvent>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut i = 0;
        while i < ids.len() {
            let Some((_, v)) = segment_for(&self.inner.data, ids[i])? else {
                i += 1;
                continue;
            };
            let seg = Segment::parse(&v)?;
            let start = i;
            while let Some(j) = ids.get(i).and_then(|&id| seg.find(id)) {
                out.push(seg.event(j)?);
                i += 1;
            }
            if i == start {
                // Not in the segment that would hold it: purged.
                i += 1;
            }
        }
        Ok(out)
    }

    /// Opens, newest first, strictly before `cursor` (an open id) or from the newest.
    pub(super) fn list_opens(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError> {
        let before = before_id(cursor)?;
        let mut items = Vec::new();
        if before > 0 && limit > 0 {
            let range = segment_key(0)..=segment_key(before - 1);
            'segments: for kv in self.inner.data.range(range).rev() {
                let (_, v) = kv?;
                let seg = Segment::parse(&v)?;
                for i in (0..seg.len()).rev() {
                    if seg.id(i) >= before {
                        continue;
                    }
                    let ev = seg.event(i)?;
                    if ev.is_click() {
                        continue;
                    }
                    items.push(ev);
                    if items.len() == limit {
                        break 'segments;
                    }
                }
            }
        }
        let next_cursor = if items.len() == limit {
            items.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Clicks, newest first, strictly before `cursor` (a click id) or from the newest: the
    /// click index (`k` keys) read backwards, then their segments.
    pub(super) fn list_clicks(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError> {
        let before = before_id(cursor)?;
        let mut ids = Vec::with_capacity(limit.min(1024));
        if limit > 0 {
            for kv in self
                .inner
                .data
                .range(click_key(0)..click_key(before))
                .rev()
                .take(limit)
            {
                let (k, _) = kv?;
                let id = k
                    .get(1..9)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or(StoreError::Corrupt("click index"))?;
                ids.push(id);
            }
        }
        let full = ids.len() == limit;
        let last = ids.last().copied();
        ids.reverse();
        let mut items = self.opens_by_id(&ids)?;
        items.reverse();
        let next_cursor = if full { last.map(format_open_id) } else { None };
        Ok(Page { items, next_cursor })
    }

    /// Opens and clicks strictly after `cursor` (or from the oldest), oldest first: the
    /// backlog of a follower.
    pub(super) fn opens_after(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OpenEvent>, StoreError> {
        let after = match cursor {
            Some(c) => Some(parse_open_id(c)?),
            None => None,
        };
        let mut items = Vec::new();
        if limit == 0 {
            return Ok(items);
        }
        let data = &self.inner.data;
        // From the segment holding `after` (it may hold later opens too), else the first.
        let start = match after {
            Some(a) => match segment_for(data, a)? {
                Some((k, _)) => k.to_vec(),
                None => segment_key(0),
            },
            None => segment_key(0),
        };
        for kv in data.range(start..vec![P_SEGMENT + 1]) {
            let (_, v) = kv?;
            let seg = Segment::parse(&v)?;
            let from = after.map_or(0, |a| seg.after(a));
            for i in from..seg.len() {
                items.push(seg.event(i)?);
                if items.len() == limit {
                    return Ok(items);
                }
            }
        }
        Ok(items)
    }

    /// The id of the newest open (16 zeros when there is none): a cursor meaning "from now".
    pub(super) fn last_open_cursor(&self) -> String {
        format_open_id(self.inner.lock().last_open)
    }
}
