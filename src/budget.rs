//! The memory budget for messages in flight (`smtp.max_inflight_bytes`).
//!
//! Every transaction holds its message whole while it is read, rewritten and sent on. Without
//! a bound, a burst of large mail (or anyone allowed to connect) could drive the process into
//! the kernel's OOM killer, which fails every transaction at once. So each transaction
//! reserves what it will hold before it allocates it: its declared `SIZE=` at DATA, more as the
//! message grows past that, and room for the rewritten copy before the rewrite. A reservation
//! that does not fit is refused, never waited for: the session answers `452 4.3.1` and the
//! client's queue retries later; the relay sends a message it has no room to rewrite as it is.
//!
//! Lock-free: one atomic counter that never exceeds the limit (compare-and-swap), and a
//! [`Reservation`] that gives its bytes back when dropped, whichever way the transaction ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The shared budget.
#[derive(Debug)]
pub struct Budget {
    /// Most bytes reserved at once (changed by a config reload).
    limit: AtomicUsize,
    /// Bytes reserved now.
    used: AtomicUsize,
    /// Reservations refused so far.
    refused: AtomicU64,
}

/// Bytes held from a [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    /// Where they came from.
    budget: Arc<Budget>,
    /// How many.
    bytes: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// A budget nothing exhausts (tests, tools).
    pub fn unlimited() -> Arc<Budget> {
        Budget::new(usize::MAX)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A new limit for reservations from now on; bytes reserved stay reserved (a lower limit
    /// than what is in use refuses new reservations until enough is given back).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Refusals since start: transactions refused for memory, rewrites skipped for it.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a refusal made because a reservation did not fit.
    pub fn count_refusal(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `bytes` more would fit now (a hint: another transaction may take them first).
    pub fn has_room(&self, bytes: usize) -> bool {
        self.in_use()
            .checked_add(bytes)
            .is_some_and(|n| n <= self.limit())
    }

    /// Reserves `bytes`, or returns `None` when they do not fit.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        if !self.take(bytes) {
            return None;
        }
        Some(Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Adds `bytes` to the count if the sum stays within the limit.
    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit())
            })
            .is_ok()
    }
}

impl Reservation {
    /// The budget it comes from.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `more` bytes in addition, if they fit.
    pub fn grow(&mut self, more: usize) -> bool {
        if self.budget.take(more) {
            self.bytes += more;
            true
        } else {
            false
        }
    }

    /// Takes over what `other` holds (from the same budget), so that one drop gives all back.
    pub fn absorb(&mut self, mut other: Reservation) {
        debug_assert!(std::ptr::eq(&*self.budget, &*other.budget));
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Holds at least `total` bytes in all: grows by the difference, if it fits.
    pub fn grow_to(&mut self, total: usize) -> bool {
        total <= self.bytes || self.grow(total - self.bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The default budget: a quarter of the memory this process may use (the machine's, or its
/// cgroup's limit when lower), and never less than one message of `max_message_size` plus
/// 1 MiB, so that the largest message allowed can always be taken when nothing else is in flight.
pub fn default_limit(max_message_size: u64) -> u64 {
    let memory = [memory_total(), cgroup_limit()]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(4 << 30);
    (memory / 4).max(max_message_size.saturating_add(1 << 20))
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn memory_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`), when it has one.
fn cgroup_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        // "max", or a number that may be the v1 "no limit" sentinel (close to i64::MAX).
        if let Some(n) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&n| n < (1 << 60))
        {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_pass_the_limit_and_give_back_on_drop() {
        let b = Budget::new(100);
        let mut a = b.try_reserve(60).expect("fits");
        assert!(b.try_reserve(41).is_none());
        let c = b.try_reserve(40).expect("fits exactly");
        assert_eq!(b.in_use(), 100);
        assert!(!a.grow(1));
        drop(c);
        assert!(a.grow_to(90));
        assert_eq!((a.bytes(), b.in_use()), (90, 90));
        assert!(a.grow_to(50), "already holds more");
        assert!(!b.has_room(11));
        drop(a);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn concurrent_reservations_stay_within_the_limit() {
        let b = Budget::new(1000);
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, peak) = (Arc::clone(&b), Arc::clone(&peak));
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        if let Some(mut r) = b.try_reserve(1 + i % 300) {
                            r.grow(i % 200);
                            peak.fetch_max(b.in_use(), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert!(peak.load(Ordering::Relaxed) <= 1000);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn the_default_fits_the_largest_message() {
        let d = default_limit(50 << 20);
        assert!(d > 50 << 20);
        assert_eq!(default_limit(u64::MAX), u64::MAX);
    }
}
