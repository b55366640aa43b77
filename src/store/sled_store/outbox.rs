//! The webhook outbox: one row per (endpoint, event) still to be delivered, and the dead
//! letters that ran out of time. The rows are written by [`SledStore::record_opens`] and
//! [`SledStore::finish_message`] in the same sled transaction as the open or the message reply, so
//! a crash can neither record an open without its notification nor notify an open that was
//! never recorded.
//!
//! This file knows nothing of HTTP: a row is an opaque JSON body plus its retry state. The
//! delivery worker (`notify`) reads and updates the rows through the methods here.
//!
//! ```text
//! q endpoint(8) seq(8)   -> row: created(8) attempts(4) next(8) kind(1: 0 open, 1 message, 2 click)
//!                          error_len(2) error body      (binary, big-endian)
//! d endpoint(8) seq(8)   -> the same row, out of time (a dead letter)
//! c "last_event"         -> the last event sequence number handed out (8 bytes)
//! ```
//!
//! `endpoint` is a stable id of the endpoint (a hash of its URL, so reordering `[[webhooks]]`
//! keeps every row with its endpoint); `seq` is `max(previous + 1, at_ms << 20)`, unique and
//! time-ordered across restarts, and printed as 16 hex digits it is the event's `event_id`
//! (one event sent to two endpoints has one `event_id`).
//!
//! Rows are binary, not JSON: the body is already JSON and would be escaped again, and the
//! worker reads only the fixed header to schedule a row. This keeps the extra cost on the
//! pixel's transaction to one serialisation of the event and one insert per endpoint.

use serde::Serialize;

use crate::store::types::{OutboxItem, OutboxRow, OutboxVersion, Subscription, parse_delivery_id};
use sled::transaction::ConflictableTransactionError;

use super::{P_DEAD, P_OUTBOX, SledStore, StoreError, WriteState, hex};

/// Key of the last event sequence number.
pub(super) const LAST_EVENT: &[u8] = b"clast_event";

/// Bytes of a row before its error text.
const HEADER: usize = 8 + 4 + 8 + 1 + 2;

impl OutboxRow {
    /// The binary row (see the module docs); `event_id` is the key's, not stored.
    fn encode(&self) -> Vec<u8> {
        let err = self.last_error.as_deref().unwrap_or("").as_bytes();
        let err = &err[..err.len().min(u16::MAX as usize)];
        let mut v = Vec::with_capacity(HEADER + err.len() + self.body.len());
        v.extend_from_slice(&self.created_ms.to_be_bytes());
        v.extend_from_slice(&self.attempts.to_be_bytes());
        v.extend_from_slice(&self.next_ms.to_be_bytes());
        v.push(match self.kind.as_str() {
            "message" => 1,
            "click" => 2,
            _ => 0,
        });
        v.extend_from_slice(&(err.len() as u16).to_be_bytes());
        v.extend_from_slice(err);
        v.extend_from_slice(self.body.as_bytes());
        v
    }

    /// Reads a row written by [`OutboxRow::encode`] under sequence `seq`.
    fn decode(seq: u64, b: &[u8]) -> Result<OutboxRow, StoreError> {
        let bad = || StoreError::Corrupt("webhook outbox row");
        let (created_ms, attempts, next_ms) = header(b).ok_or_else(bad)?;
        let kind = match b[20] {
            0 => "open",
            1 => "message",
            2 => "click",
            _ => return Err(bad()),
        };
        let elen = usize::from(u16::from_be_bytes([b[21], b[22]]));
        let err = b.get(HEADER..HEADER + elen).ok_or_else(bad)?;
        let body = &b[HEADER + elen..];
        Ok(OutboxRow {
            event_id: format!("{seq:016x}"),
            kind: kind.to_string(),
            created_ms,
            attempts,
            next_ms,
            last_error: (elen > 0).then(|| String::from_utf8_lossy(err).into_owned()),
            body: String::from_utf8(body.to_vec()).map_err(|_| bad())?,
        })
    }
}

/// (created, attempts, next) of a row, reading only its fixed header.
fn header(b: &[u8]) -> Option<(u64, u32, u64)> {
    if b.len() < HEADER {
        return None;
    }
    let created = u64::from_be_bytes(b[0..8].try_into().ok()?);
    let attempts = u32::from_be_bytes(b[8..12].try_into().ok()?);
    let next = u64::from_be_bytes(b[12..20].try_into().ok()?);
    Some((created, attempts, next))
}

