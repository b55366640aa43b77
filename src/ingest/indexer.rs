//! Indexing the journal into the store: pixel hits, message records and final replies.
//!
//! The pixel listener appends each verified hit to the journal ([`super::journal`]) and
//! answers. One indexer thread per store reads the journal in order and, per batch of up to
//! [`BATCH`] hits, looks up each message, classifies the hit (the early-load rule needs the
//! message's hand-off time), and commits the opens, the message statistics, the counters, the
//! webhook outbox rows and the journal position reached in ONE atomic store write. Then it feeds
//! live followers and the open log, and writes the one log line per open. On a database
//! several nodes share, a batch's commit runs on a thread of its own while the next batch is
//! read and classified (the database's part is the larger); commits stay one at a time and in
//! order, and the index's position moves only once a commit is in.
//!
//! The thread runs under `SCHED_IDLE` (nice 19 where refused): when the machine is saturated, answering
//! pixels comes first and the index catches up after the burst. While a backlog builds up on
//! contended CPUs it also pauses between small batches (`pace.rs`). Readers that must see every
//! answered hit (the admin API) wait for the index to reach the journal's end first
//! ([`super::Ingest::caught_up`]).
//!
//! A hit whose message is unknown (purged, or another instance's store) is counted invalid and
//! dropped, except on a store several nodes share, where the record may still be in the
//! journal of the node that relayed the message: such a hit is held (`hold.rs`, durably) and
//! tried again until its record comes or its time is up. A hit that cannot be decoded or
//! committed is counted as a store error, logged, and skipped, so one bad record never stops
//! the index.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::entry::Entry;
use super::hit::Hit;
use super::hits::{index_hits, join_pending, unavailable};
use super::hold;
use super::journal::{Read, Reader};
use super::pace::{self, Pace};
use super::{Ingest, WeakInner};
use crate::store::{Delivery, MessageRecord, Position, StoreError};
use crate::token::MessageId;

/// Hits indexed in one store write at most (about 12 MB of transient memory at the most;
/// 32 768 indexes a burst a third faster for 100 MB more peak RSS, `bench/RESULTS.md`).
/// Large, because what an open costs in the store is
/// mostly its message's statistics record, written once per batch however often the message
/// was opened in it; the first batch after the index was idle, and every batch while a pixel
/// burst holds the CPUs, is a small probe instead (`pace.rs`).
pub const BATCH: usize = 8192;
/// How long the idle indexer waits after a first new entry for those that follow. Each store
/// write has a fixed cost whatever it holds: in sled two log buffers written by its IO threads
/// (every write wakes the whole pool), on a database several nodes share a transaction with the
/// shared totals and a round trip (about a millisecond of the database's CPU, which the relay's
/// CPUs pay when they share a machine with it). Under a steady stream of mail at 700 messages/s
/// a 50 ms wait instead of 10 ms took pixelrelay's CPU per milter message from ~300 to
/// 210-230 µs (`bench/milter.sh`); a record or open reaches the live followers, webhooks and
/// the open log at most this much later. An admin query does not wait for it: a reader waiting
/// for the index cuts the wait short.
const LINGER: Duration = Duration::from_millis(50);
/// A batch smaller than this is a trickle: the indexer lingers before the next one. (sled
/// writes two log buffers for every batch, whatever its size, on its IO threads.)
const SMALL_BATCH: usize = 256;
/// Wait after the store failed as a whole (sled cannot write) before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// Indexes the next batch of journaled hits after `reader`'s position, up to the journal's
/// end at the time of the call. Returns how many entries it took (0: it got nowhere).
pub(super) fn index_batch(
    ing: &Ingest,
    reader: &mut Reader,
    limit: usize,
) -> Result<usize, StoreError> {
    let r = read_and_index(ing, reader, limit);
    if r.is_err() {
        // The caller goes back to the index's position: a commit still in flight must have
        // moved it (or failed) first, or what it commits would be indexed twice.
        let _ = join_pending(ing);
    }
    r
}

