//! The store: messages the relay handled, every open of a tracked message, the lifetime
//! counters behind `pixelrelay stats`, and the webhook outbox.
//!
//! # Interface
//!
//! [`Backend`] is the one interface: the relay and the pixel path (through `ingest`), the admin
//! API, the follow stream, the webhook worker and retention call nothing else. [`Store`] is the
//! handle they hold, a backend behind an `Arc`; its methods are the backend's. The record
//! types are the backends' common language ([`types`]): nothing outside a backend's own module
//! names its engine.
//!
//! The embedded default is sled (`sled_store`, one process). A backend drops in by
//! implementing [`Backend`] and passing the contract suite (`contract.rs`): written against
//! [`Store`] alone, it runs on whatever backend [`Store::open`] opens for its configuration.
//!
//! # What a backend promises
//!
//! - Every write is atomic: an open's event, its message's statistics, the counters and the
//!   outbox rows commit together or not at all, with the journal position `mark` when one is
//!   given, so that `ingest` replays exactly what was not stored.
//! - Open ids are unique, strictly increasing and time-ordered, and an open's id is a cursor;
//!   listings are newest first and stable under concurrent writes.
//! - After a committed open its event goes to the live feed ([`Backend::subscribe`]), in id
//!   order; a follower reads the backlog with [`Backend::opens_after`] and skips live events
//!   it has seen.

#[cfg(test)]
pub(crate) mod contract;
pub mod postgres;
pub(crate) mod shared;
mod sled_store;
pub mod types;

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::config::StoreConfig;
use crate::token::MessageId;
use crate::track::OpenEvent;

pub use types::*;

/// The wall clock in ms since the epoch (0 if the clock is before 1970).
pub use crate::clock::now_ms;

