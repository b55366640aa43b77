//! Webhook delivery against an in-process loopback receiver: every open arrives signed, a
//! failing receiver gets the event after retries, a receiver that is down across a restart
//! gets every event afterwards, and one that never answers ends in the dead letters after
//! `max_age` (on tokio's paused clock).

mod hooks_receiver;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hooks_receiver::{Receiver, Reply, hit, message};
use pixelrelay::config::{StoreConfig, WebhookConfig, WebhookSecret};
use pixelrelay::notify::{Clock, Endpoint, Notifier};
use pixelrelay::shutdown;
use pixelrelay::store::{Store, now_ms};

const SECRET: &[u8] = b"whsec-test-0123456789";

fn store_cfg(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("db"),
        subjects: false,
        anonymize_ip: false,
        retention_days: 0,
        flush_interval: Duration::from_millis(100),
        open_log: None,
        postgres: None,
    }
}

/// An endpoint with fast retries (10 ms doubling to 100 ms).
fn hook(url: &str) -> WebhookConfig {
    let mut c = WebhookConfig::new(url, WebhookSecret::Env("UNUSED".into()));
    c.retry_min = Duration::from_millis(10);
    c.retry_max = Duration::from_millis(100);
    c.timeout = Duration::from_secs(5);
    c
}

fn endpoint(cfg: WebhookConfig) -> Arc<Endpoint> {
    Arc::new(Endpoint::new(cfg, SECRET.to_vec()).unwrap())
}

/// Opens the store again after the previous handles were dropped. sled's background IO
/// threads may hold the database's file lock for a moment after the last handle goes (a new
/// process would not see this), so a lock error is retried for up to 5 s.
async fn reopen(dir: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Store::open(&store_cfg(dir)) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

#[tokio::test]
async fn every_open_arrives_signed_and_in_order_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&store_cfg(dir.path())).unwrap();
    let opens_rx = Receiver::start(SECRET, |_, _| Reply::Status(200)).await;
    let msgs_rx = Receiver::start(SECRET, |_, _| Reply::Status(204)).await;
    let mut o = hook(&opens_rx.url());
    o.concurrency = 1;
    o.headers = vec![("Authorization".into(), "Bearer t0k".into())];
    let mut m = hook(&msgs_rx.url());
    m.open = false;
    m.message = true;
    let notifier = Notifier::new(vec![endpoint(o), endpoint(m)], store.clone());
    let (trigger, sd) = shutdown::channel();
    let workers = notifier.start(sd);

    let a = message(&store, "bob@example.net");
    let b = message(&store, "eve@example.org");
    let mut want = Vec::new();
    for i in 0..20 {
        let id = if i % 2 == 0 { &a } else { &b };
        want.push(store.record_open(id, &hit()).unwrap().unwrap());
    }
    opens_rx
        .wait(20, "20 opens", |r| {
            r.iter().filter(|x| x.acked()).count() >= 20
        })
        .await;
    msgs_rx.wait(20, "2 message events", |r| r.len() >= 2).await;

    let got = opens_rx.received();
    assert_eq!(
        got.len(),
        20,
        "nothing sent twice to a receiver that always answers 200"
    );
    let mut per_msg: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut event_ids = HashSet::new();
    let now_s = now_ms() / 1000;
    for r in &got {
        assert!(r.sig_ok, "bad signature: {:?}", r.headers);
        assert_eq!(r.content_type, "application/json");
        assert!(
            r.timestamp + 60 >= now_s && r.timestamp <= now_s + 1,
            "timestamp {}",
            r.timestamp
        );
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "authorization" && v == "Bearer t0k")
        );
        assert_eq!(r.body["type"], "open");
        assert!(
            event_ids.insert(r.event_id().to_string()),
            "unique event ids"
        );
        per_msg
            .entry(r.body["message"].as_str().unwrap().to_string())
            .or_default()
            .push(r.body["count"].as_u64().unwrap());
    }
    // The SPEC's open event (with its own `type`), field for field, plus event_id.
    let first = &got[0].body;
    let w = serde_json::to_value(&want[0]).unwrap();
    for (k, v) in w.as_object().unwrap() {
        assert_eq!(&first[k], v, "field {k}");
    }
    assert_eq!(w["type"], "open");
    assert_eq!(
        first.as_object().unwrap().len(),
        w.as_object().unwrap().len() + 1
    );
    // Concurrency 1 and no failures: each message's opens arrive in order.
    assert_eq!(per_msg.len(), 2);
    for counts in per_msg.values() {
        assert_eq!(counts, &(1..=10).collect::<Vec<u64>>());
    }

    let ms = msgs_rx.received();
    assert_eq!(ms.len(), 2, "message events only, one per message");
    for r in &ms {
        assert!(r.sig_ok);
        assert_eq!(r.body["type"], "message");
        assert_eq!(r.body["tracked"], true);
        assert_eq!(r.body["delivery"]["accepted"], true);
        assert!(!event_ids.contains(r.event_id()));
    }

    // Everything acknowledged leaves the outbox.
    for _ in 0..200 {
        if store.outbox_len() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.outbox_len(), 0);
    let mt = notifier.metrics();
    assert_eq!(
        (mt.delivered, mt.failed_attempts, mt.dead_lettered),
        (22, 0, 0)
    );
    trigger.trigger();
    workers.await.unwrap();
}