/// [`index_batch`].
fn read_and_index(ing: &Ingest, reader: &mut Reader, limit: usize) -> Result<usize, StoreError> {
    let inner = &*ing.inner;
    let end = inner.journal.end();
    let start = reader.position();
    let mut mark = start;
    let mut run = Run::default();
    let mut taken = 0;
    while taken < limit {
        match reader.next(end).map_err(StoreError::Io)? {
            Read::Record(payload, at) => {
                mark = at;
                taken += 1;
                match Entry::decode(&payload) {
                    Some(e) => run.push(ing, e, at)?,
                    None => {
                        inner.hits.store_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(journal = ?at, "journal: undecodable entry skipped");
                    }
                }
            }
            Read::End => break,
            Read::Bad(offset, why) => {
                inner.hits.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    generation = mark.generation,
                    offset,
                    why,
                    "journal: the rest of this segment is unreadable and skipped"
                );
                reader.skip_segment();
                mark = reader.position();
                break;
            }
        }
    }
    if mark == start {
        // Nothing new: the commit in flight, if any, is waited for (its error is this one).
        join_pending(ing)?;
        // Held hits whose time to try again has come, while nothing new arrives.
        if hold::any_due(ing) {
            index_hits(ing, Vec::new(), start, false)?;
        }
        // No record, but possibly past segments that no longer exist (a fresh journal starts
        // at generation 1): that is indexed too.
        let at = reader.position();
        if at > *inner.indexed.borrow() {
            inner.indexed.send_replace(at);
        }
        return Ok(0);
    }
    // The last run commits the mark past everything read, undecodable entries included. On a
    // shared database a last run of hits commits on a thread of its own while the next batch
    // is read and classified; that thread moves the index's position once it is in.
    if !run.flush(ing, mark, true)? {
        inner.indexed_up_to(mark);
    }
    Ok(taken.max(1))
}

/// Consecutive entries of one sort, committed together: pixel hits, or message records and
/// final replies. A change of sort commits the run before it, so every entry is indexed after
/// those journaled before it (a message's record before its opens).
#[derive(Default)]
struct Run {
    /// Hits and where each ends in the journal.
    hits: Vec<(Hit<'static>, Position)>,
    /// Message records.
    messages: Vec<MessageRecord>,
    /// Final replies.
    finishes: Vec<(MessageId, Delivery)>,
    /// Where the run's last entry ends.
    last: Position,
}

impl Run {
    fn push(&mut self, ing: &Ingest, e: Entry, at: Position) -> Result<(), StoreError> {
        let is_hit = matches!(e, Entry::Hit(_));
        let has_messages = !self.messages.is_empty() || !self.finishes.is_empty();
        if (is_hit && has_messages) || (!is_hit && !self.hits.is_empty()) {
            let last = self.last;
            self.flush(ing, last, false)?;
        }
        match e {
            Entry::Hit(h) => self.hits.push((h, at)),
            Entry::Message(m) => self.messages.push(m),
            Entry::Finish(id, d) => self.finishes.push((id, d)),
        }
        self.last = at;
        Ok(())
    }

