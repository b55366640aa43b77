//! When the open indexer stands back for the pixel listener.
//!
//! The indexer runs under `SCHED_IDLE` (see `indexer.rs`), so a pixel thread that wakes takes a
//! core from it at once. During a pixel burst that saturates the CPUs that is not enough: the
//! indexer still runs in each short gap between requests, and every time a pixel thread wakes
//! it has to push the indexer off a core whose caches sled's B-tree walk has just filled. With
//! the indexer stopped for the whole burst, the listener answered 5–10 % more requests per
//! second on the 2-core bench machine (three pairs of 10 s wrk runs, `bench/RESULTS.md`); the
//! index then catches up after the burst instead of during it.
//!
//! So the indexer measures, over each batch, how long it waited for a CPU (the kernel's
//! run-queue delay, `/proc/thread-self/schedstat`) against how long it ran (its CPU clock).
//! When it waited longer than it ran, the CPUs are contended, and if a backlog of at least
//! [`BACKLOG`] bytes has built up (~7 000 hits: a burst, not everyday traffic), it pauses for
//! [`PAUSE`], then indexes a probe batch of [`PROBE_BATCH`] hits and measures again (the first
//! batch after catching up is a probe too). Each further pause in a row is twice as long, up to
//! [`MAX_PAUSE`]: a probe batch costs a few milliseconds of CPU (B-tree pages fetched back into
//! a cache the pixel threads have filled), which is 2 % of the listener process during a burst
//! at one probe every 200 ms and an eighth of that once the pauses reach [`MAX_PAUSE`]; in
//! exchange the index could start catching up up to [`MAX_PAUSE`] after a long burst ends, so
//! a pause ends early once the CPUs go idle (`/proc/stat`: at least half of the CPU time of the
//! last [`IDLE_WINDOW`] idle): the burst is over. It does not stand back:
//! - when someone waits for the index (the admin API's read-your-opens wait): a pause ends as
//!   soon as a reader arrives;
//! - once it has been behind for [`LIMIT`] without a break: under a sustained overload the
//!   opens must still arrive, and the indexer falls back to taking what `SCHED_IDLE` gives it;
//! - where the kernel does not report run-queue delay.
//!
//! Live followers and webhooks see the opens of a saturating burst after the burst (they would
//! lag anyway: on the bench machine the listener answers ~90 000 hits/s, and the indexer
//! records 30 000–100 000 opens/s on a free core, depending on how many messages a batch opens). `pixelrelay_open_index_pauses_total` counts the pauses.

use std::fs::File;
use std::time::{Duration, Instant};

/// A backlog below this many journal bytes is always indexed at once.
pub const BACKLOG: u64 = 1 << 20;
/// The first pause of a row.
const PAUSE: Duration = Duration::from_millis(200);
/// The longest pause (the fourth in a row and later).
const MAX_PAUSE: Duration = Duration::from_millis(1600);
/// Hits indexed between pauses, to measure the contention again.
const PROBE_BATCH: usize = 64;
/// The indexer stops pausing once it has been behind this long without a break.
const LIMIT: Duration = Duration::from_secs(60);
/// Run-queue delay below this is never contention (wake-up latency, clock granularity).
const MIN_WAIT: Duration = Duration::from_millis(1);
/// A pause ends once the CPUs were at least half idle over this long.
pub const IDLE_WINDOW: Duration = Duration::from_millis(50);

/// The machine's CPU time so far from `/proc/stat`: (all, idle incl. iowait), in clock ticks;
/// `None` where it cannot be read.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    parse_cpu_line(std::fs::read_to_string("/proc/stat").ok()?.lines().next()?)
}

/// (all, idle) of `/proc/stat`'s first line, `cpu  user nice system idle iowait irq …`.
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((v.iter().take(8).sum(), idle))
}

/// Whether the CPUs were at least half idle between two [`cpu_ticks`] readings.
pub fn mostly_idle(before: (u64, u64), after: (u64, u64)) -> bool {
    let all = after.0.saturating_sub(before.0);
    let idle = after.1.saturating_sub(before.1);
    all > 0 && 2 * idle >= all
}

/// The indexer thread's CPU time and run-queue delay so far.
#[derive(Debug, Clone, Copy)]
struct Usage {
    ran: Duration,
    waited: Duration,
}

