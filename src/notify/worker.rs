//! The delivery loop of one endpoint: keeps (due, seq) of its outbox rows in memory, runs the
//! due ones with at most `concurrency` in flight, learns about new rows from the store's watch,
//! and records each attempt's outcome in the store (delete, reschedule, dead letter).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{Clock, Endpoint};
use crate::shutdown::Shutdown;
use crate::store::Store;

/// How one attempt ended.
enum Outcome {
    /// Delivered, dead-lettered or gone: forget it.
    Done,
    /// Failed: due again at this wall time.
    Retry(u64),
}

/// The worker of one endpoint: keeps (due, seq) of its rows, runs due ones with at most
/// `concurrency` in flight, and learns about new rows from the store's watch.
pub(super) async fn worker(ep: Arc<Endpoint>, store: Store, clock: Clock, mut shutdown: Shutdown) {
    let mut watch = store.watch_outbox();
    let mut seen_retries = watch.borrow_and_update().retries;
    let mut queue: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut known: HashSet<u64> = HashSet::new();
    let mut last_seen = 0u64;
    scan(&ep, &store, 0, &mut queue, &mut known, &mut last_seen);
    let mut inflight: JoinSet<(u64, Outcome)> = JoinSet::new();
    // Which row each attempt carries, so that even a panicked attempt frees its slot.
    let mut rows: HashMap<tokio::task::Id, u64> = HashMap::new();
    let limit = ep.cfg.concurrency.max(1);
    let mut rescan = tokio::time::interval(SHARED_RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shared = store.shared();
    loop {
        let now = clock.now_ms();
        while inflight.len() < limit {
            let Some(&(due, seq)) = queue.first() else {
                break;
            };
            if due > now {
                break;
            }
            queue.pop_first();
            let (ep, store) = (Arc::clone(&ep), store.clone());
            let task = inflight.spawn(async move { (seq, attempt(&ep, &store, clock, seq).await) });
            rows.insert(task.id(), seq);
        }
        ep.metrics
            .pending
            .store(known.len() as u64, Ordering::Relaxed);
        let next_due = (inflight.len() < limit)
            .then(|| queue.first().map(|&(due, _)| clock.instant(due)))
            .flatten();
        tokio::select! {
            () = shutdown.wait() => break,
            Some(joined) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                let Some((seq, out)) = settled(&ep, clock, &mut rows, joined) else {
                    continue;
                };
                match out {
                    Outcome::Done => {
                        known.remove(&seq);
                    }
                    Outcome::Retry(at) => {
                        queue.insert((at, seq));
                    }
                }
            }
            changed = watch.changed() => {
                if changed.is_err() {
                    break;
                }
                let v = *watch.borrow_and_update();
                if v.retries != seen_retries {
                    seen_retries = v.retries;
                    scan(&ep, &store, 0, &mut queue, &mut known, &mut last_seen);
                } else if v.last_seq > last_seen {
                    let after = last_seen;
                    scan(&ep, &store, after, &mut queue, &mut known, &mut last_seen);
                }
            }
            () = sleep_until(next_due) => {}
            _ = rescan.tick(), if shared => {
                scan(&ep, &store, 0, &mut queue, &mut known, &mut last_seen);
            }
        }
    }
    inflight.abort_all();
    // Wait for the aborted attempts to be dropped: they hold the store, which a restart in
    // the same process must be able to reopen.
    while inflight.join_next().await.is_some() {}
    debug!(url = %ep.cfg.url, "webhook worker stopped");
}

/// What a lease adds to twice the request timeout.
const LEASE_MARGIN_MS: u64 = 5_000;
/// How often a worker on a shared store looks for rows other nodes wrote.
const SHARED_RESCAN: std::time::Duration = std::time::Duration::from_secs(2);

