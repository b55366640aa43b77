//! The sled backend: the embedded default store, one process. The only code that names sled;
//! the rest of pixelrelay sees it through [`crate::store::Backend`] (`backend.rs`).
//!
//! Split by what it stores: `messages.rs` (records, deliveries, a message's open statistics
//! and open index, listing), `opens.rs` (open events in segments, counters, the open-id
//! scheme), `outbox.rs` (webhook rows and dead letters), `retention.rs` (purging),
//! `migrate.rs` (the layout of earlier versions); this file opens the database and holds what
//! they share.
//!
//! # Layout: one tree, prefixed keys, binary values
//!
//! Everything lives in ONE sled tree (`pixelrelay`) under a one-byte prefix, so that each
//! write is one `apply_batch` (atomic in sled) instead of a transaction across trees: sled
//! spends about 8 µs on any insert whatever its size, and a cross-tree transaction several
//! times that, so what an open costs is the number of keys it writes.
//!
//! ```text
//! m id(16)                  -> the message record and its delivery (JSON)
//! s id(16)                  -> open statistics, hand-off time, newest open id counted
//!                              (56 bytes), the ids of its newest opens (fewer than CHUNK),
//!                              the record fields an open event repeats (see messages.rs)
//! x id(16) chunk(4)         -> CHUNK older open ids of the message, in order
//! t at_ms(8) id(16)         -> ()      listing newest first, retention
//! o first_open_id(8)        -> a segment: the opens (and clicks) one write committed
//! k click_id(8)             -> ()      the click index: listing clicks (see opens.rs)
//! q endpoint(8) seq(8)      -> webhook delivery waiting (binary, see outbox.rs)
//! d endpoint(8) seq(8)      -> webhook delivery out of time
//! c "counters"              -> Counters (JSON, written once per write)
//! c "open_counters"         -> the 4 open totals (32 bytes)
//! c "journal_indexed"       -> journal position indexed (16 bytes)
//! c "last_event"            -> last webhook event sequence (8 bytes)
//! c "layout"                -> layout version (8 bytes): 2
//! c "stats_through"         -> statistics checkpoint: the newest open counted in `s` keys
//! ```
//!
//! An indexer batch of 8 192 opens is thus a few hundred segment keys, the counters and the
//! journal mark, where the first layout wrote three keys per open in a five-tree transaction.
//! The `s` keys of the messages it opened are written at the next statistics checkpoint
//! (with the first write of opens 5 s after the last one, once 65 536 messages wait, and on
//! `flush`): until then their statistics live in memory,
//! where readers see them, and after a crash the store recounts the opens after the
//! checkpoint from their segments when it is opened ([`replay`]), each message skipping the
//! opens its record already counts, so nothing is lost or counted twice.
//!
//! An open id is `max(previous + 1, at_ms << 20)`: unique, strictly increasing, time-ordered
//! (the high 44 bits are the ms timestamp, good until the year 2527), and printed as 16 hex
//! digits it is the cursor for listing and following opens.
//!
//! # Writes and durability
//!
//! Writers are serialised by one mutex: each reads what it updates, builds one batch, and
//! applies it; the in-memory copy of the counters (for O(1) `stats()`) and the last open id
//! stay exact. Readers take no lock: a batch is visible all at once or not at all. After each
//! committed open the event goes to an in-process `broadcast` channel for live followers
//! (never a sled subscriber: a slow reader there blocks writers).
//!
//! Nothing reaches sled on the request paths: pixel hits, message records and final replies go
//! to the journal first (`ingest`), whose indexer commits them here in journal order with the
//! journal position reached (`journal_indexed`, [`SledStore::journal_mark`]) in the same
//! batch, so a restart replays exactly what was not yet stored.
//!
//! sled keeps writes in memory and fsyncs them every `store.flush_interval` (its own flusher
//! thread, `flush_every_ms`), and [`SledStore::flush`] on shutdown. What a crash costs is the
//! journal's to say (`ingest`): nothing older than its last millisecond of hits on `kill -9`.

