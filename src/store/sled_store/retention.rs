//! Retention: deletes messages and opens older than `store.retention_days`, in small
//! batches under the writer lock so pixel hits are never stalled for long.
//!
//! Opens are purged by their id's timestamp: segments are keyed by their first open id, so
//! this is a range from the oldest, and the segment straddling the cutoff is rewritten with
//! its newer opens only. A purged message takes its remaining opens with it (rewriting the
//! segments that hold them), since an open that no longer names a recipient or sender is of
//! no use. The lifetime counters are not lowered. A message's open index may keep the ids of
//! opens purged by age; readers skip ids no segment holds.

use std::collections::{BTreeMap, HashSet};
use std::sync::Weak;
use std::time::Duration;

use super::messages::{chunk_prefix, message_key, stats_key};
use super::opens::{Segment, click_key, encode_segment, segment_for, segment_key};
use super::{Inner, OPEN_ID_SHIFT, P_TIME, StoreError, key};
use crate::clock::now_ms;
use crate::store::types::PurgeReport;
use crate::token::MessageId;

/// Keys (segments or messages) handled per batch.
const BATCH: usize = 256;
/// How often the background task runs.
const EVERY: Duration = Duration::from_secs(3600);

/// Deletes everything older than `cutoff_ms`.
pub(super) fn purge(inner: &Inner, cutoff_ms: u64) -> Result<PurgeReport, StoreError> {
    let mut report = PurgeReport::default();
    let cutoff_id = cutoff_ms << OPEN_ID_SHIFT;
    // Old opens, oldest first, by key range.
    loop {
        let _w = inner.lock();
        let mut drops = BTreeMap::new();
        for kv in inner
            .data
            .range(segment_key(0)..segment_key(cutoff_id))
            .take(BATCH)
        {
            let (k, v) = kv?;
            let seg = Segment::parse(&v)?;
            let old: HashSet<u64> = (0..seg.len())
                .map(|i| seg.id(i))
                .filter(|&id| id < cutoff_id)
                .collect();
            drops.insert(k, (v, old));
        }
        if drops.is_empty() {
            break;
        }
        let removed = rewrite_segments(inner, drops, sled::Batch::default())?;
        report.opens += removed;
        if removed == 0 {
            // Every segment below the cutoff holds an older open (its key is its first id);
            // this only guards the loop against a store that breaks that.
            break;
        }
    }
    // Old messages with whatever opens they still have.
    loop {
        let _w = inner.lock();
        let mut batch = sled::Batch::default();
        let mut drops: BTreeMap<sled::IVec, (sled::IVec, HashSet<u64>)> = BTreeMap::new();
        let mut n = 0;
        let mut gone = Vec::new();
        let range = key(P_TIME, &[])..key(P_TIME, &[&cutoff_ms.to_be_bytes()]);
        for kv in inner.data.range(range).take(BATCH) {
            let (k, _) = kv?;
            batch.remove(&k);
            n += 1;
            let Some(id) = k.get(9..).and_then(MessageId::from_slice) else {
                continue;
            };
            forget_message(inner, &id, &mut batch, &mut drops)?;
            gone.push(id);
        }
        if n == 0 {
            break;
        }
        report.opens += rewrite_segments(inner, drops, batch)?;
        // Their statistics must not come back with the next checkpoint.
        inner.forget_dirty(gone.iter());
        report.messages += n;
    }
    Ok(report)
}

/// Into `batch`: removes message `id`'s record, statistics and open index; into `drops`: its
/// opens, by the segment that holds them.
fn forget_message(
    inner: &Inner,
    id: &MessageId,
    batch: &mut sled::Batch,
    drops: &mut BTreeMap<sled::IVec, (sled::IVec, HashSet<u64>)>,
) -> Result<(), StoreError> {
    let mut ids = Vec::new();
    for kv in inner.data.scan_prefix(chunk_prefix(id)) {
        let (k, v) = kv?;
        ids.extend(super::messages::u64s(&v));
        batch.remove(k);
    }
    if let Some(ms) = inner.msg_stats(id)? {
        ids.extend(ms.recent);
    }
    batch.remove(stats_key(id));
    batch.remove(message_key(id));
    for oid in ids {
        if let Some((k, v)) = segment_for(&inner.data, oid)? {
            drops
                .entry(k)
                .or_insert_with(|| (v, HashSet::new()))
                .1
                .insert(oid);
        }
    }
    Ok(())
}

/// Rewrites each segment without the opens listed for it (removing it when none is left),
/// together with `batch`, in one batch. Returns how many opens went.
fn rewrite_segments(
    inner: &Inner,
    drops: BTreeMap<sled::IVec, (sled::IVec, HashSet<u64>)>,
    mut batch: sled::Batch,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for (k, (v, gone)) in &drops {
        let seg = Segment::parse(v)?;
        let mut keep = Vec::with_capacity(seg.len());
        for i in 0..seg.len() {
            if gone.contains(&seg.id(i)) {
                removed += 1;
                // A click's index key too (nothing to remove for an open).
                batch.remove(click_key(seg.id(i)));
            } else {
                keep.push((seg.id(i), seg.json(i)?));
            }
        }
        batch.remove(k);
        if let Some(&(first, _)) = keep.first() {
            // Keyed by its first open again: the key stays a lower bound of its ids.
            batch.insert(segment_key(first), encode_segment(&keep));
        }
    }
    inner.data.apply_batch(batch)?;
    Ok(removed)
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
