//! The sled backend: the embedded default store, one process. The only code that names sled;
//! the rest of pixelrelay sees it through [`crate::store::Backend`] (`backend.rs`).
//!
//! Split by what it stores: `messages.rs` (records, deliveries, listing), `opens.rs` (open
//! events, per-message statistics, counters, the open-id scheme), `outbox.rs` (webhook rows
//! and dead letters), `retention.rs` (purging); this file opens the database and holds what
//! they share.
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

mod backend;
mod messages;
mod opens;
mod outbox;
mod retention;

use messages::*;
use opens::*;

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

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Engine(e.to_string()),
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

    /// How far the journal was indexed when the store last committed something from it
    /// (the start of the journal if never).
    pub fn journal_mark(&self) -> Result<Position, StoreError> {
        match self.inner.meta.get(JOURNAL_MARK)? {
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

#[cfg(test)]
mod tests;
