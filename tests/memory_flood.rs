//! A flood of large mail under a hard memory cap: the relay (the real binary) runs in a memory
//! cgroup of its own capped at [`CAP`], with `smtp.max_inflight_bytes` at [`BUDGET`]; 100
//! connections send a 10 MB message each at once. Some get `452 4.3.1` and retry on the same
//! connection, as an MTA's queue would; in the end every message is delivered byte-exact, and
//! the relay was never killed. Where no memory cgroup can be made (no cgroup filesystem, or one
//! without delegation), the relay's peak RSS is held to the same cap instead, and the test says so.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use common::Proc;

const CAP: u64 = 256 << 20;
const BUDGET: u64 = 96 << 20;
const CONNECTIONS: usize = 100;
const MESSAGE: usize = 10 << 20;

/// A memory cgroup made for the relay, removed on drop.
struct Cgroup {
    dir: PathBuf,
    /// `memory.events` (v2) or `memory.oom_control` (v1): where OOM kills are counted.
    events: PathBuf,
}

impl Cgroup {
    /// A child of this process's memory cgroup, capped at `limit` bytes.
    fn make(limit: u64) -> Result<Cgroup, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            let (base, max, events) = if controllers.is_empty() {
                (
                    format!("/sys/fs/cgroup{path}"),
                    "memory.max",
                    "memory.events",
                )
            } else if controllers.split(',').any(|c| c == "memory") {
                (
                    format!("/sys/fs/cgroup/memory{path}"),
                    "memory.limit_in_bytes",
                    "memory.oom_control",
                )
            } else {
                continue;
            };
            let dir = Path::new(&base).join(format!("pixelrelay-flood-{}", std::process::id()));
            std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let cg = Cgroup {
                events: dir.join(events),
                dir,
            };
            std::fs::write(cg.dir.join(max), limit.to_string())
                .map_err(|e| format!("{max}: {e}"))?;
            return Ok(cg);
        }
        Err("no memory cgroup".into())
    }

    fn enter(&self, pid: u32) -> Result<(), String> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).map_err(|e| e.to_string())
    }

    /// OOM kills in the group so far.
    fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// An upstream that compares every message it gets with the one its `X-Seq` says was sent.
async fn sink(listener: TcpListener, body: Arc<Vec<u8>>, delivered: Arc<AtomicUsize>) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let (body, delivered) = (Arc::clone(&body), Arc::clone(&delivered));
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"220 sink ESMTP\r\n").await.ok()?;
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).await.ok()? == 0 {
                    return Some(());
                }
                let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
                if cmd.starts_with("EHLO") {
                    w.write_all(b"250-sink\r\n250-SIZE 20000000\r\n250 PIPELINING\r\n")
                        .await
                        .ok()?;
                } else if cmd.starts_with("DATA") {
                    w.write_all(b"354 go\r\n").await.ok()?;
                    let mut msg = Vec::with_capacity(MESSAGE + 4096);
                    while !msg.ends_with(b"\r\n.\r\n") {
                        if r.read_until(b'\n', &mut msg).await.ok()? == 0 {
                            return Some(());
                        }
                    }
                    msg.truncate(msg.len() - 3);
                    let at = msg.windows(7).position(|w| w == b"X-Seq: ")?;
                    let seq_end = at + msg[at..].iter().position(|&b| b == b'\n')? + 1;
                    let intact =
                        msg.get(seq_end..) == Some(&[b"\r\n".as_slice(), &body].concat()[..]);
                    drop(msg);
                    if intact {
                        delivered.fetch_add(1, Ordering::SeqCst);
                        w.write_all(b"250 2.0.0 ok\r\n").await.ok()?;
                    } else {
                        w.write_all(b"554 5.6.0 corrupted\r\n").await.ok()?;
                    }
                } else if cmd.starts_with("QUIT") {
                    w.write_all(b"221 bye\r\n").await.ok()?;
                    return Some(());
                } else {
                    w.write_all(b"250 ok\r\n").await.ok()?;
                }
            }
        });
    }
}

/// Reads one reply; its code (0 when the connection closed).
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> u16 {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return 0;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
}