impl Usage {
    /// The calling thread's usage, `schedstat` being its `/proc/thread-self/schedstat` (kept
    /// open: opening it per batch cost more than the batch under a trickle of mail); `None`
    /// where the kernel does not report run-queue delay.
    fn now(schedstat: &mut Option<File>) -> Option<Usage> {
        let (_, waited) = read_schedstat(schedstat)?;
        let cpu = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Some(Usage {
            ran: Duration::new(
                u64::try_from(cpu.tv_sec).ok()?,
                u32::try_from(cpu.tv_nsec).ok()?,
            ),
            waited: Duration::from_nanos(waited),
        })
    }
}

/// (time on a CPU, time waiting for one) in nanoseconds from the calling thread's
/// `/proc/thread-self/schedstat`, opened into `file` on first use and re-read after.
fn read_schedstat(file: &mut Option<File>) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileExt as _;
    if file.is_none() {
        *file = File::open("/proc/thread-self/schedstat").ok();
    }
    let mut buf = [0u8; 128];
    // A proc file read from offset 0 is generated afresh.
    let n = file.as_ref()?.read_at(&mut buf, 0).ok()?;
    let mut f = std::str::from_utf8(&buf[..n]).ok()?.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// What the indexer saw over one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// CPU time the batch took.
    pub ran: Duration,
    /// Time it spent runnable, waiting for a CPU.
    pub waited: Duration,
    /// Journal bytes not yet indexed after it.
    pub backlog: u64,
    /// How long the index has been behind without a break.
    pub behind_for: Duration,
    /// Someone waits for the index to catch up.
    pub reader_waiting: bool,
}

/// Whether the indexer should pause after `b`.
pub fn stand_back(b: &Batch) -> bool {
    !b.reader_waiting
        && b.backlog >= BACKLOG
        && b.behind_for < LIMIT
        && b.waited >= MIN_WAIT
        && b.waited > b.ran
}

/// The indexer's measurements between batches.
#[derive(Debug, Default)]
pub struct Pace {
    /// Usage when the current batch started.
    start: Option<Usage>,
    /// Since when the index has been behind, if it is.
    behind_since: Option<Instant>,
    /// Whether the next batch is a probe: after a pause, or after catching up (a burst's first
    /// batch costs a millisecond or two to measure).
    probe: bool,
    /// Pauses in a row so far.
    pauses: u32,
    /// The indexer thread's `/proc/thread-self/schedstat`, once opened (by that thread).
    schedstat: Option<File>,
}

impl Pace {
    /// How many hits the next batch may index.
    pub fn batch_limit(&self, full: usize) -> usize {
        if self.probe { PROBE_BATCH } else { full }
    }

    /// Call before indexing a batch.
    pub fn start(&mut self) {
        self.start = Usage::now(&mut self.schedstat);
    }

    /// Call after a batch that indexed something, with the backlog left: whether to pause.
    pub fn after(&mut self, backlog: u64, reader_waiting: bool) -> bool {
        let now = Instant::now();
        let behind_for = if backlog == 0 {
            self.behind_since = None;
            Duration::ZERO
        } else {
            now - *self.behind_since.get_or_insert(now)
        };
        let (Some(start), Some(end)) = (self.start.take(), Usage::now(&mut self.schedstat)) else {
            // No measurement, no pause: this also ends a row of pauses.
            self.probe = false;
            self.pauses = 0;
            return false;
        };
        self.decide(&Batch {
            ran: end.ran.saturating_sub(start.ran),
            waited: end.waited.saturating_sub(start.waited),
            backlog,
            behind_for,
            reader_waiting,
        })
    }

    /// Whether to pause after `b`; counts the pauses in a row.
    fn decide(&mut self, b: &Batch) -> bool {
        self.probe = stand_back(b);
        self.pauses = if self.probe { self.pauses + 1 } else { 0 };
        self.probe
    }

    /// How long to pause, after [`Pace::after`] said to: [`PAUSE`], doubled for each pause
    /// in a row before this one, at most [`MAX_PAUSE`].
    pub fn pause(&self) -> Duration {
        PAUSE
            .saturating_mul(1 << self.pauses.saturating_sub(1).min(31))
            .min(MAX_PAUSE)
    }

