//! `pixelrelay serve`: builds every part from the config, binds the listeners, runs until the
//! shutdown future resolves, then drains.
//!
//! Binding is separate from running (`Server::bind` then `Server::run`) so that tests can bind
//! port 0, read the real addresses, and pass their own shutdown future.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::budget::Budget;
use crate::capture::Capture;
use crate::config::{Config, TrackingConfig, UpstreamTarget};
use crate::evidence::{Evidence, EvidenceSource};
use crate::http::{self, admin::AdminState, pixel::PixelState};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::notify::{Hooks, Notifier};
use crate::relay::{Recorder, Relay, RelayFactory, Target};
use crate::reload::Reload;
use crate::rewrite::Policy;
use crate::secret;
use crate::shutdown;
use crate::smtp::{self, Limits, SessionConfig};
use crate::store::Store;
use crate::tls::TlsSource;
use crate::token::TokenKey;
use crate::track::Windows;
use crate::upstream::Upstream;

/// A configured relay with its listeners bound.
pub struct Server {
    /// The configuration it was built from.
    cfg: Config,
    /// Bound SMTP listeners.
    smtp: Vec<TcpListener>,
    /// Bound implicit-TLS SMTP listeners.
    smtps: Vec<TcpListener>,
    /// Inbound certificate, when `[smtp.tls]` is set.
    tls: Option<Arc<TlsSource>>,
    /// The relay shared by all sessions.
    relay: Arc<ArcSwap<Relay>>,
    /// Bound pixel listener, unless this node has no `[http]`.
    http: Option<TcpListener>,
    /// The store (also the relay's recorder).
    store: Store,
    /// Pixel listener state (token key, counters).
    pixel: Arc<PixelState>,
    /// Bound admin listener and its token (from `admin.token_file`), unless this node has no
    /// `[admin]`.
    admin: AdminFace,
    /// Prometheus registry shared by the relay and the listeners.
    metrics: Arc<Metrics>,
    /// Webhook endpoints and their delivery workers (started by `run`).
    notifier: Arc<Hooks>,
    /// The memory budget for messages in flight (`smtp.max_inflight_bytes`), shared by the SMTP
    /// sessions and the milter.
    budget: Arc<Budget>,
    /// The milter front end, bound, with what its connections share (`[milter]`).
    milter: Option<(
        crate::milter::Listener,
        Arc<ArcSwap<crate::milter::MilterFront>>,
        usize,
    )>,
    /// The pixel listener's certificate manager (`[http.acme]`), started by `run`.
    acme: Option<Arc<crate::acme::Acme>>,
    /// The token key (a config reload builds new tracking rules with it).
    key: TokenKey,
}

/// Where the listeners ended up (port 0 resolved).
#[derive(Debug, Clone)]
pub struct Addresses {
    /// SMTP listeners.
    pub smtp: Vec<SocketAddr>,
    /// Implicit-TLS SMTP listeners.
    pub smtps: Vec<SocketAddr>,
    /// Pixel listener (`None`: off on this node).
    pub http: Option<SocketAddr>,
    /// Admin listener (`None`: off on this node).
    pub admin: Option<SocketAddr>,
    /// Milter listener on TCP (`None`: off, or a Unix socket).
    pub milter: Option<SocketAddr>,
}

/// Installs ring as the process-wide rustls provider (two enabled providers make rustls panic).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the rewrite policy from `[tracking]`.
pub fn policy(cfg: &Config) -> Policy {
    let t = &cfg.tracking;
    Policy {
        pixel_prefix: format!("{}/o/", t.base_url),
        on_dkim_signed: t.on_dkim_signed,
        opt_out_header: t.opt_out_header.clone(),
        sender_domains: t.sender_domains.clone(),
        exclude_recipient_domains: t.exclude_recipient_domains.clone(),
        max_rewrite_size: t.max_rewrite_size,
    }
}

