//! Tests of the open journal: order, torn tails, checksums, segments, buffering, full disks.

use super::*;

/// Appends and writes one record; where it ends.
fn put(j: &Journal, payload: &[u8]) -> Position {
    j.append(payload).unwrap();
    j.write_buffered().unwrap();
    j.end()
}

fn all(j: &Journal, from: Position) -> Vec<Vec<u8>> {
    let mut r = j.reader(from);
    let mut out = Vec::new();
    loop {
        match r.next(j.end()).unwrap() {
            Read::Record(p, _) => out.push(p),
            Read::End => return out,
            Read::Bad(at, why) => panic!("bad record at {at}: {why}"),
        }
    }
}

#[test]
fn appends_read_back_in_order_from_any_position() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 0).unwrap();
    let start = j.end();
    assert_eq!(start.generation, 1);
    let mut ends = Vec::new();
    for i in 0..100u32 {
        ends.push(put(&j, format!("hit {i}").as_bytes()));
    }
    let got = all(&j, start);
    assert_eq!(got.len(), 100);
    assert_eq!(got[42], b"hit 42");
    let rest = all(&j, ends[49]);
    assert_eq!(rest.first().map(Vec::as_slice), Some(&b"hit 50"[..]));
    assert_eq!(rest.len(), 50);
    assert!(all(&j, ends[99]).is_empty());
}

#[test]
fn a_torn_tail_is_cut_off_on_open_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 0).unwrap();
    put(&j, b"one");
    let two = put(&j, b"two");
    drop(j);
    let path = segment_path(dir.path(), 1);
    // Half a record, as a crash in the middle of a write leaves it.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let j = Journal::open(dir.path(), 0).unwrap();
    assert_eq!(j.end(), two);
    put(&j, b"three");
    let got = all(&j, Position::default());
    assert_eq!(
        got,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
}

#[test]
fn a_flipped_bit_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 0).unwrap();
    put(&j, b"good");
    put(&j, b"evil");
    let path = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 2;
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let mut r = j.reader(Position::default());
    assert!(matches!(r.next(j.end()).unwrap(), Read::Record(p, _) if p == b"good"));
    assert!(matches!(
        r.next(j.end()).unwrap(),
        Read::Bad(12, "record checksum mismatch")
    ));
}

#[test]
fn segments_roll_over_and_old_ones_are_removed_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 0).unwrap();
    let big = vec![7u8; MAX_RECORD];
    let per_segment = SEGMENT_BYTES as usize / (MAX_RECORD + HEADER) + 1;
    for _ in 0..per_segment + 3 {
        put(&j, &big);
    }
    assert_eq!(j.end().generation, 2);
    assert_eq!(all(&j, Position::default()).len(), per_segment + 3);
    j.remove_before(2).unwrap();
    assert_eq!(generations(dir.path()).unwrap(), vec![2]);
    // Reading from a removed generation goes on with the next one.
    assert_eq!(all(&j, Position::default()).len(), 3);
    // Reopened with generation 2 indexed, the journal appends to generation 2.
    drop(j);
    let j = Journal::open(dir.path(), 2).unwrap();
    assert_eq!(j.end().generation, 2);
}

#[test]
fn appends_are_buffered_until_written_and_written_by_close() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 0).unwrap();
    for i in 0..10u8 {
        j.append(&[i; 10]).unwrap();
    }
    assert_eq!(j.end().offset, 0, "nothing written yet");
    assert_eq!(j.buffered_bytes(), 10 * (HEADER + 10));
    j.close().unwrap();
    assert_eq!(j.end().offset, 180);
    // After close an append is written at once.
    j.append(b"late").unwrap();
    assert_eq!(j.buffered_bytes(), 0);
    assert_eq!(all(&j, Position::default()).len(), 11);
}

#[test]
fn the_writer_loop_writes_within_its_linger_and_stops_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(dir.path(), 0).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let w = j.clone();
    let writer = std::thread::spawn(move || {
        w.run_writer(Duration::from_millis(1), |r| tx.send(r.is_ok()).unwrap())
    });
    j.append(b"a").unwrap();
    j.append(b"b").unwrap();
    assert_eq!(rx.recv(), Ok(true));
    assert_eq!(
        all(&j, Position::default()),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    j.close().unwrap();
    writer.join().unwrap();
}

