//! What an idle connection costs: the relay runs in-process under a global allocator that
//! counts live heap bytes, 200 SMTP clients connect, read the banner, say EHLO and go quiet,
//! then 200 HTTP clients load the pixel and keep the connection alive; each step's growth in
//! live bytes, divided by the connections, must stay within [`PER_IDLE_SMTP`] and
//! [`PER_IDLE_PIXEL`].
//! Allocation is measured, not time; this file holds a single test because other tests would
//! allocate concurrently.
#![allow(unsafe_code)] // a counting GlobalAlloc needs `unsafe impl`; the library forbids unsafe

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{FakeUpstream, config_text, start_relay};

/// Heap an idle SMTP connection may hold (session, buffers, task, socket registration).
const PER_IDLE_SMTP: usize = 16 * 1024;
/// Heap an idle keep-alive pixel connection may hold: hyper keeps an 8 KiB read buffer and an
/// 8 KiB head buffer for the life of a connection (not configurable), plus its state and task.
const PER_IDLE_PIXEL: usize = 24 * 1024;
/// Connections per step.
const N: usize = 200;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::SeqCst);
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Live bytes once they stop moving: the server's tasks finish their step on other threads
/// after the client has its answer, so the count is read until two readings 50 ms apart agree.
async fn settled() -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = LIVE.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = LIVE.load(Ordering::SeqCst);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Reads until `buf` ends with `end`.
async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    while !got.ends_with(end) {
        let n = s.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

async fn idle_smtp(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let banner = read_until(&mut s, b"\r\n").await;
    assert!(banner.starts_with(b"220 "), "{banner:?}");
    s.write_all(b"EHLO client.test\r\n").await.expect("write");
    let mut ehlo = read_until(&mut s, b"\r\n").await;
    while !ehlo.windows(5).any(|w| w == b"\n250 ") {
        ehlo.extend(read_until(&mut s, b"\r\n").await);
    }
    assert!(ehlo.starts_with(b"250-"), "{ehlo:?}");
    s
}

async fn idle_pixel(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /o/not-a-token.gif HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Mozilla/5.0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
        let Some(split) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..split]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        if got.len() >= split + 4 + len {
            break;
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hold_only_what_they_need() {
    let up = FakeUpstream::start().await;
    let relay = start_relay(&config_text(
        &up.addr.to_string(),
        "max_connections = 1000\nmax_connections_per_ip = 1000",
    ))
    .await;
    let (smtp, http) = (relay.smtp(), relay.http());
    // Warm up: lazily built statics, pools and listener threads are not per-connection costs.
    let warm: Vec<TcpStream> = vec![idle_smtp(smtp).await, idle_pixel(http).await];
    drop(warm);

    let before = settled().await;
    let mut smtp_conns = Vec::with_capacity(N);
    for _ in 0..N {
        smtp_conns.push(idle_smtp(smtp).await);
    }
    let with_smtp = settled().await;
    let mut pixel_conns = Vec::with_capacity(N);
    for _ in 0..N {
        pixel_conns.push(idle_pixel(http).await);
    }
    let with_pixel = settled().await;

    let per_smtp = with_smtp.saturating_sub(before) / N;
    let per_pixel = with_pixel.saturating_sub(with_smtp) / N;
    println!(
        "heap per idle connection: SMTP after EHLO {per_smtp} B, pixel keep-alive {per_pixel} B"
    );
    assert!(
        per_smtp <= PER_IDLE_SMTP,
        "an idle SMTP connection holds {per_smtp} B"
    );
    assert!(
        per_pixel <= PER_IDLE_PIXEL,
        "an idle pixel connection holds {per_pixel} B"
    );
    // Closing them gives the memory back (nothing per connection outlives it).
    drop(smtp_conns);
    drop(pixel_conns);
    let mut after = settled().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while after > before + N * 1024 && Instant::now() < deadline {
        after = settled().await;
    }
    assert!(
        after <= before + N * 1024,
        "closed connections still hold {} B",
        after.saturating_sub(before)
    );
    relay.stop().await;
    drop(up);
}
