//! The accept loop's tests: threads, sharing, shutdown.

use super::*;
use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener on a free loopback port, its address, and limits named `t`.
async fn listen() -> (TcpListener, SocketAddr, Limits) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        name: "t",
        max_connections: 100,
        header_timeout: Duration::from_secs(10),
        tls: None,
    };
    (listener, addr, limits)
}

/// Sends one request and returns the body of the answer (the server closes after it).
async fn get(addr: SocketAddr) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    let (_, body) = out.split_once("\r\n\r\n").expect("a response");
    body.to_string()
}

/// `serve_on_threads` with `threads` threads, each response naming the thread that made
/// it: the address, the shutdown trigger and the server's task.
async fn serve_thread_names(
    threads: usize,
) -> (
    SocketAddr,
    crate::shutdown::ShutdownTrigger,
    tokio::task::JoinHandle<()>,
) {
    let (listener, addr, limits) = listen().await;
    let (trigger, sd) = crate::shutdown::channel();
    let server = tokio::spawn(serve_on_threads(
        listener,
        threads,
        limits,
        sd,
        |_, _| async {
            let name = std::thread::current().name().unwrap_or("?").to_string();
            Response::new(Full::new(Bytes::from(name)))
        },
    ));
    (addr, trigger, server)
}

#[tokio::test]
async fn threads_serve_on_their_own_and_drain_on_shutdown() {
    let (addr, trigger, server) = serve_thread_names(3).await;
    let clients: Vec<_> = (0..24).map(|_| tokio::spawn(get(addr))).collect();
    for c in clients {
        let name = c.await.unwrap();
        assert!(
            ["t-http-0", "t-http-1", "t-http-2"].contains(&name.as_str()),
            "served by {name:?}, not a listener thread"
        );
    }
    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("every thread drained")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no thread still holds the socket"
    );
}

/// Reads one keep-alive response from `c` and returns its body.
async fn read_response(c: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = c.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the response was complete");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= len {
                return body[..len].to_string();
            }
        }
    }
}

#[tokio::test]
async fn a_burst_of_connects_is_shared_between_the_threads() {
    let (addr, trigger, server) = serve_thread_names(2).await;
    // 64 connects at once, as wrk or a proxy's pool opens them, before any request; all of
    // them stay open (keep-alive) until every one is answered, so no thread's count ever
    // drops, and the split depends on the share rule alone, not on which thread the
    // scheduler wakes first.
    let mut conns = Vec::new();
    for _ in 0..64 {
        conns.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    for c in &mut conns {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
    }
    let mut served = std::collections::HashMap::<String, usize>::new();
    for c in &mut conns {
        *served.entry(read_response(c).await).or_default() += 1;
    }
    // Without the share rule the first thread awake took 46–59 of them.
    assert_eq!(served.values().sum::<usize>(), 64);
    assert!(
        served.len() == 2 && served.values().all(|&n| n >= 30),
        "connections shared {served:?}"
    );
    drop(conns);
    trigger.trigger();
    server.await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_then_closes() {
    let (listener, addr, limits) = listen().await;
    let (trigger, sd) = crate::shutdown::channel();
    let (started_tx, started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let server = tokio::spawn(serve_on_threads(listener, 2, limits, sd, move |_, _| {
        let started = started_tx.clone();
        let gate = gate.clone();
        async move {
            let _ = started.send(());
            gate.notified().await;
            Response::new(Full::new(Bytes::from_static(b"finished")))
        }
    }));
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut started = started;
    started.recv().await.expect("the handler started");
    trigger.trigger();
    // The connection is kept open for the answer while the handler still works on it.
    let mut probe = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), c.read(&mut probe))
            .await
            .is_err(),
        "the connection closed before its answer"
    );
    release.notify_one();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out))
        .await
        .expect("closed after the answer")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("finished"), "{out}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("every thread drained")
        .unwrap();
}

/// Accepts three connections on `listener` and returns whether each had Nagle's algorithm off.
async fn nodelay_of_accepted(listener: TcpListener, limits: Limits) -> Vec<Option<bool>> {
    let addr = listener.local_addr().unwrap();
    let (_trigger, sd) = crate::shutdown::channel();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        accept_loop(
            &listener,
            &limits,
            Arc::new(Semaphore::new(4)),
            None,
            sd,
            |stream, _, permit| {
                let _ = tx.send((stream.nodelay().ok(), stream, permit));
            },
        )
        .await;
    });
    let mut out = Vec::new();
    for _ in 0..3 {
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (nodelay, _stream, _permit) = rx.recv().await.expect("accepted");
        out.push(nodelay);
    }
    server.abort();
    out
}

#[tokio::test]
async fn accepted_connections_have_nagle_off() {
    // A listener with TCP_NODELAY set before `listen` (as the server binds them): inherited.
    let (_, _, limits) = listen().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_nodelay(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let inheriting = socket.listen(16).unwrap();
    assert_eq!(
        nodelay_of_accepted(inheriting, limits).await,
        [Some(true); 3]
    );
    // A listener without it: set on each connection.
    let (plain, _, limits) = listen().await;
    assert_eq!(nodelay_of_accepted(plain, limits).await, [Some(true); 3]);
}
