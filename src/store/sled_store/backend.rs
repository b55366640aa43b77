//! The sled store as the store interface: each operation of [`Backend`] is the sled store's
//! method of the same name.

use super::*;

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

    fn list_clicks(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError> {
        SledStore::list_clicks(self, cursor, limit)
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
