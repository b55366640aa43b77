//! Clicks on tracked links: stored beside opens in one id sequence, listed apart, split in a
//! message's detail, counted per message (clicks, links, first person click) and in the
//! totals, fed to followers and webhooks, kept across a reopen, purged with their message.

use super::*;
use crate::track::event::EventType;

/// A click on `link` (going to `url`) at `at_ms` from `ip`; `machine` gives the reason.
pub(crate) fn click(
    at_ms: u64,
    ip: &str,
    link: u16,
    url: &str,
    machine: Option<&'static str>,
) -> OpenHit {
    OpenHit {
        click: Some((link, url.into())),
        ..hit(at_ms, ip, machine)
    }
}

#[test]
fn clicks_are_stored_listed_and_counted_apart_from_opens() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let s = Store::open(&c).unwrap();
    let (a, b) = (MessageId::random(), MessageId::random());
    s.record_message(&rec(a, T0, "a@example.net")).unwrap();
    s.record_message(&rec(b, T0, "b@example.net")).unwrap();
    s.finish_message(
        &a,
        &Delivery {
            accepted: true,
            reply: "250 ok".into(),
            at_ms: T0,
        },
    )
    .unwrap();
    s.set_subscriptions(vec![Subscription {
        endpoint: 3,
        open: false,
        message: false,
        click: true,
    }]);
    let mut live = s.subscribe();
    let (u0, u1) = ("https://example.com/a", "https://example.com/b?x=1&y=é");
    let hits = [
        (a, hit(T0 + 60_000, "192.0.2.1", None)),
        (
            a,
            click(T0 + 1_000, "198.51.100.9", 0, u0, Some("early-click")),
        ),
        (a, click(T0 + 70_000, "192.0.2.1", 1, u1, None)),
        (a, click(T0 + 80_000, "192.0.2.1", 1, u1, None)),
        (
            b,
            click(T0 + 90_000, "192.0.2.2", 0, u0, Some("link-burst")),
        ),
        (
            MessageId::random(),
            click(T0 + 95_000, "192.0.2.3", 0, u0, None),
        ),
    ];
    let refs: Vec<(&MessageId, &OpenHit)> = hits.iter().map(|(m, h)| (m, h)).collect();
    let evs = s.record_opens(&refs).unwrap();
    assert!(
        evs[5].is_none(),
        "a click of an unknown message records nothing"
    );
    let evs: Vec<OpenEvent> = evs.into_iter().flatten().collect();
    assert_eq!(evs.len(), 5);
    let (open, c1, c2, c3, cb) = (&evs[0], &evs[1], &evs[2], &evs[3], &evs[4]);
    assert_eq!(open.event_type, EventType::Open);
    assert_eq!((open.first, open.count), (true, 1));
    assert_eq!(c1.event_type, EventType::Click);
    assert_eq!((c1.link, c1.url.as_deref()), (Some(0), Some(u0)));
    assert_eq!(
        (c1.first, c1.count),
        (true, 1),
        "clicks count apart from opens"
    );
    assert_eq!((c2.first, c2.count, c3.count), (false, 2, 3));
    assert_eq!(c2.url.as_deref(), Some(u1));
    assert_eq!(c1.recipient, "a@example.net");
    assert!(cb.machine && cb.first);
    // The JSON: the SPEC's click fields.
    let j = serde_json::to_value(c2).unwrap();
    assert_eq!(
        (j["type"].as_str(), j["link"].as_u64()),
        (Some("click"), Some(1))
    );
    assert_eq!(j["url"], u1);
    assert!(serde_json::to_value(open).unwrap().get("url").is_none());

    // Listings: opens without clicks, clicks newest first with a cursor, both when following.
    let opens = s.list_opens(None, 10).unwrap().items;
    assert_eq!(opens, vec![open.clone()]);
    let page = s.list_clicks(None, 2).unwrap();
    assert_eq!(page.items, vec![cb.clone(), c3.clone()]);
    let rest = s.list_clicks(page.next_cursor.as_deref(), 10).unwrap();
    assert_eq!(rest.items, vec![c2.clone(), c1.clone()]);
    assert_eq!(rest.next_cursor, None);
    assert_eq!(s.opens_after(None, 10).unwrap(), evs);
    assert_eq!(s.last_open_cursor(), cb.id);
    for e in &evs {
        assert_eq!(&live.try_recv().unwrap(), e, "the live feed has clicks too");
    }

    // Per message and in the totals.
    let check = |s: &Store| {
        let m = s.get_message(&a).unwrap().unwrap();
        assert_eq!(m.open_events, vec![open.clone()]);
        assert_eq!(m.click_events, vec![c1.clone(), c2.clone(), c3.clone()]);
        assert_eq!(m.message.opens.count, 1);
        let k = &m.message.clicks;
        assert_eq!((k.count, k.human), (3, 2));
        assert_eq!(
            (k.links.as_slice(), k.human_links.as_slice()),
            (&[0, 1][..], &[1][..])
        );
        assert_eq!(k.first_at, Some(T0 + 1_000));
        assert_eq!(k.first_human_at, Some(T0 + 70_000));
        assert_eq!(k.last_at, Some(T0 + 80_000));
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["clicks"]["count"], 3);
        assert_eq!(j["click_events"].as_array().map(Vec::len), Some(3));
        let st = s.stats();
        let t = &st.counters;
        assert_eq!((t.opens, t.unique_opens), (1, 1), "clicks are no opens");
        assert_eq!((t.clicks, t.machine_clicks), (4, 2));
        assert_eq!((t.unique_clicks, t.unique_human_clicks), (2, 1));
        assert_eq!((t.link_clicks, t.human_link_clicks), (3, 1));
        assert_eq!(t.click_reasons.get("link-burst"), Some(&1));
        assert_eq!(t.click_reasons.get("early-click"), Some(&1));
        assert_eq!(st.human_clicks, 2);
        assert!(t.by_client.values().map(|c| c.opens).sum::<u64>() == 1);
    };
    check(&s);
    // One outbox row per click, none for the open.
    assert_eq!(s.outbox_len(), 4);
    let rows = s.pending(None, 10).unwrap();
    assert!(rows.iter().all(|r| r.row.kind == "click"), "{rows:?}");
    assert!(
        rows[0].row.body.contains("\"type\":\"click\""),
        "{}",
        rows[0].row.body
    );
    // Everything holds after a reopen.
    s.flush_blocking().unwrap();
    drop(s);
    let s = reopen(&c);
    check(&s);
    let next = s
        .record_open(&a, &click(T0 + 99_000, "192.0.2.1", 2, u0, None))
        .unwrap()
        .unwrap();
    assert_eq!((next.count, next.first), (4, false));
    assert!(next.id > cb.id);
    let m = s.get_message(&a).unwrap().unwrap().message;
    assert_eq!(m.clicks.links, vec![0, 1, 2]);
}

