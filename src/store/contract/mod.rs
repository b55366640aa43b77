//! The store contract suite: every operation of [`Backend`], through [`Store`] only (record,
//! finish, opens, counts, cursors under concurrent writes, follow without gap or repeat, outbox
//! lease/ack/dead-letter, retention), against a real database in a temp dir. Nothing here
//! names a storage engine: it runs on the backend [`Store::open`] opens, so a new backend
//! drops in by passing it.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::track::{Classification, Device};

mod postgres;
pub(crate) use postgres::CPU_HEAVY;

/// The store of a test whose files live in `dir`: sled there, or, when the suite runs on
/// PostgreSQL ([`the_contract_holds_on_postgres`]), a database of its own on that server.
pub(crate) fn cfg(dir: &Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("db"),
        subjects: false,
        anonymize_ip: false,
        retention_days: 0,
        flush_interval: Duration::from_millis(100),
        open_log: None,
        postgres: postgres::database_for(dir),
    }
}

pub(crate) fn rec(id: MessageId, at_ms: u64, rcpt: &str) -> MessageRecord {
    MessageRecord {
        id,
        queue_id: "Q1".into(),
        at_ms,
        sender: "news@example.com".into(),
        recipients: vec![rcpt.into()],
        message_id: Some("<abc@example.com>".into()),
        subject: Some("Hello".into()),
        size: 1234,
        tracked: true,
        skip_reason: None,
    }
}

pub(crate) fn hit(at_ms: u64, ip: &str, machine: Option<&'static str>) -> OpenHit {
    OpenHit {
        at_ms,
        ip: ip.parse::<IpAddr>().unwrap(),
        user_agent: "UA".into(),
        classification: Classification {
            client: "Thunderbird".into(),
            device: Device::Desktop,
            machine: machine.is_some(),
            machine_reason: machine,
            proxy: None,
        },
        country: None,
        click: None,
    }
}

pub(crate) const T0: u64 = 1_795_493_183_123;

/// Opens the store again after a `Store` on the same path was dropped. sled's background IO
/// threads may still hold the old instance's file lock for a moment after the drop, so this
/// polls (bounded) until the lock is free rather than failing on the first try.
pub(crate) fn reopen(c: &StoreConfig) -> Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(c) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "store still locked: {e}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn opens_count_first_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    let a = MessageId::random();
    let b = MessageId::random();
    s.record_message(&rec(a, T0, "bob@example.net")).unwrap();
    s.record_message(&rec(b, T0 + 1, "eve@example.org"))
        .unwrap();
    s.finish_message(
        &a,
        &Delivery {
            accepted: true,
            reply: "250 ok".into(),
            at_ms: T0 + 50,
        },
    )
    .unwrap();
    s.finish_message(
        &b,
        &Delivery {
            accepted: true,
            reply: "250 ok".into(),
            at_ms: T0 + 60,
        },
    )
    .unwrap();
    assert_eq!(
        s.open_context(&a).unwrap().map(|c| c.sent_at()),
        Some(T0 + 50)
    );

    let e1 = s
        .record_open(&a, &hit(T0 + 1000, "203.0.113.5", Some("apple-mpp")))
        .unwrap()
        .unwrap();
    let e2 = s
        .record_open(&a, &hit(T0 + 2000, "203.0.113.6", None))
        .unwrap()
        .unwrap();
    let e3 = s
        .record_open(&a, &hit(T0 + 2000, "203.0.113.6", None))
        .unwrap()
        .unwrap();
    assert_eq!(
        (e1.first, e1.count, e2.first, e2.count, e3.count),
        (true, 1, false, 2, 3)
    );
    assert!(
        e1.id < e2.id && e2.id < e3.id,
        "ids are strictly increasing even within one ms"
    );
    assert_eq!(e1.recipient, "bob@example.net");
    assert_eq!(e1.sender, "news@example.com");
    assert_eq!(e1.message_id.as_deref(), Some("<abc@example.com>"));
    assert_eq!(e1.subject, None, "subjects are off");
    assert_eq!(e1.ip, "203.0.113.5");
    assert_eq!(e1.message, a.to_string());

    // Unknown message: nothing recorded.
    assert_eq!(
        s.record_open(&MessageId::random(), &hit(T0, "192.0.2.1", None))
            .unwrap(),
        None
    );

    let st = s.stats();
    assert_eq!(st.counters.relayed, 2);
    assert_eq!(st.counters.tracked, 2);
    assert_eq!(st.counters.opens, 3);
    assert_eq!(st.counters.machine_opens, 1);
    assert_eq!(st.human_opens, 2);
    assert_eq!(st.counters.unique_opens, 1);
    assert_eq!(st.counters.unique_human_opens, 1);
    assert!((st.open_rate - 0.5).abs() < 1e-9);

    let m = s.get_message(&a).unwrap().unwrap();
    assert_eq!(m.open_events, vec![e1.clone(), e2.clone(), e3.clone()]);
    assert_eq!(m.message.opens.count, 3);
    assert_eq!(m.message.opens.human, 2);
    assert_eq!(m.message.opens.first_at, Some(T0 + 1000));
    assert_eq!(m.message.opens.first_human_at, Some(T0 + 2000));
    assert_eq!(m.message.opens.last_at, Some(T0 + 2000));
    assert_eq!(m.message.record.subject, None);

    // Listing newest first with cursors.
    let p1 = s.list_opens(None, 2).unwrap();
    assert_eq!(p1.items, vec![e3.clone(), e2.clone()]);
    let p2 = s.list_opens(p1.next_cursor.as_deref(), 2).unwrap();
    assert_eq!(p2.items, vec![e1.clone()]);
    assert_eq!(p2.next_cursor, None);
    assert_eq!(s.opens_after(Some(&e1.id), 10).unwrap(), vec![e2, e3]);
    assert!(matches!(
        s.list_opens(Some("zz"), 1),
        Err(StoreError::BadCursor(_))
    ));
}