/// Binds a listener with a deep accept queue: a burst of connections (a restarted MTA, a
/// newsletter's worth of pixel loads) then waits in the kernel to be accepted and answered
/// (or refused with 421) instead of overflowing the default 1024-entry backlog. Nagle's
/// algorithm is off for every connection it accepts (set here once, inherited on Linux).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Where accepted mail goes: the upstream (pooled connections) or the capture folder.
fn target(cfg: &Config) -> Result<Target, String> {
    Ok(match &cfg.upstream.target {
        UpstreamTarget::Smtp { .. } => {
            let up = Upstream::new(&cfg.upstream, upstream_password(cfg)?)?;
            if !cfg.upstream.tls_verify {
                warn!("upstream.tls_verify = false: the upstream's certificate is NOT checked");
            }
            Target::Smtp(Arc::new(up))
        }
        UpstreamTarget::Capture { dir } => Target::Capture(Arc::new(
            Capture::new(dir)
                .map_err(|e| format!("upstream.capture_dir: {}: {e}", dir.display()))?,
        )),
        UpstreamTarget::None => Target::Off,
    })
}

/// The pixel listener's state: token key, ingest, evidence catalogue, TLS.
/// With `[http.acme]`, also the certificate manager behind the listener's TLS.
fn pixel_state(
    cfg: &Config,
    key: TokenKey,
    ingest: Ingest,
) -> Result<(PixelState, Option<Arc<crate::acme::Acme>>), String> {
    let evidence = Evidence::load(&cfg.tracking)?;
    info!(event = "evidence_load", loaded = %evidence.summary(), "network catalogue loaded");
    let windows = Windows {
        machine: cfg.tracking.machine_window,
        probable: cfg.tracking.probable_window,
    };
    let mut pixel = PixelState::new(
        key,
        ingest,
        cfg.http.clone().unwrap_or_default(),
        windows,
        Arc::new(EvidenceSource::new(evidence)),
    );
    if let Some((cert, key)) = cfg.http.as_ref().and_then(|h| h.tls.as_ref()) {
        pixel.tls = Some(Arc::new(TlsSource::load(cert, key, "http")?));
    }
    let acme = match cfg.http.as_ref().and_then(|h| h.acme.as_ref()) {
        Some(a) => {
            let acme = crate::acme::Acme::new(a)?;
            pixel.tls = Some(Arc::new(TlsSource::managed(acme.server_config()?, "http")));
            Some(Arc::new(acme))
        }
        None => None,
    };
    Ok((pixel, acme))
}

/// Reads the upstream password from its file (0600) or environment variable.
pub fn upstream_password(cfg: &Config) -> Result<Option<String>, String> {
    let u = &cfg.upstream;
    if let Some(path) = &u.password_file {
        let bytes = secret::read(path).map_err(|e| format!("upstream.password_file: {e}"))?;
        return String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| "upstream.password_file: not UTF-8".to_string());
    }
    if let Some(var) = &u.password_env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("upstream.password_env: ${var} is not set"));
    }
    Ok(None)
}

/// The token key: generated (0600) on first start with the sled store; with the PostgreSQL
/// store every node must verify every other node's tokens, so the key is provisioned, the same
/// file on each, and a missing one is an error rather than a key of this node's own.
pub fn token_secret(cfg: &Config) -> Result<Vec<u8>, String> {
    let path = &cfg.tracking.secret_file;
    if cfg.store.postgres.is_some() {
        return secret::read(path).map_err(|e| {
            format!("tracking.secret_file: {e} (with store.backend = \"postgres\" every node needs the same key: copy it to each node, it is not generated)")
        });
    }
    secret::read_or_create(path, || secret::random_hex(32))
        .map_err(|e| format!("tracking.secret_file: {e}"))
}

