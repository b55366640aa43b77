//! Message records and their final replies committed together, as the indexer writes them when
//! the relay journaled both in one run: each reply counted once, the last one stored, the
//! hand-off time the reply's; a record seen again keeps its reply.

use super::*;

#[test]
fn records_and_their_replies_in_one_commit_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    let (a, b, c) = (
        MessageId::random(),
        MessageId::random(),
        MessageId::random(),
    );
    let reply = |accepted, text: &str, at_ms| Delivery {
        accepted,
        reply: text.into(),
        at_ms,
    };
    let (ok1, ok2, no) = (
        reply(true, "250 first", T0 + 5),
        reply(true, "250 again", T0 + 9),
        reply(false, "550 no", T0 + 7),
    );
    let (ra, rb, rc) = (
        rec(a, T0, "a@example.net"),
        rec(b, T0, "b@example.net"),
        rec(c, T0, "c@example.net"),
    );
    // b has no reply yet; a has two (the relay journaled a retry's too).
    s.commit_messages(&[&ra, &rb, &rc], &[(&a, &ok1), (&c, &no), (&a, &ok2)], None)
        .unwrap();
    let st = s.stats().counters;
    assert_eq!((st.recorded, st.relayed, st.rejected), (3, 1, 1));
    let got = |id| s.get_message(&id).unwrap().unwrap().message;
    assert_eq!(
        got(a).delivery.as_ref().map(|d| d.reply.as_str()),
        Some("250 again")
    );
    assert_eq!(got(c).delivery.as_ref().map(|d| d.accepted), Some(false));
    assert_eq!(got(b).delivery, None);
    // The hand-off time an open is measured from: the (last) reply's.
    assert_eq!(s.open_context(&a).unwrap().unwrap().sent_at(), T0 + 9);
    assert_eq!(s.open_context(&b).unwrap().unwrap().sent_at(), T0);

    // The same records again (a replay) with b's reply: a and c keep theirs, nothing counted
    // twice.
    s.commit_messages(&[&ra, &rb, &rc], &[(&b, &ok1)], None)
        .unwrap();
    let st = s.stats().counters;
    assert_eq!((st.recorded, st.relayed, st.rejected), (3, 2, 1));
    assert_eq!(
        got(a).delivery.as_ref().map(|d| d.reply.as_str()),
        Some("250 again")
    );
    assert_eq!(
        got(b).delivery.as_ref().map(|d| d.reply.as_str()),
        Some("250 first")
    );
}
