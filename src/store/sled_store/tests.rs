//! Tests of the sled backend's own layout and encodings, beside the contract suite
//! (`store/contract.rs`) that every backend passes.

use super::*;
use crate::store::contract::{T0, cfg, hit, rec};

/// A store in `dir` with two messages recorded (recipients a@ and b@example.net).
fn two_messages(dir: &std::path::Path) -> (SledStore, MessageId, MessageId) {
    let s = SledStore::open(&cfg(dir)).unwrap();
    let (a, b) = (MessageId::random(), MessageId::random());
    s.record_message(&rec(a, T0, "a@example.net")).unwrap();
    s.record_message(&rec(b, T0, "b@example.net")).unwrap();
    (s, a, b)
}

#[test]
fn subjects_and_anonymisation_follow_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.subjects = true;
    c.anonymize_ip = true;
    let s = SledStore::open(&c).unwrap();
    let a = MessageId::random();
    s.record_message(&rec(a, T0, "bob@example.net")).unwrap();
    let e = s
        .record_open(&a, &hit(T0, "203.0.113.77", None))
        .unwrap()
        .unwrap();
    assert_eq!(e.ip, "203.0.113.0");
    assert_eq!(e.subject.as_deref(), Some("Hello"));
    let e = s
        .record_open(&a, &hit(T0, "2001:db8:abcd:12::1", None))
        .unwrap()
        .unwrap();
    assert_eq!(e.ip, "2001:db8:abcd::");
    let e = s
        .record_open(&a, &hit(T0, "::ffff:198.51.100.9", None))
        .unwrap()
        .unwrap();
    assert_eq!(e.ip, "198.51.100.0");
    // Nothing un-anonymised is stored anywhere.
    let mut events = 0;
    for kv in s.inner.data.iter() {
        let (k, v) = kv.unwrap();
        let mut texts = vec![String::from_utf8_lossy(&v).into_owned()];
        if k[0] == P_SEGMENT {
            // Events are compressed: read them as stored.
            let seg = Segment::parse(&v).unwrap();
            for i in 0..seg.len() {
                texts.push(String::from_utf8_lossy(seg.json(i).unwrap()).into_owned());
                events += 1;
            }
        }
        for t in texts {
            assert!(!t.contains("203.0.113.77") && !t.contains("abcd:12"), "{t}");
        }
    }
    assert_eq!(events, 3, "every stored event was looked at");
}