mod backend;
mod messages;
mod migrate;
mod opens;
mod outbox;
mod retention;

use messages::*;
use opens::*;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sled::Tree;
use tokio::sync::broadcast;

use crate::config::StoreConfig;
use crate::openlog::OpenLog;
use crate::token::MessageId;
use crate::track::OpenEvent;

use super::Backend;
use super::types::*;

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
        StoreError::Engine(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Codec(e)
    }
}

/// Value of index entries.
const EMPTY: &[u8] = &[];
/// Name of the one tree.
const TREE: &str = "pixelrelay";
/// Version of the layout described in the module docs.
const LAYOUT: u64 = 2;
/// Key prefixes (see the module docs).
const P_MESSAGE: u8 = b'm';
const P_STATS: u8 = b's';
const P_CHUNK: u8 = b'x';
const P_TIME: u8 = b't';
const P_SEGMENT: u8 = b'o';
const P_OUTBOX: u8 = b'q';
const P_DEAD: u8 = b'd';
const P_CLICK: u8 = b'k';
// The keys below are the `c` (meta) prefix's.
/// Key of the counters (JSON, written with every write; its four open totals are a
/// snapshot, superseded by `OPEN_COUNTERS`).
const COUNTERS: &[u8] = b"ccounters";
/// Key of the open totals (4 big-endian u64s), written with every open.
const OPEN_COUNTERS: &[u8] = b"copen_counters";
/// Key of the layout version.
const LAYOUT_KEY: &[u8] = b"clayout";
/// Key of the statistics checkpoint: every open up to this id is counted in its message's
/// `s` record on disk (see [`SledStore::checkpoint`]).
const CHECKPOINT_KEY: &[u8] = b"cstats_through";
/// Messages whose statistics may wait in memory before a checkpoint writes them.
const DIRTY_MAX: usize = 65_536;
/// How long statistics may wait in memory at most (what a restart after a crash recounts:
/// about 1 s per 100 000 opens).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Bits of an open id below the timestamp.
const OPEN_ID_SHIFT: u32 = crate::store::shared::ID_SHIFT;
/// Key of the journal position indexed so far (see `journal.rs`).
const JOURNAL_MARK: &[u8] = b"cjournal_indexed";

/// `prefix ‖ a ‖ b …` as a key.
fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}
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
    /// The one tree (see the module docs).
    data: Tree,
    /// Tells the delivery workers that rows were written.
    outbox_watch: tokio::sync::watch::Sender<OutboxVersion>,
    /// Serialises writers; holds what must match the committed data exactly.
    write: Mutex<WriteState>,
    /// Live feed of committed opens.
    feed: broadcast::Sender<OpenEvent>,
    /// Optional JSON-lines file of opens (`store.open_log`).
    open_log: Option<OpenLog>,
    /// Statistics of messages opened since the last checkpoint, newer than their `s` keys.
    /// Changed only under the writer lock; readers take the read lock for a lookup.
    dirty: RwLock<HashMap<MessageId, MsgStats>>,
}

/// State owned by the writer lock.
struct WriteState {
    /// Mirror of the stored counters.
    counters: Counters,
    /// The last open id handed out.
    last_open: u64,
    /// Endpoints that get outbox rows, and for which events.
    hooks: Vec<Subscription>,
    /// The last webhook event sequence handed out (persisted).
    last_event: u64,
    /// When the statistics were last checkpointed.
    checkpointed: Instant,
}