/// Every operation on stored data. Object-safe: [`Store`] holds one behind an `Arc`.
pub trait Backend: Send + Sync + 'static {
    /// The configuration the store was opened with.
    fn config(&self) -> &StoreConfig;

    // --- Messages -------------------------------------------------------------------------

    /// Message records, then final replies, in ONE transaction, with the journal position
    /// `mark` when they come from the journal. Recording an id again updates the record but
    /// keeps its delivery and opens. All or nothing: a reply for an unknown message fails the
    /// whole call with [`StoreError::NotFound`].
    fn commit_messages(
        &self,
        recs: &[&MessageRecord],
        done: &[(&MessageId, &Delivery)],
        mark: Option<Position>,
    ) -> Result<(), StoreError>;

    /// One message with all its opens, oldest first.
    fn get_message(&self, id: &MessageId) -> Result<Option<MessageWithOpens>, StoreError>;

    /// Messages newest first, strictly before `cursor` (a message cursor) or from the newest.
    fn list_messages(
        &self,
        filter: &MessageFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Message>, StoreError>;

    // --- Opens ----------------------------------------------------------------------------

    /// What an open of message `id` needs before it is recorded; `None` if it is unknown.
    fn open_context(&self, id: &MessageId) -> Result<Option<OpenContext>, StoreError>;

    /// [`Backend::open_context`] for several messages at once (a batch of hits): those known.
    fn open_contexts(
        &self,
        ids: &[MessageId],
    ) -> Result<std::collections::HashMap<MessageId, OpenContext>, StoreError> {
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.open_context(id)? {
                out.insert(*id, c);
            }
        }
        Ok(out)
    }

    /// Commits prepared opens (`None`: skipped) in ONE transaction, in order, with the journal
    /// position `mark` when they come from the journal; then feeds the open log and live
    /// followers. For each, the stored event (its id, `first` and `count` set), or `None` for
    /// a message purged since it was prepared.
    fn commit_opens(
        &self,
        opens: &[Option<PreparedOpen>],
        mark: Option<Position>,
    ) -> Result<Vec<Option<OpenEvent>>, StoreError>;

    /// [`Backend::commit_opens`] with changes to this node's held hits in the same
    /// transaction. Only a shared store holds hits; the others accept no change.
    fn commit_opens_holding(
        &self,
        opens: &[Option<PreparedOpen>],
        mark: Option<Position>,
        holds: &HoldChanges,
    ) -> Result<Vec<Option<OpenEvent>>, StoreError> {
        if holds.is_empty() {
            return self.commit_opens(opens, mark);
        }
        Err(StoreError::Engine(
            "only a store several nodes share holds hits".into(),
        ))
    }

    /// This node's held hits, oldest first (see [`HoldChanges`]).
    fn held_hits(&self) -> Result<Vec<(Position, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }

    /// Opens (no clicks) newest first, strictly before `cursor` (an open id) or from the
    /// newest.
    fn list_opens(&self, cursor: Option<&str>, limit: usize)
    -> Result<Page<OpenEvent>, StoreError>;

    /// Clicks newest first, strictly before `cursor` (a click id) or from the newest.
    fn list_clicks(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError>;

    /// Opens and clicks oldest first, strictly after `cursor` (an event id) or from the oldest.
    fn opens_after(&self, cursor: Option<&str>, limit: usize)
    -> Result<Vec<OpenEvent>, StoreError>;

    /// Live feed of opens committed from now on, in id order (see the module docs).
    fn subscribe(&self) -> broadcast::Receiver<OpenEvent>;

    /// The id of the newest open (a cursor), or the zero cursor.
    fn last_open_cursor(&self) -> String;

    /// Live followers subscribed now.
    fn followers(&self) -> usize;

    // --- Totals and life cycle ------------------------------------------------------------

    /// The lifetime totals: O(1).
    fn stats(&self) -> Stats;

    /// How far the journal was indexed when the store last committed something from it (the
    /// start of the journal if never).
    fn journal_mark(&self) -> Result<Position, StoreError>;

    /// Bytes on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// Writes everything to disk (fsync).
    fn flush_blocking(&self) -> Result<(), StoreError>;

    /// Reopens `store.open_log` by name (SIGHUP, after logrotate moved the file away).
    fn reopen_open_log(&self) -> Result<(), StoreError>;

    /// Removes messages older than `store.retention_days` (and their opens) as of `now_ms`.
    fn purge_expired(&self, now_ms: u64) -> Result<PurgeReport, StoreError>;

    // --- Webhook outbox -------------------------------------------------------------------

    /// The endpoints that get outbox rows from now on, and for which events.
    fn set_subscriptions(&self, subs: Vec<Subscription>);

    /// Bumped whenever rows are written or a dead letter is retried.
    fn watch_outbox(&self) -> tokio::sync::watch::Receiver<OutboxVersion>;

    /// One row.
    fn outbox_get(&self, endpoint: u64, seq: u64) -> Result<Option<OutboxRow>, StoreError>;

    /// An endpoint's row keys after `after`, oldest first: (sequence, due time).
    fn outbox_scan(&self, endpoint: u64, after: u64) -> Result<Vec<(u64, u64)>, StoreError>;

    /// A row delivered: removed.
    fn outbox_delivered(&self, endpoint: u64, seq: u64) -> Result<(), StoreError>;

    /// A failed attempt: the row's attempts, next try and last error.
    fn outbox_reschedule(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        next_ms: u64,
        error: &str,
    ) -> Result<(), StoreError>;

    /// A row out of time: moved to the dead letters. Whether it was still there.
    fn outbox_kill(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        error: &str,
    ) -> Result<bool, StoreError>;

    /// Rows waiting for delivery, oldest first, after `cursor`.
    fn pending(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<OutboxItem>, StoreError>;

    /// Dead letters, oldest first, after `cursor`.
    fn dead_letters(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError>;

    /// Puts a dead letter back in the outbox, due at `now_ms`. Whether it existed.
    fn retry_dead_letter(&self, id: &str, now_ms: u64) -> Result<bool, StoreError>;

    /// Endpoints with rows waiting.
    fn outbox_endpoints(&self) -> Result<Vec<u64>, StoreError>;

    /// Rows waiting, all endpoints together.
    fn outbox_len(&self) -> usize;

    /// Takes row (`endpoint`, `seq`) for delivery by this process until `until_ms`: `false`
    /// while another process holds it (its lease runs out if that process dies, and the row
    /// is anyone's again). A store only this process writes grants every claim.
    fn outbox_claim(
        &self,
        endpoint: u64,
        seq: u64,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<bool, StoreError> {
        let _ = (endpoint, seq, now_ms, until_ms);
        Ok(true)
    }

    /// Whether other processes write to this store too: the webhook workers then look for
    /// rows they did not write themselves.
    fn shared(&self) -> bool {
        false
    }

    // --- Provided: the single-item forms -------------------------------------------------

    /// Records a message before it goes upstream (see [`Backend::commit_messages`]).
    fn record_message(&self, rec: &MessageRecord) -> Result<(), StoreError> {
        self.commit_messages(&[rec], &[], None)
    }

    /// Records several messages in one transaction.
    fn record_messages(&self, recs: &[&MessageRecord]) -> Result<(), StoreError> {
        self.commit_messages(recs, &[], None)
    }

    /// Records the upstream's final reply to a message.
    fn finish_message(&self, id: &MessageId, delivery: &Delivery) -> Result<(), StoreError> {
        self.commit_messages(&[], &[(id, delivery)], None)
    }

    /// Records several final replies in one transaction; all or nothing.
    fn finish_messages(&self, done: &[(&MessageId, &Delivery)]) -> Result<(), StoreError> {
        self.commit_messages(&[], done, None)
    }

    /// Records one open of message `id`; `None` (and nothing written) if it is unknown.
    fn record_open(&self, id: &MessageId, hit: &OpenHit) -> Result<Option<OpenEvent>, StoreError> {
        Ok(self.record_opens(&[(id, hit)])?.pop().flatten())
    }

    /// Records several opens in one transaction, in order; for each, the event or `None` if
    /// its message is unknown.
    fn record_opens(
        &self,
        hits: &[(&MessageId, &OpenHit)],
    ) -> Result<Vec<Option<OpenEvent>>, StoreError> {
        let anonymize = self.config().anonymize_ip;
        let mut prepared = Vec::with_capacity(hits.len());
        for (id, hit) in hits {
            let ctx = self.open_context(id)?;
            prepared.push(ctx.map(|c| PreparedOpen::new(c, hit, anonymize)));
        }
        self.commit_opens(&prepared, None)
    }
}

/// The store handle: a backend behind an `Arc`. Cheap to clone; its methods are the
/// backend's ([`Backend`], through `Deref`).
#[derive(Clone)]
pub struct Store {
    /// The backend.
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens the configured backend (PostgreSQL when `cfg.postgres` is set, else sled at
    /// `cfg.path`) and, inside a tokio runtime with `retention_days > 0`, its retention task.
    pub fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let backend: Arc<dyn Backend> = match &cfg.postgres {
            Some(pg) => Arc::new(postgres::PgStore::open(cfg, pg)?),
            None => Arc::new(sled_store::SledStore::open(cfg)?),
        };
        Ok(Store::from_backend(backend))
    }

    /// A handle on `backend`.
    fn from_backend(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }

    /// [`Backend::flush_blocking`] on a blocking thread (shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || s.flush_blocking())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.config().path)
            .finish()
    }
}