#[test]
fn retention_purges_old_messages_and_opens_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.retention_days = 30;
    let s = SledStore::open(&c).unwrap();
    let day = 86_400_000;
    let now = T0 + 100 * day;
    let old = MessageId::random();
    let new = MessageId::random();
    // Injected old records (older than 30 days), written first so open ids stay time-ordered.
    s.record_message(&rec(old, now - 40 * day, "old@example.net"))
        .unwrap();
    s.record_open(&old, &hit(now - 39 * day, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    s.record_open(&old, &hit(now - 39 * day, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    s.record_message(&rec(new, now - 5 * day, "new@example.net"))
        .unwrap();
    let old_recent = s
        .record_open(&old, &hit(now - 2 * day, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    let keep = s
        .record_open(&new, &hit(now - day, "192.0.2.1", None))
        .unwrap()
        .unwrap();

    let r = s.purge_expired(now).unwrap();
    assert_eq!(
        r,
        PurgeReport {
            messages: 1,
            opens: 3
        }
    );
    assert!(s.get_message(&old).unwrap().is_none());
    let m = s.get_message(&new).unwrap().unwrap();
    assert_eq!(m.open_events, vec![keep.clone()]);
    let all = s.opens_after(None, 100).unwrap();
    assert_eq!(all, vec![keep]);
    assert!(!all.iter().any(|e| e.id == old_recent.id));
    assert_eq!(
        s.list_messages(&MessageFilter::default(), None, 10)
            .unwrap()
            .items
            .len(),
        1
    );
    let count = |p: u8| s.inner.data.scan_prefix([p]).count();
    assert_eq!(count(P_STATS), 1, "no open stats left behind");
    assert_eq!(count(P_MESSAGE), 1);
    assert_eq!(count(P_TIME), 1);
    assert_eq!(count(P_SEGMENT), 1, "emptied segments are removed");
    // Lifetime counters are not lowered by a purge.
    assert_eq!(s.stats().counters.opens, 4);
    // Idempotent.
    assert_eq!(s.purge_expired(now).unwrap(), PurgeReport::default());
}

#[test]
fn open_ids_are_time_ordered_and_unique() {
    assert_eq!(next_open_id(0, 5), 5 << OPEN_ID_SHIFT);
    assert_eq!(
        next_open_id(5 << OPEN_ID_SHIFT, 5),
        (5 << OPEN_ID_SHIFT) + 1
    );
    // Clock going backwards: still increasing.
    assert_eq!(
        next_open_id(9 << OPEN_ID_SHIFT, 5),
        (9 << OPEN_ID_SHIFT) + 1
    );
    assert_eq!(
        parse_open_id(&format_open_id(T0 << OPEN_ID_SHIFT)).unwrap(),
        T0 << OPEN_ID_SHIFT
    );
}

#[test]
fn a_corrupt_record_fails_its_batch_but_not_a_retry_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (s, good, bad) = two_messages(dir.path());
    s.inner
        .data
        .insert(messages::stats_key(&bad), b"not a record".as_slice())
        .unwrap();
    let h = hit(T0, "192.0.2.1", None);
    assert!(matches!(
        s.record_opens(&[(&good, &h), (&bad, &h)]),
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(s.stats().counters.opens, 0, "all or nothing");
    assert_eq!(s.record_open(&good, &h).unwrap().map(|e| e.count), Some(1));
    assert!(s.record_open(&bad, &h).is_err());
}

#[test]
fn binary_records_round_trip_and_reject_wrong_lengths() {
    let ms = MsgStats {
        count: 3,
        human: 2,
        first: 1,
        last: u64::MAX,
        first_human: 0,
        sent_at: T0,
        last_id: 9,
        recent: vec![],
        clicks: ClickStats::default(),
        context: std::sync::Arc::new(messages::Repeated {
            recipient: "r@example.net".into(),
            sender: String::new(),
            message_id: None,
            subject: Some("Grüße".into()),
            queue_id: None,
        }),
    };
    assert_eq!(MsgStats::decode(&ms.encode()).unwrap(), ms);
    assert!(matches!(
        MsgStats::decode(&[0; 47]),
        Err(StoreError::Corrupt(_))
    ));
    let with_ids = MsgStats {
        recent: vec![7, u64::MAX],
        ..ms.clone()
    };
    assert_eq!(MsgStats::decode(&with_ids.encode()).unwrap(), with_ids);
    let full = with_ids.encode();
    for cut in [0, 48, 52, 60, full.len() - 1] {
        assert!(MsgStats::decode(&full[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = full.clone();
    longer.push(0);
    assert!(MsgStats::decode(&longer).is_err());
    // Click statistics follow once there are clicks, and read back.
    let clicked = MsgStats {
        clicks: ClickStats {
            count: 2,
            human: 1,
            links: vec![0, 4],
            human_links: vec![4],
            first_at: Some(T0 + 1),
            last_at: Some(T0 + 9),
            first_human_at: Some(T0 + 9),
        },
        ..with_ids.clone()
    };
    assert_eq!(MsgStats::decode(&clicked.encode()).unwrap(), clicked);
    assert!(clicked.encode().len() > full.len());
    // The queue id reads back, with and without clicks after it.
    for base in [&with_ids, &clicked] {
        let mut queued = base.clone();
        queued.context = std::sync::Arc::new(messages::Repeated {
            queue_id: Some("4F2A1C3B".into()),
            ..(*base.context).clone()
        });
        assert_eq!(MsgStats::decode(&queued.encode()).unwrap(), queued);
    }
    // Statistics written before the queue id was kept (no fifth string) read as `None`, with
    // and without clicks.
    let marker = full.len() - 4;
    assert_eq!(&full[marker..], &u32::MAX.to_be_bytes());
    for new in [full.clone(), clicked.encode()] {
        let old = [&new[..marker], &new[marker + 4..]].concat();
        let read = MsgStats::decode(&old).unwrap();
        assert_eq!(read.context.queue_id, None);
        assert_eq!(read.clicks, MsgStats::decode(&new).unwrap().clicks);
    }
    let seg = encode_segment(&[(5u64, &b"{}"[..]), (9, b"[1]")]);
    let s = Segment::parse(&seg).unwrap();
    assert_eq!((s.len(), s.id(1), s.json(1).unwrap()), (2, 9, &b"[1]"[..]));
    assert_eq!((s.find(9), s.find(6)), (Some(1), None));
    for cut in [0, 3, 10, seg.len() - 1] {
        assert!(Segment::parse(&seg[..cut]).is_err(), "cut at {cut}");
    }
    let mut c = Counters::default();
    assert!(decode_open_counters(&[0; 31], &mut c).is_err());
    decode_open_counters(&put_u64s(&[4, 3, 2, 1]), &mut c).unwrap();
    assert_eq!(
        (
            c.opens,
            c.machine_opens,
            c.unique_opens,
            c.unique_human_opens
        ),
        (4, 3, 2, 1)
    );
}

#[test]
fn a_message_opened_more_than_a_chunk_keeps_every_open_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (s, a, b) = two_messages(dir.path());
    let n = 2 * messages::CHUNK + 5;
    let h = hit(T0 + 1000, "192.0.2.1", None);
    let mut want = Vec::new();
    // Interleaved with another message's opens, in batches of 7 across segments.
    for round in (0..n).collect::<Vec<_>>().chunks(7) {
        let hits: Vec<(&MessageId, &OpenHit)> =
            round.iter().flat_map(|_| [(&a, &h), (&b, &h)]).collect();
        let got = s.record_opens(&hits).unwrap();
        want.extend(got.into_iter().step_by(2).map(Option::unwrap));
    }
    let m = s.get_message(&a).unwrap().unwrap();
    assert_eq!(m.message.opens.count, n as u64);
    assert_eq!(m.open_events, want);
    assert_eq!(
        s.inner.data.scan_prefix([P_CHUNK]).count(),
        4,
        "2 full chunks each"
    );
    // Reopened: the same, and new opens go on after.
    drop(s);
    let s2 = crate::store::contract::reopen(&cfg(dir.path()));
    let e = s2.record_open(&a, &h).unwrap().unwrap();
    assert_eq!(e.count, n as u64 + 1);
    let m = s2.get_message(&a).unwrap().unwrap();
    assert_eq!(m.open_events.len(), n + 1);
    assert_eq!(m.open_events.last(), Some(&e));
}

#[test]
fn a_store_of_the_first_layout_is_moved_whole_into_the_one_tree() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let id = MessageId::random();
    let (o1, o2) = ((T0 + 5) << OPEN_ID_SHIFT, (T0 + 9) << OPEN_ID_SHIFT);
    {
        // Layout 1 as pixelrelay wrote it: eight trees, JSON records without their ids.
        let db = sled::open(&c.path).unwrap();
        let t = |n: &str| db.open_tree(n).unwrap();
        let stored = serde_json::json!({
            "queue_id": "Q1", "at": "2023-11-14T22:13:20.000Z", "sender": "s@example.com",
            "recipients": ["r@example.net"], "message_id": null, "subject": null,
            "size": 10, "tracked": true, "skip_reason": null,
            "delivery": {"accepted": true, "reply": "250 ok", "at": "2023-11-14T22:13:20.001Z"}
        });
        t("messages")
            .insert(id.as_bytes(), serde_json::to_vec(&stored).unwrap())
            .unwrap();
        t("message_opens")
            .insert(id.as_bytes(), put_u64s(&[2, 1, T0 + 5, T0 + 9, T0 + 5, T0]))
            .unwrap();
        let mut tk = T0.to_be_bytes().to_vec();
        tk.extend_from_slice(id.as_bytes());
        t("messages_by_time").insert(tk, EMPTY).unwrap();
        for (oid, machine) in [(o1, false), (o2, true)] {
            let ev = serde_json::json!({
                "id": format_open_id(oid), "message": id.to_string(),
                "at": "2023-11-14T22:13:20.005Z", "ip": "192.0.2.1", "user_agent": "UA",
                "client": "Thunderbird", "device": "desktop", "machine": machine,
                "first": !machine, "count": 1, "recipient": "r@example.net",
                "sender": "s@example.com"
            });
            t("opens")
                .insert(oid.to_be_bytes(), serde_json::to_vec(&ev).unwrap())
                .unwrap();
            let mut ik = id.as_bytes().to_vec();
            ik.extend_from_slice(&oid.to_be_bytes());
            t("opens_by_message").insert(ik, EMPTY).unwrap();
        }
        let counters = Counters {
            recorded: 1,
            relayed: 1,
            tracked: 1,
            ..Counters::default()
        };
        t("meta")
            .insert("counters", serde_json::to_vec(&counters).unwrap())
            .unwrap();
        t("meta")
            .insert("open_counters", put_u64s(&[2, 1, 1, 1]))
            .unwrap();
        t("outbox").insert([7u8; 16], b"row".as_slice()).unwrap();
        db.flush().unwrap();
    }
    // sled's IO threads may hold the dropped database's lock for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let s = loop {
        match SledStore::open(&c) {
            Ok(s) => break s,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let m = s.get_message(&id).unwrap().unwrap();
    assert_eq!(m.message.record.queue_id, "Q1");
    assert_eq!(m.message.opens.count, 2);
    assert_eq!(m.message.delivery.as_ref().map(|d| d.accepted), Some(true));
    let ids: Vec<String> = m.open_events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, vec![format_open_id(o1), format_open_id(o2)]);
    assert_eq!(s.list_opens(None, 10).unwrap().items.len(), 2);
    assert_eq!(s.stats().counters.opens, 2);
    assert_eq!(s.stats().counters.recorded, 1);
    assert_eq!(
        s.outbox_endpoints().unwrap(),
        vec![u64::from_be_bytes([7; 8])]
    );
    // The next open continues after the moved ones, on the moved statistics.
    let e = s
        .record_open(&id, &hit(T0 + 20, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    assert_eq!(e.count, 3);
    assert!(e.id > format_open_id(o2));
    let names = s.inner.db.tree_names();
    assert!(
        !names.iter().any(|n| n.as_ref() == b"opens"),
        "the old trees are dropped"
    );
    // A layout newer than this binary is refused by name.
    s.inner
        .data
        .insert(LAYOUT_KEY, put_u64s(&[LAYOUT + 1]))
        .unwrap();
    drop(s);
    // Again past the dropped database's lock, which its IO threads may hold for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let err = loop {
        let err = SledStore::open(&c).unwrap_err().to_string();
        if !err.contains("could not acquire lock") || std::time::Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(err.contains("newer than this pixelrelay"), "{err}");
}

#[test]
fn statistics_wait_in_memory_and_a_crash_recounts_them_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (s, a, b) = two_messages(dir.path());
    let on_disk = |s: &SledStore, id: &MessageId| {
        MsgStats::decode(&s.inner.data.get(messages::stats_key(id)).unwrap().unwrap())
            .unwrap()
            .count
    };
    let person = hit(T0 + 60_000, "192.0.2.1", None);
    let mut want = Vec::new();
    for _ in 0..3 {
        want.push(s.record_open(&a, &person).unwrap().unwrap());
    }
    s.record_open(&b, &person).unwrap().unwrap();
    // Seen by readers at once, written at the next checkpoint.
    assert_eq!(s.get_message(&a).unwrap().unwrap().message.opens.count, 3);
    assert_eq!(on_disk(&s, &a), 0);
    s.flush_blocking().unwrap();
    assert_eq!(on_disk(&s, &a), 3);
    // Two more opens after the checkpoint, then the process dies (no flush, no checkpoint).
    want.push(s.record_open(&a, &person).unwrap().unwrap());
    want.push(s.record_open(&a, &person).unwrap().unwrap());
    assert_eq!(on_disk(&s, &a), 3);
    drop(s);
    let s = crate::store::contract::reopen(&cfg(dir.path()));
    let m = s.get_message(&a).unwrap().unwrap();
    assert_eq!(m.message.opens.count, 5, "recounted, none twice");
    assert_eq!(m.open_events, want);
    assert_eq!(s.get_message(&b).unwrap().unwrap().message.opens.count, 1);
    assert_eq!(s.record_open(&a, &person).unwrap().unwrap().count, 6);
    // Clicks the same way: counted again from their segments, none twice.
    let url = "https://example.com/x";
    let click = crate::store::contract::clicks::click(T0 + 70_000, "192.0.2.1", 2, url, None);
    s.record_open(&a, &click).unwrap().unwrap();
    s.flush_blocking().unwrap();
    let second = crate::store::contract::clicks::click(T0 + 80_000, "192.0.2.1", 5, url, None);
    s.record_open(&a, &second).unwrap().unwrap();
    drop(s);
    let s = crate::store::contract::reopen(&cfg(dir.path()));
    let m = s.get_message(&a).unwrap().unwrap();
    assert_eq!(m.message.opens.count, 6);
    assert_eq!(
        (m.message.clicks.count, m.message.clicks.links.as_slice()),
        (2, &[2, 5][..])
    );
    assert_eq!(m.click_events.len(), 2);
    assert_eq!(s.record_open(&a, &click).unwrap().unwrap().count, 3);
}
