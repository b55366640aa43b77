//! Indexing journaled pixel hits into sled.
//!
//! The pixel listener appends each verified hit to the journal ([`super::journal`]) and
//! answers. One indexer thread per store reads the journal in order and, per batch of up to
//! [`BATCH`] hits, looks up each message, classifies the hit (the early-load rule needs the
//! message's hand-off time), and commits the opens, the message statistics, the counters, the
//! webhook outbox rows and the journal position reached in ONE sled transaction. Then it feeds
//! live followers and the open log, and writes the one log line per open.
//!
//! The thread runs under `SCHED_IDLE` (nice 19 where refused): when the machine is saturated, answering
//! pixels comes first and the index catches up after the burst. While a backlog builds up on
//! contended CPUs it also pauses between small batches (`pace.rs`). Readers that must see every
//! answered hit (the admin API) wait for the index to reach the journal's end first
//! ([`super::Store::caught_up`]).
//!
//! A hit whose message is unknown (purged, or another instance's store) is counted invalid and
//! dropped; a hit that cannot be decoded or committed is counted as a store error, logged, and
//! skipped, so one bad record never stops the index.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::entry::Entry;
use super::journal::{Position, Read, Reader};
use super::pace::Pace;
use super::{Delivery, Inner, MessageRecord, OpenHit, Store, StoreError};
use crate::token::MessageId;
use crate::track::{Certainty, Hints, NetKind, OpenEvent, Proxy, Seen, Windows, classify};

/// Hits indexed in one transaction at most.
pub const BATCH: usize = 512;
/// The first byte of a hit journaled before address evidence existed (still read).
const HIT_V1: u8 = 1;
/// The first byte of an encoded [`Hit`].
const HIT_V2: u8 = 2;
/// How long the idle indexer waits after a first new entry for those that follow.
const LINGER: Duration = Duration::from_millis(10);
/// Wait after the store failed as a whole (sled cannot write) before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// Pixel hit counters (exported as metrics by the admin listener).
#[derive(Debug, Default)]
pub struct HitCounters {
    /// Hits with a valid token of a known message: an open was recorded.
    pub valid: AtomicU64,
    /// Hits with a forged, malformed or unknown token: nothing recorded.
    pub invalid: AtomicU64,
    /// Valid hits the store failed to record (the GIF was still served).
    pub store_errors: AtomicU64,
}

/// A pixel load with an authentic token, as the listener hands it to the store; classified
/// when indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit<'a> {
    /// The message the token names.
    pub message: MessageId,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Client IP per the trust rules (the store applies `store.anonymize_ip` before writing).
    pub ip: IpAddr,
    /// User-Agent (the listener caps it at 1 KiB; borrowed from the request where it is
    /// valid UTF-8).
    pub user_agent: Cow<'a, str>,
    /// The request's method and headers that tell the classifier something.
    pub hints: Hints,
    /// `tracking.machine_window` and `tracking.probable_window` when the hit arrived.
    pub windows: Windows,
    /// What the full address was when the hit arrived (`evidence`), before anonymisation.
    pub seen: HitSeen<'a>,
}

/// The evidence about a hit's address, journaled with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HitSeen<'a> {
    /// The catalogue network the address was in.
    pub network: Option<(NetKind, Certainty)>,
    /// It belonged to a scanner vendor's autonomous system.
    pub scanner_asn: bool,
    /// Who runs that network or system (at most 255 bytes journaled).
    pub label: Cow<'a, str>,
    /// Its country, with a country database.
    pub country: Option<[u8; 2]>,
}

impl HitSeen<'_> {
    /// What the classifier reads.
    pub fn as_seen(&self) -> Seen<'_> {
        Seen {
            network: self.network,
            scanner_asn: self.scanner_asn,
            label: &self.label,
        }
    }
}

/// Network kinds as journaled (0: none).
const NET_KINDS: [NetKind; 5] = [
    NetKind::Scanner,
    NetKind::Provider(Proxy::Google),
    NetKind::Provider(Proxy::Yahoo),
    NetKind::Provider(Proxy::Microsoft),
    NetKind::Provider(Proxy::Apple),
];

