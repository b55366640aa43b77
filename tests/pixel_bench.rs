//! A pixel server for load generators (not a timed test; `#[ignore]`d).
//!
//! ```sh
//! PIXEL_BENCH_PORT=18080 PIXEL_BENCH_SECS=15 PIXEL_BENCH_TOKENS=/tmp/tokens.txt \
//!   cargo test --release --test pixel_bench -- --ignored --nocapture &
//! # once "READY" is printed:
//! wrk -t2 -c64 -d10s -s pixel.lua http://127.0.0.1:18080
//! ```
//!
//! with `pixel.lua` cycling through the tokens file:
//!
//! ```lua
//! local t, i = {}, 0
//! for l in io.lines("/tmp/tokens.txt") do t[#t + 1] = l end
//! request = function() i = i % #t + 1; return wrk.format("GET", "/o/" .. t[i] .. ".gif") end
//! ```
//!
//! At the end it prints the hits counted valid/invalid and the opens stored, to compare with
//! the 200s wrk reports.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pixelrelay::config::{HttpConfig, StoreConfig};
use pixelrelay::http::pixel::{PixelState, serve};
use pixelrelay::store::{Delivery, MessageRecord, Store, now_ms};
use pixelrelay::token::{MessageId, Purpose, TokenKey};
use tokio::signal::unix::{SignalKind, signal};