/// The key of a row waiting (`prefix` [`P_OUTBOX`]) or dead ([`P_DEAD`]).
fn row_key(prefix: u8, endpoint: u64, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..9].copy_from_slice(&endpoint.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// (endpoint, seq) of a row key; `None` if it is not one.
fn split_key(k: &[u8]) -> Option<(u64, u64)> {
    let e = <[u8; 8]>::try_from(k.get(1..9)?).ok()?;
    let s = <[u8; 8]>::try_from(k.get(9..17)?).ok()?;
    (k.len() == 17).then(|| (u64::from_be_bytes(e), u64::from_be_bytes(s)))
}

/// Into a write's batch: one event's rows for every endpoint subscribed to `kind`, advancing
/// `last` (the sequence). Returns how many rows were written.
pub(super) fn write_event<T: Serialize>(
    batch: &mut sled::Batch,
    subs: &[Subscription],
    last: &mut u64,
    kind: &'static str,
    at_ms: u64,
    event: &T,
) -> Result<usize, StoreError> {
    let targets: Vec<u64> = subs
        .iter()
        .filter(|s| s.wants(kind))
        .map(|s| s.endpoint)
        .collect();
    if targets.is_empty() {
        return Ok(0);
    }
    *last = crate::store::shared::next_id(*last, at_ms);
    let event_id = format!("{:016x}", *last);
    let body = crate::store::shared::webhook_body(kind, &event_id, event)?;
    let row = OutboxRow {
        event_id,
        kind: kind.to_string(),
        created_ms: at_ms,
        attempts: 0,
        next_ms: at_ms,
        last_error: None,
        body,
    };
    let value = row.encode();
    for endpoint in &targets {
        batch.insert(&row_key(P_OUTBOX, *endpoint, *last), value.as_slice());
    }
    Ok(targets.len())
}

impl SledStore {
    /// Tells the store which endpoints to write outbox rows for (call before serving). An
    /// empty list (the default) writes none.
    pub fn set_subscriptions(&self, subs: Vec<Subscription>) {
        self.inner.lock().hooks = subs;
    }

    /// A watch of the outbox: changes after every commit that wrote rows.
    pub fn watch_outbox(&self) -> tokio::sync::watch::Receiver<OutboxVersion> {
        self.inner.outbox_watch.subscribe()
    }

    /// After a commit under the writer lock: the workers learn about `written` new rows.
    pub(super) fn outbox_written(&self, st: &WriteState, written: usize) {
        if written > 0 {
            self.inner
                .outbox_watch
                .send_modify(|v| v.last_seq = st.last_event);
        }
    }

    /// One row of the outbox.
    pub fn outbox_get(&self, endpoint: u64, seq: u64) -> Result<Option<OutboxRow>, StoreError> {
        match self.inner.data.get(row_key(P_OUTBOX, endpoint, seq))? {
            Some(v) => Ok(Some(OutboxRow::decode(seq, &v)?)),
            None => Ok(None),
        }
    }

    /// (seq, next attempt ms) of every row of `endpoint` with a sequence greater than
    /// `after`, in sequence order.
    pub fn outbox_scan(&self, endpoint: u64, after: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        let Some(start) = after.checked_add(1) else {
            return Ok(out);
        };
        let range = row_key(P_OUTBOX, endpoint, start)..=row_key(P_OUTBOX, endpoint, u64::MAX);
        for kv in self.inner.data.range(range) {
            let (k, v) = kv?;
            let Some((_, seq)) = split_key(&k) else {
                continue;
            };
            let (_, _, next_ms) = header(&v).ok_or(StoreError::Corrupt("webhook outbox row"))?;
            out.push((seq, next_ms));
        }
        Ok(out)
    }

    /// Delivered: the row goes.
    pub fn outbox_delivered(&self, endpoint: u64, seq: u64) -> Result<(), StoreError> {
        self.inner.data.remove(row_key(P_OUTBOX, endpoint, seq))?;
        Ok(())
    }

    /// A failed attempt: records it and when to try next.
    pub fn outbox_reschedule(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        next_ms: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        let key = row_key(P_OUTBOX, endpoint, seq);
        // Only the worker owning the endpoint updates its rows, so read-modify-write is safe;
        // a row gone meanwhile stays gone.
        if let Some(v) = self.inner.data.get(key)? {
            let mut row = OutboxRow::decode(seq, &v)?;
            row.attempts = attempts;
            row.next_ms = next_ms;
            row.last_error = Some(error.to_string());
            // A lost race (the row changed meanwhile) keeps the newer row.
            let _ = self
                .inner
                .data
                .compare_and_swap(key, Some(v), Some(row.encode()))?;
        }
        Ok(())
    }

    /// Out of time: the row moves to the dead letters (one transaction).
    pub fn outbox_kill(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        error: &str,
    ) -> Result<bool, StoreError> {
        let (from, to) = (
            row_key(P_OUTBOX, endpoint, seq),
            row_key(P_DEAD, endpoint, seq),
        );
        move_row(&self.inner.data, &from, &to, seq, |row| {
            row.attempts = attempts;
            row.last_error = Some(error.to_string());
        })
    }

    /// Deliveries waiting, oldest first, strictly after `cursor` (an item id); at most
    /// `limit`. For the admin API.
    pub fn pending(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        list(&self.inner.data, P_OUTBOX, cursor, limit)
    }

    /// Dead letters, oldest first, strictly after `cursor`; at most `limit`.
    pub fn dead_letters(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        list(&self.inner.data, P_DEAD, cursor, limit)
    }

    /// Puts a dead letter back into the outbox, due now, with its attempts reset (its
    /// `created` time too, so it gets a full `max_age` again; its `event_id` is kept).
    /// `Ok(false)` if there is no such dead letter.
    pub fn retry_dead_letter(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let Some((endpoint, seq)) = parse_delivery_id(id) else {
            return Err(StoreError::BadCursor(id.to_string()));
        };
        let (from, to) = (
            row_key(P_DEAD, endpoint, seq),
            row_key(P_OUTBOX, endpoint, seq),
        );
        let moved = move_row(&self.inner.data, &from, &to, seq, |row| {
            row.attempts = 0;
            row.created_ms = now_ms;
            row.next_ms = now_ms;
        })?;
        if moved {
            self.inner.outbox_watch.send_modify(|v| v.retries += 1);
        }
        Ok(moved)
    }

    /// The endpoint ids that have rows in the outbox (one seek per endpoint, not a scan).
    pub fn outbox_endpoints(&self) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        let mut from = 0u64;
        loop {
            let end = [P_OUTBOX + 1];
            let start = row_key(P_OUTBOX, from, 0);
            let Some(kv) = self.inner.data.range(&start[..]..&end[..]).next() else {
                return Ok(out);
            };
            let (k, _) = kv?;
            let Some((endpoint, _)) = split_key(&k) else {
                return Ok(out);
            };
            out.push(endpoint);
            match endpoint.checked_add(1) {
                Some(next) => from = next,
                None => return Ok(out),
            }
        }
    }

    /// Rows in the outbox (O(n): a scan). For tests and start-up.
    pub fn outbox_len(&self) -> usize {
        self.inner.data.scan_prefix([P_OUTBOX]).count()
    }
}

