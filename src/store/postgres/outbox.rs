//! The webhook outbox: rows written with the open or the reply they announce (`write.rs`),
//! read and updated here by the delivery workers, and the dead letters.

use tokio_postgres::Row;

use super::{Inner, big, endpoint_key, endpoint_of, unbig};
use crate::store::shared::format_id;
use crate::store::types::*;

/// The columns [`row_of`] reads.
const COLUMNS: &str = "endpoint, seq, kind, created_ms, attempts, next_ms, last_error, body";

fn row_of(r: &Row) -> Result<(u64, OutboxRow), StoreError> {
    let endpoint = endpoint_of(r.get::<_, &[u8]>(0))?;
    let seq = unbig(r.get(1));
    Ok((
        endpoint,
        OutboxRow {
            event_id: format_id(seq),
            kind: r.get(2),
            created_ms: unbig(r.get(3)),
            attempts: u32::try_from(r.get::<_, i32>(4)).unwrap_or(0),
            next_ms: unbig(r.get(5)),
            last_error: r.get(6),
            body: r.get(7),
        },
    ))
}

impl Inner {
    pub(super) async fn outbox_get(
        &self,
        endpoint: u64,
        seq: u64,
    ) -> Result<Option<OutboxRow>, StoreError> {
        let c = self.conn().await?;
        let q = format!("SELECT {COLUMNS} FROM outbox WHERE endpoint = $1 AND seq = $2");
        match c
            .query_opt(&q, &[&endpoint_key(endpoint), &big(seq)])
            .await?
        {
            Some(r) => Ok(Some(row_of(&r)?.1)),
            None => Ok(None),
        }
    }

    pub(super) async fn outbox_scan(
        &self,
        endpoint: u64,
        after: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT seq, next_ms FROM outbox WHERE endpoint = $1 AND seq > $2 ORDER BY seq",
                &[&endpoint_key(endpoint), &big(after)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (unbig(r.get(0)), unbig(r.get(1))))
            .collect())
    }

    pub(super) async fn outbox_delivered(&self, endpoint: u64, seq: u64) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "DELETE FROM outbox WHERE endpoint = $1 AND seq = $2",
            &[&endpoint_key(endpoint), &big(seq)],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn outbox_reschedule(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        next_ms: u64,
        error: String,
    ) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.execute(
            "UPDATE outbox SET attempts = $3, next_ms = $4, last_error = $5
             WHERE endpoint = $1 AND seq = $2",
            &[
                &endpoint_key(endpoint),
                &big(seq),
                &i32::try_from(attempts).unwrap_or(i32::MAX),
                &big(next_ms),
                &error,
            ],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn outbox_kill(
        &self,
        endpoint: u64,
        seq: u64,
        attempts: u32,
        error: String,
    ) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "WITH moved AS (DELETE FROM outbox WHERE endpoint = $1 AND seq = $2 RETURNING *)
                 INSERT INTO dead_letters (endpoint, seq, kind, created_ms, attempts, next_ms, last_error, body)
                 SELECT endpoint, seq, kind, created_ms, $3, next_ms, $4, body FROM moved",
                &[
                    &endpoint_key(endpoint),
                    &big(seq),
                    &i32::try_from(attempts).unwrap_or(i32::MAX),
                    &error,
                ],
            )
            .await?;
        Ok(n > 0)
    }

    pub(super) async fn retry_dead_letter(
        &self,
        endpoint: u64,
        seq: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "WITH moved AS (DELETE FROM dead_letters WHERE endpoint = $1 AND seq = $2 RETURNING *)
                 INSERT INTO outbox (endpoint, seq, kind, created_ms, attempts, next_ms, last_error, body)
                 SELECT endpoint, seq, kind, $3, 0, $3, last_error, body FROM moved",
                &[&endpoint_key(endpoint), &big(seq), &big(now_ms)],
            )
            .await?;
        Ok(n > 0)
    }

    /// Rows of `table` (`outbox` or `dead_letters`), oldest first, after `cursor`.
    pub(super) async fn list_rows(
        &self,
        table: &'static str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let (after_e, after_s) = match &cursor {
            Some(c) => {
                let (e, s) =
                    parse_delivery_id(c).ok_or_else(|| StoreError::BadCursor(c.clone()))?;
                (endpoint_key(e), big(s))
            }
            None => (Vec::new(), -1),
        };
        let c = self.conn().await?;
        let q = format!(
            "SELECT {COLUMNS} FROM {table} WHERE (endpoint, seq) > ($1, $2)
             ORDER BY endpoint, seq LIMIT $3"
        );
        let rows = c
            .query(&q, &[&after_e, &after_s, &big(limit as u64)])
            .await?;
        rows.iter()
            .map(|r| {
                let (endpoint, row) = row_of(r)?;
                Ok(OutboxItem {
                    id: format!("{endpoint:016x}{}", row.event_id),
                    endpoint: format!("{endpoint:016x}"),
                    row,
                })
            })
            .collect()
    }

    /// The lease: this node's until `until_ms`, if nobody else's is running. A row already
    /// gone (delivered by another node) is granted: the attempt then finds nothing to send.
    pub(super) async fn outbox_claim(
        &self,
        endpoint: u64,
        seq: u64,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        let row = c
            .query_one(
                "WITH taken AS (
                    UPDATE outbox SET lease_node = $3, lease_until_ms = $5
                    WHERE endpoint = $1 AND seq = $2
                      AND (lease_until_ms IS NULL OR lease_until_ms <= $4 OR lease_node = $3)
                    RETURNING 1)
                 SELECT EXISTS (SELECT 1 FROM taken)
                     OR NOT EXISTS (SELECT 1 FROM outbox WHERE endpoint = $1 AND seq = $2)",
                &[
                    &endpoint_key(endpoint),
                    &big(seq),
                    &self.node,
                    &big(now_ms),
                    &big(until_ms),
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    pub(super) async fn outbox_endpoints(&self) -> Result<Vec<u64>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT DISTINCT endpoint FROM outbox ORDER BY endpoint",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| endpoint_of(r.get::<_, &[u8]>(0)))
            .collect()
    }

    pub(super) async fn outbox_len(&self) -> Result<usize, StoreError> {
        let c = self.conn().await?;
        let row = c.query_one("SELECT count(*) FROM outbox", &[]).await?;
        Ok(unbig(row.get(0)) as usize)
    }
}
