//! Accepts SMTP connections and runs a session for each.
//!
//! Limits: a global `Semaphore` permit is taken for every connection (none left: `421` and
//! close, without waiting), and a per-IP count caps one client's share. Accept errors (out of
//! file descriptors) back off briefly instead of spinning. On shutdown the loop stops
//! accepting; sessions finish their transaction and get `421` (see `session`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

use super::reply;
use super::session::{Backend, End, Session, SessionConfig};
use crate::net;
use crate::shutdown::{Shutdown, TaskTracker};
use crate::tls::TlsSource;

/// Makes the backend for each new session.
pub trait BackendFactory: Send + Sync + 'static {
    /// The per-session backend type.
    type Backend: Backend + 'static;
    /// A backend for a session with the client at `peer`.
    fn backend(&self, peer: SocketAddr) -> Self::Backend;
}

/// Connection limits and TLS mode of one listener.
#[derive(Clone)]
pub struct Limits {
    /// All sessions together.
    pub max_connections: usize,
    /// Sessions from one IP.
    pub max_per_ip: usize,
    /// Certificate for STARTTLS (and implicit TLS), if configured.
    pub tls: Option<Arc<TlsSource>>,
    /// TLS from the first byte (port 465 style).
    pub implicit: bool,
}

/// Most time a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Live sessions per client IP.
#[derive(Default)]
struct PerIp {
    /// Count per address; entries are removed when they reach zero.
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// Decrements the per-IP count when a session ends.
struct IpSlot {
    /// The shared table.
    table: Arc<PerIp>,
    /// This session's address.
    ip: IpAddr,
}

impl PerIp {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Runs the accept loop on `listener` until `shutdown`, then waits for every session to end.
/// `hard_stop` fires when the grace period is over and sessions must close at once. Each
/// connection takes the session settings `live` holds when it is accepted.
pub async fn serve<F: BackendFactory>(
    listener: TcpListener,
    live: Arc<ArcSwap<SessionConfig>>,
    limits: Limits,
    factory: Arc<F>,
    shutdown: Shutdown,
    hard_stop: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let tracker = TaskTracker::default();
    let local = listener.local_addr().ok();
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.wait() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let peer = SocketAddr::new(net::canonical(peer.ip()), peer.port());
        // The settings of the moment (a config reload changes them for new connections).
        let cfg = live.load_full();
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            info!(client = %peer, event = "connection_limit", "too many connections");
            if let Some(m) = &cfg.metrics {
                m.smtp_refused("connection_limit");
            }
            tokio::spawn(refuse(stream));
            continue;
        };
        let Some(slot) = per_ip.try_take(peer.ip(), limits.max_per_ip) else {
            info!(client = %peer, event = "ip_connection_limit", "too many connections from one address");
            if let Some(m) = &cfg.metrics {
                m.smtp_refused("ip_connection_limit");
            }
            tokio::spawn(refuse(stream));
            continue;
        };
        let backend = factory.backend(peer);
        let guard = tracker.guard();
        let span = info_span!("smtp", client = %peer);
        let conn = Conn {
            cfg,
            tls: limits.tls.clone(),
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
        };
        let implicit = limits.implicit;
        tokio::spawn(
            async move {
                debug!("connect");
                let end = conn.run(stream, peer, backend, implicit).await;
                debug!(?end, "disconnect");
                drop((permit, slot, guard));
            }
            .instrument(span),
        );
    }
    drop(listener);
    info!(listen = ?local, "smtp listener closed; waiting for sessions");
    tracker.wait().await;
}

/// What one connection's sessions share.
struct Conn {
    /// Session limits and names.
    cfg: Arc<SessionConfig>,
    /// Certificate, if TLS is configured.
    tls: Option<Arc<TlsSource>>,
    /// Graceful shutdown.
    shutdown: Shutdown,
    /// End of the grace period.
    hard_stop: Shutdown,
}

impl Conn {
    /// Runs the session(s) of one connection: implicit TLS first if asked, and a new session
    /// over TLS after STARTTLS.
    async fn run<B: Backend + 'static>(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        backend: B,
        implicit: bool,
    ) -> End {
        let session = |io, b| {
            Session::new(
                io,
                peer,
                Arc::clone(&self.cfg),
                b,
                self.shutdown.clone(),
                self.hard_stop.clone(),
            )
        };
        if implicit {
            // TLS state is boxed: a plain connection's task does not carry it.
            let Some(tls) = Box::pin(self.handshake(stream)).await else {
                return End::Closed;
            };
            return Box::pin(session(tls, backend).secure(true).run()).await;
        }
        let (end, upgrade) = Session::new(
            stream,
            peer,
            Arc::clone(&self.cfg),
            backend,
            self.shutdown.clone(),
            self.hard_stop.clone(),
        )
        .run_upgradable()
        .await;
        let Some((io, backend, errors)) = upgrade else {
            return end;
        };
        let Some(tls) = Box::pin(self.handshake(io)).await else {
            return End::Closed;
        };
        Box::pin(session(tls, backend).after_starttls(errors).run()).await
    }

    async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let tls = self.tls.as_ref()?;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                info!(error = %e, event = "tls_failed", "TLS handshake failed");
                None
            }
            Err(_) => {
                info!(event = "tls_failed", "TLS handshake timed out");
                None
            }
        }
    }
}

/// Tells a client over the limit to come back later, without waiting on it for long.
async fn refuse(mut stream: TcpStream) {
    let msg = reply::too_many_connections().to_wire();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(msg.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