impl SledStore {
    /// Opens (or creates) the store at `cfg.path`, moving a store of the first layout into
    /// this one, and, when called inside a tokio runtime with `retention_days > 0`, starts the
    /// retention task (it ends when the last clone of the store is dropped).
    pub fn open(cfg: &StoreConfig) -> Result<SledStore, StoreError> {
        let flush_ms = cfg
            .flush_interval
            .as_millis()
            .clamp(1, u128::from(u64::MAX)) as u64;
        // sled's memory is several times its cache setting (it counts pages by their size on
        // disk); 16 MiB kept the pixel bench's peak RSS lowest without slowing the indexer.
        let db = sled::Config::new()
            .path(&cfg.path)
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(Some(flush_ms))
            .open()?;
        let data = db.open_tree(TREE)?;
        migrate::to_current(&db, &data)?;
        let last_event = match data.get(outbox::LAST_EVENT)? {
            Some(v) => get_u64s::<1>(&v, "last event")?[0],
            None => 0,
        };
        let mut counters: Counters = match data.get(COUNTERS)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Counters::default(),
        };
        if let Some(v) = data.get(OPEN_COUNTERS)? {
            decode_open_counters(&v, &mut counters)?;
        }
        let last_open = last_open_id(&data)?;
        let replayed = replay(&data, last_open)?;
        if replayed > 0 {
            tracing::info!(
                opens = replayed,
                "store: counted the opens written after the last statistics checkpoint"
            );
        }
        let open_log = match &cfg.open_log {
            Some(p) => Some(OpenLog::open(p).map_err(StoreError::Io)?),
            None => None,
        };
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let store = SledStore {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                db,
                data,
                outbox_watch: tokio::sync::watch::Sender::new(OutboxVersion {
                    last_seq: last_event,
                    retries: 0,
                }),
                write: Mutex::new(WriteState {
                    counters,
                    last_open,
                    hooks: Vec::new(),
                    last_event,
                    checkpointed: Instant::now(),
                }),
                feed,
                open_log,
                dirty: RwLock::new(HashMap::new()),
            }),
        };
        if cfg.retention_days > 0 && tokio::runtime::Handle::try_current().is_ok() {
            retention::spawn(Arc::downgrade(&store.inner));
        }
        Ok(store)
    }

    /// How far the journal was indexed when the store last committed something from it
    /// (the start of the journal if never).
    pub fn journal_mark(&self) -> Result<Position, StoreError> {
        match self.inner.data.get(JOURNAL_MARK)? {
            Some(v) => Position::decode(&v).ok_or(StoreError::Corrupt("journal position")),
            None => Ok(Position::default()),
        }
    }

    /// Bytes the database takes on disk (for the store-size metric).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// The totals, from memory: O(1).
    pub fn stats(&self) -> Stats {
        Stats::of(self.inner.lock().counters.clone())
    }

    /// Writes everything to disk (fsync). sled also does it every `store.flush_interval`.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.checkpoint(&mut self.inner.lock())?;
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
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        lock(&self.write)
    }

    /// Message `id`'s statistics: in memory if opened since the last checkpoint, else its
    /// `s` key; `None` for an unknown message.
    fn msg_stats(&self, id: &MessageId) -> Result<Option<MsgStats>, StoreError> {
        if let Some(ms) = self.dirty_map().get(id) {
            return Ok(Some(ms.clone()));
        }
        match self.data.get(stats_key(id))? {
            Some(v) => Ok(Some(MsgStats::decode(&v)?)),
            None => Ok(None),
        }
    }

    fn dirty_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<MessageId, MsgStats>> {
        self.dirty.read().unwrap_or_else(|p| p.into_inner())
    }

    fn dirty_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<MessageId, MsgStats>> {
        self.dirty.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Under the writer lock, after the `s` keys of `ids` were written with everything.
    fn forget_dirty<'a>(&self, ids: impl Iterator<Item = &'a MessageId>) {
        let mut d = self.dirty_mut();
        if !d.is_empty() {
            for id in ids {
                d.remove(id);
            }
        }
    }
}

