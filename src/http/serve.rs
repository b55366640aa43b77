//! The accept loop both HTTP listeners share: connection limit, header limits and timeout,
//! accept back-off, graceful shutdown. The listeners differ only in the handler they pass.
//!
//! At most `max_connections` connections are served (a semaphore permit is taken before
//! `accept`, so the excess waits in the kernel backlog). A request head may be at most 16 KiB
//! with 64 headers. hyper's header-read timeout runs whenever a connection waits for a request
//! head, including on an idle keep-alive connection, so idle connections close after
//! `header_timeout`. On shutdown the loop stops accepting, idle connections close at once and
//! requests in flight finish (a handler with a long-lived response, like the admin follow
//! stream, must end that response itself when shutdown begins); `serve` returns when every
//! connection has closed.

use crate::tls::TlsSource;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::shutdown::{Shutdown, TaskTracker};

/// Largest request head accepted (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most request headers accepted.
pub const MAX_HEADERS: usize = 64;

/// Limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Name for logs (`pixel`, `admin`).
    pub name: &'static str,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Time allowed to read a request head, and to sit idle between requests.
    pub header_timeout: Duration,
    /// Serve HTTPS with this certificate (the handshake must finish within `header_timeout`).
    pub tls: Option<Arc<TlsSource>>,
}

/// Plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` fires, then drains.
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    limits: Limits,
    mut shutdown: Shutdown,
    handler: H,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::default();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.wait() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = limits.name, error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        backoff = Duration::from_millis(5);
        let _ = stream.set_nodelay(true);
        let guard = tracker.guard();
        let handler = handler.clone();
        let builder = builder.clone();
        let mut stop = shutdown.clone();
        let tls = limits.tls.as_ref().map(|t| t.acceptor());
        let header_timeout = limits.header_timeout;
        let name = limits.name;
        tokio::spawn(async move {
            let stream: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Box::new(s),
                        _ => {
                            tracing::debug!(listener = name, peer = %peer, "TLS handshake failed or timed out");
                            drop((permit, guard));
                            return;
                        }
                    }
                }
            };
            let svc = service_fn(move |req| {
                let fut = handler(peer, req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.wait() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                tracing::debug!(listener = name, peer = %peer, error = %e, "connection ended with an error");
            }
            drop(permit);
            drop(guard);
        });
    }
    drop(listener);
    tracker.wait().await;
}
