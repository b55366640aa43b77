//! The milter front end: Postfix (`smtpd_milters`) or Sendmail hands each message to
//! pixelrelay over the Sendmail milter protocol (parsed with `miltr-common`, the stages on
//! `miltr-server`'s `Milter` trait; `wire.rs` holds the conversation), keeps its own queue and
//! retries, and chains other milters (OpenDKIM) after it.
//!
//! At end-of-message the message is put back together from the headers and body the MTA sent
//! and goes through the relay's own decision and rewrite (`relay::Tracking`): one recipient,
//! an HTML part, the same skip rules; a tracked message's new body goes back as a body
//! replacement and the opt-out header is removed with a header change. Every message is
//! recorded as in relay mode (queue id from the `i` macro, delivery "handed to the MTA").
//! Nothing here ever rejects or delays mail: any failure inside pixelrelay accepts the
//! message unchanged and logs why (`Continue` to every stage).

mod conn;
mod wire;

use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::config::{MilterConfig, MilterListen};
use crate::relay::{Recorder, Tracking};
use crate::shutdown::{Shutdown, TaskTracker};

/// What every milter connection shares.
pub struct MilterFront {
    /// The rewrite (none: tracking off, every message accepted unchanged and recorded).
    pub tracking: Option<Tracking>,
    /// Where messages are recorded.
    pub recorder: Option<Arc<dyn Recorder>>,
    /// `tracking.opt_out_header`, removed from every message.
    pub opt_out_header: String,
    /// Larger messages are not buffered for a rewrite (`tracking.max_rewrite_size`).
    pub max_size: usize,
    /// Where the milter's series are counted (`/metrics`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The memory budget shared with the SMTP relay (`smtp.max_inflight_bytes`): a message
    /// the budget has no room for, to buffer or to rewrite, goes unchanged (skip reason
    /// `memory`), never rejected or deferred.
    pub budget: Option<Arc<crate::budget::Budget>>,
}

/// A bound milter socket.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket (removed again when the listener stops).
    Unix(UnixListener, std::path::PathBuf),
}

/// Binds `[milter] listen` (a stale Unix socket from an earlier run is replaced).
pub async fn bind(cfg: &MilterConfig) -> Result<Listener, String> {
    match &cfg.listen {
        MilterListen::Tcp(a) => TcpListener::bind(a)
            .await
            .map(Listener::Tcp)
            .map_err(|e| format!("milter.listen: cannot listen on {a}: {e}")),
        MilterListen::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = UnixListener::bind(p).map_err(|e| {
                format!("milter.listen: cannot listen on unix:{}: {e}", p.display())
            })?;
            // The MTA's user must reach it; nobody else.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o660))
                .map_err(|e| format!("milter.listen: {}: {e}", p.display()))?;
            Ok(Listener::Unix(l, p.clone()))
        }
    }
}

impl Listener {
    /// The TCP address, for tests and the start line.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

/// [`serve`] on a thread of its own running a single-threaded runtime (one event loop for
/// every milter connection, as the pixel listener's threads have: each packet the MTA streams
/// wakes that thread alone, never hands a task between worker threads). Returns when it has
/// stopped. Should the thread or its runtime not start, it serves on the caller's runtime.
pub async fn serve_on_thread(
    listener: Listener,
    front: Arc<ArcSwap<MilterFront>>,
    max_connections: usize,
    shutdown: Shutdown,
    grace: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(error = %e, "cannot start the milter's runtime; serving on the main one");
            return serve(listener, front, max_connections, shutdown, grace).await;
        }
    };
    // Off this runtime's poller (a handle kept to serve here should the thread not start).
    let (std, kept) = match listener.into_std() {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, "cannot hand the milter socket to its thread");
            return;
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (front_here, shutdown_here) = (Arc::clone(&front), shutdown.clone());
    let started = std::thread::Builder::new()
        .name("milter".into())
        .spawn(move || {
            rt.block_on(async move {
                match std.into_tokio() {
                    Ok(l) => serve(l, front, max_connections, shutdown, grace).await,
                    Err(e) => warn!(error = %e, "cannot listen for the milter"),
                }
            });
            let _ = tx.send(());
        });
    match started {
        Ok(_) => {
            drop(kept);
            let _ = rx.await;
        }
        Err(e) => {
            warn!(error = %e, "cannot start the milter's thread; serving on the main runtime");
            match kept.and_then(StdListener::into_tokio) {
                Ok(l) => serve(l, front_here, max_connections, shutdown_here, grace).await,
                Err(e) => warn!(error = %e, "cannot listen for the milter"),
            }
        }
    }
}

