//! The accept loop both HTTP listeners share: connection limit, header limits and timeout,
//! accept back-off, graceful shutdown. The listeners differ only in the handler they pass, and
//! in where connections are served: the admin listener on the main runtime ([`serve`]), the
//! pixel listener on threads of its own ([`serve_on_threads`], `http.workers`, one per CPU by
//! default), each a single-threaded runtime serving the connections handed to it. A pixel
//! request is a few microseconds of work; on tokio's shared work-stealing runtime the wake-ups
//! between threads cost more than that: with a forged token (the HTTP path and the MAC check
//! alone) the pixel listener went from 0.87–1.25× nginx's requests/s to 1.10–1.48×
//! (`bench/RESULTS.md`). Each thread accepts on its own handle of the listening socket, so a
//! new connection is not handed between threads either (that hand-off cost connection-per-hit
//! clients a fifth of their rate against nginx).
//!
//! At most `max_connections` connections are served (a semaphore permit is taken before
//! `accept`, so the excess waits in the kernel backlog). A request head may be at most 16 KiB
//! with 100 headers (hyper's own limit: setting a lower one makes hyper fill a header array
//! of that size on every request, 2 % of the pixel's CPU). hyper's header-read timeout runs
//! whenever a connection waits for a request head, including on an idle keep-alive
//! connection, so idle connections close after `header_timeout`. On shutdown the loop stops
//! accepting, idle connections close at once and requests in flight finish (a handler with a
//! long-lived response, like the admin follow stream, must end that response itself when
//! shutdown begins); `serve` returns when every connection has closed. Answers go out with one
//! `write` each (head and body in one buffer).

use crate::tls::TlsSource;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

use crate::shutdown::{Shutdown, TaskTracker};

/// Largest request head accepted (request line + headers).
const MAX_HEAD: usize = 16 * 1024;

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

/// A response body hyper can send from any thread.
pub trait ReplyBody:
    Body<Data: Send, Error: Into<Box<dyn StdError + Send + Sync>>> + Send + 'static
{
}

