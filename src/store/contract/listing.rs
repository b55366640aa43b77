//! Listing messages: newest first in pages by cursor, filtered by recipient, opened or not,
//! and opened by people (a message only machines opened is "not opened" by people).

use super::*;

#[test]
fn list_messages_filters_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&cfg(dir.path())).unwrap();
    let ids: Vec<MessageId> = (0..5).map(|_| MessageId::random()).collect();
    for (i, id) in ids.iter().enumerate() {
        let rcpt = if i % 2 == 0 {
            "Alice@Example.net"
        } else {
            "bob@example.net"
        };
        s.record_message(&rec(*id, T0 + i as u64, rcpt)).unwrap();
    }
    s.record_open(&ids[4], &hit(T0 + 10, "192.0.2.1", None))
        .unwrap()
        .unwrap();
    let all = s.list_messages(&MessageFilter::default(), None, 3).unwrap();
    let got: Vec<String> = all.items.iter().map(|m| m.record.id.to_string()).collect();
    assert_eq!(
        got,
        vec![ids[4].to_string(), ids[3].to_string(), ids[2].to_string()]
    );
    let rest = s
        .list_messages(&MessageFilter::default(), all.next_cursor.as_deref(), 3)
        .unwrap();
    assert_eq!(rest.items.len(), 2);
    assert_eq!(rest.next_cursor, None);
    let alice = MessageFilter {
        rcpt: Some("alice@".into()),
        opened: None,
        ..Default::default()
    };
    assert_eq!(s.list_messages(&alice, None, 10).unwrap().items.len(), 3);
    let opened = MessageFilter {
        rcpt: None,
        opened: Some(true),
        ..Default::default()
    };
    let o = s.list_messages(&opened, None, 10).unwrap();
    assert_eq!(o.items.len(), 1);
    assert_eq!(o.items[0].opens.count, 1);
    let unopened = MessageFilter {
        rcpt: Some("bob".into()),
        opened: Some(false),
        ..Default::default()
    };
    assert_eq!(s.list_messages(&unopened, None, 10).unwrap().items.len(), 2);
    assert!(s.list_messages(&opened, Some("nope"), 1).is_err());
    // Opened by a machine only: opened, yet not by people.
    s.record_open(&ids[1], &hit(T0 + 11, "192.0.2.2", Some("apple-mpp")))
        .unwrap()
        .unwrap();
    let by_people = MessageFilter {
        opened: Some(true),
        people: true,
        ..Default::default()
    };
    let ids_of = |f: &MessageFilter| -> Vec<String> {
        let page = s.list_messages(f, None, 10).unwrap();
        page.items.iter().map(|m| m.record.id.to_string()).collect()
    };
    assert_eq!(ids_of(&by_people), [ids[4].to_string()]);
    assert_eq!(ids_of(&opened), [ids[4].to_string(), ids[1].to_string()]);
    let not_by_people = MessageFilter {
        opened: Some(false),
        people: true,
        ..Default::default()
    };
    assert_eq!(ids_of(&not_by_people).len(), 4);
    assert!(ids_of(&not_by_people).contains(&ids[1].to_string()));
}