/// The longest label journaled.
const MAX_LABEL: usize = 255;

/// `s` cut to at most `max` bytes on a character boundary.
fn capped(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Hit<'_> {
    /// [`Hit::encode_with_ip`] with the hit's own address, into a vector of its own.
    #[cfg(test)]
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        self.encode_with_ip(self.ip, &mut b);
        b
    }

    /// The most bytes [`Hit::encode_with_ip`] appends.
    pub(super) fn encoded_len(&self) -> usize {
        58 + self.seen.label.len().min(MAX_LABEL) + self.user_agent.len().min(u16::MAX as usize)
    }

    /// Appends the journal record to `b`, with `ip` in place of the hit's own (the anonymised
    /// address): `2 ‖ id(16) ‖ at_ms(8) ‖ machine_window_ms(4) ‖ probable_window_ms(4) ‖
    /// flags(1) ‖ net(1) ‖ country(2) ‖ ip(4|16) ‖ label_len(1) ‖ label ‖ ua_len(2) ‖ ua`,
    /// integers little-endian; flags: 1 prefetch, 2 mobile, 4 IPv6, 8 HEAD, 16 certain network,
    /// 32 scanner ASN, 64 country known; net: 0 none, else 1 + the index in `NET_KINDS`.
    pub(super) fn encode_with_ip(&self, ip: IpAddr, b: &mut Vec<u8>) {
        let ua = &self.user_agent.as_bytes()[..self.user_agent.len().min(u16::MAX as usize)];
        let label = capped(&self.seen.label, MAX_LABEL).as_bytes();
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        b.push(HIT_V2);
        b.extend_from_slice(self.message.as_bytes());
        b.extend_from_slice(&self.at_ms.to_le_bytes());
        b.extend_from_slice(&ms(self.windows.machine).to_le_bytes());
        b.extend_from_slice(&ms(self.windows.probable).to_le_bytes());
        let s = &self.seen;
        let flags = u8::from(self.hints.prefetch)
            | (u8::from(self.hints.mobile) << 1)
            | (u8::from(ip.is_ipv6()) << 2)
            | (u8::from(self.hints.head) << 3)
            | (u8::from(matches!(s.network, Some((_, Certainty::Certain)))) << 4)
            | (u8::from(s.scanner_asn) << 5)
            | (u8::from(s.country.is_some()) << 6);
        b.push(flags);
        let net = s.network.map_or(0, |(k, _)| {
            1 + NET_KINDS.iter().position(|n| *n == k).unwrap_or(0) as u8
        });
        b.push(net);
        b.extend_from_slice(&s.country.unwrap_or_default());
        match ip {
            IpAddr::V4(v4) => b.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b.extend_from_slice(&v6.octets()),
        }
        b.push(label.len() as u8);
        b.extend_from_slice(label);
        b.extend_from_slice(&(ua.len() as u16).to_le_bytes());
        b.extend_from_slice(ua);
    }

    /// The inverse of [`Hit::encode_with_ip`] (and of the version-1 record written before
    /// address evidence existed); `None` for anything else.
    pub(super) fn decode(b: &[u8]) -> Option<Hit<'static>> {
        let (&v, b) = b.split_first()?;
        if v != HIT_V1 && v != HIT_V2 {
            return None;
        }
        let (id, b) = b.split_at_checked(16)?;
        let (at, b) = b.split_at_checked(8)?;
        let (window, b) = b.split_at_checked(4)?;
        let ms = |w: &[u8]| -> Option<Duration> {
            Some(Duration::from_millis(u64::from(u32::from_le_bytes(
                w.try_into().ok()?,
            ))))
        };
        let (probable, b) = if v == HIT_V2 {
            let (p, b) = b.split_at_checked(4)?;
            (ms(p)?, b)
        } else {
            (Duration::ZERO, b)
        };
        let (&flags, b) = b.split_first()?;
        let (net, country, b) = if v == HIT_V2 {
            let (&net, b) = b.split_first()?;
            let (c, b) = b.split_at_checked(2)?;
            (net, [c[0], c[1]], b)
        } else {
            (0, [0; 2], b)
        };
        let (ip, b) = if flags & 4 != 0 {
            let (ip, b) = b.split_at_checked(16)?;
            let ip: [u8; 16] = ip.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(ip)), b)
        } else {
            let (ip, b) = b.split_at_checked(4)?;
            let ip: [u8; 4] = ip.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(ip)), b)
        };
        let (label, b) = if v == HIT_V2 {
            let (&len, b) = b.split_first()?;
            let (l, b) = b.split_at_checked(usize::from(len))?;
            (String::from_utf8_lossy(l).into_owned(), b)
        } else {
            (String::new(), b)
        };
        let (len, ua) = b.split_at_checked(2)?;
        let len = u16::from_le_bytes(len.try_into().ok()?) as usize;
        if ua.len() != len {
            return None;
        }
        let network = match net {
            0 => None,
            n => {
                let kind = *NET_KINDS.get(usize::from(n) - 1)?;
                let certainty = if flags & 16 != 0 {
                    Certainty::Certain
                } else {
                    Certainty::Probable
                };
                Some((kind, certainty))
            }
        };
        Some(Hit {
            message: MessageId::from_slice(id)?,
            at_ms: u64::from_le_bytes(at.try_into().ok()?),
            ip,
            user_agent: Cow::Owned(String::from_utf8_lossy(ua).into_owned()),
            hints: Hints {
                prefetch: flags & 1 != 0,
                mobile: flags & 2 != 0,
                head: flags & 8 != 0,
            },
            windows: Windows {
                machine: ms(window)?,
                probable,
            },
            seen: HitSeen {
                network,
                scanner_asn: flags & 32 != 0,
                label: Cow::Owned(label),
                country: (flags & 64 != 0).then_some(country),
            },
        })
    }
}

