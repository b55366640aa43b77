//! The connections the MTA holds (Postfix keeps one milter connection per SMTP session):
//! a config reload reaches the next message on one (the rules are swapped between two messages
//! of one connection, and only the second is rewritten), and a stop lets the message in
//! progress finish before the conversation ends.

mod common;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pixelrelay::milter::{Listener, MilterFront, serve, serve_on_thread};
use pixelrelay::relay::Tracking;
use pixelrelay::token::TokenKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| [*p, b"\0"].concat()).collect()
}

/// One message: envelope, header fields, body, end of message.
fn message() -> Vec<u8> {
    let (start, end) = message_parts();
    [start, end].concat()
}

/// [`message`] in two: its envelope and header field (three packets), then the rest.
fn message_parts() -> (Vec<u8>, Vec<u8>) {
    let mut start = Vec::new();
    start.extend(packet(b'M', &cstrs(&[b"<news@example.com>"])));
    start.extend(packet(b'R', &cstrs(&[b"<bob@example.net>"])));
    start.extend(packet(
        b'L',
        &cstrs(&[b"Content-Type", b"text/html; charset=utf-8"]),
    ));
    let mut end = packet(b'N', b"");
    end.extend(packet(b'B', b"<html><body><p>hello</p></body></html>\r\n"));
    end.extend(packet(b'E', b""));
    (start, end)
}

/// Reads the answers to one message: a `c` (continue) for each of MAIL, RCPT, the header
/// field, end of headers and the body chunk, then end-of-message's modifications and its `c`
/// (the test negotiates no protocol step away, so every command is answered). Returns the
/// commands of every packet read, up to the `continues`-th `c` (6 for a whole message).
async fn answers(s: &mut TcpStream, continues: usize) -> Vec<u8> {
    let mut cmds = Vec::new();
    while cmds.iter().filter(|c| **c == b'c').count() < continues {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.expect("an answer");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.expect("the packet");
        cmds.push(body[0]);
    }
    cmds
}

fn front(tracking: Option<Tracking>) -> MilterFront {
    MilterFront {
        tracking,
        recorder: None,
        opt_out_header: "X-Track-Opens".into(),
        max_size: 1 << 20,
        metrics: None,
        budget: None,
    }
}

/// A milter connection to `addr`, negotiated (every stage answered, every action allowed).
async fn negotiated(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut neg = 6u32.to_be_bytes().to_vec();
    neg.extend_from_slice(&0x1ffu32.to_be_bytes());
    neg.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&packet(b'O', &neg)).await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut optneg = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut optneg).await.unwrap();
    assert_eq!(optneg[0], b'O');
    s
}

fn tracking(secret: &[u8]) -> Tracking {
    Tracking {
        policy: common::rewrite_policy(1 << 20),
        key: TokenKey::from_secret(secret),
        base_url: "https://t.example".into(),
        click_exclude: None,
    }
}

/// The milter as the server runs it (on a thread and runtime of its own) with `grace` at its
/// stop: its address, the stop's trigger, and its task.
async fn stoppable(
    front: MilterFront,
    grace: std::time::Duration,
) -> (
    std::net::SocketAddr,
    pixelrelay::shutdown::ShutdownTrigger,
    tokio::task::JoinHandle<()>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (trigger, shutdown) = pixelrelay::shutdown::channel();
    let live = Arc::new(ArcSwap::from_pointee(front));
    let served = tokio::spawn(serve_on_thread(Listener::Tcp(l), live, 4, shutdown, grace));
    (addr, trigger, served)
}

#[tokio::test]
async fn a_stop_lets_the_message_in_progress_finish_then_ends_the_conversation() {
    let (addr, trigger, served) = stoppable(
        front(Some(tracking(b"stop"))),
        std::time::Duration::from_secs(30),
    )
    .await;
    let mut busy = negotiated(addr).await;
    let mut idle = negotiated(addr).await;
    // A message under way on one connection (its envelope and header so far), none on the
    // other, when the stop comes.
    let (start, end) = message_parts();
    busy.write_all(&start).await.unwrap();
    assert_eq!(answers(&mut busy, 3).await, b"ccc");
    trigger.trigger();
    // The idle conversation ends at once.
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // The other one's message goes on to its end (a while later: the MTA is still receiving
    // it) and gets its body replaced...
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    busy.write_all(&end).await.unwrap();
    let cmds = answers(&mut busy, 3).await;
    assert!(cmds.contains(&b'b'), "the body replaced: {cmds:?}");
    // ...then that conversation ends too, and the milter stops.
    closed_and_stopped(&mut busy, served).await;
}

/// `s` closed by the milter with nothing more said, then the milter `served` stopped.
async fn closed_and_stopped(s: &mut TcpStream, served: tokio::task::JoinHandle<()>) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    tokio::time::timeout(std::time::Duration::from_secs(20), served)
        .await
        .expect("the milter stopped")
        .unwrap();
}

#[tokio::test]
async fn a_stop_closes_a_message_stalled_past_the_grace() {
    let (addr, trigger, served) =
        stoppable(front(None), std::time::Duration::from_millis(200)).await;
    let mut stalled = negotiated(addr).await;
    stalled.write_all(&message_parts().0).await.unwrap();
    assert_eq!(answers(&mut stalled, 3).await, b"ccc");
    trigger.trigger();
    // The rest of the message never comes: the conversation is closed after the grace (the
    // MTA's milter_default_action then decides), and the milter stops.
    closed_and_stopped(&mut stalled, served).await;
}

#[tokio::test]
async fn the_next_message_on_a_held_connection_takes_the_new_rules() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let live = Arc::new(ArcSwap::from_pointee(front(None)));
    tokio::spawn(serve(
        Listener::Tcp(l),
        Arc::clone(&live),
        4,
        pixelrelay::shutdown::Shutdown::never(),
        std::time::Duration::from_secs(1),
    ));
    let mut s = negotiated(addr).await;

    // Tracking off: the message goes unchanged (no body replacement).
    s.write_all(&message()).await.unwrap();
    let first = answers(&mut s, 6).await;
    assert!(!first.contains(&b'b'), "{first:?}");

    // The reload swaps in rules with tracking on; the same connection's next message has them.
    live.store(Arc::new(front(Some(tracking(b"reload")))));
    s.write_all(&message()).await.unwrap();
    let second = answers(&mut s, 6).await;
    assert!(second.contains(&b'b'), "the body replaced: {second:?}");
}
