//! `kill -9` loss bound: everything written more than `store.flush_interval` before the crash
//! is still there after a restart, and the counters agree with the records.
//!
//! The test binary re-executes itself as the writer (env `PIXELRELAY_CRASH_CHILD`), which writes
//! a first batch, waits past the flush interval, says so on stdout, then keeps writing until the
//! parent SIGKILLs it mid-write.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use pixelrelay::config::StoreConfig;
use pixelrelay::ingest::{Hit, Ingest};
use pixelrelay::store::{MessageRecord, OpenHit, Store};
use pixelrelay::token::MessageId;
use pixelrelay::track::{Classification, Device};

const FLUSH: Duration = Duration::from_millis(100);
const BATCH: u64 = 200;
const ENV: &str = "PIXELRELAY_CRASH_CHILD";

fn cfg(dir: &Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("db"),
        subjects: true,
        anonymize_ip: false,
        retention_days: 0,
        flush_interval: FLUSH,
        open_log: None,
        postgres: None,
    }
}

/// Message number `n`'s id: deterministic so the parent knows what to look for.
fn id(n: u64) -> MessageId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[8..].copy_from_slice(&(!n).to_be_bytes());
    MessageId(b)
}

/// Message number `n`'s record, received at `at_ms`.
fn record(n: u64, at_ms: u64, subject: Option<String>) -> MessageRecord {
    MessageRecord {
        id: id(n),
        queue_id: format!("Q{n}"),
        at_ms,
        sender: "news@example.com".into(),
        recipients: vec![format!("r{n}@example.net")],
        message_id: None,
        subject,
        size: 100,
        tracked: true,
        skip_reason: None,
    }
}

/// Runs this test binary's `child` test with `env` pointing at `dir`; its stdout piped.
fn spawn_child(child: &str, env: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child, "--nocapture", "--test-threads=1"])
        .env(env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn write_one(s: &Store, n: u64) {
    let at = 1_795_493_183_000 + n;
    s.record_message(&record(n, at, Some(format!("subject {n}"))))
        .unwrap();
    let hit = OpenHit {
        at_ms: at + 10,
        ip: IpAddr::from([192, 0, 2, 1]),
        user_agent: "crash-test".into(),
        classification: Classification {
            client: "Thunderbird".into(),
            device: Device::Desktop,
            machine: false,
            machine_reason: None,
            proxy: None,
        },
        country: None,
        click: None,
    };
    assert!(s.record_open(&id(n), &hit).unwrap().is_some());
}

/// The writer. A no-op unless started by `kill_9_loses_at_most_the_flush_interval`.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(ENV) else {
        return;
    };
    let s = Store::open(&cfg(Path::new(&dir))).unwrap();
    for n in 0..BATCH {
        write_one(&s, n);
    }
    // No explicit flush: the durability under test is sled's own periodic flush.
    std::thread::sleep(FLUSH * 4);
    let mut out = std::io::stdout();
    // libtest has already printed "test crash_child ... " on this line.
    writeln!(out, "SYNCED {BATCH}").unwrap();
    out.flush().unwrap();
    for n in BATCH.. {
        write_one(&s, n);
    }
}

#[test]
fn kill_9_loses_at_most_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("crash_child", ENV, dir.path());
    let stdout = child.stdout.take().unwrap();
    let mut synced = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains("SYNCED") {
            synced = true;
            break;
        }
    }
    // SIGKILL while the child is busy writing the second batch.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        synced,
        "the writer never reported its first batch (status {status})"
    );
    assert!(
        !status.success(),
        "the writer must have been killed, not exit"
    );

    let s = Store::open(&cfg(dir.path())).unwrap();
    for n in 0..BATCH {
        let m = s
            .get_message(&id(n))
            .unwrap()
            .unwrap_or_else(|| panic!("message {n} lost"));
        assert_eq!(m.open_events.len(), 1, "open of message {n} lost");
        assert_eq!(
            m.message.record.subject.as_deref(),
            Some(format!("subject {n}").as_str())
        );
    }
    // Whatever survived of the second batch is consistent: counters match the records.
    let opens = s.opens_after(None, usize::MAX).unwrap();
    let st = s.stats();
    assert!(opens.len() as u64 >= BATCH);
    assert_eq!(
        st.counters.opens,
        opens.len() as u64,
        "counters and events committed together"
    );
    assert_eq!(st.counters.unique_opens, opens.len() as u64);
    eprintln!(
        "after kill -9: {} of the opens written survived ({} guaranteed)",
        opens.len(),
        BATCH
    );
}

const HITS_ENV: &str = "PIXELRELAY_JOURNAL_CRASH_CHILD";
/// Messages the pixel-hit child records before it starts hitting them.
const MESSAGES: u64 = 50;

/// A pixel hit on message `n`, as the listener journals it.
fn hit(n: u64) -> Hit<'static> {
    Hit {
        message: id(n % MESSAGES),
        at_ms: 1_795_493_183_000 + n,
        ip: IpAddr::from([192, 0, 2, 1]),
        user_agent: "Thunderbird/115.4.2".into(),
        hints: Default::default(),
        windows: pixelrelay::track::Windows {
            machine: Duration::from_secs(5),
            probable: Duration::from_secs(900),
        },
        seen: Default::default(),
        click: None,
    }
}