#[test]
fn rejected_and_skipped_are_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    let a = MessageId::random();
    let b = MessageId::random();
    let mut r = rec(b, T0, "x@example.net");
    r.tracked = false;
    r.skip_reason = Some("multi-recipient".into());
    s.record_message(&rec(a, T0, "x@example.net")).unwrap();
    s.record_message(&r).unwrap();
    let d = Delivery {
        accepted: false,
        reply: "550 no".into(),
        at_ms: T0,
    };
    s.finish_message(&a, &d).unwrap();
    s.finish_message(&a, &d).unwrap();
    s.finish_message(
        &b,
        &Delivery {
            accepted: true,
            ..d.clone()
        },
    )
    .unwrap();
    let st = s.stats();
    assert_eq!(
        (
            st.counters.recorded,
            st.counters.rejected,
            st.counters.relayed
        ),
        (2, 1, 1)
    );
    assert_eq!(st.counters.skipped.get("multi-recipient"), Some(&1));
    assert_eq!(st.skipped_total, 1);
    assert!(matches!(
        s.finish_message(&MessageId::random(), &d),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn graceful_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let a = MessageId::random();
    let last_id;
    {
        let s = Store::open(&cfg(dir.path())).unwrap();
        s.record_message(&rec(a, T0, "bob@example.net")).unwrap();
        s.finish_message(
            &a,
            &Delivery {
                accepted: true,
                reply: "250".into(),
                at_ms: T0,
            },
        )
        .unwrap();
        s.record_open(&a, &hit(T0 + 10, "192.0.2.1", None)).unwrap();
        last_id = s
            .record_open(&a, &hit(T0 + 20, "192.0.2.1", None))
            .unwrap()
            .unwrap()
            .id;
        s.flush_blocking().unwrap();
    }
    let s = reopen(&cfg(dir.path()));
    let m = s.get_message(&a).unwrap().unwrap();
    assert_eq!(m.open_events.len(), 2);
    assert_eq!(s.stats().counters.opens, 2);
    assert_eq!(s.stats().counters.relayed, 1);
    // The id sequence continues after a restart, even with an earlier clock.
    let e = s
        .record_open(&a, &hit(T0, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    assert!(e.id > last_id, "{} > {last_id}", e.id);
    assert_eq!(e.count, 3);
}

#[tokio::test]
async fn live_feed_sees_each_committed_open_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    let a = MessageId::random();
    s.record_message(&rec(a, T0, "bob@example.net")).unwrap();
    let mut rx = s.subscribe();
    let e1 = s
        .record_open(&a, &hit(T0, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    let e2 = s
        .record_open(&a, &hit(T0, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    // Unknown messages send nothing.
    s.record_open(&MessageId::random(), &hit(T0, "192.0.2.1", None))
        .unwrap();
    assert_eq!(rx.recv().await.unwrap(), e1);
    assert_eq!(rx.recv().await.unwrap(), e2);
    assert!(rx.try_recv().is_err());
    s.flush().await.unwrap();
}

#[test]
fn open_log_gets_one_json_line_per_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.open_log = Some(dir.path().join("opens.jsonl"));
    let s = Store::open(&c).unwrap();
    let a = MessageId::random();
    s.record_message(&rec(a, T0, "bob@example.net")).unwrap();
    let e1 = s
        .record_open(&a, &hit(T0, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    let e2 = s
        .record_open(&a, &hit(T0, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    // Clicks go to the same log, with their type.
    let k = clicks::click(T0 + 1, "192.0.2.1", 3, "https://example.com/x", None);
    let e3 = s.record_open(&a, &k).unwrap().unwrap();
    let text = std::fs::read_to_string(dir.path().join("opens.jsonl")).unwrap();
    let lines: Vec<OpenEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, vec![e1, e2, e3]);
    assert!(text.lines().nth(2).unwrap().contains("\"type\":\"click\""));
}

#[test]
fn retention_task_purges_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.retention_days = 1;
    let day = 86_400_000;
    let old = MessageId::random();
    let new = MessageId::random();
    {
        // Outside a runtime no task starts, so the old records can be injected first.
        let s = Store::open(&c).unwrap();
        s.record_message(&rec(old, now_ms() - 3 * day, "old@example.net"))
            .unwrap();
        s.record_open(&old, &hit(now_ms() - 3 * day, "192.0.2.1", None))
            .unwrap()
            .unwrap();
        s.record_message(&rec(new, now_ms(), "new@example.net"))
            .unwrap();
        s.flush_blocking().unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = reopen(&c);
        // The task's first run is at start; poll for its effect (bounded).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while s.get_message(&old).unwrap().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the retention task never ran"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(s.opens_after(None, 10).unwrap().is_empty());
        assert!(s.get_message(&new).unwrap().is_some());
    });
}

#[test]
fn a_batch_of_opens_commits_together_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    let a = MessageId::random();
    let b = MessageId::random();
    let unknown = MessageId::random();
    s.record_message(&rec(a, T0, "a@example.net")).unwrap();
    s.record_message(&rec(b, T0, "b@example.net")).unwrap();
    let m = hit(T0 + 1, "192.0.2.1", Some("apple-mpp"));
    let h = hit(T0 + 2, "192.0.2.1", None);
    let mut rx = s.subscribe();
    let out = s
        .record_opens(&[(&a, &m), (&unknown, &h), (&a, &h), (&b, &h), (&a, &h)])
        .unwrap();
    let got: Vec<Option<(String, bool, u64)>> = out
        .iter()
        .map(|e| e.as_ref().map(|e| (e.recipient.clone(), e.first, e.count)))
        .collect();
    assert_eq!(
        got,
        vec![
            Some(("a@example.net".into(), true, 1)),
            None,
            Some(("a@example.net".into(), false, 2)),
            Some(("b@example.net".into(), true, 1)),
            Some(("a@example.net".into(), false, 3)),
        ]
    );
    let ids: Vec<&str> = out.iter().flatten().map(|e| e.id.as_str()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let ma = s.get_message(&a).unwrap().unwrap().message.opens;
    assert_eq!(
        (ma.count, ma.human, ma.first_at, ma.first_human_at),
        (3, 2, Some(T0 + 1), Some(T0 + 2))
    );
    let st = s.stats().counters;
    assert_eq!(
        (
            st.opens,
            st.machine_opens,
            st.unique_opens,
            st.unique_human_opens
        ),
        (4, 1, 2, 2)
    );
    for e in out.iter().flatten() {
        assert_eq!(&rx.try_recv().unwrap(), e);
    }
    // The totals survive a reopen exactly.
    s.flush_blocking().unwrap();
    drop(s);
    let s = reopen(&cfg(dir.path()));
    assert_eq!(s.stats().counters, st);
}

/// A writer records `n` opens on its own thread while the caller reads.
fn write_opens_in_background(s: &Store, n: usize) -> std::thread::JoinHandle<Vec<String>> {
    let s = s.clone();
    let id = MessageId::random();
    s.record_message(&rec(id, T0, "bob@example.net")).unwrap();
    std::thread::spawn(move || {
        (0..n)
            .map(|i| {
                s.record_open(&id, &hit(T0 + i as u64, "192.0.2.1", None))
                    .unwrap()
                    .unwrap()
                    .id
            })
            .collect()
    })
}

#[test]
fn cursors_page_every_open_once_under_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    let writer = write_opens_in_background(&s, 600);
    // Oldest first with `opens_after`, while the writer is still writing.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = s.opens_after(cursor.as_deref(), 7).unwrap();
        if let Some(last) = page.last() {
            cursor = Some(last.id.clone());
        }
        seen.extend(page.into_iter().map(|e| e.id));
        if writer.is_finished() && s.opens_after(cursor.as_deref(), 1).unwrap().is_empty() {
            break;
        }
    }
    let written = writer.join().unwrap();
    assert_eq!(seen, written, "every open once, in id order");
    // Newest first with `list_opens`: the same opens, reversed, across pages.
    let mut back = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = s.list_opens(cursor.as_deref(), 50).unwrap();
        back.extend(page.items.into_iter().map(|e| e.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    back.reverse();
    assert_eq!(back, written);
    assert_eq!(s.last_open_cursor(), *written.last().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_every_open_once_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    // Opens before the follower starts, and opens while it catches up.
    let before = write_opens_in_background(&s, 100).join().unwrap();
    let writer = write_opens_in_background(&s, 400);
    // The follow protocol: subscribe first, then the backlog, then live events past it.
    let mut live = s.subscribe();
    assert!(s.followers() >= 1);
    let mut got: Vec<String> = s
        .opens_after(None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let during = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let total = before.len() + during.len();
    while got.len() < total {
        let e = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .expect("a live open")
            .expect("no lag at this rate");
        if got.last().is_none_or(|l| e.id > *l) {
            got.push(e.id);
        }
    }
    let mut want = before;
    want.extend(during);
    assert_eq!(got, want);
}

#[test]
fn the_journal_mark_commits_with_the_write_it_came_with() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    assert_eq!(s.journal_mark().unwrap(), Position::default());
    let id = MessageId::random();
    let at = |offset| Position {
        generation: 1,
        offset,
    };
    s.commit_messages(&[&rec(id, T0, "bob@example.net")], &[], Some(at(10)))
        .unwrap();
    assert_eq!(s.journal_mark().unwrap(), at(10));
    // A failed write leaves the mark where it was.
    let d = Delivery {
        accepted: true,
        reply: "250 ok".into(),
        at_ms: T0,
    };
    assert!(
        s.commit_messages(&[], &[(&MessageId::random(), &d)], Some(at(20)))
            .is_err()
    );
    assert_eq!(s.journal_mark().unwrap(), at(10));
    let ctx = s.open_context(&id).unwrap().unwrap();
    let open = PreparedOpen::new(ctx, &hit(T0 + 1, "192.0.2.1", None), false);
    let stored = s.commit_opens(&[Some(open), None], Some(at(30))).unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].as_ref().map(|e| e.count), Some(1));
    assert_eq!(stored[1], None);
    assert_eq!(s.journal_mark().unwrap(), at(30));
    // Only a mark: nothing else written.
    s.commit_opens(&[], Some(at(40))).unwrap();
    assert_eq!(s.journal_mark().unwrap(), at(40));
    assert_eq!(s.stats().counters.opens, 1);
    drop(s);
    let s = reopen(&cfg(dir.path()));
    assert_eq!(s.journal_mark().unwrap(), at(40), "durable across a reopen");
}

pub(crate) mod clicks;
mod holds;
mod listing;
mod outbox;
mod replies;
