//! Retention: deletes messages and opens older than `store.retention_days`, in small
//! transactions under the writer lock so pixel hits are never stalled for long.
//!
//! Opens are purged by their id's timestamp (ids are time-ordered keys, so this is a range
//! scan from the oldest); a purged message takes its remaining opens with it, since an open
//! that no longer names a recipient or sender is of no use. The lifetime counters are not
//! lowered.

use std::sync::Weak;
use std::time::Duration;

use sled::Transactional;

use super::{Inner, OPEN_ID_SHIFT, StoreError, decode_open_id};
use crate::clock::now_ms;
use crate::store::types::PurgeReport;
use crate::token::MessageId;
use crate::track::OpenEvent;

/// Records deleted per transaction.
const BATCH: usize = 512;
/// How often the background task runs.
const EVERY: Duration = Duration::from_secs(3600);

/// Deletes everything older than `cutoff_ms`.
pub(super) fn purge(inner: &Inner, cutoff_ms: u64) -> Result<PurgeReport, StoreError> {
    let mut report = PurgeReport::default();
    // Old opens, oldest first, by key range.
    let end = (cutoff_ms << OPEN_ID_SHIFT).to_be_bytes();
    loop {
        let _w = inner.lock();
        let mut batch = Vec::with_capacity(BATCH);
        for kv in inner.opens.range(..end).take(BATCH) {
            let (k, v) = kv?;
            let ev: OpenEvent = serde_json::from_slice(&v)?;
            batch.push((k, ev.message.parse::<MessageId>().ok()));
        }
        if batch.is_empty() {
            break;
        }
        (&inner.opens, &inner.opens_by_message).transaction(|(opens, by_msg)| {
            for (k, msg) in &batch {
                opens.remove(k)?;
                if let (Some(m), Some(oid)) = (msg, decode_open_id(k)) {
                    by_msg.remove(super::open_index_key(m, oid).as_slice())?;
                }
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
        })?;
        report.opens += batch.len() as u64;
    }
    // Old messages with whatever opens they still have.
    let end = cutoff_ms.to_be_bytes();
    loop {
        let _w = inner.lock();
        let mut batch = Vec::with_capacity(BATCH);
        for kv in inner.messages_by_time.range(..end).take(BATCH) {
            let (k, _) = kv?;
            let Some(id) = MessageId::from_slice(&k[8..]) else {
                continue;
            };
            let mut opens = Vec::new();
            for kv in inner.opens_by_message.scan_prefix(id.as_bytes()) {
                opens.push(kv?.0);
            }
            batch.push((k, id, opens));
        }
        if batch.is_empty() {
            break;
        }
        let trees = (
            &inner.messages,
            &inner.message_opens,
            &inner.messages_by_time,
            &inner.opens,
            &inner.opens_by_message,
        );
        trees.transaction(|(msgs, stats, by_time, opens, by_msg)| {
            for (k, id, idx) in &batch {
                by_time.remove(k)?;
                msgs.remove(id.as_bytes())?;
                stats.remove(id.as_bytes())?;
                for ik in idx {
                    by_msg.remove(ik)?;
                    opens.remove(&ik[16..])?;
                }
            }
            Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
        })?;
        report.messages += batch.len() as u64;
        report.opens += batch.iter().map(|b| b.2.len() as u64).sum::<u64>();
    }
    Ok(report)
}

/// Runs [`purge`] at start and then hourly, until the store is dropped.
pub(super) fn spawn(inner: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let days = u64::from(strong.cfg.retention_days);
            let cutoff = now_ms().saturating_sub(days * 86_400_000);
            let run = tokio::task::spawn_blocking(move || purge(&strong, cutoff)).await;
            match run {
                Ok(Ok(r)) if r.messages + r.opens > 0 => {
                    tracing::info!(
                        messages = r.messages,
                        opens = r.opens,
                        days,
                        "retention purge"
                    );
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "retention purge failed"),
                Err(e) => tracing::warn!(error = %e, "retention purge task failed"),
            }
        }
    });
}