/// The contents of `tracking.previous_secret_files`, each read as a secret (0600, not empty);
/// an error names the key and the file. Never generated: an older key is one that existed.
pub fn previous_secrets(cfg: &TrackingConfig) -> Result<Vec<Vec<u8>>, String> {
    cfg.previous_secret_files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            secret::read(f).map_err(|e| format!("tracking.previous_secret_files[{i}]: {e}"))
        })
        .collect()
}

impl Server {
    /// Loads secrets, builds the parts and binds every listener. Errors name what failed.
    pub async fn bind(cfg: Config) -> Result<Server, String> {
        install_crypto();
        let target = target(&cfg)?;
        // The key is needed to verify pixels even while inserting them is switched off.
        let secret = token_secret(&cfg)?;
        let key = TokenKey::from_secret(&secret).with_previous(&previous_secrets(&cfg.tracking)?);
        let tracking = crate::reload::tracking(&cfg, &key);
        let store = Store::open(&cfg.store).map_err(|e| match &cfg.store.postgres {
            Some(pg) => format!("store.url: {}: {e}", pg.url),
            None => format!("store.path: {}: {e}", cfg.store.path.display()),
        })?;
        // Before any open is recorded: the store must know whom to write outbox rows for.
        let notifier = Arc::new(Hooks::new(Notifier::from_config(
            &cfg.webhooks,
            store.clone(),
        )?));
        // Replays what the journal holds and was not yet stored, then indexes behind.
        let ingest = Ingest::open(store.clone())
            .map_err(|e| format!("store.path: {}: {e}", cfg.store.path.display()))?;
        let mut smtp = Vec::new();
        for addr in &cfg.smtp.listen {
            smtp.push(
                listen(*addr).map_err(|e| format!("smtp.listen: cannot listen on {addr}: {e}"))?,
            );
        }
        let (http, admin) = bind_http_faces(&cfg).await?;
        let (pixel, acme) = pixel_state(&cfg, key.clone(), ingest.clone())?;
        let pixel = Arc::new(pixel);
        let metrics = Arc::new(Metrics::new(pixel.latency.clone()));
        let recorder: Arc<dyn Recorder> = Arc::new(ingest);
        // One memory budget for messages in flight, the SMTP sessions' and the milter's.
        let budget =
            Budget::new(usize::try_from(cfg.smtp.max_inflight_bytes).unwrap_or(usize::MAX));
        let milter = match &cfg.milter {
            Some(m) => {
                let front = crate::milter::MilterFront {
                    tracking: tracking.clone(),
                    recorder: Some(Arc::clone(&recorder)),
                    opt_out_header: cfg.tracking.opt_out_header.clone(),
                    max_size: usize::try_from(cfg.tracking.max_rewrite_size).unwrap_or(usize::MAX),
                    metrics: Some(Arc::clone(&metrics)),
                    budget: Some(Arc::clone(&budget)),
                };
                let l = crate::milter::bind(m).await?;
                Some((l, Arc::new(ArcSwap::from_pointee(front)), m.max_connections))
            }
            None => None,
        };
        let relay = Arc::new(ArcSwap::from_pointee(Relay {
            target: Arc::new(target),
            tracking,
            recorder: Some(recorder),
            metrics: Arc::clone(&metrics),
            opt_out_header: cfg.tracking.opt_out_header.clone(),
        }));
        let tls = match &cfg.smtp.tls {
            Some(t) => Some(Arc::new(TlsSource::load(&t.cert, &t.key, "smtp.tls")?)),
            None => None,
        };
        let mut smtps = Vec::new();
        for addr in cfg.smtp.tls.iter().flat_map(|t| t.implicit_listen.iter()) {
            smtps.push(
                listen(*addr).map_err(|e| {
                    format!("smtp.tls.implicit_listen: cannot listen on {addr}: {e}")
                })?,
            );
        }
        Ok(Server {
            cfg,
            smtp,
            smtps,
            tls,
            relay,
            http,
            store,
            pixel,
            admin,
            metrics,
            notifier,
            budget,
            milter,
            acme,
            key,
        })
    }