/// The allocator the `pixelrelay` binary uses (`src/main.rs`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a server for manual load tests"]
async fn pixel_bench_server() {
    let port = env("PIXEL_BENCH_PORT", 18080);
    let secs = env("PIXEL_BENCH_SECS", 15);
    let n = env("PIXEL_BENCH_MESSAGES", 10_000);
    let tokens =
        std::env::var("PIXEL_BENCH_TOKENS").unwrap_or_else(|_| "/tmp/pixel-tokens.txt".into());
    let dir = tempfile::tempdir().unwrap();
    let store_cfg = StoreConfig {
        path: dir.path().join("db"),
        subjects: false,
        anonymize_ip: false,
        retention_days: 0,
        flush_interval: Duration::from_millis(500),
        open_log: None,
        postgres: None,
    };
    let store = Store::open(&store_cfg).unwrap();
    let key = TokenKey::from_secret(b"bench-secret");
    seed(&store, &key, n, &tokens);
    let http = HttpConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        ..HttpConfig::default()
    };
    let ingest = pixelrelay::ingest::Ingest::open(store.clone()).unwrap();
    let state = Arc::new(PixelState::new(
        key,
        ingest.clone(),
        http.clone(),
        pixelrelay::track::Windows {
            machine: Duration::from_secs(30),
            probable: Duration::from_secs(900),
        },
        // The shipped default: the built-in scanner list, looked up on every hit.
        Arc::new(pixelrelay::evidence::EvidenceSource::new(
            pixelrelay::evidence::Evidence::builtin(),
        )),
    ));
    // Bound as the server binds its listeners (backlog, TCP_NODELAY inherited).
    let listener = pixelrelay::server::listen(http.listen).unwrap();
    let (trigger, sd) = pixelrelay::shutdown::channel();
    let server = tokio::spawn(serve(listener, state.clone(), sd));
    // For the load script: the open index's lag (journal bytes not yet indexed, 0 only once
    // sled has also flushed), so that it can wait for the index to catch up between runs.
    // Checked every 50 ms, but the file is rewritten only when the lag reaches or leaves 0, and
    // once a second otherwise: creating and renaming a file 20 times a second costs the
    // listener's process ~1 % of its CPU during a run.
    if let Ok(lag_file) = std::env::var("PIXEL_BENCH_LAG") {
        let (store, ingest) = (store.clone(), ingest.clone());
        tokio::spawn(async move {
            let tmp = format!("{lag_file}.tmp");
            let mut shown: Option<(bool, std::time::Instant)> = None;
            loop {
                let mut lag = ingest.index_lag_bytes();
                let was_zero = shown.is_some_and(|(zero, _)| zero);
                if lag == 0 && !was_zero {
                    // Caught up: also write sled's dirty pages out now, so that the next run
                    // does not share the CPU with this one's flush either.
                    store.flush().await.unwrap();
                    lag = ingest.index_lag_bytes();
                }
                let stale = shown.is_none_or(|(zero, at)| {
                    zero != (lag == 0) || at.elapsed() >= Duration::from_secs(1)
                });
                if stale {
                    std::fs::write(&tmp, lag.to_string()).unwrap();
                    std::fs::rename(&tmp, &lag_file).unwrap();
                    shown = Some((lag == 0, std::time::Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    println!("READY port={port} tokens={tokens} secs={secs}");
    // Until the script creates PIXEL_BENCH_STOP, SIGTERM or SIGINT (so that a server started
    // by hand and then killed still removes its store, gigabytes after a few bursts), or
    // `secs` at most.
    let stop = std::env::var("PIXEL_BENCH_STOP").ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut term = signal(SignalKind::terminate()).unwrap();
    let mut int = signal(SignalKind::interrupt()).unwrap();
    while std::time::Instant::now() < deadline
        && !stop
            .as_ref()
            .is_some_and(|p| std::path::Path::new(p).exists())
    {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    trigger.trigger();
    server.await.unwrap();
    assert!(
        ingest.caught_up(Duration::from_secs(600)).await,
        "index caught up"
    );
    store.flush().await.unwrap();
    let c = &state.counters;
    println!(
        "DONE valid={} invalid={} store_errors={} opens_stored={} redirects={} clicks_stored={} index_pauses={}",
        c.valid.load(Ordering::Relaxed),
        c.invalid.load(Ordering::Relaxed),
        c.store_errors.load(Ordering::Relaxed),
        store.stats().counters.opens,
        c.click_redirects.load(Ordering::Relaxed),
        store.stats().counters.clicks,
        ingest.index_pauses()
    );
    // Peak resident memory of this process (the listener, its store and sled's cache).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(hwm) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        println!("PEAK_RSS {}", hwm.trim_start_matches("VmHWM:").trim());
    }
}

/// Seeds a PostgreSQL store for a multi-node pixel load: `PIXEL_BENCH_MESSAGES` messages
/// (10 000) recorded and handed off an hour ago in the database of `PIXEL_BENCH_PG_URL` (its
/// password in `PIXELRELAY_PG_PASSWORD`), and their pixel tokens, minted with the nodes' key
/// (`PIXEL_BENCH_SECRET`, a `tracking.secret_file`), one per line in `PIXEL_BENCH_TOKENS`.
#[test]
#[ignore = "a helper for bench/postgres.sh"]
fn pixel_bench_seed_postgres() {
    let url = std::env::var("PIXEL_BENCH_PG_URL").expect("PIXEL_BENCH_PG_URL");
    let secret = std::fs::read(std::env::var("PIXEL_BENCH_SECRET").expect("PIXEL_BENCH_SECRET"))
        .expect("read PIXEL_BENCH_SECRET");
    let key = TokenKey::from_secret(secret.trim_ascii());
    let tokens = std::env::var("PIXEL_BENCH_TOKENS").expect("PIXEL_BENCH_TOKENS");
    let n = env("PIXEL_BENCH_MESSAGES", 10_000);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = bench_store(dir.path(), None);
    cfg.postgres = Some(pixelrelay::config::PostgresConfig {
        url,
        password_file: None,
        ca_file: None,
    });
    let store = Store::open(&cfg).unwrap();
    seed(&store, &key, n, &tokens);
    println!("SEEDED {n}");
}

/// Records `n` messages handed off an hour ago (the early-load rule then leaves their opens
/// alone) and writes their pixel tokens, minted with `key`, one per line to `tokens`.
fn seed(store: &Store, key: &TokenKey, n: u64, tokens: &str) {
    let sent = now_ms() - 3_600_000;
    let recs: Vec<MessageRecord> = (0..n)
        .map(|i| MessageRecord {
            id: MessageId::random(),
            queue_id: format!("B{i}"),
            at_ms: sent,
            sender: "bench@example.com".into(),
            recipients: vec![format!("r{i}@example.net")],
            message_id: None,
            subject: None,
            size: 1000,
            tracked: true,
            skip_reason: None,
        })
        .collect();
    let reply = Delivery {
        accepted: true,
        reply: "250 ok".into(),
        at_ms: sent,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(tokens).unwrap());
    // Beside them, `TOKENS.clicks`: one tracked link of each message (for bench/clicks.sh).
    let mut clicks =
        std::io::BufWriter::new(std::fs::File::create(format!("{tokens}.clicks")).unwrap());
    for chunk in recs.chunks(1000) {
        let done: Vec<(&MessageId, &Delivery)> = chunk.iter().map(|r| (&r.id, &reply)).collect();
        store
            .commit_messages(&chunk.iter().collect::<Vec<_>>(), &done, None)
            .unwrap();
        for r in chunk {
            writeln!(out, "{}", key.mint(Purpose::Open, &r.id)).unwrap();
            let url = format!(
                "https://shop.example.com/spring/{}?utm_source=mail",
                r.queue_id
            );
            let link = (r.size % 8) as u16;
            writeln!(clicks, "{}", key.mint_click(&r.id, link, &url).unwrap()).unwrap();
        }
    }
    out.flush().unwrap();
    clicks.flush().unwrap();
}

/// Store-only rates: journaling hits (what the pixel's request waits for), and indexing them
/// into sled behind it (prints hits/s for each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a manual measurement"]
async fn store_record_open_rate() {
    let dir = tempfile::tempdir().unwrap();
    record_open_rate(&bench_store(dir.path(), None)).await;
}

/// The same into PostgreSQL (a throwaway cluster on this machine, fsync off: what the
/// indexer and the database cost, not the disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a manual measurement"]
async fn store_record_open_rate_postgres() {
    let Some(pg) = common::pg::Cluster::start() else {
        return;
    };
    pg.create_db("bench").await;
    let dir = tempfile::tempdir().unwrap();
    let pg = pixelrelay::config::PostgresConfig {
        url: pg.url("bench"),
        password_file: None,
        ca_file: None,
    };
    record_open_rate(&bench_store(dir.path(), Some(pg))).await;
}

/// The store the rate tests write: sled in `dir`, or PostgreSQL with `pg`.
fn bench_store(
    dir: &std::path::Path,
    pg: Option<pixelrelay::config::PostgresConfig>,
) -> StoreConfig {
    StoreConfig {
        path: dir.join("db"),
        subjects: false,
        anonymize_ip: false,
        retention_days: 0,
        flush_interval: Duration::from_millis(500),
        open_log: None,
        postgres: pg,
    }
}

async fn record_open_rate(store_cfg: &StoreConfig) {
    let store = Store::open(store_cfg).unwrap();
    // As many messages as bench/pixel.sh opens in turn: each open of a batch is then of a
    // message of its own, the store's dearest case (one statistics key per open).
    let messages: usize = std::env::var("PIXEL_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let ids: Vec<MessageId> = (0..messages).map(|_| MessageId::random()).collect();
    let recs: Vec<MessageRecord> = ids
        .iter()
        .map(|id| MessageRecord {
            id: *id,
            queue_id: "B".into(),
            at_ms: 1,
            sender: "bench@example.com".into(),
            recipients: vec!["r@example.net".into()],
            message_id: None,
            subject: None,
            size: 1000,
            tracked: true,
            skip_reason: None,
        })
        .collect();
    for chunk in recs.chunks(1000) {
        store
            .record_messages(&chunk.iter().collect::<Vec<_>>())
            .unwrap();
    }
    let ingest = pixelrelay::ingest::Ingest::open(store.clone()).unwrap();
    let n = 100_000;
    let t = std::time::Instant::now();
    for i in 0..n {
        ingest
            .append_hit(&pixelrelay::ingest::Hit {
                message: ids[i % ids.len()],
                at_ms: now_ms(),
                ip: "192.0.2.1".parse().unwrap(),
                user_agent:
                    "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.4.2"
                        .into(),
                hints: Default::default(),
                windows: pixelrelay::track::Windows {
                    machine: Duration::from_secs(5),
                    probable: Duration::from_secs(900),
                },
                seen: Default::default(),
                click: None,
            })
            .unwrap();
    }
    let journaled = t.elapsed();
    assert!(ingest.caught_up(Duration::from_secs(600)).await);
    let indexed = t.elapsed();
    assert_eq!(store.stats().counters.opens, n as u64);
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "JOURNAL {:.0} hits/s ({:.2} us each); INDEXED {:.0} opens/s over {messages} messages ({} pauses)",
        rate(journaled),
        journaled.as_secs_f64() * 1e6 / n as f64,
        rate(indexed),
        ingest.index_pauses()
    );
}
