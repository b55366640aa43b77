//! Unit tests of ingest: the journal path into a real sled store in a temp dir.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::config::StoreConfig;
use crate::store::contract::{T0, cfg, rec, reopen};
use crate::store::{Delivery, StoreError};

/// A store and its ingest over `c`.
fn open(c: &StoreConfig) -> Ingest {
    Ingest::open(Store::open(c).unwrap()).unwrap()
}

/// [`open`] after an earlier instance on the same path was dropped (see `reopen`).
fn reopen_ingest(c: &StoreConfig) -> Ingest {
    Ingest::open(reopen(c)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_records_and_replies_are_indexed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&cfg(dir.path()));
    // 64 sessions at once: each journals its record, then its reply, as the relay does.
    let ids: Vec<MessageId> = (0..64).map(|_| MessageId::random()).collect();
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (s, id) = (s.clone(), *id);
        tasks.push(tokio::spawn(async move {
            s.journal_message(&rec(id, T0 + i as u64, "bob@example.net"))
                .unwrap();
            let d = Delivery {
                accepted: i % 4 != 0,
                reply: "250 ok".into(),
                at_ms: T0 + 1000 + i as u64,
            };
            s.journal_finish(&id, &d).unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(s.caught_up(Duration::from_secs(10)).await);
    let st = s.store().stats();
    assert_eq!(st.counters.recorded, 64);
    assert_eq!(st.counters.relayed, 48);
    assert_eq!(st.counters.rejected, 16);
    for (i, id) in ids.iter().enumerate() {
        let m = s.store().get_message(id).unwrap().unwrap();
        let d = m.message.delivery.as_ref().unwrap();
        assert_eq!(d.at_ms, T0 + 1000 + i as u64);
        assert_eq!(m.message.record.subject, None, "store.subjects is off");
    }
}

#[test]
fn a_message_journaled_then_opened_is_indexed_record_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&cfg(dir.path()));
    let id = MessageId::random();
    // Record, reply and an open all still in the journal when the indexer looks.
    s.journal_message(&rec(id, T0, "bob@example.net")).unwrap();
    let d = Delivery {
        accepted: true,
        reply: "250 ok".into(),
        at_ms: T0 + 10,
    };
    s.journal_finish(&id, &d).unwrap();
    let thunderbird =
        "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.4.2";
    // Within the machine window of the reply's time: classified against the journaled
    // hand-off, as if the record had long been in the store.
    s.append_hit(&journal_hit(id, T0 + 2_000, "192.0.2.9", thunderbird))
        .unwrap();
    s.append_hit(&journal_hit(id, T0 + 90_000, "192.0.2.9", thunderbird))
        .unwrap();
    assert!(block_on(s.caught_up(Duration::from_secs(10))));
    let m = s.store().get_message(&id).unwrap().unwrap();
    assert_eq!(m.open_events.len(), 2);
    assert_eq!(
        m.open_events[0].machine_reason.as_deref(),
        Some("early-load")
    );
    assert!(!m.open_events[1].machine);
    assert_eq!(m.message.delivery.map(|d| d.at_ms), Some(T0 + 10));
    assert_eq!(s.hit_counters().invalid.load(Ordering::Relaxed), 0);
}

#[test]
fn journaled_records_survive_a_restart_before_indexing() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let ids: Vec<MessageId> = (0..20).map(|_| MessageId::random()).collect();
    {
        let s = open(&c);
        for id in &ids {
            s.journal_message(&rec(*id, T0, "bob@example.net")).unwrap();
        }
        // Dropped at once: whatever the indexer had not done is replayed on open.
    }
    let s = reopen_ingest(&c);
    for id in &ids {
        assert!(s.store().get_message(id).unwrap().is_some(), "{id} lost");
    }
    assert_eq!(
        s.store().stats().counters.recorded,
        20,
        "each recorded once"
    );
}

#[tokio::test]
async fn a_reply_for_an_unknown_message_does_not_cost_the_run_its_others() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&cfg(dir.path()));
    let known = MessageId::random();
    s.store()
        .record_message(&rec(known, T0, "bob@example.net"))
        .unwrap();
    let d = Delivery {
        accepted: true,
        reply: "250 ok".into(),
        at_ms: T0 + 5,
    };
    // Straight at the store: the batch fails as a whole...
    assert!(matches!(
        s.store()
            .finish_messages(&[(&known, &d), (&MessageId::random(), &d)]),
        Err(StoreError::NotFound(_))
    ));
    assert!(
        s.store()
            .get_message(&known)
            .unwrap()
            .unwrap()
            .message
            .delivery
            .is_none()
    );
    // ...and the indexer retries the members of a journaled run one by one.
    s.journal_finish(&MessageId::random(), &d).unwrap();
    s.journal_finish(&known, &d).unwrap();
    assert!(s.caught_up(Duration::from_secs(10)).await);
    let m = s.store().get_message(&known).unwrap().unwrap();
    assert_eq!(m.message.delivery.map(|d| d.at_ms), Some(T0 + 5));
    assert_eq!(s.store().stats().counters.relayed, 1);
}

