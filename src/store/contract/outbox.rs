//! The contract for the webhook outbox: rows commit with what they describe.

use super::*;

#[test]
fn outbox_rows_commit_with_opens_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    let a = MessageId::random();
    s.record_message(&rec(a, T0, "bob@example.net")).unwrap();
    // No subscriptions: nothing in the outbox.
    s.record_open(&a, &hit(T0 + 10, "203.0.113.5", None))
        .unwrap()
        .unwrap();
    assert_eq!(s.outbox_len(), 0);
    s.set_subscriptions(vec![
        Subscription {
            endpoint: 7,
            open: true,
            message: true,
            click: false,
        },
        Subscription {
            endpoint: 9,
            open: true,
            message: false,
            click: false,
        },
    ]);
    let mut watch = s.watch_outbox();
    watch.borrow_and_update();
    let d = Delivery {
        accepted: true,
        reply: "250 ok".into(),
        at_ms: T0 + 50,
    };
    s.finish_message(&a, &d).unwrap();
    s.finish_message(&a, &d).unwrap();
    assert!(watch.has_changed().unwrap());
    let ev = s
        .record_opens(&[
            (&a, &hit(T0 + 1000, "203.0.113.5", None)),
            (&MessageId::random(), &hit(T0 + 1000, "203.0.113.5", None)),
        ])
        .unwrap();
    let ev = ev[0].clone().unwrap();
    // One message event (the repeated reply adds none) for endpoint 7, the open for both.
    let p = s.pending(None, 100).unwrap();
    assert_eq!(p.len(), 3, "{p:?}");
    let (msg, opens): (Vec<_>, Vec<_>) = p.iter().partition(|i| i.row.kind == "message");
    assert_eq!(msg.len(), 1);
    assert_eq!(msg[0].endpoint, format!("{:016x}", 7));
    let body: serde_json::Value = serde_json::from_str(&msg[0].row.body).unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["id"], a.to_string());
    assert_eq!(body["tracked"], true);
    assert_eq!(body["delivery"]["reply"], "250 ok");
    assert_eq!(opens.len(), 2);
    assert_eq!(
        opens[0].row.event_id, opens[1].row.event_id,
        "one event, one id"
    );
    assert_ne!(opens[0].row.event_id, msg[0].row.event_id);
    assert_eq!(
        opens[0].row.body.matches("\"type\"").count(),
        1,
        "one type key: {}",
        opens[0].row.body
    );
    let body: serde_json::Value = serde_json::from_str(&opens[0].row.body).unwrap();
    assert_eq!(body["type"], "open");
    assert_eq!(body["event_id"], opens[0].row.event_id.as_str());
    assert_eq!(body["id"], ev.id.as_str());
    assert_eq!(body["count"], 2);
    assert_eq!(body["recipient"], "bob@example.net");
    assert_eq!(opens[0].row.created_ms, T0 + 1000);

    // Dead letter and retry.
    let (ep, seq) = parse_delivery_id(&opens[1].id).unwrap();
    assert_eq!(s.outbox_scan(ep, 0).unwrap().len(), 1);
    assert!(s.outbox_kill(ep, seq, 5, "HTTP 500").unwrap());
    assert!(
        !s.outbox_kill(ep, seq, 5, "HTTP 500").unwrap(),
        "moved once"
    );
    assert_eq!(s.pending(None, 100).unwrap().len(), 2);
    let dead = s.dead_letters(None, 100).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].row.attempts, 5);
    assert_eq!(dead[0].row.last_error.as_deref(), Some("HTTP 500"));
    let before = *watch.borrow_and_update();
    assert!(s.retry_dead_letter(&dead[0].id, T0 + 9000).unwrap());
    assert!(!s.retry_dead_letter(&dead[0].id, T0 + 9000).unwrap());
    assert!(s.retry_dead_letter("nonsense", T0).is_err());
    assert_eq!(watch.borrow().retries, before.retries + 1);
    let back = s.outbox_get(ep, seq).unwrap().unwrap();
    assert_eq!(
        (back.attempts, back.created_ms, back.next_ms),
        (0, T0 + 9000, T0 + 9000)
    );
    assert_eq!(back.event_id, opens[1].row.event_id);
    s.outbox_reschedule(ep, seq, 1, T0 + 20_000, "timeout")
        .unwrap();
    assert_eq!(s.outbox_get(ep, seq).unwrap().unwrap().attempts, 1);
    // Paging.
    let first = s.pending(None, 1).unwrap();
    let rest = s.pending(Some(&first[0].id), 100).unwrap();
    assert_eq!(rest.len(), 2);
    s.outbox_delivered(ep, seq).unwrap();
    assert_eq!(s.outbox_get(ep, seq).unwrap(), None);

    assert_eq!(s.outbox_endpoints().unwrap(), vec![7], "9 has no rows left");
    // Reopened: rows survive and new event ids keep increasing.
    let last = s.watch_outbox().borrow().last_seq;
    drop(s);
    let s = reopen(&cfg(dir.path()));
    assert_eq!(s.outbox_len(), 2);
    assert_eq!(s.watch_outbox().borrow().last_seq, last);
    s.set_subscriptions(vec![Subscription {
        endpoint: 9,
        open: true,
        message: false,
        click: false,
    }]);
    // An open stamped earlier than the last event still gets a later event id.
    s.record_open(&a, &hit(T0, "203.0.113.5", None))
        .unwrap()
        .unwrap();
    let newest = s.outbox_scan(9, last).unwrap();
    assert_eq!(newest.len(), 1);
    assert!(newest[0].0 > last);
}