/// Indexes the next batch of journaled hits after `reader`'s position, up to the journal's
/// end at the time of the call. Returns whether it got anywhere.
pub(super) fn index_batch(
    store: &Store,
    reader: &mut Reader,
    limit: usize,
) -> Result<bool, StoreError> {
    let inner = &*store.inner;
    let end = inner.journal.end();
    let start = reader.position();
    let mut mark = start;
    let mut run = Run::default();
    let mut taken = 0;
    while taken < limit {
        match reader.next(end).map_err(StoreError::Io)? {
            Read::Record(payload, at) => {
                mark = at;
                taken += 1;
                match Entry::decode(&payload) {
                    Some(e) => run.push(store, e, at)?,
                    None => {
                        inner.hits.store_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(journal = ?at, "journal: undecodable entry skipped");
                    }
                }
            }
            Read::End => break,
            Read::Bad(offset, why) => {
                inner.hits.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    generation = mark.generation,
                    offset,
                    why,
                    "journal: the rest of this segment is unreadable and skipped"
                );
                reader.skip_segment();
                mark = reader.position();
                break;
            }
        }
    }
    if mark == start {
        // No record, but possibly past segments that no longer exist (a fresh journal starts
        // at generation 1): that is indexed too.
        let at = reader.position();
        if at > *inner.indexed.borrow() {
            inner.indexed.send_replace(at);
        }
        return Ok(false);
    }
    // The last run commits the mark past everything read, undecodable entries included.
    run.flush(store, mark)?;
    store.indexed_up_to(mark);
    Ok(true)
}

