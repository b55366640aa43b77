//! Fuzzing the milter front end's input: milter conversations as an MTA would hold them
//! (option negotiation, macros, connect, HELO, envelope, header fields, body chunks, end of
//! message, abort), then cut, bit-flipped, spliced with random bytes or replaced by garbage,
//! sent over TCP to the real listener. Whatever arrives, pixelrelay answers or closes the
//! connection, never panics and never hangs, and keeps serving the next connection; a
//! well-formed conversation always ends with a reply to end-of-message. 256 cases by default;
//! `PROPTEST_CASES=200000 cargo test --release --test milter_fuzz` runs for minutes.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pixelrelay::milter::{Listener, MilterFront, serve};
use pixelrelay::relay::Tracking;
use pixelrelay::token::TokenKey;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One server for the whole run, on a runtime of its own.
fn server() -> &'static (tokio::runtime::Runtime, SocketAddr) {
    static S: OnceLock<(tokio::runtime::Runtime, SocketAddr)> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let front = MilterFront {
                tracking: Some(Tracking {
                    policy: common::rewrite_policy(1 << 20),
                    key: TokenKey::from_secret(b"fuzz"),
                    base_url: "http://127.0.0.1:8080".into(),
                    click_exclude: Some(vec!["unsubscribe".into()]),
                }),
                recorder: None,
                opt_out_header: "X-Track-Opens".into(),
                max_size: 1 << 20,
                metrics: Some(std::sync::Arc::new(pixelrelay::metrics::Metrics::new(
                    Default::default(),
                ))),
                // Small: the fuzzer's messages run into it, and every path must still answer.
                budget: Some(pixelrelay::budget::Budget::new(64 * 1024)),
            };
            tokio::spawn(serve(
                Listener::Tcp(l),
                Arc::new(arc_swap::ArcSwap::from_pointee(front)),
                64,
                pixelrelay::shutdown::Shutdown::never(),
                std::time::Duration::from_secs(1),
            ));
            addr
        });
        (rt, addr)
    })
}

/// A milter packet: length, command, data.
fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

/// A whole conversation for one message: `rcpts` recipients, `headers`, the body in chunks.
fn conversation(rcpts: usize, headers: &[(String, String)], body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut neg = 6u32.to_be_bytes().to_vec();
    neg.extend_from_slice(&0x1ffu32.to_be_bytes());
    neg.extend_from_slice(&0u32.to_be_bytes());
    out.extend(packet(b'O', &neg));
    let mut connect = cstrs(&[b"client.example"]);
    connect.push(b'4');
    connect.extend_from_slice(&25u16.to_be_bytes());
    connect.extend(cstrs(&[b"192.0.2.7"]));
    out.extend(packet(b'C', &connect));
    out.extend(packet(b'H', &cstrs(&[b"client.example"])));
    out.extend(packet(
        b'D',
        &[&[b'M'][..], &cstrs(&[b"i", b"4F2A1B"])].concat(),
    ));
    out.extend(packet(
        b'M',
        &cstrs(&[b"<news@example.com>", b"BODY=8BITMIME"]),
    ));
    for i in 0..rcpts {
        out.extend(packet(
            b'R',
            &cstrs(&[format!("<r{i}@example.net>").as_bytes()]),
        ));
    }
    for (n, v) in headers {
        out.extend(packet(b'L', &cstrs(&[n.as_bytes(), v.as_bytes()])));
    }
    out.extend(packet(b'N', b""));
    for c in body.chunks(chunk.max(1)) {
        out.extend(packet(b'B', c));
    }
    out.extend(packet(b'E', b""));
    out
}

/// Sends `bytes`, closes the writing side, reads until the server closes; the bytes read, or
/// `None` if the server neither answered nor closed within 10 s.
fn exchange(bytes: &[u8]) -> Option<Vec<u8>> {
    let (rt, addr) = server();
    rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(*addr).await.unwrap();
        // The server may close early on garbage: a failed write is an answer too.
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
        let mut got = Vec::new();
        match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await {
            Ok(_) => Some(got),
            Err(_) => None,
        }
    })
}

fn html_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "<html><body>",
            "<p>caf\u{e9}</p>",
            "<a href=\"https://example.com/x?a=1&amp;b=2\">x</a>",
            "</body></html>",
            "\r\n",
            "=3D",
            "<!-- </body> -->",
            "\u{0}",
            "\r\n.\r\n",
        ]),
        0..40,
    )
    .prop_map(|v| v.concat().into_bytes())
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let field = prop_oneof![
        Just((
            "Content-Type".to_string(),
            "text/html; charset=utf-8".to_string()
        )),
        Just((
            "Content-Transfer-Encoding".to_string(),
            "quoted-printable".to_string()
        )),
        Just(("Subject".to_string(), "=?utf-8?q?caf=C3=A9?=".to_string())),
        Just(("X-Track-Opens".to_string(), "no".to_string())),
        ("[A-Za-z-]{1,20}", "[ -~]{0,60}"),
        ("[A-Za-z-]{1,20}", "[ -~]{0,30}\n\t[ -~]{0,30}"),
    ];
    prop::collection::vec(field, 0..8)
}

/// How an otherwise valid conversation is broken.
#[derive(Debug, Clone)]
enum Harm {
    None,
    Cut(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Splice(prop::sample::Index, Vec<u8>),
    Garbage(Vec<u8>),
}

fn harm() -> impl Strategy<Value = Harm> {
    prop_oneof![
        2 => Just(Harm::None),
        2 => any::<prop::sample::Index>().prop_map(Harm::Cut),
        3 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Harm::Flip(i, x)),
        2 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..32)).prop_map(|(i, v)| Harm::Splice(i, v)),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Harm::Garbage),
    ]
}

proptest! {
    #[test]
    fn any_input_gets_an_answer_or_a_close_never_a_panic_or_a_hang(
        rcpts in 0usize..4,
        headers in headers(),
        body in html_body(),
        chunk in 1usize..200,
        harm in harm(),
    ) {
        let mut bytes = conversation(rcpts, &headers, &body, chunk);
        let whole = matches!(harm, Harm::None);
        match harm {
            Harm::None => {}
            Harm::Cut(i) => bytes.truncate(i.index(bytes.len() + 1)),
            Harm::Flip(i, x) => {
                let at = i.index(bytes.len());
                bytes[at] ^= x;
            }
            Harm::Splice(i, v) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, v);
            }
            Harm::Garbage(g) => bytes = g,
        }
        let got = exchange(&bytes);
        prop_assert!(got.is_some(), "the server hung");
        if whole {
            // The last reply is to end-of-message: continue ('c'), after any modifications.
            let got = got.unwrap_or_default();
            prop_assert!(got.len() >= 6, "{:?}", got);
            prop_assert_eq!(got[got.len() - 1], b'c', "{:?}", got);
        }
        // And the listener still serves a well-formed conversation afterwards.
        let ok = exchange(&conversation(1, &[], b"text", 10)).unwrap_or_default();
        prop_assert_eq!(ok.last().copied(), Some(b'c'));
    }
}
