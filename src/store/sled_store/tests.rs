//! Tests of the sled backend's own layout and encodings, beside the contract suite
//! (`store/contract.rs`) that every backend passes.

use super::*;
use crate::store::contract::{T0, cfg, hit, rec};

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
    for kv in s.inner.opens.iter() {
        let v = String::from_utf8(kv.unwrap().1.to_vec()).unwrap();
        assert!(!v.contains("203.0.113.77") && !v.contains("abcd:12"), "{v}");
    }
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
    assert_eq!(
        s.inner.opens_by_message.len(),
        1,
        "no index entries left behind"
    );
    assert_eq!(s.inner.message_opens.len(), 1, "no open stats left behind");
    assert_eq!(s.inner.messages.len(), 1);
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
    let s = SledStore::open(&cfg(dir.path())).unwrap();
    let good = MessageId::random();
    let bad = MessageId::random();
    s.record_message(&rec(good, T0, "a@example.net")).unwrap();
    s.record_message(&rec(bad, T0, "b@example.net")).unwrap();
    s.inner
        .messages
        .insert(bad.as_bytes(), b"not json".as_slice())
        .unwrap();
    let h = hit(T0, "192.0.2.1", None);
    assert!(matches!(
        s.record_opens(&[(&good, &h), (&bad, &h)]),
        Err(StoreError::Codec(_))
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
    };
    assert_eq!(ms.encode().len(), 48);
    assert_eq!(MsgStats::decode(&ms.encode()).unwrap(), ms);
    assert!(matches!(
        MsgStats::decode(&[0; 47]),
        Err(StoreError::Corrupt(_))
    ));
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