#[tokio::test]
async fn a_failing_receiver_gets_the_event_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&store_cfg(dir.path())).unwrap();
    // 500, 503, 404, then 200.
    let rx = Receiver::start(SECRET, |n, _| match n {
        0 => Reply::Status(500),
        1 => Reply::Status(503),
        2 => Reply::Status(404),
        _ => Reply::Status(200),
    })
    .await;
    let notifier = Notifier::new(vec![endpoint(hook(&rx.url()))], store.clone());
    let (trigger, sd) = shutdown::channel();
    let workers = notifier.start(sd);
    let a = message(&store, "bob@example.net");
    store.record_open(&a, &hit()).unwrap().unwrap();
    // While it fails, the pending list shows the attempts.
    rx.wait(10, "first failure", |r| !r.is_empty()).await;
    rx.wait(10, "delivery", |r| r.iter().any(|x| x.acked()))
        .await;
    let got = rx.received();
    assert_eq!(got.len(), 4);
    let ids: HashSet<&str> = got.iter().map(|r| r.event_id()).collect();
    assert_eq!(ids.len(), 1, "retries repeat the event_id");
    assert!(got.iter().all(|r| r.sig_ok));
    for _ in 0..200 {
        if notifier.metrics().delivered == 1 && store.outbox_len() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = notifier.metrics();
    assert_eq!((m.delivered, m.failed_attempts, m.dead_lettered), (1, 3, 0));
    assert_eq!(store.outbox_len(), 0);
    trigger.trigger();
    workers.await.unwrap();
}