fn journal_hit<'a>(message: MessageId, at_ms: u64, ip: &str, ua: &'a str) -> Hit<'a> {
    Hit {
        message,
        at_ms,
        ip: ip.parse().unwrap(),
        user_agent: ua.into(),
        hints: Default::default(),
        windows: crate::track::Windows {
            machine: Duration::from_secs(5),
            probable: Duration::from_secs(900),
        },
        seen: Default::default(),
        click: None,
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn journaled_hits_are_classified_and_recorded_by_the_indexer() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&cfg(dir.path()));
    // Nothing journaled yet: nothing to wait for.
    assert!(block_on(s.caught_up(Duration::from_millis(50))));
    let id = MessageId::random();
    s.store()
        .record_message(&rec(id, T0, "bob@example.net"))
        .unwrap();
    s.store()
        .finish_message(
            &id,
            &Delivery {
                accepted: true,
                reply: "250 ok".into(),
                at_ms: T0,
            },
        )
        .unwrap();
    let feed = s.store().subscribe();
    let thunderbird =
        "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.4.2";
    // Two seconds after the hand-off: inside the 5 s window, an early load by a machine.
    s.append_hit(&journal_hit(id, T0 + 2_000, "192.0.2.9", thunderbird))
        .unwrap();
    s.append_hit(&journal_hit(id, T0 + 60_000, "192.0.2.9", thunderbird))
        .unwrap();
    // A Gmail reader through Google's image proxy, and a HEAD from the same address.
    let gmail =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    s.append_hit(&journal_hit(id, T0 + 70_000, "192.0.2.10", gmail))
        .unwrap();
    let mut head = journal_hit(id, T0 + 80_000, "192.0.2.11", thunderbird);
    head.hints.head = true;
    head.seen.country = Some(*b"NL");
    s.append_hit(&head).unwrap();
    // An authentic token of a message this store does not know: dropped, counted invalid.
    s.append_hit(&journal_hit(MessageId::random(), T0, "192.0.2.9", "x"))
        .unwrap();
    assert!(block_on(s.caught_up(Duration::from_secs(10))));
    let m = s.store().get_message(&id).unwrap().unwrap();
    let ev = &m.open_events;
    assert_eq!(ev.len(), 4);
    assert_eq!((ev[0].count, ev[0].first, ev[1].count), (1, true, 2));
    assert!(ev[0].machine && ev[0].machine_reason.as_deref() == Some("early-load"));
    assert!(!ev[1].machine);
    assert_eq!(ev[1].client, "Thunderbird");
    assert_eq!(
        (ev[2].machine, ev[2].proxy, ev[2].client.as_str()),
        (false, Some(crate::track::Proxy::Google), "Gmail")
    );
    assert_eq!(
        (ev[3].machine_reason.as_deref(), ev[3].country.as_deref()),
        (Some("head-request"), Some("NL"))
    );
    // The first person open is the second load, not the early one.
    assert_eq!(m.message.opens.first_human_at, Some(T0 + 60_000));
    let st = s.store().stats();
    assert_eq!(
        (st.human_opens, st.direct_opens, st.counters.proxied_opens),
        (2, 1, 1)
    );
    assert_eq!(st.counters.by_reason.get("early-load"), Some(&1));
    assert_eq!(st.counters.by_reason.get("head-request"), Some(&1));
    assert_eq!(st.machine_share_by_reason.get("head-request"), Some(&0.25));
    assert_eq!(st.counters.by_proxy["google"].opens, 1);
    let c = s.hit_counters();
    assert_eq!(c.valid.load(Ordering::Relaxed), 4);
    assert_eq!(c.invalid.load(Ordering::Relaxed), 1);
    assert_eq!(s.index_lag_bytes(), 0);
    // Live followers got both, in order.
    let mut feed = feed;
    assert_eq!(feed.try_recv().unwrap().count, 1);
    assert_eq!(feed.try_recv().unwrap().count, 2);
}

