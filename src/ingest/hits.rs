//! Recording a run of journaled hits (`indexer.rs` reads the journal and cuts it into runs):
//! the batch's messages read at once, every hit classified, the opens and the changes to the
//! held hits committed with the journal position in one store write, then counted and logged.
//! On a database several nodes share, the commit runs on a thread of its own while the indexer
//! reads and classifies the next batch; commits stay one at a time and in order.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Ingest;
use super::hit::Hit;
use super::hold;
use crate::store::{OpenContext, OpenHit, Position, PreparedOpen, StoreError};
use crate::token::MessageId;
use crate::track::{OpenEvent, Proxy, classify};

/// Classifies and records a run of hits with the journal position `mark`, with the held hits
/// due for another try. With `defer` on a shared store, the commit runs on a thread of its own
/// (the one before it waited for first) and this returns `Ok(true)` before it is in.
pub(super) fn index_hits(
    ing: &Ingest,
    hits: Vec<(Hit<'static>, Position)>,
    mark: Position,
    defer: bool,
) -> Result<bool, StoreError> {
    let now = crate::clock::now_ms();
    let due = hold::due(ing, now);
    // Classified (and the batch's messages read) while the commit before it may still run;
    // that one is in (or failed) before anything else happens.
    let prepared = prepare_batch(ing, hits, due.clone(), mark, now);
    let batch = match (prepared, join_pending(ing)) {
        (Ok(b), Ok(())) => b,
        // The store away: the held ones back as they were; the fresh ones are read again
        // from the journal.
        (Err(e), _) | (_, Err(e)) => {
            hold::put_back(ing, due, now);
            return Err(e);
        }
    };
    if defer && ing.inner.store.shared() {
        let owned = ing.clone();
        let commit = std::thread::Builder::new()
            .name("open-commit".into())
            .spawn(move || match commit_batch(&owned, batch, mark) {
                Ok(plan) => {
                    plan.done(&owned);
                    owned.inner.indexed_up_to(mark);
                    Ok(())
                }
                Err(e) => {
                    hold::put_back(&owned, due, now);
                    Err(e)
                }
            })
            .map_err(|e| StoreError::Task(format!("cannot start a commit: {e}")))?;
        *lock_pending(ing) = Some(commit);
        return Ok(true);
    }
    match commit_batch(ing, batch, mark) {
        Ok(plan) => {
            plan.done(ing);
            Ok(false)
        }
        Err(e) => {
            hold::put_back(ing, due, now);
            Err(e)
        }
    }
}

/// A run of hits classified and ready to commit: the opens (with where each ends in the
/// journal) and what becomes of the held hits; or, when the batch's messages could not be read,
/// only the latter.
struct Batch {
    prepared: Vec<Option<PreparedOpen>>,
    ends: Vec<Position>,
    plan: hold::Plan,
}

/// [`index_hits`]' first half: the batch's messages read and every hit classified.
fn prepare_batch(
    ing: &Ingest,
    hits: Vec<(Hit<'static>, Position)>,
    due: Vec<hold::Held>,
    mark: Position,
    now: u64,
) -> Result<Batch, StoreError> {
    let inner = &*ing.inner;
    let store = &inner.store;
    let anonymize = store.config().anonymize_ip;
    // Every message the batch opens, read from the store at once (one query for a database).
    let mut wanted: Vec<MessageId> = hits.iter().map(|(h, _)| h.message).collect();
    wanted.extend(due.iter().map(|d| d.hit.message));
    wanted.sort_unstable();
    wanted.dedup();
    let contexts: HashMap<MessageId, OpenContext> = match store.open_contexts(&wanted) {
        Ok(c) => c,
        Err(e) if unavailable(&e) => return Err(e),
        Err(e) => {
            inner
                .hits
                .store_errors
                .fetch_add(hits.len() as u64, Ordering::Relaxed);
            tracing::error!(error = %e, "cannot read the messages of a batch of opens");
            // The held ones stay held.
            return Ok(Batch {
                prepared: Vec::new(),
                ends: Vec::new(),
                plan: hold::Plan::keeping(due, now),
            });
        }
    };
    let mut plan = hold::Plan::default();
    let mut prepared = Vec::with_capacity(hits.len() + due.len());
    let mut bursts = inner
        .bursts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut prepare = |h: Hit<'static>, ctx: &OpenContext| {
        let burst = h
            .click
            .as_ref()
            .is_some_and(|(link, _)| bursts.burst(h.message, h.ip, *link, h.at_ms));
        prepare(h, ctx.clone(), anonymize, burst)
    };
    let mut ends = Vec::with_capacity(prepared.capacity());
    for (h, at) in hits {
        match contexts.get(&h.message) {
            Some(ctx) => {
                prepared.push(Some(prepare(h, ctx)));
                ends.push(at);
                plan.recorded.push(None);
            }
            // Authentic token, no record: purged by retention, or another instance's store;
            // on a shared store, perhaps not indexed yet by the node that relayed it.
            None => plan.unknown(ing, h, at, now),
        }
    }
    for d in due {
        match contexts.get(&d.hit.message) {
            Some(ctx) => {
                plan.recorded.push(Some(d.key));
                prepared.push(Some(prepare(d.hit, ctx)));
                ends.push(mark);
            }
            None => plan.still_unknown(ing, d, now),
        }
    }
    Ok(Batch {
        prepared,
        ends,
        plan,
    })
}

/// [`index_hits`]' second half: the batch's opens and hold changes committed with `mark`, and
/// counted. What stays held is the returned plan's to keep.
fn commit_batch(ing: &Ingest, batch: Batch, mark: Position) -> Result<hold::Plan, StoreError> {
    let Batch {
        prepared,
        ends,
        plan,
    } = batch;
    let store = &ing.inner.store;
    let results = match store.commit_opens_holding(&prepared, Some(mark), &plan.all_changes()) {
        Ok(events) => events.into_iter().map(Ok).collect(),
        // The store away: the whole run again later.
        Err(e) if unavailable(&e) => return Err(e),
        Err(_) => one_by_one(store, &prepared, &ends, &plan, mark)?,
    };
    count_results(&ing.inner, &prepared, results);
    Ok(plan)
}

/// Waits for the commit in flight, if any; its error if it failed (the index's position is
/// then where the commit before it left it, and the reader goes back there).
pub(super) fn join_pending(ing: &Ingest) -> Result<(), StoreError> {
    let pending = lock_pending(ing).take();
    match pending.map(std::thread::JoinHandle::join) {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(_)) => Err(StoreError::Task("a commit of opens panicked".into())),
    }
}

