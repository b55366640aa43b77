//! Ingest: everything on its way into the store. Pixel hits (from the pixel listener), message
//! records and final replies (from the relay) are appended to one journal, in the kernel before
//! the pixel is answered or the upstream sees the message, and an indexer thread moves them into
//! the store behind, classifying each hit as it goes.
//!
//! Owns the journal (`journal.rs`), the encodings of what it carries (`hit.rs`, `entry.rs`),
//! the journal's writer thread, the indexer thread and its pacing (`indexer.rs`, `pace.rs`),
//! and the hit counters. Does not own storage: the indexer commits through the store's
//! methods, with the journal position reached in the same transaction, so a restart replays
//! exactly what was not yet stored. The store knows nothing of the journal but that position.
//!
//! What a crash costs: `kill -9` loses the pixel hits of the last millisecond (still in the
//! journal's buffer) and nothing else, since message records and replies are written out by
//! the session that appends them; a power cut loses at most the last `store.flush_interval`
//! (the indexer fsyncs the journal at that interval, as sled does its own writes).

pub mod clicks;
mod entry;
mod hit;
mod hits;
mod hold;
mod indexer;
mod journal;
mod pace;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use hit::{Hit, HitSeen};
pub use indexer::BATCH;

use crate::net;
use crate::store::{Delivery, MessageRecord, Position, Store, StoreError};
use crate::token::MessageId;

/// How long the journal writer waits for more hits once one is buffered: a `kill -9` loses at
/// most this much of the hits.
const JOURNAL_LINGER: Duration = Duration::from_millis(1);

/// Pixel hit counters (exported as metrics by the admin listener).
#[derive(Debug, Default)]
pub struct HitCounters {
    /// Hits with a valid token of a known message: an open was recorded.
    pub valid: AtomicU64,
    /// Hits with a forged, malformed or unknown token: nothing recorded.
    pub invalid: AtomicU64,
    /// Valid hits the store failed to record (the GIF was still served).
    pub store_errors: AtomicU64,
    /// Valid hits held because their message's record was not in the shared store yet
    /// (another node had not indexed it): retried, then recorded or, after
    /// [`hold::HOLD`], counted invalid.
    pub held: AtomicU64,
    /// Tracked-link requests (`/c/{token}`) with an authentic token: redirected.
    pub click_redirects: AtomicU64,
    /// Tracked-link requests with a forged, malformed or mutated token: `404`, nothing else.
    pub click_invalid: AtomicU64,
}