impl<T> ReplyBody for T where
    T: Body<Data: Send, Error: Into<Box<dyn StdError + Send + Sync>>> + Send + 'static
{
}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` fires, then drains.
pub async fn serve<H, Fut, B>(listener: TcpListener, limits: Limits, shutdown: Shutdown, handler: H)
where
    H: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ReplyBody,
{
    let conns = Connections::new(&limits, shutdown.clone(), Arc::new(handler));
    serve_here(listener, &limits, shutdown, &conns).await;
}

/// Accepts and serves every connection on the caller's runtime until `shutdown`, then drains.
async fn serve_here<H, Fut, B>(
    listener: TcpListener,
    limits: &Limits,
    shutdown: Shutdown,
    conns: &Connections<H>,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ReplyBody,
{
    let tracker = TaskTracker::default();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    accept_loop(
        &listener,
        limits,
        permits,
        None,
        shutdown,
        |stream, peer, permit| {
            tokio::spawn(conns.serve(stream, peer, (permit, tracker.guard())));
        },
    )
    .await;
    drop(listener);
    tracker.wait().await;
}

/// Serves like [`serve`], with the connections spread over `threads` threads of their own,
/// each running a single-threaded runtime (the worker model of nginx and actix): every thread
/// accepts on its own handle of the listening socket and serves every request of the
/// connections it accepted, so neither a connection nor a request is ever handed between
/// threads. A thread serving more connections than the least busy one (by more than [`SLACK`])
/// leaves new ones to the others, so a burst of connects (wrk's 64, a proxy's pool) is shared
/// out rather than taken by the first thread awake. `max_connections` holds across all of
/// them. Returns when every thread has drained after `shutdown`. Should no thread start (no
/// memory for a runtime or a thread), it serves on the caller's runtime instead.
pub async fn serve_on_threads<H, Fut, B>(
    listener: TcpListener,
    threads: usize,
    limits: Limits,
    shutdown: Shutdown,
    handler: H,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: ReplyBody,
{
    let conns = Arc::new(Connections::new(
        &limits,
        shutdown.clone(),
        Arc::new(handler),
    ));
    // Off this runtime's poller: only the threads wait on it from here on.
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = limits.name, error = %e, "cannot hand the listening socket to its threads");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let share = Arc::new(Share::new(threads.max(1)));
    let mut done = Vec::new();
    for i in 0..threads.max(1) {
        let started = listener.try_clone().and_then(|own| {
            Worker {
                name: limits.name,
                conns: conns.clone(),
                limits: limits.clone(),
                permits: permits.clone(),
                shutdown: shutdown.clone(),
                share: share.clone(),
            }
            .start(i, own)
        });
        match started {
            Ok(d) => done.push(d),
            Err(e) => {
                tracing::warn!(listener = limits.name, thread = i, error = %e, "cannot start a listener thread");
                break;
            }
        }
    }
    if done.is_empty() {
        match TcpListener::from_std(listener) {
            Ok(listener) => serve_here(listener, &limits, shutdown, &conns).await,
            Err(e) => tracing::error!(listener = limits.name, error = %e, "cannot listen"),
        }
        return;
    }
    // The threads hold their own handles: the socket closes when the last of them stops.
    drop(listener);
    for d in done {
        // An error means the thread panicked; it has stopped either way.
        let _ = d.await;
    }
}

/// What one listener thread needs.
struct Worker<H> {
    name: &'static str,
    conns: Arc<Connections<H>>,
    limits: Limits,
    /// Shared by every thread: `max_connections` in all.
    permits: Arc<Semaphore>,
    shutdown: Shutdown,
    /// How many connections each thread serves.
    share: Arc<Share>,
}

impl<H> Worker<H> {
    /// Starts thread `i` accepting on `listener` (its own handle of the socket); the receiver
    /// resolves when the thread has drained and ended.
    fn start<Fut, B>(
        self,
        i: usize,
        listener: std::net::TcpListener,
    ) -> std::io::Result<oneshot::Receiver<()>>
    where
        H: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: ReplyBody,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("{}-http-{i}", self.name))
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(listener = self.name, thread = i, error = %e, "cannot listen");
                            return;
                        }
                    };
                    let tracker = TaskTracker::default();
                    let (conns, share) = (&self.conns, &self.share);
                    accept_loop(
                        &listener,
                        &self.limits,
                        self.permits,
                        Some((share, i)),
                        self.shutdown,
                        |stream, peer, permit| {
                            let held = (permit, tracker.guard(), share.took(i));
                            tokio::spawn(conns.serve(stream, peer, held));
                        },
                    )
                    .await;
                    drop(listener);
                    tracker.wait().await;
                });
                let _ = done_tx.send(());
            })?;
        Ok(done)
    }
}

/// How many connections each listener thread serves, so that none takes more than its share:
/// the threads all wait on the one socket, and the first awake would otherwise take most of a
/// burst of connects (54–59 of 64 in the tests), leaving its keep-alive connections on one CPU.
struct Share {
    loads: Vec<AtomicUsize>,
    /// Woken whenever a thread's count changes.
    changed: Notify,
}

/// Connections a thread may serve beyond the least busy thread before it leaves new ones to
/// the others.
const SLACK: usize = 1;

impl Share {
    fn new(threads: usize) -> Share {
        Share {
            loads: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            changed: Notify::new(),
        }
    }

    /// Returns when thread `i` serves no more than [`SLACK`] connections beyond the least busy
    /// thread (at once for the least busy, so some thread always accepts).
    async fn turn(&self, i: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let least = self.loads.iter().map(|l| l.load(Ordering::Relaxed)).min();
            if self.loads[i].load(Ordering::Relaxed) <= least.unwrap_or(0) + SLACK {
                return;
            }
            changed.await;
        }
    }

    /// Counts a connection of thread `i` until the returned guard drops.
    fn took(self: &Arc<Share>, i: usize) -> Counted {
        self.loads[i].fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        Counted(self.clone(), i)
    }
}

/// One connection of a listener thread, counted until it ends.
struct Counted(Arc<Share>, usize);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.loads[self.1].fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// Takes a connection permit and accepts, until `shutdown` fires; `dispatch` serves each
/// connection, and must keep the permit for as long as it is open.
async fn accept_loop(
    listener: &TcpListener,
    limits: &Limits,
    permits: Arc<Semaphore>,
    share: Option<(&Share, usize)>,
    mut shutdown: Shutdown,
    mut dispatch: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let mut backoff = Duration::from_millis(5);
    // Linux copies TCP_NODELAY from the listening socket to each socket it accepts (from the
    // handshake on: so it must be set before `listen`, as `crate::server` does): then no
    // system call per connection for it (nginx sets it only once a connection is kept
    // alive). Otherwise each connection gets its own.
    let inherited =
        cfg!(target_os = "linux") && rustix::net::sockopt::tcp_nodelay(listener).unwrap_or(false);
    loop {
        // Its turn first, then a permit: a thread waiting for its turn holds no permit that
        // the least busy thread needs to accept.
        if let Some((share, i)) = share {
            tokio::select! {
                () = share.turn(i) => {}
                () = shutdown.wait() => break,
            }
        }
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
        if !inherited {
            let _ = stream.set_nodelay(true);
        }
        dispatch(stream, peer, permit);
    }
}

/// Serves accepted connections: TLS when configured, then HTTP/1.1 with the listener's limits.
struct Connections<H> {
    /// Answers requests.
    handler: Arc<H>,
    /// hyper's settings.
    builder: http1::Builder,
    /// Certificate, for HTTPS.
    tls: Option<Arc<TlsSource>>,
    /// Allowed for the TLS handshake.
    header_timeout: Duration,
    /// For logs.
    name: &'static str,
    /// Ends keep-alive connections gracefully.
    shutdown: Shutdown,
}

impl<H> Connections<H> {
    fn new(limits: &Limits, shutdown: Shutdown, handler: Arc<H>) -> Connections<H> {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEAD)
            // The answers here are a head and a small body: hyper copies the body in after the
            // head and sends one buffer with `write`, which costs the kernel less than a
            // `writev` of two (the pixel threads' CPU per request in A/B runs: 8.7–9.6 µs
            // against 8.9–9.4 µs; within noise, no worse).
            .writev(false)
            .keep_alive(true);
        Connections {
            handler,
            builder,
            tls: limits.tls.clone(),
            header_timeout: limits.header_timeout,
            name: limits.name,
            shutdown,
        }
    }

    /// Serves one connection to its end; `held` (its permit, its tracker guard) is dropped then.
    fn serve<Fut, B>(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        held: impl Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        H: Fn(SocketAddr, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: ReplyBody,
    {
        let handler = self.handler.clone();
        let builder = self.builder.clone();
        let mut stop = self.shutdown.clone();
        let tls = self.tls.as_ref().map(|t| t.acceptor());
        let header_timeout = self.header_timeout;
        let name = self.name;
        async move {
            let stream = CloseOnDrop(stream);
            let stream: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        // An ACME CA's TLS-ALPN-01 validation: the handshake was the answer.
                        Ok(Ok(s))
                            if s.get_ref().1.alpn_protocol()
                                == Some(crate::acme::ACME_TLS_ALPN) =>
                        {
                            tracing::debug!(listener = name, peer = %peer, "ACME validation handshake");
                            drop(held);
                            return;
                        }
                        Ok(Ok(s)) => Box::new(s),
                        _ => {
                            tracing::debug!(listener = name, peer = %peer, "TLS handshake failed or timed out");
                            drop(held);
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
            let result = until_shutdown(conn, &mut stop).await;
            if let Err(e) = result {
                tracing::debug!(listener = name, peer = %peer, error = %e, "connection ended with an error");
            }
            drop(held);
        }
    }
}

/// An accepted socket whose write side is not shut down separately: hyper ends a connection
/// with `shutdown(SHUT_WR)` and then drops it, but the `close` of the drop sends the same FIN
/// after the same data, so the first system call is saved (a connection-per-hit load makes
/// one per request; a TLS stream still sends its `close_notify` first).
struct CloseOnDrop(TcpStream);

impl tokio::io::AsyncRead for CloseOnDrop {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CloseOnDrop {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // Everything written is in the kernel already (a TCP stream buffers nothing); the FIN
        // goes out when the socket is closed.
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
}

/// Drives a connection to its end, beginning hyper's graceful shutdown of it (finish the
/// request in flight, then close) once `stop` fires.
///
/// `tokio::select!` would poll the shutdown future on every wake-up of the connection, that is
/// on every request, and that poll takes the lock of the watch channel that every connection on
/// every listener thread shares. Here it is polled when the connection starts, to register the
/// task's waker, and again only when that waker changes or the shutdown flag is up.
async fn until_shutdown<I, S, B>(
    conn: http1::Connection<I, S>,
    stop: &mut Shutdown,
) -> Result<(), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let flag = stop.clone();
    let mut stopped = std::pin::pin!(stop.wait());
    let mut conn = std::pin::pin!(conn);
    let mut registered: Option<Waker> = None;
    let mut stopping = false;
    std::future::poll_fn(|cx| {
        if !stopping {
            let fresh = registered.as_ref().is_none_or(|w| !w.will_wake(cx.waker()));
            if fresh || flag.is_triggered() {
                if fresh {
                    registered = Some(cx.waker().clone());
                }
                if stopped.as_mut().poll(cx).is_ready() {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        conn.as_mut().poll(cx)
    })
    .await
}

#[cfg(test)]
mod tests;
