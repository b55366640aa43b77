//! The rows a commit of opens and clicks writes: the new events by binary COPY, and the
//! click statistics of the messages clicked (read before, written back after, in the same
//! transaction under the writers' lock).

use std::collections::{HashMap, HashSet};

use tokio_postgres::Transaction;

use super::big;
use crate::store::types::*;
use crate::token::MessageId;
use crate::track::OpenEvent;

/// The rows of one commit's new events, column by column.
#[derive(Default)]
pub(super) struct NewEvents {
    pub(super) ids: Vec<i64>,
    msgs: Vec<Vec<u8>>,
    events: Vec<String>,
    kinds: Vec<i16>,
}

impl NewEvents {
    pub(super) fn push(
        &mut self,
        id: u64,
        msg: &MessageId,
        ev: &OpenEvent,
    ) -> Result<(), StoreError> {
        self.ids.push(big(id));
        self.msgs.push(msg.as_bytes().to_vec());
        self.events.push(super::event::stored(ev)?);
        self.kinds.push(i16::from(ev.is_click()));
        Ok(())
    }
}

/// The new opens and clicks, by binary COPY (several times the rows per second of an INSERT).
pub(super) async fn copy_opens(tx: &Transaction<'_>, new: &NewEvents) -> Result<(), StoreError> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let sink = tx
        .copy_in("COPY opens (id, message, event, kind) FROM STDIN (FORMAT binary)")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::BYTEA, Type::TEXT, Type::INT2]);
    let mut writer = std::pin::pin!(writer);
    for (((id, msg), ev), kind) in new
        .ids
        .iter()
        .zip(&new.msgs)
        .zip(&new.events)
        .zip(&new.kinds)
    {
        writer.as_mut().write(&[id, msg, ev, kind]).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// The click statistics of the messages `opens` clicks (those that still exist), each with
/// whether this commit changed it; nothing is read for a commit without clicks.
pub(super) async fn click_stats(
    tx: &Transaction<'_>,
    opens: &[Option<PreparedOpen>],
) -> Result<HashMap<MessageId, (ClickStats, bool)>, StoreError> {
    let ids: HashSet<MessageId> = opens
        .iter()
        .flatten()
        .filter(|o| o.event.is_click())
        .map(|o| o.id)
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<&[u8]> = ids.iter().map(|i| i.as_bytes().as_slice()).collect();
    let rows = tx
        .query(
            "SELECT id, clicks FROM messages WHERE id = ANY($1)",
            &[&keys],
        )
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let Some(id) = MessageId::from_slice(row.get::<_, &[u8]>(0)) else {
            continue;
        };
        let cs = match row.get::<_, Option<serde_json::Value>>(1) {
            Some(v) => serde_json::from_value(v)?,
            None => ClickStats::default(),
        };
        out.insert(id, (cs, false));
    }
    Ok(out)
}

/// Writes back the click statistics this commit changed, in one statement.
pub(super) async fn write_click_stats(
    tx: &Transaction<'_>,
    clicks: &HashMap<MessageId, (ClickStats, bool)>,
) -> Result<(), StoreError> {
    let (mut ids, mut values) = (Vec::new(), Vec::new());
    for (id, (cs, changed)) in clicks {
        if *changed {
            ids.push(id.as_bytes().as_slice());
            values.push(serde_json::to_value(cs)?);
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        "UPDATE messages m SET clicks = u.c FROM unnest($1::bytea[], $2::jsonb[]) AS u(id, c)
         WHERE m.id = u.id",
        &[&ids, &values],
    )
    .await?;
    Ok(())
}
