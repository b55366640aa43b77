//! Hits held for a message record not yet in a shared store.
//!
//! On a store several nodes share, a pixel node may index a hit before the node that relayed
//! its message has indexed the message's record. Such a hit is held and tried again every
//! [`RETRY`] for up to [`HOLD`] from its load (at most [`HOLD_MAX`] at once; beyond, or once
//! its time is up, it is counted invalid). A hold is durable: it is written to the store in the
//! same transaction as the journal mark that passes the hit ([`HoldChanges`]), released in the
//! transaction that records the open, and loaded again when the node starts. A node killed
//! while it holds hits loses none of them, and none is recorded twice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Ingest;
use super::hit::Hit;
use crate::store::{HoldChanges, Position, StoreError};

/// How long a hit for a message not yet in a shared store is held, from its load.
pub const HOLD: Duration = Duration::from_secs(600);
/// How often held hits are tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// Hits held at once at most.
const HOLD_MAX: usize = 100_000;

/// A hit held in memory (and in the store).
#[derive(Clone)]
pub(super) struct Held {
    pub(super) hit: Hit<'static>,
    /// Where the hit ends in this node's journal: its key in the store.
    pub(super) key: Position,
    /// When to try it again, ms since the epoch.
    retry_ms: u64,
}

/// The holds and releases one commit of hits makes, and what stays held after it.
#[derive(Default)]
pub(super) struct Plan {
    /// For the store, with the commit. `release` holds those out of time; the keys of held
    /// hits recorded now are in [`Plan::recorded`], one per prepared open (`None`: fresh).
    pub(super) changes: HoldChanges,
    pub(super) recorded: Vec<Option<Position>>,
    /// Held in memory once the commit is in.
    pub(super) keep: Vec<Held>,
    /// Of `keep`, hits held for the first time.
    pub(super) new: u64,
}

impl Plan {
    /// The commit's changes: the plan's, plus the release of the held hits it records.
    pub(super) fn all_changes(&self) -> HoldChanges {
        let mut c = self.changes.clone();
        c.release.extend(self.recorded.iter().flatten());
        c
    }

    /// A plan that changes nothing and keeps `held`, to be tried again after [`RETRY`] (not
    /// at once: the store just failed to say anything about them).
    pub(super) fn keeping(held: Vec<Held>, now: u64) -> Plan {
        let retry_ms = now + RETRY.as_millis() as u64;
        Plan {
            keep: held.into_iter().map(|h| Held { retry_ms, ..h }).collect(),
            ..Plan::default()
        }
    }

    /// A fresh hit `h` (ending at `at`) whose message is unknown: held, or counted invalid.
    pub(super) fn unknown(&mut self, ing: &Ingest, h: Hit<'static>, at: Position, now: u64) {
        let inner = &*ing.inner;
        let room = lock_held(ing).len() + self.keep.len() < HOLD_MAX;
        if inner.store.shared() && young(&h, now) && room {
            self.changes.add.push((at, h.encode()));
            self.keep.push(Held {
                hit: h,
                key: at,
                retry_ms: now + RETRY.as_millis() as u64,
            });
            self.new += 1;
        } else {
            inner.hits.invalid.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A held hit `h` whose message is still unknown: held on, or released and counted
    /// invalid once its time is up.
    pub(super) fn still_unknown(&mut self, ing: &Ingest, h: Held, now: u64) {
        if young(&h.hit, now) {
            self.keep.push(Held {
                retry_ms: now + RETRY.as_millis() as u64,
                ..h
            });
        } else {
            ing.inner.hits.invalid.fetch_add(1, Ordering::Relaxed);
            self.changes.release.push(h.key);
        }
    }

    /// Once the commit is in: the holds kept in memory, the new ones counted.
    pub(super) fn done(self, ing: &Ingest) {
        ing.inner.hits.held.fetch_add(self.new, Ordering::Relaxed);
        lock_held(ing).extend(self.keep);
    }
}

fn young(h: &Hit<'_>, now: u64) -> bool {
    now.saturating_sub(h.at_ms) < HOLD.as_millis() as u64
}

/// Held hits due for another try, taken out of the hold.
pub(super) fn due(ing: &Ingest, now: u64) -> Vec<Held> {
    let mut held = lock_held(ing);
    if held.is_empty() {
        return Vec::new();
    }
    let (due, wait): (Vec<_>, Vec<_>) = held.drain(..).partition(|h| h.retry_ms <= now);
    *held = wait;
    due
}

/// Held hits taken by [`due`] back in the hold as they were (their commit did not happen).
pub(super) fn put_back(ing: &Ingest, held: Vec<Held>, now: u64) {
    let retry = now + RETRY.as_millis() as u64;
    lock_held(ing).extend(held.into_iter().map(|h| Held {
        retry_ms: retry,
        ..h
    }));
}

pub(super) fn any_due(ing: &Ingest) -> bool {
    let now = crate::clock::now_ms();
    lock_held(ing).iter().any(|h| h.retry_ms <= now)
}

/// Loads the holds a previous run of this node left in the store, due at once. A hold that no
/// longer decodes is released and counted as a store error.
pub(super) fn load(ing: &Ingest) -> Result<usize, StoreError> {
    let store = &ing.inner.store;
    let mut bad = HoldChanges::default();
    let mut held = Vec::new();
    for (key, bytes) in store.held_hits()? {
        match Hit::decode(&bytes) {
            Some(hit) => held.push(Held {
                hit,
                key,
                retry_ms: 0,
            }),
            None => {
                ing.inner.hits.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(journal = ?key, "a held hit does not decode; dropped");
                bad.release.push(key);
            }
        }
    }
    if !bad.is_empty() {
        store.commit_opens_holding(&[], None, &bad)?;
    }
    let n = held.len();
    lock_held(ing).extend(held);
    Ok(n)
}

fn lock_held(ing: &Ingest) -> std::sync::MutexGuard<'_, Vec<Held>> {
    ing.inner
        .held
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