#[test]
fn an_anonymised_ip_is_all_the_journal_ever_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.anonymize_ip = true;
    let s = open(&c);
    let id = MessageId::random();
    s.store()
        .record_message(&rec(id, T0, "bob@example.net"))
        .unwrap();
    s.append_hit(&journal_hit(id, T0 + 60_000, "203.0.113.77", "UA"))
        .unwrap();
    assert!(block_on(s.caught_up(Duration::from_secs(10))));
    let ev = s.store().get_message(&id).unwrap().unwrap().open_events;
    assert_eq!(ev[0].ip, "203.0.113.0");
    let mut journal = Vec::new();
    for e in std::fs::read_dir(journal_dir(&c.path)).unwrap() {
        journal.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    assert!(!journal.is_empty());
    assert!(
        !journal.windows(4).any(|w| w == [203, 0, 113, 77]),
        "the full address reached the disk"
    );
    assert!(journal.windows(4).any(|w| w == [203, 0, 113, 0]));
}

#[test]
fn hits_journaled_while_the_store_was_down_are_recorded_once_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let id = MessageId::random();
    {
        let s = open(&c);
        s.store()
            .record_message(&rec(id, T0, "bob@example.net"))
            .unwrap();
        s.append_hit(&journal_hit(id, T0 + 60_000, "192.0.2.1", "UA"))
            .unwrap();
        assert!(block_on(s.caught_up(Duration::from_secs(10))));
    }
    // Hits the indexer never saw (a crash right after they were written), then half a record.
    {
        let j = journal::Journal::open(&journal_dir(&c.path), 0).unwrap();
        for k in 1..=3 {
            j.append(&journal_hit(id, T0 + 60_000 + k, "192.0.2.1", "UA").encode())
                .unwrap();
        }
        j.close().unwrap();
    }
    let seg = std::fs::read_dir(journal_dir(&c.path))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[40, 0, 0, 0, 1]).unwrap();
    drop(f);
    let s = reopen_ingest(&c);
    let counts: Vec<u64> = s
        .store()
        .get_message(&id)
        .unwrap()
        .unwrap()
        .open_events
        .iter()
        .map(|e| e.count)
        .collect();
    assert_eq!(counts, [1, 2, 3, 4]);
    drop(s);
    let s = reopen_ingest(&c);
    assert_eq!(s.store().stats().counters.opens, 4, "replayed twice");
}

#[test]
fn the_indexer_runs_under_sched_idle() {
    // Linux only (the policy is read from /proc); SCHED_IDLE is policy 5.
    let dir = tempfile::tempdir().unwrap();
    let _ingest = open(&cfg(dir.path()));
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    let policies: Vec<String> = tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            (comm.trim() == "open-indexer").then_some(())?;
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            // Field 41, counted after the parenthesised command name (field 2).
            let after = &stat[stat.rfind(')')? + 2..];
            after.split(' ').nth(38).map(str::to_string)
        })
        .collect();
    assert!(!policies.is_empty(), "no open-indexer thread found");
    assert!(
        policies.iter().all(|p| p == "5"),
        "indexer scheduling policies: {policies:?}"
    );
}

#[test]
fn the_indexer_pauses_for_busy_cpus_behind_a_backlog_and_catches_up_after() {
    let _heavy = crate::store::contract::CPU_HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let s = open(&cfg(dir.path()));
    let id = MessageId::random();
    s.store()
        .record_message(&rec(id, T0, "bob@example.net"))
        .unwrap();
    // Every CPU busy (twice over, should the count miss some), at nice 19 so that the indexer
    // (SCHED_IDLE, a fifth of their weight) still gets a little: it waits far longer for a CPU
    // than it runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let spinners: Vec<_> = (0..=2 * cpus)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    // A burst of about twice pace::BACKLOG. The indexer's first batch after catching up is a
    // probe; where it ran before the burst had built a backlog, the full batch after it takes
    // all there is without a measurement behind a backlog, so another burst follows whenever
    // the indexer has taken the backlog below pace::BACKLOG without standing back (bounded, so
    // that a kernel without run-queue delay fails the test rather than fill the disk).
    let ua = "x".repeat(1000);
    let run = 2 * pace::BACKLOG / 1000;
    let mut n = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s.index_pauses() == 0 {
        if n < 16 * run && s.index_lag_bytes() < pace::BACKLOG {
            for k in n..n + run {
                s.append_hit(&journal_hit(id, T0 + 60_000 + k, "192.0.2.1", &ua))
                    .unwrap();
            }
            n += run;
            continue;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pause with every CPU busy after {n} hits; {} bytes behind",
            s.index_lag_bytes()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        s.index_lag_bytes() >= pace::BACKLOG / 2,
        "it paused, not indexed"
    );
    stop.store(true, Ordering::Relaxed);
    for t in spinners {
        t.join().unwrap();
    }
    // Free CPUs: it catches up, every hit recorded once.
    assert!(block_on(s.caught_up(Duration::from_secs(60))));
    assert_eq!(s.store().stats().counters.opens, n);
    assert_eq!(s.index_lag_bytes(), 0);
}