fn lock_pending(
    ing: &Ingest,
) -> std::sync::MutexGuard<'_, Option<std::thread::JoinHandle<Result<(), StoreError>>>> {
    ing.inner
        .pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// After a commit of a batch failed on one bad record: the opens one by one, each with its own
/// journal position (and the release of its hold), so that a failure part way leaves the
/// index exact and costs the others nothing. The batch's new holds and the releases of those
/// out of time go with the first commit.
fn one_by_one(
    store: &crate::store::Store,
    prepared: &[Option<PreparedOpen>],
    ends: &[Position],
    plan: &hold::Plan,
    mark: Position,
) -> Result<Vec<Result<Option<OpenEvent>, StoreError>>, StoreError> {
    let mut first = Some(plan.changes.clone());
    let mut out = Vec::with_capacity(prepared.len());
    for ((o, at), key) in prepared.iter().zip(ends).zip(&plan.recorded) {
        let mut changes = first.take().unwrap_or_default();
        changes.release.extend(key);
        let r = store
            .commit_opens_holding(std::slice::from_ref(o), Some(*at), &changes)
            .map(|mut v| v.pop().flatten());
        if r.is_err() {
            // The open is lost; its hold changes are not.
            store.commit_opens_holding(&[], Some(*at), &changes)?;
        }
        out.push(r);
    }
    // Past whatever failed or was skipped.
    store.commit_opens_holding(&[], Some(mark), &first.unwrap_or_default())?;
    Ok(out)
}

/// Classifies hit `h` of the message of `ctx` (the early-load rule counts from its hand-off);
/// a click with the click rules too (`burst`: it follows a click on another link of the
/// message from the same address).
fn prepare(h: Hit<'static>, ctx: OpenContext, anonymize: bool, burst: bool) -> PreparedOpen {
    let since = Duration::from_millis(h.at_ms.saturating_sub(ctx.sent_at()));
    let mut classification = classify(
        &h.user_agent,
        &h.hints,
        &h.seen.as_seen(),
        Some(since),
        &h.windows,
    );
    if h.click.is_some() {
        classification = super::clicks::classify_click(classification, burst);
    }
    let hit = OpenHit {
        at_ms: h.at_ms,
        ip: h.ip,
        // Decoded hits own their user agent: moved, not copied.
        user_agent: h.user_agent.into_owned(),
        classification,
        country: h.seen.country.map(country_code),
        click: h.click.map(|(link, url)| (link, url.into_owned())),
    };
    PreparedOpen::new(ctx, &hit, anonymize)
}

/// Whether `e` says the store could not be reached or written at all (rather than that one
/// record is wrong): the indexer then retries from where it was, skipping nothing.
pub(super) fn unavailable(e: &StoreError) -> bool {
    matches!(e, StoreError::Engine(_) | StoreError::Task(_))
}

/// Counts and logs what became of each prepared open.
fn count_results(
    inner: &super::Inner,
    prepared: &[Option<PreparedOpen>],
    results: Vec<Result<Option<OpenEvent>, StoreError>>,
) {
    for (open, result) in prepared.iter().flatten().zip(results) {
        match result {
            Ok(Some(e)) => {
                inner.hits.valid.fetch_add(1, Ordering::Relaxed);
                log_open(&e, open.queue_id.as_deref());
            }
            Ok(None) => {
                inner.hits.invalid.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                inner.hits.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(msg = %open.message(), error = %e, "cannot record open");
            }
        }
    }
}

/// A journaled country code as the event shows it.
fn country_code(c: [u8; 2]) -> String {
    String::from_utf8_lossy(&c).into_owned()
}

/// The one log line per open or click an admin tails; `queue_id` joins it with the message's
/// `relayed` (or `milter`) line and the MTA's log.
fn log_open(e: &OpenEvent, queue_id: Option<&str>) {
    let queue_id = queue_id.unwrap_or("-");
    if e.is_click() {
        tracing::info!(
            queue_id,
            msg = %e.message,
            message_id = e.message_id.as_deref().unwrap_or("-"),
            rcpt = %e.recipient,
            link = e.link.unwrap_or(0),
            url = e.url.as_deref().unwrap_or(""),
            client = %e.client,
            device = e.device.as_str(),
            machine = e.machine,
            reason = e.machine_reason.as_deref().unwrap_or("-"),
            ip = %e.ip,
            first = e.first,
            count = e.count,
            "click"
        );
        return;
    }
    tracing::info!(
        queue_id,
        msg = %e.message,
        message_id = e.message_id.as_deref().unwrap_or("-"),
        rcpt = %e.recipient,
        client = %e.client,
        device = e.device.as_str(),
        machine = e.machine,
        reason = e.machine_reason.as_deref().unwrap_or("-"),
        proxy = e.proxy.map_or("-", Proxy::as_str),
        ip = %e.ip,
        first = e.first,
        count = e.count,
        "open"
    );
}