    /// The webhook endpoints in force: metrics, and (through the store) pending and dead
    /// letters.
    pub fn notifier(&self) -> Arc<Notifier> {
        self.notifier.current()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bound addresses.
    pub fn addresses(&self) -> Addresses {
        Addresses {
            smtp: self
                .smtp
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
            smtps: self
                .smtps
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
            http: self.http.as_ref().and_then(|l| l.local_addr().ok()),
            admin: self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            milter: self.milter.as_ref().and_then(|(l, _, _)| l.local_addr()),
        }
    }

    /// Serves until `signal` resolves, then stops accepting, lets transactions finish for up
    /// to `smtp.shutdown_grace`, closes what is left with 421, and returns.
    pub async fn run(self, signal: impl Future<Output = ()>) {
        let Server {
            cfg,
            smtp,
            smtps,
            tls,
            relay,
            http,
            store,
            pixel,
            admin,
            metrics,
            notifier,
            budget,
            milter,
            acme,
            key,
        } = self;
        let (trigger, shutdown) = shutdown::channel();
        let (hard_trigger, hard_stop) = shutdown::channel();
        let session = Arc::new(ArcSwap::from_pointee(crate::reload::session(
            &cfg,
            tls.is_some(),
            &metrics,
            &budget,
        )));
        let tasks = spawn_smtp(
            &cfg,
            (smtp, smtps),
            Arc::clone(&session),
            tls.clone(),
            Arc::new(RelayFactory(Arc::clone(&relay))),
            (&shutdown, &hard_stop),
        );
        if let Some(acme) = acme {
            tokio::spawn(acme.run(shutdown.clone(), Arc::clone(&metrics)));
        }
        // SIGHUP: the config, the certificate files (sessions in progress keep theirs), the
        // network catalogue, the open log (logrotate).
        let reload = Reload {
            started: cfg.raw.clone(),
            cfg: cfg.clone(),
            key,
            certs: tls
                .iter()
                .chain(pixel.tls.iter())
                .filter(|t| t.from_files())
                .cloned()
                .collect(),
            store: store.clone(),
            pixel: Arc::clone(&pixel),
            relay: Arc::clone(&relay),
            session,
            milter: milter.as_ref().map(|(_, front, _)| Arc::clone(front)),
            hooks: Arc::clone(&notifier),
        };
        tokio::spawn(reload.run());
        notifier.start().await;
        let milter_task = milter.map(|(l, front, max)| {
            tokio::spawn(crate::milter::serve_on_thread(
                l,
                front,
                max,
                shutdown.clone(),
                cfg.smtp.shutdown_grace,
            ))
        });
        let pixel_task = http.map(|http| {
            tokio::spawn(http::pixel::serve(
                http,
                Arc::clone(&pixel),
                shutdown.clone(),
            ))
        });
        let admin_task = admin.map(|(listener, token)| {
            let mut state = AdminState::new(
                store.clone(),
                &token,
                metrics,
                Arc::clone(&pixel),
                shutdown.clone(),
            );
            (state.notifier, state.budget) = (Some(Arc::clone(&notifier)), Some(budget));
            tokio::spawn(http::admin::serve(listener, Arc::new(state)))
        });
        let mode = match &*relay.load().target {
            Target::Smtp(up) => format!("relay to {}", up.address()),
            Target::Capture(c) => format!("CAPTURE into {} (not relaying)", c.dir().display()),
            Target::Off => "no SMTP".to_string(),
        };
        info!(smtp = ?cfg.smtp.listen, mode = %mode, tracking = relay.load().tracking.is_some(), "pixelrelay started");
        signal.await;
        crate::sd_notify::notify("STOPPING=1");
        info!(
            grace_s = cfg.smtp.shutdown_grace.as_secs(),
            "shutting down: no new connections"
        );
        trigger.trigger();
        drain(tasks, cfg.smtp.shutdown_grace, hard_trigger).await;
        for task in pixel_task.into_iter().chain(admin_task).chain(milter_task) {
            let _ = task.await;
        }
        // Undelivered events stay in the outbox for the next start.
        notifier.close().await;
        settle(&relay.load(), &pixel, &store).await;
    }
}

/// The last of a shutdown: idle upstream connections closed, the journal and the store on disk.
async fn settle(relay: &Relay, pixel: &PixelState, store: &Store) {
    if let Target::Smtp(up) = &*relay.target {
        up.close_idle().await;
    }
    if let Err(e) = pixel.ingest.sync() {
        warn!(error = %e, "journal sync at shutdown failed");
    }
    if let Err(e) = store.flush().await {
        warn!(error = %e, "store flush at shutdown failed");
    }
    info!("pixelrelay stopped");
}

/// The pixel listener and the admin listener with its token, each when the config has it.
async fn bind_http_faces(cfg: &Config) -> Result<(Option<TcpListener>, AdminFace), String> {
    let http = match &cfg.http {
        Some(h) => Some(
            listen(h.listen)
                .map_err(|e| format!("http.listen: cannot listen on {}: {e}", h.listen))?,
        ),
        None => None,
    };
    let admin = match &cfg.admin {
        Some(a) => {
            let token = secret::read_or_create(&a.token_file, || secret::random_hex(32))
                .map_err(|e| format!("admin.token_file: {e}"))?;
            let listener = listen(a.listen)
                .map_err(|e| format!("admin.listen: cannot listen on {}: {e}", a.listen))?;
            Some((listener, token))
        }
        None => None,
    };
    Ok((http, admin))
}

/// The admin listener and its token, when the node runs one.
type AdminFace = Option<(TcpListener, Vec<u8>)>;

/// Starts one task per SMTP listener (plain, then implicit TLS).
fn spawn_smtp(
    cfg: &Config,
    (smtp, smtps): (Vec<TcpListener>, Vec<TcpListener>),
    session_cfg: Arc<ArcSwap<SessionConfig>>,
    tls: Option<Arc<TlsSource>>,
    factory: Arc<RelayFactory>,
    (shutdown, hard_stop): (&shutdown::Shutdown, &shutdown::Shutdown),
) -> Vec<tokio::task::JoinHandle<()>> {
    let limits = Limits {
        max_connections: cfg.smtp.max_connections,
        max_per_ip: cfg.smtp.max_connections_per_ip,
        tls,
        implicit: false,
    };
    let implicit_limits = Limits {
        implicit: true,
        ..limits.clone()
    };
    let listeners = smtp.into_iter().map(|l| (l, limits.clone()));
    let listeners = listeners.chain(smtps.into_iter().map(|l| (l, implicit_limits.clone())));
    listeners
        .map(|(l, limits)| {
            tokio::spawn(smtp::serve(
                l,
                Arc::clone(&session_cfg),
                limits,
                Arc::clone(&factory),
                shutdown.clone(),
                hard_stop.clone(),
            ))
        })
        .collect()
}

/// Waits for the SMTP tasks; after `grace`, tells the remaining sessions 421 and waits on.
async fn drain(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    grace: std::time::Duration,
    hard_trigger: shutdown::ShutdownTrigger,
) {
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::pin!(all);
    tokio::select! {
        () = &mut all => {}
        () = tokio::time::sleep(grace) => {
            warn!("grace period over: closing the remaining sessions with 421");
            hard_trigger.trigger();
            all.await;
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
/// The handlers are in place when this returns (before the future is first polled), so that
/// a SIGTERM right after the `ready` line stops the relay gracefully rather than killing it.
pub fn termination() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    wait_for_signal(term, int)
}

async fn wait_for_signal(
    term: std::io::Result<tokio::signal::unix::Signal>,
    int: std::io::Result<tokio::signal::unix::Signal>,
) {
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
