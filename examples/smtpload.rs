//! SMTP load generator for the benchmarks in `bench/`: sends one message file N times over C
//! concurrent connections (reused, one recipient each, PIPELINING of MAIL/RCPT/DATA when the
//! server offers it) and reports messages per second and per-message latency percentiles
//! (MAIL FROM to the final reply).
//!
//! ```text
//! cargo run --release --example smtpload -- ADDR FILE MESSAGES CONNECTIONS [--retry]
//! ```
//!
//! With `--retry` a message that gets a 4xx or a dropped connection is sent again (on a new
//! connection), as an MTA's queue would; the output then counts retries, and each accepted
//! message's Message-ID is printed to `accepted.txt` for loss checks.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Conn = BufReader<TcpStream>;

async fn reply(c: &mut Conn) -> std::io::Result<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if c.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
        }
    }
}

async fn open(addr: &str) -> std::io::Result<Conn> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut c = BufReader::with_capacity(64 * 1024, s);
    if reply(&mut c).await? != 220 {
        return Err(std::io::Error::other("no greeting"));
    }
    c.get_mut().write_all(b"EHLO load.test\r\n").await?;
    if reply(&mut c).await? != 250 {
        return Err(std::io::Error::other("EHLO refused"));
    }
    Ok(c)
}

/// Sends one message; Ok(code of the final reply).
async fn send(c: &mut Conn, body: &[u8], n: usize) -> std::io::Result<u16> {
    // SIZE= as MTAs send it (the message plus the Message-ID line added below).
    let size = body.len() + 40;
    let head = format!(
        "MAIL FROM:<load@example.com> SIZE={size}\r\nRCPT TO:<rcpt{n}@example.net>\r\nDATA\r\n"
    );
    c.get_mut().write_all(head.as_bytes()).await?;
    let m = reply(c).await?;
    let r = reply(c).await?;
    let d = reply(c).await?;
    if m != 250 || r != 250 || d != 354 {
        if d == 354 {
            c.get_mut().write_all(b".\r\n").await?;
            reply(c).await?;
        }
        c.get_mut().write_all(b"RSET\r\n").await?;
        reply(c).await?;
        return Ok(if m != 250 {
            m
        } else if r != 250 {
            r
        } else {
            d
        });
    }
    let mut msg = format!("Message-ID: <load-{n}@example.com>\r\n").into_bytes();
    msg.extend_from_slice(body);
    msg.extend_from_slice(b".\r\n");
    c.get_mut().write_all(&msg).await?;
    reply(c).await
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: smtpload ADDR FILE MESSAGES CONNECTIONS [--retry]");
        std::process::exit(2);
    }
    let addr = Arc::new(args[1].clone());
    let raw = std::fs::read(&args[2]).expect("message file");
    let total: usize = args[3].parse().expect("MESSAGES");
    let conns: usize = args[4].parse().expect("CONNECTIONS");
    let retry = args.iter().any(|a| a == "--retry");
    // CRLF line ends and dot-stuffing, once.
    let mut body = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut at_start = true;
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            body.push(b'\r');
        }
        if at_start && b == b'.' {
            body.push(b'.');
        }
        body.push(b);
        at_start = b == b'\n';
    }
    if !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    let body = Arc::new(body);
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (addr, body, next, retries) =
            (addr.clone(), body.clone(), next.clone(), retries.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut accepted = Vec::new();
            let mut failed = 0usize;
            let mut conn: Option<Conn> = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                loop {
                    if conn.is_none() {
                        match open(&addr).await {
                            Ok(c) => conn = Some(c),
                            Err(_) if retry => {
                                retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                            Err(e) => panic!("connect: {e}"),
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let t = Instant::now();
                    match send(c, &body, n).await {
                        Ok(250) => {
                            lat.push(t.elapsed());
                            accepted.push(n);
                            break;
                        }
                        Ok(code) if retry && (400..500).contains(&code) => {
                            // Come back a little later, as a queue would.
                            retries.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Ok(_) => {
                            failed += 1;
                            break;
                        }
                        Err(_) if retry => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                        Err(e) => panic!("send: {e}"),
                    }
                }
            }
            if let Some(mut c) = conn {
                let _ = c.get_mut().write_all(b"QUIT\r\n").await;
            }
            (lat, accepted, failed)
        }));
    }
    let mut lat = Vec::new();
    let mut accepted = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, a, f) = t.await.expect("task");
        lat.extend(l);
        accepted.extend(a);
        failed += f;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "messages={} failed={} retries={} seconds={:.3} msgs_per_s={:.1} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        accepted.len(),
        failed,
        retries.load(Ordering::Relaxed),
        secs,
        accepted.len() as f64 / secs,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    if retry {
        let mut f = std::fs::File::create("accepted.txt").expect("accepted.txt");
        for n in accepted {
            let _ = writeln!(f, "<load-{n}@example.com>");
        }
    }
}
