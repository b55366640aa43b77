//! The sled backend: the embedded default store, one process. The only code that names sled;
//! the rest of pixelrelay sees it through [`crate::store::Backend`].
//!
//! # Layout in sled (all values JSON, keys big-endian so that byte order is time order)
//!
//! ```text
//! messages          id(16)                      -> the record and its delivery (JSON)
//! message_opens     id(16)                      -> open stats + hand-off time (48 bytes)
//! messages_by_time  at_ms(8) id(16)             -> ()      listing newest first, retention
//! opens             open_id(8)                  -> OpenEvent
//! opens_by_message  id(16) open_id(8)           -> ()      a message's opens
//! meta              "counters"                  -> Counters (JSON)
//!                   "open_counters"             -> the 4 open totals (32 bytes)
//!                   "journal_indexed"           -> journal position indexed (16 bytes)
//!                   "last_event"                -> last webhook event sequence (8 bytes)
//! outbox            endpoint(8) seq(8)          -> webhook delivery (JSON), see outbox.rs
//! dead_letters      endpoint(8) seq(8)          -> webhook delivery out of time (JSON)
//! ```
//!
//! An open id is `max(previous + 1, at_ms << 20)`: unique, strictly increasing, time-ordered
//! (the high 44 bits are the ms timestamp, good until the year 2527), and printed as 16 hex
//! digits it is the cursor for listing and following opens.
//!
//! # Writes and durability
//!
//! Every write runs in one sled transaction across the trees it touches (an open's event,
//! index, message stats and counters commit together or not at all). Writers are serialised by
//! one mutex, so transactions never conflict or retry, and the in-memory copy of the counters
//! (for O(1) `stats()`) and the last open id stay exact. After each committed open the event
//! goes to an in-process `broadcast` channel for live followers (never a sled subscriber: a slow
//! reader there blocks writers).
//!
//! Nothing reaches sled on the request paths: pixel hits, message records and final replies go
//! to the journal first (`ingest`), whose indexer commits them here in journal order with the
//! journal position reached ("journal_indexed" in `meta`, [`SledStore::journal_mark`]) in the same
//! transaction, so a restart replays exactly what was not yet stored.
//!
//! sled keeps writes in memory and fsyncs them every `store.flush_interval` (its own flusher
//! thread, `flush_every_ms`), and [`SledStore::flush`] on shutdown. What a crash costs is the
//! journal's to say (`ingest`): nothing older than its last millisecond of hits on `kill -9`.

mod outbox;
mod retention;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};
use tokio::sync::broadcast;

use crate::config::StoreConfig;
use crate::openlog::OpenLog;
use crate::token::MessageId;
use crate::track::OpenEvent;
use crate::track::event::rfc3339_ms;

use super::Backend;
use super::types::*;

pub use outbox::{
    OutboxItem, OutboxRow, OutboxVersion, Subscription, outbox_key, parse_delivery_id,
};
pub use retention::PurgeReport;

/// A message as stored in `messages` (the id is the key; open statistics live in
/// `message_opens` so that an open never rewrites this record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    /// See [`Message`].
    queue_id: String,
    /// See [`Message`].
    #[serde(rename = "at", with = "rfc3339_ms")]
    at_ms: u64,
    /// See [`Message`].
    sender: String,
    /// See [`Message`].
    recipients: Vec<String>,
    /// See [`Message`].
    message_id: Option<String>,
    /// See [`Message`].
    subject: Option<String>,
    /// See [`Message`].
    size: u64,
    /// See [`Message`].
    tracked: bool,
    /// See [`Message`].
    skip_reason: Option<String>,
    /// See [`Message`].
    delivery: Option<Delivery>,
}

