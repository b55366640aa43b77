//! Reads: messages with their statistics and opens, listings with cursors, what an open needs
//! from its message, the totals, the journal mark; and retention.

use tokio_postgres::GenericClient;
use tokio_postgres::Row;

use super::event::{OPEN_COLUMNS, events};
use super::{Inner, big, unbig};
use crate::store::shared::parse_id;
use crate::store::types::*;
use crate::token::MessageId;
use crate::track::OpenEvent;

/// The columns [`message_of`] reads, in its order.
const MESSAGE_COLUMNS: &str =
    "id, queue_id, at_ms, sender, recipients, message_id, subject, size, tracked,
     skip_reason, delivery, opens, human_opens, first_open_ms, last_open_ms, first_human_ms,
     clicks";

/// A message from a row of [`MESSAGE_COLUMNS`].
fn message_of(row: &Row) -> Result<Message, StoreError> {
    let id =
        MessageId::from_slice(row.get::<_, &[u8]>(0)).ok_or(StoreError::Corrupt("message id"))?;
    let delivery = match row.get::<_, Option<serde_json::Value>>(10) {
        Some(v) => Some(serde_json::from_value(v)?),
        None => None,
    };
    let opt = |i: usize| row.get::<_, Option<i64>>(i).map(unbig);
    Ok(Message {
        record: MessageRecord {
            id,
            queue_id: row.get(1),
            at_ms: unbig(row.get(2)),
            sender: row.get(3),
            recipients: row.get(4),
            message_id: row.get(5),
            subject: row.get(6),
            size: unbig(row.get(7)),
            tracked: row.get(8),
            skip_reason: row.get(9),
        },
        delivery,
        opens: OpenStats {
            count: unbig(row.get(11)),
            human: unbig(row.get(12)),
            first_at: opt(13),
            last_at: opt(14),
            first_human_at: opt(15),
        },
        clicks: match row.get::<_, Option<serde_json::Value>>(16) {
            Some(v) => serde_json::from_value(v)?,
            None => ClickStats::default(),
        },
    })
}

/// One message (locked for the transaction when `for_update`).
pub(super) async fn message_row(
    c: &impl GenericClient,
    id: &MessageId,
    for_update: bool,
) -> Result<Option<Message>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let q = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1{lock}");
    match c.query_opt(&q, &[&id.as_bytes().as_slice()]).await? {
        Some(row) => Ok(Some(message_of(&row)?)),
        None => Ok(None),
    }
}

/// Several messages by id, those that exist.
pub(super) async fn message_rows(
    c: &impl GenericClient,
    ids: &[MessageId],
) -> Result<std::collections::HashMap<MessageId, Message>, StoreError> {
    let keys: Vec<&[u8]> = ids.iter().map(|i| i.as_bytes().as_slice()).collect();
    let q = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ANY($1)");
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for row in c.query(&q, &[&keys]).await? {
        let m = message_of(&row)?;
        out.insert(m.record.id, m);
    }
    Ok(out)
}

/// A message cursor: 48 hex digits, `at_ms(8) ‖ id(16)`, as the sled store's.
fn parse_message_cursor(s: &str) -> Result<(u64, Vec<u8>), StoreError> {
    let bad = || StoreError::BadCursor(s.to_string());
    if s.len() != 48 || !s.is_ascii() {
        return Err(bad());
    }
    let mut b = Vec::with_capacity(24);
    for i in (0..48).step_by(2) {
        b.push(u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad())?);
    }
    let at = u64::from_be_bytes(b[..8].try_into().map_err(|_| bad())?);
    Ok((at, b[8..].to_vec()))
}

fn message_cursor(m: &Message) -> String {
    let mut s: String = m
        .record
        .at_ms
        .to_be_bytes()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    s.push_str(&m.record.id.to_string());
    s
}

/// Messages deleted per transaction of a purge.
const PURGE_CHUNK: i64 = 1000;

