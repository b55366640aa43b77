//! A config reload reaches the milter's next message, on the connection the MTA already holds
//! (Postfix keeps one milter connection per SMTP session): the rules are swapped between two
//! messages of one connection, and only the second is rewritten.

mod common;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pixelrelay::milter::{Listener, MilterFront, serve};
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
    let mut out = Vec::new();
    out.extend(packet(b'M', &cstrs(&[b"<news@example.com>"])));
    out.extend(packet(b'R', &cstrs(&[b"<bob@example.net>"])));
    out.extend(packet(
        b'L',
        &cstrs(&[b"Content-Type", b"text/html; charset=utf-8"]),
    ));
    out.extend(packet(b'N', b""));
    out.extend(packet(b'B', b"<html><body><p>hello</p></body></html>\r\n"));
    out.extend(packet(b'E', b""));
    out
}

/// Reads the answers to one message: a `c` (continue) for each of MAIL, RCPT, the header
/// field, end of headers and the body chunk, then end-of-message's modifications and its `c`
/// (the test negotiates no protocol step away, so every command is answered). Returns the
/// commands of every packet read.
async fn answers(s: &mut TcpStream) -> Vec<u8> {
    let mut cmds = Vec::new();
    while cmds.iter().filter(|c| **c == b'c').count() < 6 {
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
    ));
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

    // Tracking off: the message goes unchanged (no body replacement).
    s.write_all(&message()).await.unwrap();
    let first = answers(&mut s).await;
    assert!(!first.contains(&b'b'), "{first:?}");

    // The reload swaps in rules with tracking on; the same connection's next message has them.
    live.store(Arc::new(front(Some(Tracking {
        policy: common::rewrite_policy(1 << 20),
        key: TokenKey::from_secret(b"reload"),
        base_url: "https://t.example".into(),
        click_exclude: None,
    }))));
    s.write_all(&message()).await.unwrap();
    let second = answers(&mut s).await;
    assert!(second.contains(&b'b'), "the body replaced: {second:?}");
}