#[test]
fn purging_a_message_takes_its_clicks() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.retention_days = 1;
    let s = Store::open(&c).unwrap();
    let day = 86_400_000;
    let (old, new) = (MessageId::random(), MessageId::random());
    s.record_message(&rec(old, T0 - 3 * day, "old@example.net"))
        .unwrap();
    s.record_message(&rec(new, T0, "new@example.net")).unwrap();
    let url = "https://example.com/";
    s.record_open(&old, &click(T0 - 3 * day, "192.0.2.1", 0, url, None))
        .unwrap()
        .unwrap();
    // A recent click of the old message goes with it.
    s.record_open(&old, &click(T0, "192.0.2.1", 1, url, None))
        .unwrap()
        .unwrap();
    let kept = s
        .record_open(&new, &click(T0 + 1, "192.0.2.1", 0, url, None))
        .unwrap()
        .unwrap();
    s.purge_expired(T0).unwrap();
    assert!(s.get_message(&old).unwrap().is_none());
    assert_eq!(s.list_clicks(None, 10).unwrap().items, vec![kept.clone()]);
    assert_eq!(s.opens_after(None, 10).unwrap(), vec![kept]);
    assert_eq!(s.stats().counters.clicks, 3, "lifetime totals stay");
}

#[test]
fn a_message_with_hundreds_of_opens_and_clicks_keeps_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let s = Store::open(&c).unwrap();
    let a = MessageId::random();
    s.record_message(&rec(a, T0, "a@example.net")).unwrap();
    let hits: Vec<OpenHit> = (0..301u16)
        .map(|i| {
            let at = T0 + 60_000 + u64::from(i);
            if i % 2 == 0 {
                hit(at, "192.0.2.1", None)
            } else {
                click(at, "192.0.2.1", i % 7, "https://example.com/", None)
            }
        })
        .collect();
    for chunk in hits.chunks(50) {
        let refs: Vec<(&MessageId, &OpenHit)> = chunk.iter().map(|h| (&a, h)).collect();
        s.record_opens(&refs).unwrap();
    }
    let check = |s: &Store| {
        let m = s.get_message(&a).unwrap().unwrap();
        assert_eq!((m.open_events.len(), m.click_events.len()), (151, 150));
        assert_eq!((m.message.opens.count, m.message.clicks.count), (151, 150));
        assert_eq!(m.message.clicks.links, (0..7).collect::<Vec<u16>>());
        let counts: Vec<u64> = m.click_events.iter().map(|e| e.count).collect();
        assert_eq!(counts, (1..=150).collect::<Vec<u64>>());
    };
    check(&s);
    s.flush_blocking().unwrap();
    drop(s);
    check(&reopen(&c));
}