    /// Call when the index has caught up with the journal.
    pub fn caught_up(&mut self) {
        self.behind_since = None;
        self.probe = true;
        self.pauses = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn contended() -> Batch {
        Batch {
            ran: 2 * MS,
            waited: 30 * MS,
            backlog: 8 * BACKLOG,
            behind_for: Duration::from_secs(3),
            reader_waiting: false,
        }
    }

    #[test]
    fn stands_back_when_it_waited_longer_than_it_ran_behind_a_backlog() {
        assert!(stand_back(&contended()));
    }

    #[test]
    fn each_condition_alone_keeps_it_indexing() {
        let cases = [
            (
                "a free CPU",
                Batch {
                    waited: MS,
                    ..contended()
                },
            ),
            (
                "waiting as long as running",
                Batch {
                    waited: 2 * MS,
                    ..contended()
                },
            ),
            (
                "wake-up noise on a tiny batch",
                Batch {
                    ran: Duration::from_micros(100),
                    waited: Duration::from_micros(900),
                    ..contended()
                },
            ),
            (
                "a small backlog",
                Batch {
                    backlog: BACKLOG - 1,
                    ..contended()
                },
            ),
            (
                "a reader waiting",
                Batch {
                    reader_waiting: true,
                    ..contended()
                },
            ),
            (
                "behind for too long",
                Batch {
                    behind_for: LIMIT,
                    ..contended()
                },
            ),
        ];
        for (why, b) in cases {
            assert!(!stand_back(&b), "{why}: {b:?}");
        }
    }

    #[test]
    fn the_thread_reports_its_cpu_time_and_run_queue_delay() {
        let mut file = None;
        let start = Usage::now(&mut file).expect("/proc/thread-self/schedstat on Linux");
        let (on_cpu, _) = read_schedstat(&mut file).expect("schedstat");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < 20 * MS {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let end = Usage::now(&mut file).expect("schedstat");
        assert!(end.ran >= start.ran + 5 * MS, "{start:?} → {end:?}");
        assert!(end.waited >= start.waited);
        // The file stays open and each read is fresh.
        let (later, _) = read_schedstat(&mut file).expect("schedstat");
        assert!(later >= on_cpu + 5_000_000, "{on_cpu} → {later}");
    }

    #[test]
    fn a_probe_batch_comes_first_after_catching_up_and_a_batch_without_pause_lifts_it() {
        let mut p = Pace::default();
        assert_eq!(p.batch_limit(512), 512);
        p.behind_since = Some(Instant::now());
        p.caught_up();
        assert_eq!(p.batch_limit(512), PROBE_BATCH);
        assert!(p.behind_since.is_none());
        p.start();
        // A reader waiting: no pause, so full batches again.
        assert!(!p.after(8 * BACKLOG, true));
        assert_eq!(p.batch_limit(512), 512);
    }

    #[test]
    fn pauses_in_a_row_double_up_to_the_longest_and_start_over_after_a_full_batch() {
        let mut p = Pace::default();
        let mut seen = Vec::new();
        for _ in 0..6 {
            assert!(p.decide(&contended()));
            assert_eq!(p.batch_limit(512), PROBE_BATCH);
            seen.push(p.pause().as_millis());
        }
        assert_eq!(seen, [200, 400, 800, 1600, 1600, 1600]);
        // A batch that does not stand back (here: a reader waits) ends the row.
        let reader = Batch {
            reader_waiting: true,
            ..contended()
        };
        assert!(!p.decide(&reader));
        assert!(p.decide(&contended()));
        assert_eq!(p.pause(), PAUSE);
        // So does catching up.
        assert!(p.decide(&contended()));
        p.caught_up();
        assert!(p.decide(&contended()));
        assert_eq!(p.pause(), PAUSE);
    }

    #[test]
    fn it_tracks_how_long_the_index_has_been_behind() {
        let mut p = Pace::default();
        p.start();
        // A reader waiting: whatever the CPU did meanwhile, no pause.
        assert!(!p.after(8 * BACKLOG, true));
        let since = p.behind_since.expect("behind");
        p.start();
        assert!(!p.after(BACKLOG, true));
        assert_eq!(
            p.behind_since,
            Some(since),
            "still behind since the first batch"
        );
        p.start();
        assert!(!p.after(0, true));
        assert!(p.behind_since.is_none());
    }

    #[test]
    fn cpu_ticks_parse_and_idle_means_half_the_time() {
        assert_eq!(
            parse_cpu_line("cpu  10 0 5 80 5 0 0 0 0 0"),
            Some((100, 85))
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4"), None);
        assert_eq!(parse_cpu_line("cpu  x 2 3 4"), None);
        assert!(mostly_idle((100, 50), (120, 60)));
        assert!(!mostly_idle((100, 50), (120, 59)));
        assert!(
            !mostly_idle((100, 50), (100, 50)),
            "no time passed, no verdict"
        );
        if let Some((all, idle)) = cpu_ticks() {
            assert!(all >= idle);
        }
    }
}