#[test]
fn an_append_does_not_wait_for_a_write_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(dir.path(), 0).unwrap());
    j.append(b"before").unwrap();
    // A write that has taken the buffer and not returned (a stalled disk) holds the write
    // side; here the test holds it.
    let mut o = j.lock_out();
    j.write_out(&mut o).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let a = j.clone();
    let appender = std::thread::spawn(move || tx.send(a.append(b"during").is_ok()).unwrap());
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "the append returned while the write side was held"
    );
    appender.join().unwrap();
    assert_eq!(j.buffered_bytes(), HEADER + b"during".len());
    drop(o);
    j.write_buffered().unwrap();
    assert_eq!(
        all(&j, Position::default()),
        vec![b"before".to_vec(), b"during".to_vec()]
    );
}

#[test]
fn a_full_buffer_is_written_by_the_append_that_overflows_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 0).unwrap();
    let rec = vec![1u8; 1000];
    let fit = BUFFER_BYTES / (HEADER + rec.len());
    for _ in 0..fit {
        j.append(&rec).unwrap();
    }
    assert_eq!(j.end().offset, 0);
    j.append(&rec).unwrap();
    assert_eq!(j.end().offset, (fit * (HEADER + rec.len())) as u64);
}

#[test]
fn a_full_disk_loses_the_buffered_records_counted_and_the_journal_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // Generation 1 is /dev/full: every write fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", segment_path(dir.path(), 1)).unwrap();
    let j = Journal::open(dir.path(), 0).unwrap();
    j.append(b"one").unwrap();
    j.append(b"two").unwrap();
    let lost = j.write_buffered().unwrap_err();
    assert_eq!(lost.records, 2);
    assert_eq!(lost.error.raw_os_error(), Some(28), "ENOSPC");
    assert_eq!(j.end().offset, 0);
    assert_eq!(
        j.buffered_bytes(),
        0,
        "the buffer does not grow without bound"
    );
    // Once there is room again (here: the next segment is a real file), appends work.
    drop(j);
    let j = Journal::open(dir.path(), 2).unwrap();
    j.append(b"three").unwrap();
    j.write_buffered().unwrap();
    assert_eq!(all(&j, Position::default()), vec![b"three".to_vec()]);
}

#[test]
fn on_a_full_disk_no_append_now_reports_a_record_written() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", segment_path(dir.path(), 1)).unwrap();
    let j = std::sync::Arc::new(Journal::open(dir.path(), 0).unwrap());
    // A hit buffered before: it goes down with the first record's write, counted there.
    j.append(b"hit").unwrap();
    let first = j
        .append_now(3, |b| b.extend_from_slice(b"rec"))
        .unwrap_err();
    assert_eq!(first.records, 2, "the record and the hit before it");
    // Many callers at once: every one of them hears that its own record was lost, none
    // gets Ok for a record another caller's failed write took with it.
    let oks: usize = (0..8)
        .map(|_| {
            let j = j.clone();
            std::thread::spawn(move || {
                (0..200)
                    .filter(|_| j.append_now(3, |b| b.extend_from_slice(b"rec")).is_ok())
                    .count()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .sum();
    assert_eq!(oks, 0, "records reported written on a full disk");
    assert_eq!(j.buffered_bytes(), 0);
}

#[test]
fn positions_round_trip_and_order() {
    let p = Position {
        generation: 3,
        offset: 99,
    };
    assert_eq!(Position::decode(&p.encode()), Some(p));
    assert!(
        p < Position {
            generation: 4,
            offset: 0
        }
    );
    assert_eq!(Position::decode(b"short"), None);
}

#[test]
fn segment_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let jd = dir.path().join("j");
    let j = Journal::open(&jd, 0).unwrap();
    put(&j, b"x");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&jd), 0o700);
    assert_eq!(mode(&segment_path(&jd, 1)), 0o600);
}

#[test]
fn a_pair_is_written_at_once_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 0).unwrap();
    let start = j.end();
    // Buffered by another caller first: it goes out with the pair, before it.
    j.append(b"hit").unwrap();
    j.append_now_pair(
        (6, |b: &mut Vec<u8>| b.extend_from_slice(b"record")),
        (5, |b: &mut Vec<u8>| b.extend_from_slice(b"reply")),
    )
    .unwrap();
    // In the kernel without a further write.
    assert_eq!(all(&j, start), [&b"hit"[..], b"record", b"reply"]);
    // The second longer than it said: neither goes, and what comes next is intact.
    let after = j.end();
    assert!(
        j.append_now_pair(
            (6, |b: &mut Vec<u8>| b.extend_from_slice(b"record")),
            (2, |b: &mut Vec<u8>| b.extend_from_slice(b"reply")),
        )
        .is_err()
    );
    put(&j, b"next");
    assert_eq!(all(&j, after), [&b"next"[..]]);
}