impl Stored {
    fn into_message(self, id: &MessageId, stats: &MsgStats) -> Message {
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
struct MsgStats {
    /// Every open.
    count: u64,
    /// Opens not marked as machine.
    human: u64,
    /// First open.
    first: u64,
    /// Latest open.
    last: u64,
    /// First open not marked as machine.
    first_human: u64,
    /// When the relay handed the message upstream (the final reply, else the record time).
    sent_at: u64,
}

impl MsgStats {
    fn encode(&self) -> Vec<u8> {
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

    fn decode(b: &[u8]) -> Result<MsgStats, StoreError> {
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

    fn view(&self) -> OpenStats {
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
fn message_event(m: &Message) -> Result<serde_json::Value, serde_json::Error> {
    let mut v = serde_json::to_value(m)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("opens");
    }
    Ok(v)
}

/// The four totals every open updates, stored apart from the rest (32 bytes, no JSON).
#[derive(Debug, Clone, Copy)]
struct OpenCounters {
    /// See [`Counters`].
    opens: u64,
    /// See [`Counters`].
    machine_opens: u64,
    /// See [`Counters`].
    unique_opens: u64,
    /// See [`Counters`].
    unique_human_opens: u64,
}

impl Counters {
    /// Counts an open's verdict in the kind, reason and proxy breakdowns.
    fn count_verdict(&mut self, ev: &OpenEvent) {
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

    fn clone_open(&self) -> OpenCounters {
        OpenCounters {
            opens: self.opens,
            machine_opens: self.machine_opens,
            unique_opens: self.unique_opens,
            unique_human_opens: self.unique_human_opens,
        }
    }
}

impl OpenCounters {
    fn encode(&self) -> Vec<u8> {
        put_u64s(&[
            self.opens,
            self.machine_opens,
            self.unique_opens,
            self.unique_human_opens,
        ])
    }

    fn apply(&self, c: &mut Counters) {
        c.opens = self.opens;
        c.machine_opens = self.machine_opens;
        c.unique_opens = self.unique_opens;
        c.unique_human_opens = self.unique_human_opens;
    }
}

fn decode_open_counters(b: &[u8], c: &mut Counters) -> Result<(), StoreError> {
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

/// Fixed binary records: big-endian u64s back to back.
fn put_u64s(vals: &[u64]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// Reads a record written by [`put_u64s`]; any other length is corruption.
fn get_u64s<const N: usize>(b: &[u8], what: &'static str) -> Result<[u64; N], StoreError> {
    if b.len() != N * 8 {
        return Err(StoreError::Corrupt(what));
    }
    let mut out = [0u64; N];
    for (v, chunk) in out.iter_mut().zip(b.chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        *v = u64::from_be_bytes(a);
    }
    Ok(out)
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Codec(e)
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort(e: impl Into<StoreError>) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e.into())
}

/// Value of index entries.
const EMPTY: &[u8] = &[];
/// Key of the counters in `meta` (JSON, written with messages; its four open totals are a
/// snapshot, superseded by `OPEN_COUNTERS`).
const COUNTERS: &[u8] = b"counters";
/// Key of the open totals in `meta` (4 big-endian u64s), written with every open.
const OPEN_COUNTERS: &[u8] = b"open_counters";
/// Bits of an open id below the timestamp.
const OPEN_ID_SHIFT: u32 = 20;
/// Key of the journal position indexed so far in `meta` (see `journal.rs`).
const JOURNAL_MARK: &[u8] = b"journal_indexed";
/// Capacity of the live feed; a follower further behind gets `Lagged` and re-reads the store.
const FEED_CAPACITY: usize = 4096;
/// Entries a filtered listing scans per page at most, so a rare filter cannot stall a request.
const SCAN_LIMIT: usize = 10_000;

/// The store handle. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct SledStore {
    /// Shared state.
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.cfg.path)
            .finish()
    }
}

/// Everything a `SledStore` shares.
struct Inner {
    /// Subjects, anonymisation, retention, flush interval.
    cfg: StoreConfig,
    /// The database (for flush).
    db: sled::Db,
    /// id → Stored (JSON).
    messages: Tree,
    /// id → MsgStats (48 bytes): open statistics and the hand-off time.
    message_opens: Tree,
    /// at_ms ‖ id → ().
    messages_by_time: Tree,
    /// open id → OpenEvent.
    opens: Tree,
    /// id ‖ open id → ().
    opens_by_message: Tree,
    /// Counters.
    meta: Tree,
    /// endpoint ‖ seq → webhook delivery waiting.
    outbox: Tree,
    /// endpoint ‖ seq → webhook delivery out of time.
    dead_letters: Tree,
    /// Tells the delivery workers that rows were written.
    outbox_watch: tokio::sync::watch::Sender<OutboxVersion>,
    /// Serialises writers; holds what must match the committed data exactly.
    write: Mutex<WriteState>,
    /// Live feed of committed opens.
    feed: broadcast::Sender<OpenEvent>,
    /// Optional JSON-lines file of opens (`store.open_log`).
    open_log: Option<OpenLog>,
}

/// State owned by the writer lock.
struct WriteState {
    /// Mirror of the stored counters.
    counters: Counters,
    /// The last open id handed out.
    last_open: u64,
    /// Endpoints that get outbox rows, and for which events.
    hooks: Vec<Subscription>,
    /// The last webhook event sequence handed out (persisted in `meta`).
    last_event: u64,
}

impl SledStore {
    /// Opens (or creates) the store at `cfg.path` and, when called inside a tokio runtime
    /// with `retention_days > 0`, starts the retention task (it ends when the last clone of the
    /// store is dropped).
    pub fn open(cfg: &StoreConfig) -> Result<SledStore, StoreError> {
        let flush_ms = cfg
            .flush_interval
            .as_millis()
            .clamp(1, u128::from(u64::MAX)) as u64;
        let db = sled::Config::new()
            .path(&cfg.path)
            .cache_capacity(128 * 1024 * 1024)
            .flush_every_ms(Some(flush_ms))
            .open()?;
        let messages = db.open_tree("messages")?;
        let message_opens = db.open_tree("message_opens")?;
        let messages_by_time = db.open_tree("messages_by_time")?;
        let opens = db.open_tree("opens")?;
        let opens_by_message = db.open_tree("opens_by_message")?;
        let meta = db.open_tree("meta")?;
        let outbox = db.open_tree("outbox")?;
        let dead_letters = db.open_tree("dead_letters")?;
        let last_event = match meta.get(outbox::LAST_EVENT)? {
            Some(v) => get_u64s::<1>(&v, "last event")?[0],
            None => 0,
        };
        let mut counters: Counters = match meta.get(COUNTERS)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Counters::default(),
        };
        if let Some(v) = meta.get(OPEN_COUNTERS)? {
            decode_open_counters(&v, &mut counters)?;
        }
        let last_open = match opens.last()? {
            Some((k, _)) => decode_open_id(&k).unwrap_or(0),
            None => 0,
        };
        let open_log = match &cfg.open_log {
            Some(p) => Some(OpenLog::open(p).map_err(StoreError::Io)?),
            None => None,
        };
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let store = SledStore {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                db,
                messages,
                message_opens,
                messages_by_time,
                opens,
                opens_by_message,
                meta,
                outbox,
                dead_letters,
                outbox_watch: tokio::sync::watch::Sender::new(OutboxVersion {
                    last_seq: last_event,
                    retries: 0,
                }),
                write: Mutex::new(WriteState {
                    counters,
                    last_open,
                    hooks: Vec::new(),
                    last_event,
                }),
                feed,
                open_log,
            }),
        };
        if cfg.retention_days > 0 && tokio::runtime::Handle::try_current().is_ok() {
            retention::spawn(Arc::downgrade(&store.inner));
        }
        Ok(store)
    }

    /// Message records, then final replies, in ONE transaction, with the journal position
    /// `mark` when they come from the journal: what the indexer commits per run. All or
    /// nothing.
    pub fn commit_messages(
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

    /// What an open of message `id` needs from the store before it is recorded: the hand-off
    /// time (for the early-load rule) and the message fields an open event repeats. `None` if
    /// the message is unknown. Read on the request's own task, so that the one writer thread
    /// only commits.
    pub fn open_context(&self, id: &MessageId) -> Result<Option<OpenContext>, StoreError> {
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

    /// How far the journal was indexed when the store last committed something from it
    /// (the start of the journal if never).
    pub fn journal_mark(&self) -> Result<Position, StoreError> {
        match self.inner.meta.get(JOURNAL_MARK)? {
            Some(v) => Position::decode(&v).ok_or(StoreError::Corrupt("journal position")),
            None => Ok(Position::default()),
        }
    }

    /// Commits open events (message id and event without id/first/count; `None` for an
    /// unknown message) in one transaction, with the journal position `mark` when they come
    /// from the journal, then feeds the open log and live followers.
    fn commit_events(
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
            // No receiver is fine: nobody is following.
            let _ = inner.feed.send(event.clone());
            result.push(Some(event));
        }
        Ok(result)
    }

    /// Opens, newest first, strictly before `cursor` (an open id) or from the newest.
    pub fn list_opens(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError> {
        let end = match cursor {
            Some(c) => Bound::Excluded(parse_open_id(c)?.to_be_bytes()),
            None => Bound::Unbounded,
        };
        let mut items = Vec::new();
        for kv in self
            .inner
            .opens
            .range((Bound::Unbounded, end))
            .rev()
            .take(limit)
        {
            let (_, v) = kv?;
            items.push(decode::<OpenEvent>(&v)?);
        }
        let next_cursor = if items.len() == limit {
            items.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Opens strictly after `cursor` (or from the oldest), oldest first: the backlog of a
    /// follower.
    pub fn opens_after(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OpenEvent>, StoreError> {
        let start = match cursor {
            Some(c) => Bound::Excluded(parse_open_id(c)?.to_be_bytes()),
            None => Bound::Unbounded,
        };
        let mut items = Vec::new();
        for kv in self
            .inner
            .opens
            .range((start, Bound::Unbounded))
            .take(limit)
        {
            let (_, v) = kv?;
            items.push(decode::<OpenEvent>(&v)?);
        }
        Ok(items)
    }

    /// One message with all its opens, oldest first.
    pub fn get_message(&self, id: &MessageId) -> Result<Option<MessageWithOpens>, StoreError> {
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
    pub fn list_messages(
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

    /// Bytes the database takes on disk (for the store-size metric).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// The id of the newest open (16 zeros when there is none): a cursor meaning "from now".
    pub fn last_open_cursor(&self) -> String {
        format_open_id(self.inner.lock().last_open)
    }

    /// The totals, from memory: O(1).
    pub fn stats(&self) -> Stats {
        let counters = self.inner.lock().counters.clone();
        let skipped_total = counters.skipped.values().sum();
        let rate = |n: u64| {
            if counters.tracked == 0 {
                0.0
            } else {
                n as f64 / counters.tracked as f64
            }
        };
        let human_opens = counters.opens - counters.machine_opens;
        let machine_share_by_reason = counters
            .by_reason
            .iter()
            .map(|(r, n)| (r.clone(), *n as f64 / counters.opens.max(1) as f64))
            .collect();
        Stats {
            skipped_total,
            human_opens,
            direct_opens: human_opens.saturating_sub(counters.proxied_opens),
            machine_share_by_reason,
            open_rate: rate(counters.unique_opens),
            human_open_rate: rate(counters.unique_human_opens),
            counters,
        }
    }

    /// Writes everything to disk (fsync). sled also does it every `store.flush_interval`.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        if let Some(log) = &self.inner.open_log {
            log.sync().map_err(StoreError::Io)?;
        }
        Ok(())
    }

    /// Reopens `store.open_log` by name (SIGHUP, after logrotate moved the file away).
    pub fn reopen_open_log(&self) -> Result<(), StoreError> {
        match &self.inner.open_log {
            Some(log) => log.reopen().map_err(StoreError::Io),
            None => Ok(()),
        }
    }

    /// Deletes messages (with their opens) and opens older than `store.retention_days` before
    /// `now_ms`. Does nothing when retention is 0. The background task calls this hourly.
    pub fn purge_expired(&self, now_ms: u64) -> Result<PurgeReport, StoreError> {
        match self.inner.cfg.retention_days {
            0 => Ok(PurgeReport::default()),
            days => retention::purge(
                &self.inner,
                now_ms.saturating_sub(u64::from(days) * 86_400_000),
            ),
        }
    }

    fn get_stored(&self, id: &MessageId) -> Result<Option<Message>, StoreError> {
        let Some(v) = self.inner.messages.get(id.as_bytes())? else {
            return Ok(None);
        };
        let stats = match self.inner.message_opens.get(id.as_bytes())? {
            Some(v) => MsgStats::decode(&v)?,
            None => MsgStats::default(),
        };
        Ok(Some(decode::<Stored>(&v)?.into_message(id, &stats)))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        lock(&self.write)
    }
}

/// Locks, recovering from poisoning: the guarded state is only replaced after a commit, so a
/// panic elsewhere never leaves it half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode<T: Serialize>(v: &T) -> TxResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(abort)
}

fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(v)?)
}

impl From<StoreError> for ConflictableTransactionError<StoreError> {
    fn from(e: StoreError) -> Self {
        abort(e)
    }
}

/// The next open id: strictly after `last`, and at least `at_ms` in its high bits.
fn next_open_id(last: u64, at_ms: u64) -> u64 {
    last.saturating_add(1).max(at_ms << OPEN_ID_SHIFT)
}

fn format_open_id(id: u64) -> String {
    format!("{id:016x}")
}

fn parse_open_id(s: &str) -> Result<u64, StoreError> {
    if s.len() != 16 {
        return Err(StoreError::BadCursor(s.to_string()));
    }
    u64::from_str_radix(s, 16).map_err(|_| StoreError::BadCursor(s.to_string()))
}

fn decode_open_id(k: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(k).ok().map(u64::from_be_bytes)
}

fn time_key(at_ms: u64, id: &MessageId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&at_ms.to_be_bytes());
    k[8..].copy_from_slice(id.as_bytes());
    k
}

fn open_index_key(id: &MessageId, open_id: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(id.as_bytes());
    k[16..].copy_from_slice(&open_id.to_be_bytes());
    k
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_message_cursor(s: &str) -> Result<Vec<u8>, StoreError> {
    let bad = || StoreError::BadCursor(s.to_string());
    if s.len() != 48 || !s.is_ascii() {
        return Err(bad());
    }
    (0..48)
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

impl Backend for SledStore {
    fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    fn commit_messages(
        &self,
        recs: &[&MessageRecord],
        done: &[(&MessageId, &Delivery)],
        mark: Option<Position>,
    ) -> Result<(), StoreError> {
        SledStore::commit_messages(self, recs, done, mark)
    }

    fn get_message(&self, id: &MessageId) -> Result<Option<MessageWithOpens>, StoreError> {
        SledStore::get_message(self, id)
    }

    fn list_messages(
        &self,
        filter: &MessageFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Message>, StoreError> {
        SledStore::list_messages(self, filter, cursor, limit)
    }

    fn open_context(&self, id: &MessageId) -> Result<Option<OpenContext>, StoreError> {
        SledStore::open_context(self, id)
    }

    fn commit_opens(
        &self,
        opens: &[Option<PreparedOpen>],
        mark: Option<Position>,
    ) -> Result<Vec<Option<OpenEvent>>, StoreError> {
        let events = opens
            .iter()
            .map(|o| o.as_ref().map(|o| (o.id, &o.event)))
            .collect();
        self.commit_events(events, mark)
    }

    fn list_opens(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError> {
        SledStore::list_opens(self, cursor, limit)
    }

    fn opens_after(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OpenEvent>, StoreError> {
        SledStore::opens_after(self, cursor, limit)
    }

    fn subscribe(&self) -> broadcast::Receiver<OpenEvent> {
        self.inner.feed.subscribe()
    }

    fn last_open_cursor(&self) -> String {
        SledStore::last_open_cursor(self)
    }

    fn followers(&self) -> usize {
        self.inner.feed.receiver_count()
    }

    fn stats(&self) -> Stats {
        SledStore::stats(self)
    }

    fn journal_mark(&self) -> Result<Position, StoreError> {
        SledStore::journal_mark(self)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        SledStore::size_on_disk(self)
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        SledStore::flush_blocking(self)
    }

    fn reopen_open_log(&self) -> Result<(), StoreError> {
        SledStore::reopen_open_log(self)
    }

    fn purge_expired(&self, now_ms: u64) -> Result<PurgeReport, StoreError> {
        SledStore::purge_expired(self, now_ms)
    }

    fn set_subscriptions(&self, subs: Vec<Subscription>) {
        SledStore::set_subscriptions(self, subs)
    }

    fn watch_outbox(&self) -> tokio::sync::watch::Receiver<OutboxVersion> {
        SledStore::watch_outbox(self)
    }

    fn outbox_get(&self, endpoint: u64, seq: u64) -> Result<Option<OutboxRow>, StoreError> {
        SledStore::outbox_get(self, endpoint, seq)
    }

    fn outbox_scan(&self, endpoint: u64, after: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        SledStore::outbox_scan(self, endpoint, after)
    }

    fn outbox_delivered(&self, endpoint: u64, seq: u64) -> Result<(), StoreError> {
        SledStore::outbox_delivered(self, endpoint, seq)
    }

    fn outbox_reschedule(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        next_ms: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        SledStore::outbox_reschedule(self, endpoint, seq, attempts, next_ms, error)
    }

    fn outbox_kill(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        error: &str,
    ) -> Result<bool, StoreError> {
        SledStore::outbox_kill(self, endpoint, seq, attempts, error)
    }

    fn pending(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        SledStore::pending(self, cursor, limit)
    }

    fn dead_letters(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        SledStore::dead_letters(self, cursor, limit)
    }

    fn retry_dead_letter(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        SledStore::retry_dead_letter(self, id, now_ms)
    }

    fn outbox_endpoints(&self) -> Result<Vec<u64>, StoreError> {
        SledStore::outbox_endpoints(self)
    }

    fn outbox_len(&self) -> usize {
        SledStore::outbox_len(self)
    }
}

#[cfg(test)]
mod tests;