/// Moves the row at `from` to `to`, changed by `change`, in one transaction; whether it
/// was there.
fn move_row(
    data: &sled::Tree,
    from: &[u8],
    to: &[u8],
    seq: u64,
    change: impl Fn(&mut OutboxRow),
) -> Result<bool, StoreError> {
    let moved = data.transaction(|t| {
        let Some(v) = t.remove(from)? else {
            return Ok(false);
        };
        let mut row = OutboxRow::decode(seq, &v).map_err(ConflictableTransactionError::Abort)?;
        change(&mut row);
        t.insert(to, row.encode())?;
        Ok(true)
    });
    moved.map_err(|e| match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => e.into(),
    })
}

/// Rows under `prefix`, oldest first, strictly after `cursor`; at most `limit`.
fn list(
    data: &sled::Tree,
    prefix: u8,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Vec<OutboxItem>, StoreError> {
    let start = match cursor {
        Some(c) => {
            let (e, s) =
                parse_delivery_id(c).ok_or_else(|| StoreError::BadCursor(c.to_string()))?;
            std::ops::Bound::Excluded(row_key(prefix, e, s).to_vec())
        }
        None => std::ops::Bound::Included(vec![prefix]),
    };
    let end = std::ops::Bound::Excluded(vec![prefix + 1]);
    let mut out = Vec::new();
    for kv in data.range((start, end)).take(limit) {
        let (k, v) = kv?;
        let Some((endpoint, seq)) = split_key(&k) else {
            continue;
        };
        out.push(OutboxItem {
            id: hex(&k[1..]),
            endpoint: format!("{endpoint:016x}"),
            row: OutboxRow::decode(seq, &v)?,
        });
    }
    Ok(out)
}
