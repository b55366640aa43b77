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
pub async fn serve<H, Fut, B>(listener: TcpListener, limits: Limits, shutdown: Shutdown, handler: H)
where
    H: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    accept_loop(listener, limits, shutdown, handler, permits).await;
}

/// Serves like [`serve`], on `threads` threads of its own, each with a single-threaded
/// runtime accepting on a duplicate of `listener`'s socket (nginx's worker model): the
/// connection is served by the thread that accepted it, so a request never waits for a
/// hand-off between threads. `max_connections` holds across all of them. Returns when every
/// thread has drained after `shutdown`. Should no thread start (no memory for a runtime or
/// a thread), it serves on the caller's runtime instead.
pub async fn serve_on_threads<H, Fut, B>(
    listener: TcpListener,
    threads: usize,
    limits: Limits,
    shutdown: Shutdown,
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
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = limits.name, error = %e, "cannot detach the listener");
            return;
        }
    };
    let mut running = Vec::new();
    for i in 0..threads.max(1) {
        let worker = Worker {
            limits: limits.clone(),
            shutdown: shutdown.clone(),
            handler: handler.clone(),
            permits: permits.clone(),
        };
        match worker.start(&listener, i) {
            Ok(done) => running.push(done),
            Err(e) => {
                tracing::warn!(listener = limits.name, thread = i, error = %e, "cannot start a listener thread");
                break;
            }
        }
    }
    if running.is_empty() {
        match TcpListener::from_std(listener) {
            Ok(l) => accept_loop(l, limits, shutdown, handler, permits).await,
            Err(e) => tracing::error!(listener = limits.name, error = %e, "cannot serve"),
        }
        return;
    }
    drop(listener);
    for done in running {
        // An error means the thread panicked; it has stopped either way.
        let _ = done.await;
    }
}

/// What one listener thread needs.
struct Worker<H> {
    /// The listener's limits.
    limits: Limits,
    /// Stops accepting.
    shutdown: Shutdown,
    /// Answers requests.
    handler: Arc<H>,
    /// Shared connection limit.
    permits: Arc<Semaphore>,
}

impl<H> Worker<H> {
    /// Starts thread `i` on a duplicate of `listener`; the receiver resolves when it ends.
    fn start<Fut, B>(
        self,
        listener: &std::net::TcpListener,
        i: usize,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<()>>
    where
        H: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let socket = listener.try_clone()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("{}-http-{i}", self.limits.name))
            .spawn(move || {
                let name = self.limits.name;
                rt.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(l) => {
                            accept_loop(l, self.limits, self.shutdown, self.handler, self.permits)
                                .await
                        }
                        Err(e) => tracing::error!(listener = name, error = %e, "cannot serve"),
                    }
                });
                let _ = tx.send(());
            })?;
        Ok(rx)
    }
}

/// Accepts and serves connections until `shutdown` fires, then waits for them to close.
async fn accept_loop<H, Fut, B>(
    listener: TcpListener,
    limits: Limits,
    mut shutdown: Shutdown,
    handler: Arc<H>,
    permits: Arc<Semaphore>,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
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
