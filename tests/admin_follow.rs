//! The follow stream (`GET /api/v1/opens?follow=1&since=CURSOR`) over a real socket: backlog
//! then live opens with no gap and no duplicate while 1 000 opens are written concurrently, a
//! reader slower than the store's bounded feed, heartbeats, and the end line on shutdown.

#[path = "admin_support/mod.rs"]
mod support;

use std::time::Duration;

use pixelrelay::store::{OpenHit, Store, now_ms};
use pixelrelay::token::MessageId;
use pixelrelay::track::{Classification, Device};
use serde_json::Value;
use support::{Admin, Msg, Open, follow, wait_followers};

fn hit(i: usize) -> OpenHit {
    OpenHit {
        at_ms: now_ms(),
        ip: "192.0.2.7".parse().unwrap(),
        // Long lines, so that socket buffers cannot absorb a slow reader's backlog.
        user_agent: format!("writer {i} {}", "x".repeat(2000)),
        classification: Classification {
            client: "Thunderbird".into(),
            device: Device::Desktop,
            machine: i.is_multiple_of(3),
            machine_reason: i.is_multiple_of(3).then_some("test"),
            proxy: None,
        },
        country: None,
        click: None,
    }
}

/// Writes `n` opens spread over `ids` from two threads at once.
fn write_concurrently(
    store: &Store,
    ids: &[MessageId],
    n: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|w| {
            let store = store.clone();
            let ids = ids.to_vec();
            std::thread::spawn(move || {
                for i in (w..n).step_by(2) {
                    store
                        .record_open(&ids[i % ids.len()], &hit(i))
                        .unwrap()
                        .unwrap();
                    if i.is_multiple_of(50) {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect()
}

async fn read_opens(s: &mut support::Stream, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let read = async {
        while out.len() < n {
            let line = s.line().await.expect("stream ended early");
            let v: Value = serde_json::from_str(&line).expect("JSON line");
            if v.get("heartbeat").is_some() {
                continue;
            }
            out.push(v);
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .unwrap_or_else(|_| panic!("timed out"));
    out
}

fn ids_of(v: &[Value]) -> Vec<String> {
    v.iter()
        .map(|e| e["id"].as_str().expect("an open event").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_cursor_then_1000_concurrent_opens_no_gap_no_duplicate() {
    let a = Admin::start().await;
    let ids: Vec<MessageId> = (0..5)
        .map(|i| a.message(&Msg::new(&format!("r{i}@example.net"))))
        .collect();
    for i in 0..200 {
        a.open(&ids[i % 5], &Open::person("Outlook", Device::Desktop));
    }
    let stored = a.store.opens_after(None, 1000).unwrap();
    let cursor = stored[49].id.clone();
    let mut s = follow(a.addr, Some(&cursor)).await;
    // The writers start while the stream is still sending its backlog.
    let writers = write_concurrently(&a.store, &ids, 1000);
    let got = read_opens(&mut s, 150 + 1000).await;
    for w in writers {
        w.join().unwrap();
    }
    let got_ids = ids_of(&got);
    let want: Vec<String> = a
        .store
        .opens_after(Some(&cursor), 10_000)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(want.len(), 1150);
    assert_eq!(got_ids.len(), want.len());
    assert!(
        got_ids.windows(2).all(|w| w[0] < w[1]),
        "order or duplicate"
    );
    assert_eq!(got_ids, want, "gap or duplicate");
    // Each line is the SPEC's open event, complete.
    let e = &got[1000];
    for k in [
        "message",
        "at",
        "ip",
        "client",
        "device",
        "machine",
        "count",
        "recipient",
        "sender",
    ] {
        assert!(e.get(k).is_some(), "{k} missing in {e}");
    }
    // Nothing else arrives: no duplicate after the last one either.
    a.open(&ids[0], &Open::person("Outlook", Device::Desktop));
    let next = read_opens(&mut s, 1).await;
    assert!(next[0]["id"].as_str().unwrap() > want.last().unwrap().as_str());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_slower_than_the_feed_gets_every_open_from_the_store() {
    let a = Admin::start().await;
    let id = a.message(&Msg::new("bob@example.net"));
    let mut s = follow(a.addr, None).await;
    wait_followers(&a.store, 1).await;
    // Far more than the feed's 4096 slots, written while nobody reads the socket.
    let writers = write_concurrently(&a.store, &[id], 9000);
    for w in writers {
        w.join().unwrap();
    }
    let got = ids_of(&read_opens(&mut s, 9000).await);
    let want: Vec<String> = a
        .store
        .opens_after(None, 20_000)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, want);
    let metrics = a.get("/metrics").await.text();
    let lagged = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pixelrelay_admin_follow_lagged_total "))
        .expect("lag counter");
    assert_ne!(
        lagged, "0",
        "the reader never lagged: the test did not test the catch-up"
    );
    a.stop().await;
}

#[tokio::test]
async fn heartbeats_then_an_end_line_on_shutdown() {
    let a = Admin::start_with(|s| s.heartbeat = Duration::from_millis(100)).await;
    let id = a.message(&Msg::new("bob@example.net"));
    let before = a.open(&id, &Open::person("Gmail", Device::Webmail));
    // Without `since` the stream starts after the newest stored open.
    let mut s = follow(a.addr, None).await;
    let hb: Value = serde_json::from_str(&s.line().await.unwrap()).unwrap();
    assert!(hb["heartbeat"].as_str().unwrap().ends_with('Z'), "{hb}");
    assert_eq!(hb["cursor"], before.id.as_str());
    let e = a.open(&id, &Open::machine("Gmail", Device::Webmail));
    let got = loop {
        let v: Value = serde_json::from_str(&s.line().await.unwrap()).unwrap();
        if v.get("heartbeat").is_none() {
            break v;
        }
    };
    assert_eq!(got["id"], e.id.as_str());
    assert_eq!(got["machine"], true);
    assert_eq!(got["count"], 2);
    a.trigger.trigger();
    let end = loop {
        let v: Value = serde_json::from_str(&s.line().await.expect("end line")).unwrap();
        if v.get("heartbeat").is_none() {
            break v;
        }
    };
    assert_eq!(end, serde_json::json!({"end": "shutdown", "cursor": e.id}));
    assert_eq!(s.line().await, None, "the stream ends after the end line");
    let task = a.task.unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("listener stopped with a follower connected")
        .unwrap();
}

#[tokio::test]
async fn a_client_that_goes_away_releases_its_follower() {
    let a = Admin::start().await;
    let s = follow(a.addr, None).await;
    wait_followers(&a.store, 1).await;
    drop(s);
    let id = a.message(&Msg::new("bob@example.net"));
    // The next line written (this open) finds the connection gone and ends the task.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.store.followers() > 0 {
        assert!(std::time::Instant::now() < deadline, "follower leaked");
        a.open(&id, &Open::person("Gmail", Device::Webmail));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await;
}
