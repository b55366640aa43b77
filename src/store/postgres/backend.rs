//! The PostgreSQL store as the store interface: each operation of [`Backend`] runs the
//! store's async method of the same name on its runtime ([`PgStore::call`]).

use tokio::sync::broadcast;

use super::{PgStore, lock};
use crate::config::StoreConfig;
use crate::store::types::*;
use crate::store::{Backend, OpenEvent};
use crate::token::MessageId;

impl Backend for PgStore {
    fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    fn commit_messages(
        &self,
        recs: &[&MessageRecord],
        done: &[(&MessageId, &Delivery)],
        mark: Option<Position>,
    ) -> Result<(), StoreError> {
        let recs: Vec<MessageRecord> = recs.iter().map(|r| (*r).clone()).collect();
        let done: Vec<(MessageId, Delivery)> =
            done.iter().map(|(i, d)| (**i, (*d).clone())).collect();
        self.call(move |i| async move { i.commit_messages(recs, done, mark).await })
    }

    fn get_message(&self, id: &MessageId) -> Result<Option<MessageWithOpens>, StoreError> {
        let id = *id;
        self.call(move |i| async move { i.get_message(id).await })
    }

    fn list_messages(
        &self,
        filter: &MessageFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Message>, StoreError> {
        let (filter, cursor) = (filter.clone(), cursor.map(str::to_string));
        self.call(move |i| async move { i.list_messages(filter, cursor, limit).await })
    }

    fn open_context(&self, id: &MessageId) -> Result<Option<OpenContext>, StoreError> {
        let id = *id;
        self.call(move |i| async move { i.open_context(id).await })
    }

    fn open_contexts(
        &self,
        ids: &[MessageId],
    ) -> Result<std::collections::HashMap<MessageId, OpenContext>, StoreError> {
        let ids = ids.to_vec();
        self.call(move |i| async move { i.open_contexts(ids).await })
    }

    fn commit_opens(
        &self,
        opens: &[Option<PreparedOpen>],
        mark: Option<Position>,
    ) -> Result<Vec<Option<OpenEvent>>, StoreError> {
        self.commit_opens_holding(opens, mark, &HoldChanges::default())
    }

    fn commit_opens_holding(
        &self,
        opens: &[Option<PreparedOpen>],
        mark: Option<Position>,
        holds: &HoldChanges,
    ) -> Result<Vec<Option<OpenEvent>>, StoreError> {
        let (opens, holds) = (opens.to_vec(), holds.clone());
        self.call(move |i| async move { i.commit_opens(opens, mark, holds).await })
    }

    fn held_hits(&self) -> Result<Vec<(Position, Vec<u8>)>, StoreError> {
        self.call(|i| async move { i.held_hits().await })
    }

    fn list_opens(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError> {
        let cursor = cursor.map(str::to_string);
        self.call(move |i| async move { i.list_events(0, cursor, limit).await })
    }

    fn list_clicks(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError> {
        let cursor = cursor.map(str::to_string);
        self.call(move |i| async move { i.list_events(1, cursor, limit).await })
    }

    fn opens_after(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OpenEvent>, StoreError> {
        let cursor = cursor.map(str::to_string);
        self.call(move |i| async move { i.opens_after(cursor, limit).await })
    }

    fn subscribe(&self) -> broadcast::Receiver<OpenEvent> {
        let rx = self.inner.feed.subscribe();
        // A new follower reads its backlog from the store: the feed starts from now, not
        // from whatever committed while nobody followed.
        let _ = self.call(|i| async move {
            let last = i.last_open().await?;
            let mut fed = i.fed.lock().await;
            *fed = (*fed).max(last);
            Ok(())
        });
        rx
    }

    fn last_open_cursor(&self) -> String {
        match self.call(|i| async move { i.last_open().await }) {
            Ok(id) => crate::store::shared::format_id(id),
            Err(_) => crate::store::shared::format_id(*lock(&self.inner.last_open)),
        }
    }

    fn followers(&self) -> usize {
        self.inner.feed.receiver_count()
    }

    fn stats(&self) -> Stats {
        match self.call(|i| async move { i.load_state().await }) {
            Ok((c, _, _)) => Stats::of(c),
            // The database away: the totals as this node last saw them.
            Err(_) => Stats::of(lock(&self.inner.counters).clone()),
        }
    }

    fn journal_mark(&self) -> Result<Position, StoreError> {
        self.call(|i| async move { i.journal_mark().await })
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.call(|i| async move { i.size_on_disk().await })
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        // Every commit is durable when it returns (the server's own fsync).
        Ok(())
    }

    fn reopen_open_log(&self) -> Result<(), StoreError> {
        match &self.inner.open_log {
            Some(log) => log.reopen().map_err(StoreError::Io),
            None => Ok(()),
        }
    }

    fn purge_expired(&self, now_ms: u64) -> Result<PurgeReport, StoreError> {
        let days = u64::from(self.inner.cfg.retention_days);
        if days == 0 {
            return Ok(PurgeReport::default());
        }
        let cutoff = now_ms.saturating_sub(days * 86_400_000);
        self.call(move |i| async move { i.purge(cutoff).await })
    }

    fn set_subscriptions(&self, subs: Vec<Subscription>) {
        *self
            .inner
            .hooks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = subs;
    }

    fn watch_outbox(&self) -> tokio::sync::watch::Receiver<OutboxVersion> {
        self.inner.outbox_watch.subscribe()
    }

    fn outbox_get(&self, endpoint: u64, seq: u64) -> Result<Option<OutboxRow>, StoreError> {
        self.call(move |i| async move { i.outbox_get(endpoint, seq).await })
    }

    fn outbox_scan(&self, endpoint: u64, after: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        self.call(move |i| async move { i.outbox_scan(endpoint, after).await })
    }

    fn outbox_delivered(&self, endpoint: u64, seq: u64) -> Result<(), StoreError> {
        self.call(move |i| async move { i.outbox_delivered(endpoint, seq).await })
    }

    fn outbox_reschedule(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        next_ms: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        let error = error.to_string();
        self.call(move |i| async move {
            i.outbox_reschedule(endpoint, seq, attempts, next_ms, error)
                .await
        })
    }

    fn outbox_kill(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        error: &str,
    ) -> Result<bool, StoreError> {
        let error = error.to_string();
        self.call(move |i| async move { i.outbox_kill(endpoint, seq, attempts, error).await })
    }

    fn pending(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let cursor = cursor.map(str::to_string);
        self.call(move |i| async move { i.list_rows("outbox", cursor, limit).await })
    }

    fn dead_letters(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let cursor = cursor.map(str::to_string);
        self.call(move |i| async move { i.list_rows("dead_letters", cursor, limit).await })
    }

    fn retry_dead_letter(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let Some((endpoint, seq)) = parse_delivery_id(id) else {
            return Err(StoreError::BadCursor(id.to_string()));
        };
        let moved =
            self.call(move |i| async move { i.retry_dead_letter(endpoint, seq, now_ms).await })?;
        if moved {
            self.inner.outbox_watch.send_modify(|v| v.retries += 1);
        }
        Ok(moved)
    }

    fn outbox_endpoints(&self) -> Result<Vec<u64>, StoreError> {
        self.call(|i| async move { i.outbox_endpoints().await })
    }

    fn outbox_claim(
        &self,
        endpoint: u64,
        seq: u64,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<bool, StoreError> {
        self.call(move |i| async move { i.outbox_claim(endpoint, seq, now_ms, until_ms).await })
    }

    fn shared(&self) -> bool {
        true
    }

    fn outbox_len(&self) -> usize {
        self.call(|i| async move { i.outbox_len().await })
            .unwrap_or(0)
    }
}