/// Sends message `seq` until it is accepted, on one connection, waiting a little after each
/// 452 as a queue would. Returns how many times it was told to come back later.
async fn send_until_accepted(addr: std::net::SocketAddr, seq: usize, body: Arc<Vec<u8>>) -> usize {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    assert_eq!(reply(&mut r).await, 220);
    w.write_all(b"EHLO flood.test\r\n").await.expect("ehlo");
    assert_eq!(reply(&mut r).await, 250);
    let head = format!("Subject: flood\r\nX-Seq: {seq}\r\n\r\n");
    let size = head.len() + body.len();
    let mut deferred = 0;
    let mut pause = Duration::from_millis(50);
    loop {
        let envelope =
            format!("MAIL FROM:<a@flood.test> SIZE={size}\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
        w.write_all(envelope.as_bytes()).await.expect("envelope");
        let (mail, rcpt, data) = (
            reply(&mut r).await,
            reply(&mut r).await,
            reply(&mut r).await,
        );

        let code = if data == 354 {
            w.write_all(head.as_bytes()).await.expect("head");
            w.write_all(&body).await.expect("body");
            w.write_all(b".\r\n").await.expect("end");
            reply(&mut r).await
        } else {
            data
        };
        match code {
            250 => {
                let _ = w.write_all(b"QUIT\r\n").await;
                return deferred;
            }
            452 | 503 => {
                assert!(
                    [250, 452].contains(&mail) && [250, 503].contains(&rcpt),
                    "MAIL {mail} RCPT {rcpt} DATA {data}"
                );
                deferred += 1;
                w.write_all(b"RSET\r\n").await.expect("rset");
                assert_eq!(reply(&mut r).await, 250);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => panic!("message {seq}: {other} (MAIL {mail} RCPT {rcpt} DATA {data})"),
        }
    }
}

fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_mail_under_a_memory_cap_is_deferred_never_lost() {
    let line = b"the quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuv\r\n";
    // Whole lines: the terminating dot must follow a CRLF.
    let body: Arc<Vec<u8>> = Arc::new(line.repeat(MESSAGE / line.len()));
    let delivered = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(sink(listener, Arc::clone(&body), Arc::clone(&delivered)));

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = [\"127.0.0.1:0\"]\nmax_message_size = {}\nmax_inflight_bytes = {BUDGET}\n\
             max_connections = 200\nmax_connections_per_ip = 200\n\
             [upstream]\naddress = \"{upstream}\"\n[tracking]\nbase_url = \"http://127.0.0.1:8080\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            12 << 20
        ),
    )
    .expect("config");
    let cgroup = match Cgroup::make(CAP) {
        Ok(cg) => Some(cg),
        Err(e) => {
            eprintln!(
                "no memory cgroup for the relay ({e}): its peak RSS is held to {CAP} B instead"
            );
            None
        }
    };
    let mut relay = Proc::serve(&config);
    let pid = relay.child.id();
    if let Some(cg) = &cgroup {
        cg.enter(pid).expect("move the relay into its cgroup");
    }

    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|seq| tokio::spawn(send_until_accepted(relay.smtp, seq, Arc::clone(&body))))
        .collect();
    let mut deferred = 0;
    for s in senders {
        deferred += s.await.expect("sender");
    }
    let peak_kb = peak_rss_kb(pid);
    println!(
        "{CONNECTIONS} x {MESSAGE} B: delivered {}, deferred {deferred} times, relay peak RSS {} MB ({})",
        delivered.load(Ordering::SeqCst),
        peak_kb / 1024,
        if cgroup.is_some() {
            "in a memory cgroup at the cap"
        } else {
            "no cgroup"
        }
    );
    assert!(
        relay.child.try_wait().expect("wait").is_none(),
        "the relay is still running"
    );
    assert_eq!(
        delivered.load(Ordering::SeqCst),
        CONNECTIONS,
        "every message delivered intact"
    );
    assert!(deferred > 0, "the budget deferred some of the flood");
    match &cgroup {
        Some(cg) => assert_eq!(cg.oom_kills(), 0, "no OOM kill in the relay's cgroup"),
        None => assert!(peak_kb * 1024 <= CAP, "peak RSS {peak_kb} kB over {CAP} B"),
    }
    assert_eq!(relay.stop(), Some(0));
}