#[tokio::test]
async fn a_receiver_down_across_a_restart_gets_every_event_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    // A port with nothing listening: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut want = HashSet::new();
    {
        let store = Store::open(&store_cfg(dir.path())).unwrap();
        let notifier = Notifier::new(vec![endpoint(hook(&url))], store.clone());
        let (trigger, sd) = shutdown::channel();
        let workers = notifier.start(sd);
        let a = message(&store, "bob@example.net");
        for _ in 0..30 {
            want.insert(store.record_open(&a, &hit()).unwrap().unwrap().id);
        }
        for _ in 0..500 {
            if notifier.metrics().failed_attempts >= 30 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            notifier.metrics().failed_attempts >= 30,
            "{:?}",
            notifier.metrics()
        );
        assert_eq!(notifier.metrics().delivered, 0);
        trigger.trigger();
        workers.await.unwrap();
        store.flush().await.unwrap();
        // Dropping the last handles closes sled.
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let rx = Receiver::start_on(listener, SECRET, |_, _| Reply::Status(200));
    let store = reopen(dir.path()).await;
    assert_eq!(store.outbox_len(), 30, "the outbox survived the restart");
    let p = store.pending(None, 100).unwrap();
    assert!(
        p.iter()
            .all(|i| i.row.attempts >= 1 && i.row.last_error.is_some())
    );
    let notifier = Notifier::new(vec![endpoint(hook(&url))], store.clone());
    let (trigger, sd) = shutdown::channel();
    let workers = notifier.start(sd);
    rx.wait(20, "30 events after the restart", |r| {
        r.iter()
            .filter(|x| x.acked())
            .map(|x| x.body["id"].as_str().unwrap_or("").to_string())
            .collect::<HashSet<_>>()
            .len()
            >= 30
    })
    .await;
    let got: HashSet<String> = rx
        .received()
        .iter()
        .map(|x| x.body["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    assert!(rx.received().iter().all(|r| r.sig_ok));
    trigger.trigger();
    workers.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_never_answers_ends_in_the_dead_letters_after_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&store_cfg(dir.path())).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let rx = Receiver::start(SECRET, move |_, _| {
        c.fetch_add(1, Ordering::Relaxed);
        Reply::Stall
    })
    .await;
    // The documented defaults: 10 s timeout, 24 h max_age, 1 s doubling to 10 min.
    let cfg = WebhookConfig::new(&rx.url(), WebhookSecret::Env("UNUSED".into()));
    let max_age = cfg.max_age;
    let notifier = Notifier::with_clock(vec![endpoint(cfg)], store.clone(), Clock::tokio());
    let (trigger, sd) = shutdown::channel();
    let start = tokio::time::Instant::now();
    let a = message(&store, "bob@example.net");
    let ev = store.record_open(&a, &hit()).unwrap().unwrap();
    let workers = notifier.start(sd);
    // Virtual time: a day passes in moments.
    while notifier.metrics().dead_lettered == 0 {
        assert!(
            start.elapsed() < max_age * 2,
            "not dead after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= max_age,
        "dead-lettered after {elapsed:?}, before max_age"
    );
    assert_eq!(store.outbox_len(), 0);
    let dead = store.dead_letters(None, 10).unwrap();
    assert_eq!(dead.len(), 1);
    let row = &dead[0].row;
    let body: serde_json::Value = serde_json::from_str(&row.body).unwrap();
    assert_eq!(body["id"], ev.id.as_str());
    // 1+2+...+512 s, then every ≤10 min (with jitter ≥5 min) for a day: well over 100 tries.
    assert!(row.attempts > 100, "{} attempts", row.attempts);
    assert!(
        row.last_error.as_deref().unwrap_or("").contains("timeout"),
        "{row:?}"
    );
    let m = notifier.metrics();
    assert_eq!((m.delivered, m.dead_lettered, m.pending), (0, 1, 0));
    assert_eq!(m.failed_attempts, u64::from(row.attempts));
    assert!(
        calls.load(Ordering::Relaxed) > 0,
        "the receiver was reached"
    );

    // An admin retries it: back in the outbox, due now, with the same event_id.
    assert!(notifier.retry_dead_letter(&dead[0].id).unwrap());
    assert!(store.dead_letters(None, 10).unwrap().is_empty());
    let before = calls.load(Ordering::Relaxed);
    while calls.load(Ordering::Relaxed) == before {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let pending = store.pending(None, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].row.event_id, row.event_id);
    trigger.trigger();
    workers.await.unwrap();
}

#[tokio::test]
async fn https_endpoints_are_verified_with_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&store_cfg(dir.path())).unwrap();
    let (acceptor, cert) = hooks_receiver::localhost_tls();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let rx = Receiver::start_tls(listener, Some(acceptor), SECRET, |_, _| Reply::Status(200));
    let url = format!("https://localhost:{port}/hook");
    // Trusting the test CA: delivered.
    let trusted = Arc::new(Endpoint::with_roots(hook(&url), SECRET.to_vec(), vec![cert]).unwrap());
    let notifier = Notifier::new(vec![trusted], store.clone());
    let (trigger, sd) = shutdown::channel();
    let workers = notifier.start(sd);
    let a = message(&store, "bob@example.net");
    store.record_open(&a, &hit()).unwrap().unwrap();
    rx.wait(10, "an open over TLS", |r| r.iter().any(|x| x.acked()))
        .await;
    assert!(rx.received().iter().all(|r| r.sig_ok));
    trigger.trigger();
    workers.await.unwrap();

    // With the public roots only, the self-signed certificate is refused: nothing arrives.
    let before = rx.received().len();
    let untrusted = Endpoint::new(hook(&url), SECRET.to_vec()).unwrap();
    let err = untrusted.post("{}", 0).await.unwrap_err();
    assert!(err.contains("TLS"), "{err}");
    assert_eq!(rx.received().len(), before);
}