    /// Commits the run with the journal position `mark` and empties it; with `defer`, a run of
    /// hits on a shared store commits in the background. Whether it did.
    fn flush(&mut self, ing: &Ingest, mark: Position, defer: bool) -> Result<bool, StoreError> {
        if !self.hits.is_empty() {
            index_hits(ing, std::mem::take(&mut self.hits), mark, defer)
        } else {
            let (recs, done) = (
                std::mem::take(&mut self.messages),
                std::mem::take(&mut self.finishes),
            );
            join_pending(ing)?;
            index_messages(ing, &recs, &done, mark).map(|()| false)
        }
    }
}

/// Moves message records and final replies into the store with the journal position `mark`.
/// One that cannot be written (its message purged meanwhile, a write error) is logged and
/// skipped, so that the others are recorded.
fn index_messages(
    ing: &Ingest,
    recs: &[MessageRecord],
    done: &[(MessageId, Delivery)],
    mark: Position,
) -> Result<(), StoreError> {
    let store = &ing.inner.store;
    let r: Vec<&MessageRecord> = recs.iter().collect();
    let d: Vec<(&MessageId, &Delivery)> = done.iter().map(|(i, d)| (i, d)).collect();
    match store.commit_messages(&r, &d, Some(mark)) {
        Ok(()) => return Ok(()),
        // The store away (a database down, a disk error): all of it again later, never past.
        Err(e) if unavailable(&e) => return Err(e),
        Err(_) => {}
    }
    for rec in recs {
        if let Err(e) = store.record_message(rec) {
            tracing::error!(msg = %rec.id, error = %e, event = "store_error", "cannot record a journaled message");
        }
    }
    for (id, delivery) in done {
        if let Err(e) = store.finish_message(id, delivery) {
            tracing::warn!(msg = %id, error = %e, event = "store_error", "cannot record the upstream reply");
        }
    }
    store.commit_opens(&[], Some(mark)).map(|_| ())
}

/// Indexes everything journaled so far (on open, before the store is handed out).
pub(super) fn catch_up(ing: &Ingest, reader: &mut Reader) -> Result<(), StoreError> {
    while index_batch(ing, reader, BATCH)? > 0 {}
    Ok(())
}

/// Starts the indexer thread. It ends once the last handle to the store is gone.
pub(super) fn spawn(
    inner: WeakInner,
    reader: Reader,
    wake: Receiver<()>,
    flush: Duration,
) -> std::io::Result<()> {
    // Returns once the thread has taken its low priority, so that it is in place before the
    // first pixel is answered.
    let (started, ready) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("open-indexer".into())
        .spawn(move || {
            lower_priority();
            if let Some(inner) = inner.upgrade() {
                let _ = inner.indexer.set(std::thread::current());
            }
            let _ = started.send(());
            run(&inner, reader, &wake, flush);
        })?;
    let _ = ready.recv();
    Ok(())
}

fn run(weak: &WeakInner, mut reader: Reader, wake: &Receiver<()>, flush: Duration) {
    let mut synced = Instant::now();
    let mut pace = Pace::default();
    // The journal was indexed to its end before the store was handed out (`catch_up`).
    pace.caught_up();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let ing = Ingest { inner };
        pace.start();
        let limit = pace.batch_limit(BATCH);
        let taken = match index_batch(&ing, &mut reader, limit) {
            Ok(n) => n,
            Err(e) => {
                ing.inner.hits.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "open index: cannot write; retrying");
                reader = ing.inner.journal.reader(*ing.inner.indexed.borrow());
                drop(ing);
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if synced.elapsed() >= flush {
            synced = Instant::now();
            if let Err(e) = ing.inner.journal.sync() {
                tracing::error!(error = %e, "cannot fsync the open journal");
            }
        }
        let progressed = taken > 0;
        let pause = progressed
            && pace.after(
                ing.index_lag_bytes(),
                ing.inner.readers_waiting.load(Ordering::Relaxed) > 0,
            );
        drop(ing);
        if pause {
            stand_back(weak, pace.pause());
        } else if !progressed {
            pace.caught_up();
            match wake.recv_timeout(flush) {
                Ok(()) => linger(weak),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else if taken < SMALL_BATCH.min(limit) {
            // A trickle (the batch took all there was, and that was little): the next entries
            // are a few that came in during it. Let more join them rather than be written on
            // their own. It took all there was: caught up, so the next batch is a probe again
            // (a burst that starts now is measured before it gets a full batch).
            pace.caught_up();
            linger(weak);
        }
    }
}

/// Woken from idle by a first new entry, waits [`LINGER`] for the entries that follow it, so
/// that one store write records them all: under a steady trickle of mail every message would
/// otherwise cost two store writes of its own (record, reply). Ends early when a reader waits
/// for the index ([`super::Ingest::caught_up`] unparks this thread).
fn linger(weak: &WeakInner) {
    let until = Instant::now() + LINGER;
    loop {
        match weak.upgrade() {
            Some(inner) if inner.readers_waiting.load(Ordering::Relaxed) == 0 => {}
            _ => return,
        }
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::park_timeout(until - now);
    }
}

/// Pauses for `pause` (see `pace.rs`), less if a reader starts waiting for the index, the
/// CPUs go idle (the burst is over) or the store is dropped meanwhile.
fn stand_back(weak: &WeakInner, pause: Duration) {
    const STEP: Duration = Duration::from_millis(10);
    let Some(inner) = weak.upgrade() else { return };
    inner.index_pauses.fetch_add(1, Ordering::Relaxed);
    drop(inner);
    let until = Instant::now() + pause;
    // CPU readings of the last IDLE_WINDOW, oldest first.
    let mut window = std::collections::VecDeque::new();
    while Instant::now() < until {
        std::thread::sleep(STEP);
        match weak.upgrade() {
            Some(inner) if inner.readers_waiting.load(Ordering::Relaxed) == 0 => {}
            _ => return,
        }
        let Some(now) = pace::cpu_ticks() else {
            continue;
        };
        window.push_back((Instant::now(), now));
        while window.len() > 1
            && window
                .get(1)
                .is_some_and(|(at, _)| at.elapsed() >= pace::IDLE_WINDOW)
        {
            window.pop_front();
        }
        if let Some((at, then)) = window.front()
            && at.elapsed() >= pace::IDLE_WINDOW
            && pace::mostly_idle(*then, now)
        {
            return;
        }
    }
}

/// Puts the calling thread (the indexer) behind everything else: Linux's `SCHED_IDLE`, under
/// which a woken pixel thread takes the CPU back at once instead of waiting out the indexer's
/// time slice; nice 19 where that policy is refused. The indexer still runs whenever a core is
/// idle, and gets a small share when none is, so the index always advances.
fn lower_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let idle = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if let Err(e) = idle {
        tracing::debug!(error = ?e, "open index: SCHED_IDLE refused, using nice 19");
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
            tracing::debug!(error = %e, "open index: cannot lower priority");
        }
    }
}