/// The row an attempt carried and what became of it; a panicked attempt is tried again later.
fn settled(
    ep: &Endpoint,
    clock: Clock,
    rows: &mut HashMap<tokio::task::Id, u64>,
    joined: Result<(tokio::task::Id, (u64, Outcome)), tokio::task::JoinError>,
) -> Option<(u64, Outcome)> {
    match joined {
        Ok((id, done)) => {
            rows.remove(&id);
            Some(done)
        }
        Err(e) => {
            let seq = rows.remove(&e.id())?;
            warn!(url = %ep.cfg.url, error = %e, "webhook attempt failed unexpectedly");
            Some((
                seq,
                Outcome::Retry(clock.now_ms() + ep.backoff(1).as_millis() as u64),
            ))
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Adds the endpoint's rows after `after` that it does not know yet.
fn scan(
    ep: &Endpoint,
    store: &Store,
    after: u64,
    queue: &mut BTreeSet<(u64, u64)>,
    known: &mut HashSet<u64>,
    last_seen: &mut u64,
) {
    match store.outbox_scan(ep.id, after) {
        Ok(rows) => {
            for (seq, due) in rows {
                *last_seen = (*last_seen).max(seq);
                if known.insert(seq) {
                    queue.insert((due, seq));
                }
            }
        }
        Err(e) => warn!(url = %ep.cfg.url, error = %e, "cannot read the webhook outbox"),
    }
}

/// One delivery attempt of row `seq`, and its bookkeeping in the store.
async fn attempt(ep: &Endpoint, store: &Store, clock: Clock, seq: u64) -> Outcome {
    // With a store several nodes share, one of them sends each row at a time; the lease
    // outlasts an attempt, and runs out if its node dies mid-delivery.
    let lease = 2 * ep.cfg.timeout.as_millis() as u64 + LEASE_MARGIN_MS;
    let now = clock.now_ms();
    match store.outbox_claim(ep.id, seq, now, now + lease) {
        Ok(true) => {}
        Ok(false) => return Outcome::Retry(now + lease),
        Err(e) => {
            warn!(url = %ep.cfg.url, error = %e, "cannot lease a webhook outbox row");
            return Outcome::Retry(now + ep.backoff(1).as_millis() as u64);
        }
    }
    let row = match store.outbox_get(ep.id, seq) {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Done,
        Err(e) => {
            warn!(url = %ep.cfg.url, error = %e, "cannot read a webhook outbox row");
            return Outcome::Retry(clock.now_ms() + ep.backoff(1).as_millis() as u64);
        }
    };
    let ts = clock.now_ms() / 1000;
    let result = ep.post(&row.body, ts).await;
    let now = clock.now_ms();
    let attempts = row.attempts.saturating_add(1);
    let err = match result {
        Ok(()) => {
            ep.metrics.delivered.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = store.outbox_delivered(ep.id, seq) {
                // It will be sent again: at least once.
                warn!(url = %ep.cfg.url, error = %e, "cannot remove a delivered webhook row");
            }
            return Outcome::Done;
        }
        Err(e) => e,
    };
    ep.metrics.failed_attempts.fetch_add(1, Ordering::Relaxed);
    let deadline = row
        .created_ms
        .saturating_add(ep.cfg.max_age.as_millis() as u64);
    if now >= deadline {
        warn!(url = %ep.cfg.url, event_id = %row.event_id, attempts, error = %err, "webhook event dead-lettered after max_age");
        match store.outbox_kill(ep.id, seq, attempts, &err) {
            Ok(_) => {
                ep.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                return Outcome::Done;
            }
            Err(e) => {
                warn!(url = %ep.cfg.url, error = %e, "cannot move a webhook row to the dead letters");
                return Outcome::Retry(now + ep.backoff(attempts).as_millis() as u64);
            }
        }
    }
    // The last attempt falls on the deadline, so an event gets its full max_age.
    let next = (now + ep.backoff(attempts).as_millis() as u64).min(deadline);
    debug!(url = %ep.cfg.url, event_id = %row.event_id, attempts, error = %err, "webhook attempt failed");
    if let Err(e) = store.outbox_reschedule(ep.id, seq, attempts, next, &err) {
        warn!(url = %ep.cfg.url, error = %e, "cannot record a failed webhook attempt");
    }
    Outcome::Retry(next)
}