#[tokio::test]
async fn a_stalled_endpoint_delays_no_other_and_holds_at_most_concurrency_requests() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&store_cfg(dir.path())).unwrap();
    let stalled = Receiver::start(SECRET, |_, _| Reply::Stall).await;
    let healthy = Receiver::start(SECRET, |_, _| Reply::Status(200)).await;
    let mut slow = hook(&stalled.url());
    slow.timeout = Duration::from_secs(60);
    slow.concurrency = 3;
    let slow = endpoint(slow);
    let notifier = Notifier::new(
        vec![slow.clone(), endpoint(hook(&healthy.url()))],
        store.clone(),
    );
    let (trigger, sd) = shutdown::channel();
    let workers = notifier.start(sd);
    let a = message(&store, "bob@example.net");
    for _ in 0..50 {
        store.record_open(&a, &hit()).unwrap().unwrap();
    }
    healthy
        .wait(20, "all 50 at the healthy endpoint", |r| {
            r.iter().filter(|x| x.acked()).count() >= 50
        })
        .await;
    stalled
        .wait(20, "the stalled endpoint's first requests", |r| {
            r.len() >= 3
        })
        .await;
    // Still stuck in its first attempts: the healthy endpoint did not wait for them.
    let s = slow.metrics.snapshot();
    assert_eq!((s.delivered, s.failed_attempts), (0, 0));
    assert_eq!(
        stalled.received().len(),
        3,
        "at most `concurrency` in flight"
    );
    // Its 50 events wait for it, durably.
    let mine = format!("{:016x}", slow.id);
    let waiting = store.pending(None, 200).unwrap();
    assert_eq!(waiting.iter().filter(|i| i.endpoint == mine).count(), 50);
    trigger.trigger();
    workers.await.unwrap();
}

#[tokio::test]
async fn clicks_go_signed_to_the_endpoints_that_asked_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&store_cfg(dir.path())).unwrap();
    let opens_rx = Receiver::start(SECRET, |_, _| Reply::Status(200)).await;
    let clicks_rx = Receiver::start(SECRET, |_, _| Reply::Status(200)).await;
    let mut c = hook(&clicks_rx.url());
    c.open = false;
    c.click = true;
    let notifier = Notifier::new(
        vec![endpoint(hook(&opens_rx.url())), endpoint(c)],
        store.clone(),
    );
    let (trigger, sd) = shutdown::channel();
    let workers = notifier.start(sd);

    let a = message(&store, "bob@example.net");
    let open = store.record_open(&a, &hit()).unwrap().unwrap();
    let click_hit = pixelrelay::store::OpenHit {
        click: Some((2, "https://example.com/offer?id=7".into())),
        ..hit()
    };
    let click = store.record_open(&a, &click_hit).unwrap().unwrap();
    opens_rx
        .wait(20, "the open", |r| r.iter().any(|x| x.acked()))
        .await;
    clicks_rx
        .wait(20, "the click", |r| r.iter().any(|x| x.acked()))
        .await;
    // Both delivered before anything more could arrive; each endpoint got its kind only.
    for _ in 0..200 {
        if store.outbox_len() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (o, k) = (opens_rx.received(), clicks_rx.received());
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].body["id"], open.id.as_str());
    assert_eq!(k.len(), 1);
    let body = &k[0].body;
    assert!(k[0].sig_ok);
    assert_eq!(body["type"], "click");
    assert_eq!(body["id"], click.id.as_str());
    assert_eq!(
        (body["link"].as_u64(), body["url"].as_str()),
        (Some(2), Some("https://example.com/offer?id=7"))
    );
    assert_eq!(body["recipient"], "bob@example.net");
    assert_eq!(body["first"], true);
    trigger.trigger();
    workers.await.unwrap();
}