/// The pixel-hit writer. A no-op unless started by
/// `kill_9_loses_no_pixel_hit_older_than_the_journal_linger`.
#[test]
fn journal_crash_child() {
    let Some(dir) = std::env::var_os(HITS_ENV) else {
        return;
    };
    let s = Store::open(&cfg(Path::new(&dir))).unwrap();
    let ingest = Ingest::open(s.clone()).unwrap();
    for n in 0..MESSAGES {
        s.record_message(&record(n, 1_795_493_183_000, None))
            .unwrap();
    }
    s.flush_blocking().unwrap();
    let mut out = std::io::stdout();
    writeln!(out).unwrap();
    // Each hit as the pixel listener journals it; every 100, say how many were journaled at
    // least 20 ms ago (20 times the journal writer's linger, a fifth of the flush interval).
    let mut n = 0;
    loop {
        for _ in 0..100 {
            ingest.append_hit(&hit(n)).unwrap();
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
        writeln!(out, "JOURNALED {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_loses_no_pixel_hit_older_than_the_journal_linger() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("journal_crash_child", HITS_ENV, dir.path());
    let stdout = child.stdout.take().unwrap();
    let mut journaled = 0;
    for line in BufReader::new(stdout).lines() {
        if let Some(n) = line.unwrap().strip_prefix("JOURNALED ") {
            journaled = n.parse().unwrap();
            // Enough hits that the background indexer is part way through them.
            if journaled >= 3000 {
                break;
            }
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(journaled >= 3000, "the writer stopped early ({status})");
    assert!(!status.success(), "the writer must have been killed");

    // Reopening indexes what the dead process journaled and had not indexed.
    let s = Store::open(&cfg(dir.path())).unwrap();
    let ingest = Ingest::open(s.clone()).unwrap();
    let opens = s.opens_after(None, usize::MAX).unwrap();
    let n = opens.len() as u64;
    assert!(
        n >= journaled,
        "{n} opens recorded, {journaled} hits journaled 20 ms before the kill"
    );
    // No hit recorded twice: each message's counts run 1, 2, 3, … in hit order.
    assert!(n < journaled + 1000, "more opens than hits: {n}");
    for m in 0..MESSAGES {
        let ev = s.get_message(&id(m)).unwrap().unwrap().open_events;
        let expect = (n - m).div_ceil(MESSAGES);
        assert_eq!(ev.len() as u64, expect, "message {m}");
        for (i, e) in ev.iter().enumerate() {
            assert_eq!(e.count, i as u64 + 1);
        }
    }
    assert_eq!(s.stats().counters.opens, n);
    drop((s, ingest));
    // Replayed once: opening again records nothing more.
    let s = reopen(&cfg(dir.path()));
    let _ingest = Ingest::open(s.clone()).unwrap();
    assert_eq!(s.stats().counters.opens, n);
    eprintln!("after kill -9: {n} pixel hits recorded, {journaled} guaranteed");
}

/// The environment variable that makes `records_crash_child` journal message records.
const RECORDS_ENV: &str = "PIXELRELAY_RECORDS_CRASH_DIR";

/// The message-record writer. A no-op unless started by
/// `kill_9_loses_no_message_record_once_journaled`: it journals records as the relay does
/// before the upstream sees a message, and prints each id's number once the call returned.
#[test]
fn records_crash_child() {
    let Some(dir) = std::env::var_os(RECORDS_ENV) else {
        return;
    };
    let c = cfg(Path::new(&dir));
    let ingest = Ingest::open(Store::open(&c).unwrap()).unwrap();
    let mut out = std::io::stdout();
    writeln!(out).unwrap();
    for n in 0.. {
        ingest
            .journal_message(&record(n, 1_795_493_183_000 + n, None))
            .unwrap();
        // Only now would the relay hand the message upstream.
        writeln!(out, "RECORDED {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_loses_no_message_record_once_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child("records_crash_child", RECORDS_ENV, dir.path());
    let stdout = child.stdout.take().unwrap();
    let mut recorded = None;
    for line in BufReader::new(stdout).lines() {
        if let Some(n) = line.unwrap().strip_prefix("RECORDED ") {
            let n: u64 = n.parse().unwrap();
            recorded = Some(n);
            // Mid-stream: the indexer is behind the journal by then.
            if n >= 5000 {
                break;
            }
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let recorded = recorded.expect("the writer recorded nothing");
    assert!(recorded >= 5000, "the writer stopped early ({status})");
    assert!(!status.success(), "the writer must have been killed");
    // Every record whose call returned before the kill is there after the restart, once.
    let c = cfg(dir.path());
    let s = Store::open(&c).unwrap();
    let _ingest = Ingest::open(s.clone()).unwrap();
    for n in 0..=recorded {
        assert!(s.get_message(&id(n)).unwrap().is_some(), "record {n} lost");
    }
    let total = s.stats().counters.recorded;
    assert!(
        total > recorded,
        "{total} recorded, {recorded} acknowledged"
    );
    eprintln!(
        "after kill -9: {total} message records stored, {} acknowledged",
        recorded + 1
    );
}

/// Opens the store, waiting for a previous instance in this process to release sled's lock.
fn reopen(c: &StoreConfig) -> Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(c) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(std::time::Instant::now() < deadline, "store locked: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
}