impl SledStore {
    /// Writes the statistics waiting in memory to their `s` keys, with the id of the newest
    /// open as the checkpoint, in one batch. Under the writer lock.
    ///
    /// Between checkpoints an open's write carries its event (in a segment) but not its
    /// message's statistics, which would cost one key per message per write; a crash
    /// loses only the in-memory copy, and [`replay`] recounts the opens after the checkpoint
    /// from their segments when the store is opened.
    fn checkpoint(&self, st: &mut WriteState) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut batch = sled::Batch::default();
        for (id, ms) in inner.dirty_map().iter() {
            batch.insert(stats_key(id), ms.encode());
        }
        batch.insert(CHECKPOINT_KEY, put_u64s(&[st.last_open]));
        inner.data.apply_batch(batch)?;
        inner.dirty_mut().clear();
        st.checkpointed = Instant::now();
        Ok(())
    }

    /// After a write of opens: a checkpoint when enough statistics or time have piled up.
    fn maybe_checkpoint(&self, st: &mut WriteState) -> Result<(), StoreError> {
        let due = self.inner.dirty_map().len() >= DIRTY_MAX
            || st.checkpointed.elapsed() >= CHECKPOINT_EVERY;
        if due { self.checkpoint(st) } else { Ok(()) }
    }
}

/// The fields of a stored open event that its message's statistics count.
#[derive(Deserialize)]
struct Counted {
    /// Open or click.
    #[serde(rename = "type", default)]
    event_type: crate::track::event::EventType,
    /// The message.
    message: MessageId,
    /// When.
    #[serde(rename = "at", with = "crate::track::event::rfc3339_ms")]
    at_ms: u64,
    /// Counted as a machine.
    machine: bool,
}

/// Counts, into their messages' `s` keys, the opens stored after the statistics checkpoint
/// (those whose message's record does not count them yet), then moves the checkpoint to
/// `last_open`. Returns how many it counted.
fn replay(data: &Tree, last_open: u64) -> Result<u64, StoreError> {
    let from = match data.get(CHECKPOINT_KEY)? {
        Some(v) => get_u64s::<1>(&v, "statistics checkpoint")?[0],
        None => 0,
    };
    if from >= last_open {
        return Ok(0);
    }
    let start = match segment_for(data, from)? {
        Some((k, _)) => k.to_vec(),
        None => segment_key(0),
    };
    let mut batch = sled::Batch::default();
    let mut stats: HashMap<MessageId, Option<MsgStats>> = HashMap::new();
    let mut counted = 0;
    for kv in data.range(start..vec![P_SEGMENT + 1]) {
        let (_, v) = kv?;
        let seg = Segment::parse(&v)?;
        for i in 0..seg.len() {
            let id = seg.id(i);
            if id <= from {
                continue;
            }
            let c: Counted = decode(seg.json(i)?)?;
            let ms = match stats.entry(c.message) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(match data.get(stats_key(&c.message))? {
                    Some(v) => Some(MsgStats::decode(&v)?),
                    None => None,
                }),
            };
            if let Some(ms) = ms.as_mut().filter(|ms| id > ms.last_id) {
                let chunk = if c.event_type == crate::track::event::EventType::Click {
                    // The lifetime counters were committed with the click: only the
                    // message's statistics are recounted.
                    let mut ev: OpenEvent = decode(seg.json(i)?)?;
                    ms.clicks.count(&mut ev, &mut Counters::default());
                    ms.index(id)
                } else {
                    ms.add(id, c.at_ms, !c.machine)
                };
                if let Some((n, chunk)) = chunk {
                    batch.insert(chunk_key(&c.message, n), chunk);
                }
                counted += 1;
            }
        }
    }
    for (id, ms) in &stats {
        if let Some(ms) = ms {
            batch.insert(stats_key(id), ms.encode());
        }
    }
    batch.insert(CHECKPOINT_KEY, put_u64s(&[last_open]));
    data.apply_batch(batch)?;
    Ok(counted)
}

/// Locks, recovering from poisoning: the guarded state is only replaced after a commit, so a
/// panic elsewhere never leaves it half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(v)?)
}

fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(v)?)
}

#[cfg(test)]
mod tests;