impl Inner {
    pub(super) async fn get_message(
        &self,
        id: MessageId,
    ) -> Result<Option<MessageWithOpens>, StoreError> {
        let c = self.conn().await?;
        let Some(message) = message_row(&*c, &id, false).await? else {
            return Ok(None);
        };
        let rows = c
            .query(
                &format!(
                    "SELECT {OPEN_COLUMNS} FROM opens o JOIN messages m ON m.id = o.message
                     WHERE o.message = $1 ORDER BY o.id"
                ),
                &[&id.as_bytes().as_slice()],
            )
            .await?;
        Ok(Some(MessageWithOpens::split(message, events(&rows)?)))
    }

    pub(super) async fn list_messages(
        &self,
        f: MessageFilter,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<Message>, StoreError> {
        let (before_at, before_id) = match &cursor {
            Some(c) => parse_message_cursor(c)?,
            None => (u64::MAX >> 1, vec![0xff; 16]),
        };
        let q = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE (at_ms, id) < ($1, $2)
               AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM unnest(recipients) r WHERE strpos(lower(r), lower($3)) > 0))
               AND ($4::text IS NULL OR strpos(lower(sender), lower($4)) > 0)
               AND ($5::boolean IS NULL OR (CASE WHEN $9 THEN human_opens ELSE opens END > 0) = $5)
               AND ($6::bigint IS NULL OR at_ms >= $6)
               AND ($7::bigint IS NULL OR at_ms < $7)
             ORDER BY at_ms DESC, id DESC LIMIT $8"
        );
        let c = self.conn().await?;
        let rows = c
            .query(
                &q,
                &[
                    &big(before_at),
                    &before_id,
                    &f.rcpt,
                    &f.sender,
                    &f.opened,
                    &f.since_ms.map(big),
                    &f.until_ms.map(big),
                    &(big(limit as u64).saturating_add(1)),
                    &f.people,
                ],
            )
            .await?;
        let mut items = rows.iter().map(message_of).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(message_cursor)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    pub(super) async fn open_context(
        &self,
        id: MessageId,
    ) -> Result<Option<OpenContext>, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_opt(
                "SELECT sent_at_ms, coalesce(recipients[1], ''), sender, message_id, subject,
                        queue_id
                 FROM messages WHERE id = $1",
                &[&id.as_bytes().as_slice()],
            )
            .await?;
        Ok(row.map(|r| OpenContext {
            id,
            sent_at: unbig(r.get(0)),
            recipient: r.get(1),
            sender: r.get(2),
            message_id: r.get(3),
            subject: r.get(4),
            queue_id: Some(r.get(5)),
        }))
    }

    /// The contexts of several messages in one query (an indexer batch).
    pub(super) async fn open_contexts(
        &self,
        ids: Vec<MessageId>,
    ) -> Result<std::collections::HashMap<MessageId, OpenContext>, StoreError> {
        let keys: Vec<&[u8]> = ids.iter().map(|i| i.as_bytes().as_slice()).collect();
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT id, sent_at_ms, coalesce(recipients[1], ''), sender, message_id, subject,
                        queue_id
                 FROM messages WHERE id = ANY($1)",
                &[&keys],
            )
            .await?;
        let mut out = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            let Some(id) = MessageId::from_slice(r.get::<_, &[u8]>(0)) else {
                continue;
            };
            out.insert(
                id,
                OpenContext {
                    id,
                    sent_at: unbig(r.get(1)),
                    recipient: r.get(2),
                    sender: r.get(3),
                    message_id: r.get(4),
                    subject: r.get(5),
                    queue_id: Some(r.get(6)),
                },
            );
        }
        Ok(out)
    }

    /// Opens (`kind` 0) or clicks (1), newest first, before `cursor`.
    pub(super) async fn list_events(
        &self,
        kind: i16,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<OpenEvent>, StoreError> {
        let before = match &cursor {
            Some(c) => parse_id(c)?,
            None => u64::MAX,
        };
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {OPEN_COLUMNS} FROM opens o JOIN messages m ON m.id = o.message
                     WHERE o.id < $1 AND o.kind = $3 ORDER BY o.id DESC LIMIT $2"
                ),
                &[&big(before), &big(limit as u64), &kind],
            )
            .await?;
        let items = events(&rows)?;
        let next_cursor = if items.len() == limit && limit > 0 {
            items.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    pub(super) async fn opens_after(
        &self,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Vec<OpenEvent>, StoreError> {
        let after = match &cursor {
            Some(c) => Some(parse_id(c)?),
            None => None,
        };
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {OPEN_COLUMNS} FROM opens o JOIN messages m ON m.id = o.message
                     WHERE $1::bigint IS NULL OR o.id > $1 ORDER BY o.id LIMIT $2"
                ),
                &[&after.map(big), &big(limit as u64)],
            )
            .await?;
        events(&rows)
    }

    /// Opens after id `after` (up to `upto`), oldest first: what the live feed sends next.
    pub(super) async fn opens_after_id(
        &self,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OpenEvent>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {OPEN_COLUMNS} FROM opens o JOIN messages m ON m.id = o.message
                     WHERE o.id > $1 AND o.id <= $2 ORDER BY o.id LIMIT $3"
                ),
                &[
                    &big(after),
                    &big(upto.unwrap_or(u64::MAX)),
                    &big(limit as u64),
                ],
            )
            .await?;
        events(&rows)
    }

    /// The newest open id committed by any node.
    pub(super) async fn last_open(&self) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_one("SELECT coalesce(max(id), 0) FROM opens", &[])
            .await?;
        Ok(unbig(row.get(0)))
    }

    /// The totals, the last open id and the last event sequence, as committed.
    pub(super) async fn load_state(&self) -> Result<(Counters, u64, u64), StoreError> {
        let c = self.conn().await?;
        let state = super::write::read_state(&*c).await?;
        *super::lock(&self.counters) = state.0.clone();
        Ok(state)
    }

    /// How far this node's journal is indexed.
    pub(super) async fn journal_mark(&self) -> Result<Position, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_opt(
                "SELECT generation, \"offset\" FROM journal_marks WHERE node = $1",
                &[&self.node],
            )
            .await?;
        Ok(row.map_or(Position::default(), |r| Position {
            generation: unbig(r.get(0)),
            offset: unbig(r.get(1)),
        }))
    }

    /// This node's held hits, oldest first.
    pub(super) async fn held_hits(&self) -> Result<Vec<(Position, Vec<u8>)>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT generation, \"offset\", hit FROM held_hits WHERE node = $1
                 ORDER BY generation, \"offset\"",
                &[&self.node],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let at = Position {
                    generation: unbig(r.get(0)),
                    offset: unbig(r.get(1)),
                };
                (at, r.get::<_, Vec<u8>>(2))
            })
            .collect())
    }

    pub(super) async fn size_on_disk(&self) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?;
        Ok(unbig(row.get(0)))
    }

    /// Removes the messages received before `cutoff_ms` and their opens, once, whichever
    /// node runs it (the totals keep counting them).
    pub(super) async fn purge(&self, cutoff_ms: u64) -> Result<PurgeReport, StoreError> {
        let mut c = self.conn().await?;
        let mut report = PurgeReport::default();
        // In chunks, each under the writers' lock (no commit of opens can then write an open
        // of a message deleted under it), so that a large purge holds the indexers up for
        // one chunk at a time.
        loop {
            let tx = c.transaction().await?;
            super::write::lock_writers(&tx).await?;
            let row = tx
                .query_one(
                    "WITH gone AS (
                         DELETE FROM messages WHERE id IN
                             (SELECT id FROM messages WHERE at_ms < $1 LIMIT $2)
                         RETURNING id, opens),
                     opens_gone AS (
                         DELETE FROM opens WHERE message IN (SELECT id FROM gone))
                     SELECT count(*), coalesce(sum(opens), 0)::bigint FROM gone",
                    &[&big(cutoff_ms), &PURGE_CHUNK],
                )
                .await?;
            tx.commit().await?;
            let (messages, opens) = (unbig(row.get(0)), unbig(row.get(1)));
            report.messages += messages;
            report.opens += opens;
            if messages < PURGE_CHUNK as u64 {
                return Ok(report);
            }
        }
    }
}