/// A bound milter socket off any runtime, to hand to another.
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, std::path::PathBuf),
}

impl Listener {
    /// The socket off this runtime, and a second handle of it.
    fn into_std(self) -> std::io::Result<(StdListener, std::io::Result<StdListener>)> {
        Ok(match self {
            Listener::Tcp(l) => {
                let l = l.into_std()?;
                let kept = l.try_clone().map(StdListener::Tcp);
                (StdListener::Tcp(l), kept)
            }
            Listener::Unix(l, p) => {
                let l = l.into_std()?;
                let kept = l.try_clone().map(|k| StdListener::Unix(k, p.clone()));
                (StdListener::Unix(l, p), kept)
            }
        })
    }
}

impl StdListener {
    /// Registered with the runtime this runs on.
    fn into_tokio(self) -> std::io::Result<Listener> {
        match self {
            StdListener::Tcp(l) => TcpListener::from_std(l).map(Listener::Tcp),
            StdListener::Unix(l, p) => UnixListener::from_std(l).map(|l| Listener::Unix(l, p)),
        }
    }
}

/// Serves milter connections until `shutdown`, at most `max_connections` at once (the rest
/// wait in the accept queue). Each message takes the rules `front` holds at its `MAIL`.
/// At `shutdown` each conversation ends at its next point between messages; a message in
/// progress gets up to `grace` to reach its end (the MTA's `milter_default_action` decides for
/// one still unfinished then).
pub async fn serve(
    listener: Listener,
    front: Arc<ArcSwap<MilterFront>>,
    max_connections: usize,
    mut shutdown: Shutdown,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let tracker = TaskTracker::default();
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            () = shutdown.wait() => break,
            a = accept(&listener) => a,
        };
        let (io, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                warn!(error = %e, event = "milter_accept", "milter accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let front = Arc::clone(&front);
        let stop = shutdown.clone();
        let guard = tracker.guard();
        tokio::spawn(async move {
            let _guard = guard;
            let metrics = front.load().metrics.clone();
            if let Some(m) = &metrics {
                m.milter.connections(1);
            }
            let mut conn = conn::Conn::new(front.clone());
            // No timeout of ours: the MTA's (Postfix's milter_*_timeout) bound each exchange,
            // and closing on it would make the MTA apply its default action to the message.
            let r = match io {
                Stream::Tcp(mut s) => {
                    let (r, w) = s.split();
                    wire::converse(r, w, &mut conn, stop).await
                }
                Stream::Unix(mut s) => {
                    let (r, w) = s.split();
                    wire::converse(r, w, &mut conn, stop).await
                }
            };
            if let Err(e) = r {
                warn!(mta = %peer, error = %e, event = "milter_error", "milter connection failed");
                if let Some(m) = &metrics {
                    m.milter.error();
                }
            }
            if let Some(m) = &metrics {
                m.milter.connections(-1);
            }
            drop(permit);
        });
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    drop(listener);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            grace_s = grace.as_secs(),
            "grace period over: closing milter conversations in the middle of a message"
        );
    }
    info!("milter stopped");
}

/// A stream from either kind of socket.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Stream, String)> {
    match l {
        Listener::Tcp(l) => {
            let (s, a) = l.accept().await?;
            // Every reply is a small packet the MTA waits for: without this, Nagle's algorithm
            // and the MTA's delayed ACK hold each one ~40 ms (the milter ran at 0.26× Postfix's
            // throughput before).
            s.set_nodelay(true)?;
            Ok((Stream::Tcp(s), a.to_string()))
        }
        Listener::Unix(l, p) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), format!("unix:{}", p.display())))
        }
    }
}