/// The ingest handle. Cheap to clone; all clones share one journal and one indexer.
#[derive(Clone)]
pub struct Ingest {
    /// Shared state.
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

/// Everything an `Ingest` shares with its indexer thread.
struct Inner {
    /// Where the indexer records what it reads.
    store: Store,
    /// `store.anonymize_ip`: hits are journaled with the anonymised address.
    anonymize_ip: bool,
    /// `store.subjects`: a subject reaches the journal only when it is kept.
    subjects: bool,
    /// Hits, records and replies not yet indexed (and the ones before them).
    journal: Arc<journal::Journal>,
    /// How far the journal is indexed (committed in the store with what it indexed).
    indexed: tokio::sync::watch::Sender<Position>,
    /// Wakes the indexer thread after an append (a full slot means it is awake already).
    wake: std::sync::mpsc::SyncSender<()>,
    /// Pixel hit counters, shared with the listener.
    hits: Arc<HitCounters>,
    /// Readers waiting in [`Ingest::caught_up`] (the indexer does not pause for the CPU then).
    readers_waiting: AtomicUsize,
    /// The indexer thread, unparked when a reader starts waiting (it may be lingering).
    indexer: std::sync::OnceLock<std::thread::Thread>,
    /// Times the indexer paused to leave the CPU to the listener (`pace.rs`).
    index_pauses: AtomicU64,
    /// Hits held for a record not yet in the shared store, with when to try them again.
    held: std::sync::Mutex<Vec<hold::Held>>,
    /// The commit of opens in flight on a shared store (see `hits::index_hits`).
    pending: std::sync::Mutex<Option<std::thread::JoinHandle<Result<(), StoreError>>>>,
    /// Recent clicks, for the link-scanner rule (`clicks.rs`).
    bursts: std::sync::Mutex<clicks::Bursts>,
}

/// `read` of the store; a shared store that cannot be reached is waited for, with a line in
/// the log per attempt and a backoff of up to 30 s, rather than failing the start.
fn when_reachable<T>(
    store: &Store,
    read: impl Fn() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut wait = Duration::from_secs(1);
    loop {
        match read() {
            Ok(m) => return Ok(m),
            Err(e @ (StoreError::Engine(_) | StoreError::Task(_))) if store.shared() => {
                tracing::warn!(error = %e, retry_s = wait.as_secs(), event = "store_unreachable", "the database cannot be reached; retrying");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Ingest {
    /// Opens the journal beside the store (`PATH.journal/`, 0700, with the store's
    /// `anonymize_ip`, `subjects` and `flush_interval`), indexes whatever a previous
    /// run journaled and did not index, and starts the journal writer and the indexer. Call
    /// it after the store knows its webhook subscriptions: replayed opens write outbox rows.
    pub fn open(store: Store) -> Result<Ingest, StoreError> {
        let cfg = store.config().clone();
        let mark = when_reachable(&store, || store.journal_mark())?;
        let journal =
            journal::Journal::open(&journal_dir(&cfg.path), mark.generation).map_err(|e| {
                StoreError::Io(std::io::Error::new(e.kind(), format!("open journal: {e}")))
            })?;
        let journal = Arc::new(journal);
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let hits = Arc::new(HitCounters::default());
        start_writer(&journal, &wake, &hits)?;
        let ingest = Ingest {
            inner: Arc::new(Inner {
                store,
                anonymize_ip: cfg.anonymize_ip,
                subjects: cfg.subjects,
                journal,
                indexed: tokio::sync::watch::Sender::new(mark),
                wake,
                hits,
                readers_waiting: AtomicUsize::new(0),
                indexer: std::sync::OnceLock::new(),
                index_pauses: AtomicU64::new(0),
                held: std::sync::Mutex::new(Vec::new()),
                pending: std::sync::Mutex::new(None),
                bursts: Default::default(),
            }),
        };
        // Hits this node held for a record when it stopped (or crashed): tried first.
        let held = when_reachable(&ingest.inner.store, || hold::load(&ingest))?;
        if held > 0 {
            tracing::info!(held, "held hits loaded from the store");
        }
        // Entries journaled before the last stop (or crash) and not yet indexed: index them
        // now, so the store is complete from the start; then keep indexing in the background.
        let mut reader = ingest.inner.journal.reader(mark);
        if let Err(e) = indexer::catch_up(&ingest, &mut reader) {
            // A shared store that went away again: the indexer thread carries on from here.
            if !ingest.inner.store.shared() {
                return Err(e);
            }
            tracing::warn!(error = %e, "journal replay interrupted; the indexer retries");
            reader = ingest.inner.journal.reader(*ingest.inner.indexed.borrow());
        }
        indexer::spawn(
            Arc::downgrade(&ingest.inner),
            reader,
            woken,
            cfg.flush_interval.max(Duration::from_millis(1)),
        )
        .map_err(|e| StoreError::Task(format!("cannot start the open indexer: {e}")))?;
        Ok(ingest)
    }

    /// The store the indexer records into.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Journals one pixel hit: an append to the journal's buffer, which its writer thread
    /// writes within 1 ms; then the hit is the indexer's to record. The client IP is anonymised
    /// here when `store.anonymize_ip` is on, so the full address never reaches the disk.
    pub fn append_hit(&self, hit: &Hit) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let ip = if inner.anonymize_ip {
            net::anonymize(hit.ip)
        } else {
            net::canonical(hit.ip)
        };
        let encode = |b: &mut Vec<u8>| hit.encode_with_ip(ip, b);
        inner
            .journal
            .append_with(hit.encoded_len(), encode)
            .map_err(|l| self.lost_with(l))
    }

    /// Journals a message's record and writes it out (one `write` for everything queued at
    /// that moment; no fsync): once this returns, the record survives a `kill -9`, and the
    /// indexer moves it into the store before any open of it. Call it before the upstream sees
    /// the message.
    pub fn journal_message(&self, rec: &MessageRecord) -> Result<(), StoreError> {
        let subjects = self.inner.subjects;
        self.journal_now(|j| {
            j.append_now(entry::message_len(rec), |b| {
                entry::encode_message(rec, subjects, b)
            })
        })
    }

    /// Journals the upstream's final reply to a message and writes it out, like
    /// [`Ingest::journal_message`].
    pub fn journal_finish(&self, id: &MessageId, delivery: &Delivery) -> Result<(), StoreError> {
        self.journal_now(|j| {
            j.append_now(entry::finish_len(delivery), |b| {
                entry::encode_finish(id, delivery, b)
            })
        })
    }

    /// Journals a message's record and its final reply together, in one write (the milter
    /// knows both at the end of the message), like [`Ingest::journal_message`].
    pub fn journal_message_finished(
        &self,
        rec: &MessageRecord,
        delivery: &Delivery,
    ) -> Result<(), StoreError> {
        let subjects = self.inner.subjects;
        self.journal_now(|j| {
            j.append_now_pair(
                (entry::message_len(rec), |b: &mut Vec<u8>| {
                    entry::encode_message(rec, subjects, b)
                }),
                (entry::finish_len(delivery), |b: &mut Vec<u8>| {
                    entry::encode_finish(&rec.id, delivery, b)
                }),
            )
        })
    }

    /// Appends with `append` (an `append_now`: whoever gets the write lock writes everything
    /// appended so far), then wakes the indexer.
    fn journal_now(
        &self,
        append: impl FnOnce(&journal::Journal) -> Result<(), journal::Lost>,
    ) -> Result<(), StoreError> {
        let inner = &*self.inner;
        append(&inner.journal).map_err(|l| self.lost_with(l))?;
        let _ = inner.wake.try_send(());
        Ok(())
    }

    /// The error for a failed append; the other records that went down with the buffer it had
    /// to write are counted and logged.
    fn lost_with(&self, l: journal::Lost) -> StoreError {
        if l.records > 1 {
            lost(
                &self.inner.hits,
                &journal::Lost {
                    error: std::io::Error::new(l.error.kind(), l.error.to_string()),
                    records: l.records - 1,
                },
            );
        }
        StoreError::Io(l.error)
    }

    /// Waits until everything journaled before the call is indexed, or `limit` passes.
    /// Returns whether it caught up. The admin API calls this before reading, so a query sees
    /// every open whose pixel was answered before it (unless indexing is `limit` behind).
    pub async fn caught_up(&self, limit: Duration) -> bool {
        let inner = &*self.inner;
        if let Err(l) = inner.journal.write_buffered() {
            lost(&inner.hits, &l);
        } else {
            let _ = inner.wake.try_send(());
        }
        let target = inner.journal.end();
        // While this waits, the indexer does not pause for the listener.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        inner.readers_waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&inner.readers_waiting);
        if let Some(t) = inner.indexer.get() {
            t.unpark();
        }
        let mut rx = inner.indexed.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|at| *at >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Journal bytes appended but not yet indexed (within the current segment: a lag across
    /// segments counts from the newest segment's start).
    pub fn index_lag_bytes(&self) -> u64 {
        self.inner.index_lag_bytes()
    }

    /// Times the indexer paused to leave contended CPUs to the pixel listener.
    pub fn index_pauses(&self) -> u64 {
        self.inner.index_pauses.load(Ordering::Relaxed)
    }

    /// The pixel hit counters (valid, invalid, store errors), shared with the listener.
    pub fn hit_counters(&self) -> Arc<HitCounters> {
        self.inner.hits.clone()
    }

    /// Writes the journal out and fsyncs it (shutdown; the indexer does it every
    /// `store.flush_interval`).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.inner.journal.sync().map_err(StoreError::Io)
    }
}

impl Inner {
    fn index_lag_bytes(&self) -> u64 {
        let end = self.journal.end();
        let at = *self.indexed.borrow();
        let buffered = self.journal.buffered_bytes() as u64;
        buffered
            + if at.generation == end.generation {
                end.offset.saturating_sub(at.offset)
            } else {
                end.offset
            }
    }

    /// Publishes how far the journal is indexed (after what precedes `mark` is committed and
    /// counted), and removes the segments before it once the store has that on disk.
    fn indexed_up_to(&self, mark: Position) {
        let before = self.indexed.send_replace(mark);
        if mark.generation > before.generation {
            let removed = self.store.flush_blocking().and_then(|()| {
                self.journal
                    .remove_before(mark.generation)
                    .map_err(StoreError::Io)
            });
            if let Err(e) = removed {
                tracing::warn!(error = %e, "cannot remove indexed journal segments");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Buffered hits go to the file now, and the writer thread ends.
        if let Err(l) = self.journal.close() {
            lost(&self.hits, &l);
        }
    }
}

/// Starts the journal's writer thread; it wakes the indexer after each write.
fn start_writer(
    journal: &Arc<journal::Journal>,
    wake: &std::sync::mpsc::SyncSender<()>,
    hits: &Arc<HitCounters>,
) -> Result<(), StoreError> {
    let (j, wake, hits) = (journal.clone(), wake.clone(), hits.clone());
    std::thread::Builder::new()
        .name("open-journal".into())
        .spawn(move || {
            j.run_writer(JOURNAL_LINGER, |written| match written {
                // Full means a wake-up is pending already.
                Ok(()) => _ = wake.try_send(()),
                Err(l) => lost(&hits, &l),
            })
        })
        .map_err(|e| StoreError::Task(format!("cannot start the journal writer: {e}")))?;
    Ok(())
}

/// Counts and logs hits lost with a journal buffer that could not be written.
fn lost(hits: &HitCounters, l: &journal::Lost) {
    hits.store_errors.fetch_add(l.records, Ordering::Relaxed);
    tracing::error!(error = %l.error, lost = l.records, "cannot write the open journal");
}

/// The journal's directory: beside the store's, `PATH.journal`.
fn journal_dir(path: &std::path::Path) -> std::path::PathBuf {
    // `components()` drops a trailing slash, so `db/` gives `db.journal`, not `db/.journal`.
    let mut p = path.components().as_path().as_os_str().to_os_string();
    p.push(".journal");
    p.into()
}

/// A weak handle, for the indexer thread (which ends once the last `Ingest` is gone).
type WeakInner = Weak<Inner>;

#[cfg(test)]
mod tests;