/// Consecutive entries of one sort, committed together: pixel hits, or message records and
/// final replies. A change of sort commits the run before it, so every entry is indexed after
/// those journaled before it (a message's record before its opens).
#[derive(Default)]
struct Run {
    /// Hits and where each ends in the journal.
    hits: Vec<(Hit<'static>, Position)>,
    /// Message records.
    messages: Vec<MessageRecord>,
    /// Final replies.
    finishes: Vec<(MessageId, Delivery)>,
    /// Where the run's last entry ends.
    last: Position,
}

impl Run {
    fn push(&mut self, store: &Store, e: Entry, at: Position) -> Result<(), StoreError> {
        let is_hit = matches!(e, Entry::Hit(_));
        let has_messages = !self.messages.is_empty() || !self.finishes.is_empty();
        if (is_hit && has_messages) || (!is_hit && !self.hits.is_empty()) {
            let last = self.last;
            self.flush(store, last)?;
        }
        match e {
            Entry::Hit(h) => self.hits.push((h, at)),
            Entry::Message(m) => self.messages.push(m),
            Entry::Finish(id, d) => self.finishes.push((id, d)),
        }
        self.last = at;
        Ok(())
    }

    /// Commits the run with the journal position `mark` and empties it.
    fn flush(&mut self, store: &Store, mark: Position) -> Result<(), StoreError> {
        if !self.hits.is_empty() {
            index_hits(store, std::mem::take(&mut self.hits), mark)
        } else {
            let (recs, done) = (
                std::mem::take(&mut self.messages),
                std::mem::take(&mut self.finishes),
            );
            index_messages(store, &recs, &done, mark)
        }
    }
}

/// Moves message records and final replies into the store with the journal position `mark`.
/// One that cannot be written (its message purged meanwhile, a write error) is logged and
/// skipped, so that the others are recorded.
fn index_messages(
    store: &Store,
    recs: &[MessageRecord],
    done: &[(MessageId, Delivery)],
    mark: Position,
) -> Result<(), StoreError> {
    let r: Vec<&MessageRecord> = recs.iter().collect();
    let d: Vec<(&MessageId, &Delivery)> = done.iter().map(|(i, d)| (i, d)).collect();
    if store.commit_messages(&r, &d, Some(mark)).is_ok() {
        return Ok(());
    }
    for rec in recs {
        if let Err(e) = store.record_message(rec) {
            tracing::error!(message = %rec.id, error = %e, event = "store_error", "cannot record a journaled message");
        }
    }
    for (id, delivery) in done {
        if let Err(e) = store.finish_message(id, delivery) {
            tracing::warn!(message = %id, error = %e, event = "store_error", "cannot record the upstream reply");
        }
    }
    store.commit_prepared(&[], mark).map(|_| ())
}

/// Classifies and records a run of hits with the journal position `mark`.
fn index_hits(
    store: &Store,
    hits: Vec<(Hit<'static>, Position)>,
    mark: Position,
) -> Result<(), StoreError> {
    let inner = &*store.inner;
    let mut prepared = Vec::with_capacity(hits.len());
    for (h, at) in hits {
        match store.open_context(&h.message) {
            Ok(Some(ctx)) => {
                let since = Duration::from_millis(h.at_ms.saturating_sub(ctx.sent_at()));
                let classification = classify(
                    &h.user_agent,
                    &h.hints,
                    &h.seen.as_seen(),
                    Some(since),
                    &h.windows,
                );
                let hit = OpenHit {
                    at_ms: h.at_ms,
                    ip: h.ip,
                    // Decoded hits own their user agent: moved, not copied.
                    user_agent: h.user_agent.into_owned(),
                    classification,
                    country: h.seen.country.map(country_code),
                };
                prepared.push((store.prepare_open(ctx, &hit), at));
            }
            Ok(None) => {
                // Authentic token, no record: purged by retention, or another instance's store.
                inner.hits.invalid.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                inner.hits.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(message = %h.message, error = %e, "cannot read message for open");
            }
        }
    }
    let refs: Vec<_> = prepared.iter().map(|(o, _)| o).collect();
    let results = match store.commit_prepared(&refs, mark) {
        Ok(events) => events.into_iter().map(Ok).collect(),
        // One bad record must not cost the others their opens: retry them one by one, each
        // with its own journal position, so that a failure part way leaves the index exact.
        Err(_) => {
            let out: Vec<_> = prepared
                .iter()
                .map(|(o, at)| {
                    store
                        .commit_prepared(&[o], *at)
                        .map(|mut v| v.pop().flatten())
                })
                .collect();
            // Past whatever failed or was skipped.
            store.commit_prepared(&[], mark)?;
            out
        }
    };
    for ((open, _), result) in prepared.iter().zip(results) {
        match result {
            Ok(Some(e)) => {
                inner.hits.valid.fetch_add(1, Ordering::Relaxed);
                log_open(&e);
            }
            Ok(None) => {
                inner.hits.invalid.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                inner.hits.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(message = %open.message(), error = %e, "cannot record open");
            }
        }
    }
    Ok(())
}

/// A journaled country code as the event shows it.
fn country_code(c: [u8; 2]) -> String {
    String::from_utf8_lossy(&c).into_owned()
}

/// The one log line per open an admin tails.
fn log_open(e: &OpenEvent) {
    tracing::info!(
        message = %e.message,
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

/// Indexes everything journaled so far (on open, before the store is handed out).
pub(super) fn catch_up(store: &Store, reader: &mut Reader) -> Result<(), StoreError> {
    while index_batch(store, reader, BATCH)? {}
    Ok(())
}

/// Starts the indexer thread. It ends once the last handle to the store is gone.
pub(super) fn spawn(
    inner: Weak<Inner>,
    reader: Reader,
    wake: Receiver<()>,
    flush: Duration,
) -> std::io::Result<()> {
    // Returns once the thread has taken its low priority, so that it is in place before the
    // first pixel is answered.
    let (started, ready) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("open-indexer".into())
        .spawn(move || {
            lower_priority();
            let _ = started.send(());
            run(&inner, reader, &wake, flush);
        })?;
    let _ = ready.recv();
    Ok(())
}

fn run(weak: &Weak<Inner>, mut reader: Reader, wake: &Receiver<()>, flush: Duration) {
    let mut synced = Instant::now();
    let mut pace = Pace::default();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let store = Store { inner };
        pace.start();
        let progressed = match index_batch(&store, &mut reader, pace.batch_limit(BATCH)) {
            Ok(p) => p,
            Err(e) => {
                store
                    .inner
                    .hits
                    .store_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "open index: cannot write; retrying");
                reader = store.inner.journal.reader(*store.inner.indexed.borrow());
                drop(store);
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if synced.elapsed() >= flush {
            synced = Instant::now();
            if let Err(e) = store.inner.journal.sync() {
                tracing::error!(error = %e, "cannot fsync the open journal");
            }
        }
        let pause = progressed
            && pace.after(
                store.index_lag_bytes(),
                store.inner.readers_waiting.load(Ordering::Relaxed) > 0,
            );
        drop(store);
        if pause {
            stand_back(weak, pace.pause());
        } else if !progressed {
            pace.caught_up();
            match wake.recv_timeout(flush) {
                Ok(()) => linger(weak),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// Woken from idle by a first new entry, waits [`LINGER`] for the entries that follow it, so
/// that one transaction records them all: under a steady trickle of mail every message would
/// otherwise cost two sled transactions of its own (record, reply), each a buffer write by
/// sled's IO threads. Not when a reader is waiting for the index.
fn linger(weak: &Weak<Inner>) {
    match weak.upgrade() {
        Some(inner) if inner.readers_waiting.load(Ordering::Relaxed) == 0 => {
            drop(inner);
            std::thread::sleep(LINGER);
        }
        _ => {}
    }
}

/// Pauses for `pause` (see `pace.rs`), less if a reader starts waiting for the index or the
/// store is dropped meanwhile.
fn stand_back(weak: &Weak<Inner>, pause: Duration) {
    const STEP: Duration = Duration::from_millis(10);
    let Some(inner) = weak.upgrade() else { return };
    inner.index_pauses.fetch_add(1, Ordering::Relaxed);
    drop(inner);
    let until = Instant::now() + pause;
    while Instant::now() < until {
        std::thread::sleep(STEP);
        match weak.upgrade() {
            Some(inner) if inner.readers_waiting.load(Ordering::Relaxed) == 0 => {}
            _ => return,
        }
    }
}

/// Puts the calling thread (the indexer) behind everything else: Linux's `SCHED_IDLE`, under
/// which a woken pixel thread takes the CPU back at once instead of waiting out the indexer's
/// time slice; nice 19 where that policy is refused. The indexer still runs whenever a core is
/// idle, and gets a small share when none is, so the index always advances.
fn lower_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let idle = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if let Err(e) = idle {
        tracing::debug!(error = ?e, "open index: SCHED_IDLE refused, using nice 19");
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
            tracing::debug!(error = %e, "open index: cannot lower priority");
        }
    }
}

/// Counts and logs hits lost with a journal buffer that could not be written.
pub(super) fn lost(hits: &HitCounters, l: &super::journal::Lost) {
    hits.store_errors.fetch_add(l.records, Ordering::Relaxed);
    tracing::error!(error = %l.error, lost = l.records, "cannot write the open journal");
}

/// Hit counters shared between the listener and the indexer.
pub(super) fn counters() -> Arc<HitCounters> {
    Arc::new(HitCounters::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(ip: &str, ua: &str) -> Hit<'static> {
        Hit {
            message: MessageId::random(),
            at_ms: 1_790_000_000_123,
            ip: ip.parse().unwrap(),
            user_agent: ua.to_string().into(),
            hints: Hints {
                prefetch: true,
                mobile: false,
                head: true,
            },
            windows: Windows {
                machine: Duration::from_secs(30),
                probable: Duration::from_secs(900),
            },
            seen: HitSeen {
                network: Some((NetKind::Provider(Proxy::Apple), Certainty::Probable)),
                scanner_asn: true,
                label: "iCloud Private Relay".into(),
                country: Some(*b"DE"),
            },
        }
    }

    #[test]
    fn hits_round_trip() {
        for h in [
            hit("192.0.2.7", "Mozilla/5.0 (iPhone) Mobile"),
            hit("2001:db8::1", ""),
            hit("::ffff:192.0.2.1", "é ü"),
        ] {
            assert_eq!(Hit::decode(&h.encode()), Some(h));
        }
    }

    #[test]
    fn every_network_kind_and_no_evidence_round_trip() {
        for network in NET_KINDS
            .iter()
            .flat_map(|k| [(*k, Certainty::Certain), (*k, Certainty::Probable)])
            .map(Some)
            .chain([None])
        {
            let mut h = hit("192.0.2.7", "ua");
            h.seen = HitSeen {
                network,
                scanner_asn: false,
                label: "".into(),
                country: None,
            };
            assert_eq!(Hit::decode(&h.encode()), Some(h));
        }
        // A long label is cut on a character boundary.
        let mut h = hit("192.0.2.7", "ua");
        h.seen.label = "é".repeat(200).into();
        let back = Hit::decode(&h.encode()).unwrap();
        assert_eq!(back.seen.label.len(), 254);
    }

    #[test]
    fn version_1_records_still_decode() {
        // `1 ‖ id ‖ at_ms ‖ window_ms ‖ flags ‖ ip ‖ ua_len ‖ ua`, as journaled before.
        let id = MessageId::random();
        let mut b = vec![1u8];
        b.extend_from_slice(id.as_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(&5000u32.to_le_bytes());
        b.push(1);
        b.extend_from_slice(&[192, 0, 2, 1]);
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(b"ua");
        let h = Hit::decode(&b).unwrap();
        assert_eq!(h.message, id);
        assert!(h.hints.prefetch && !h.hints.head);
        assert_eq!(h.windows.machine, Duration::from_secs(5));
        assert_eq!(h.seen, HitSeen::default());
        assert_eq!(h.user_agent, "ua");
    }

    #[test]
    fn anything_else_does_not_decode() {
        let b = hit("192.0.2.7", "ua").encode();
        for cut in 0..b.len() {
            assert_eq!(Hit::decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(b'x');
        assert_eq!(Hit::decode(&longer), None);
        let mut v3 = b;
        v3[0] = 3;
        assert_eq!(Hit::decode(&v3), None);
    }
}
