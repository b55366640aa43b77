//! Held hits: kept by a shared store with the journal mark that passes them, released with the
//! open that records them, durable across a reopen; refused by a store of one node.

use super::*;

fn at(offset: u64) -> Position {
    Position {
        generation: 1,
        offset,
    }
}

#[test]
fn holds_commit_with_the_mark_and_release_with_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    assert_eq!(s.held_hits().unwrap(), Vec::new());
    let hold = |keys: &[u64]| HoldChanges {
        add: keys.iter().map(|k| (at(*k), vec![*k as u8; 3])).collect(),
        release: Vec::new(),
    };
    if !s.shared() {
        // One node's store never holds a hit: asked to, it refuses and writes nothing.
        assert!(
            s.commit_opens_holding(&[], Some(at(10)), &hold(&[5]))
                .is_err()
        );
        assert_eq!(s.journal_mark().unwrap(), Position::default());
        assert_eq!(s.held_hits().unwrap(), Vec::new());
        return;
    }
    s.commit_opens_holding(&[], Some(at(20)), &hold(&[20, 10]))
        .unwrap();
    assert_eq!(s.journal_mark().unwrap(), at(20));
    let keys = |s: &Store| -> Vec<u64> {
        s.held_hits()
            .unwrap()
            .iter()
            .map(|(p, _)| p.offset)
            .collect()
    };
    assert_eq!(keys(&s), [10, 20], "oldest first");
    assert_eq!(s.held_hits().unwrap()[0].1, vec![10u8; 3]);
    // A replay holds the same hit again: kept once, as it was.
    s.commit_opens_holding(
        &[],
        None,
        &HoldChanges {
            add: vec![(at(10), vec![1])],
            release: Vec::new(),
        },
    )
    .unwrap();
    assert_eq!(keys(&s), [10, 20]);
    assert_eq!(s.held_hits().unwrap()[0].1, vec![10u8; 3]);

    // The record comes: the open of hit 10 and its release in one commit.
    let id = MessageId::random();
    s.record_message(&rec(id, T0, "bob@example.net")).unwrap();
    let ctx = s.open_context(&id).unwrap().unwrap();
    let open = PreparedOpen::new(ctx, &hit(T0 + 1, "192.0.2.1", None), false);
    let release = HoldChanges {
        add: Vec::new(),
        release: vec![at(10)],
    };
    let stored = s
        .commit_opens_holding(&[Some(open)], Some(at(30)), &release)
        .unwrap();
    assert_eq!(stored[0].as_ref().map(|e| e.count), Some(1));
    assert_eq!(keys(&s), [20]);
    assert_eq!(s.journal_mark().unwrap(), at(30));
    drop(s);
    let s = reopen(&cfg(dir.path()));
    assert_eq!(keys(&s), [20], "durable across a reopen");
    assert_eq!(s.stats().counters.opens, 1);
}
