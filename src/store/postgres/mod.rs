//! The PostgreSQL store, shared by several nodes (`[store] backend = "postgres"`).
//!
//! Split like the sled store: `write.rs` (message records, replies and opens, each commit one
//! transaction), `read.rs` (messages, opens, totals), `outbox.rs` (webhook rows), `schema.rs`
//! (versioned migrations). This file opens the database and bridges the synchronous
//! [`Backend`] to tokio-postgres.
//!
//! # The bridge
//!
//! [`Backend`] is synchronous (sled answers in microseconds; its callers are the indexer
//! thread, admin handlers and the webhook workers). The store owns a small runtime of its own
//! with a few connections; a call sends its query there and waits on a channel, so it works
//! from a plain thread and from inside any tokio runtime alike (it blocks the calling thread
//! for one round trip, as a sled call blocks on its disk).
//!
//! # Writes
//!
//! Every writing transaction takes one advisory lock, so that open ids and event sequences
//! (`max(previous + 1, at_ms << 20)`, see `shared.rs`) are handed out and committed in one
//! order across all nodes, and the shared totals (`state` table) are read and written back
//! without a lost update. An indexer commits thousands of opens per transaction, so the lock
//! is taken a few times per second, not per open.

pub mod schema;

mod backend;
mod event;
mod events_write;
mod outbox;
mod read;
mod write;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::broadcast;
use tokio_postgres::{Client, NoTls};

use super::{OpenEvent, types::*};
use crate::config::{PostgresConfig, StoreConfig};
use crate::openlog::OpenLog;

/// A database error as an admin needs it: the server's own message (and its detail, hint and
/// SQLSTATE) rather than tokio-postgres's bare "db error".
pub fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        // The cause, e.g. the certificate a TLS handshake refused.
        let mut s = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        return s;
    };
    let mut s = format!("{} ({})", db.message(), db.code().code());
    if let Some(d) = db.detail() {
        s.push_str("; ");
        s.push_str(d);
    }
    if let Some(h) = db.hint() {
        s.push_str("; hint: ");
        s.push_str(h);
    }
    s
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        StoreError::Engine(describe(&e))
    }
}

/// Connections kept open to the database.
const CONNECTIONS: usize = 4;
/// Live followers' buffer, as the sled store's.
const FEED_CAPACITY: usize = 4096;
/// How often the live feed looks for opens committed by any node.
const FEED_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// Opens fed per poll at most (a full batch polls again at once).
const FEED_BATCH: usize = 1000;

/// The PostgreSQL backend.
pub struct PgStore {
    inner: Arc<Inner>,
    /// The store's own runtime (dropped last: it runs the connections).
    rt: Option<tokio::runtime::Runtime>,
}

/// What the store's calls share.
pub(crate) struct Inner {
    /// Subjects, anonymisation, retention.
    cfg: StoreConfig,
    /// The database.
    pg: PostgresConfig,
    /// This node's name in it (its journal's mark): `PATH.node`, made on first start.
    node: String,
    /// The password (`store.password_file` or the environment), if any.
    password: Option<String>,
    /// Open connections (`None`: not yet, or lost: made again on next use).
    conns: Vec<tokio::sync::Mutex<Option<Pooled>>>,
    /// Round robin over `conns`.
    next: AtomicUsize,
    /// Live feed of opens committed by this node.
    feed: broadcast::Sender<OpenEvent>,
    /// Tells the delivery workers that rows were written.
    outbox_watch: tokio::sync::watch::Sender<OutboxVersion>,
    /// Endpoints that get outbox rows, and for which events.
    hooks: RwLock<Vec<Subscription>>,
    /// Optional JSON-lines file of the opens this node commits.
    open_log: Option<OpenLog>,
    /// The totals as last read or written, for `stats()` when the database is away.
    counters: Mutex<Counters>,
    /// The newest open id this node saw committed (for `last_open_cursor`).
    last_open: Mutex<u64>,
    /// Connected once and the schema brought up to date (see [`Inner::ready`]).
    ready: tokio::sync::OnceCell<()>,
    /// The newest open id sent to the live feed: opens go there in id order, each once,
    /// whichever node committed them.
    fed: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("node", &self.inner.node)
            .finish()
    }
}

impl PgStore {
    /// Connects, brings the schema up to date (or refuses a newer one) and, when called
    /// inside a tokio runtime with `retention_days > 0`, starts the retention task.
    pub fn open(cfg: &StoreConfig, pg: &PostgresConfig) -> Result<PgStore, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pixelrelay-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let password = match &pg.password_file {
            Some(f) => Some(
                crate::secret::read(f)
                    .map_err(|e| StoreError::Engine(format!("store.password_file: {e}")))
                    .and_then(|b| {
                        String::from_utf8(b).map_err(|_| {
                            StoreError::Engine("store.password_file: not UTF-8".into())
                        })
                    })?,
            ),
            None => std::env::var("PIXELRELAY_PG_PASSWORD").ok(),
        };
        let mut node_file = cfg.path.clone().into_os_string();
        node_file.push(".node");
        let node = crate::secret::read_or_create(std::path::Path::new(&node_file), || {
            crate::secret::random_hex(8)
        })
        .map_err(|e| StoreError::Engine(format!("node id: {e}")))?;
        let node = String::from_utf8_lossy(&node).into_owned();
        let open_log = match &cfg.open_log {
            Some(p) => Some(OpenLog::open(p).map_err(StoreError::Io)?),
            None => None,
        };
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            pg: pg.clone(),
            node,
            password,
            conns: (0..CONNECTIONS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            feed: broadcast::channel(FEED_CAPACITY).0,
            outbox_watch: tokio::sync::watch::Sender::new(OutboxVersion::default()),
            hooks: RwLock::new(Vec::new()),
            open_log,
            counters: Mutex::new(Counters::default()),
            last_open: Mutex::new(0),
            fed: tokio::sync::Mutex::new(0),
            ready: tokio::sync::OnceCell::new(),
        });
        let store = PgStore {
            inner,
            rt: Some(rt),
        };
        // A database away at start is not fatal: the relay relays and the pixel answers (both
        // journal locally), and the store connects, migrates and catches up when it is back.
        if let Err(e) = store.call(|i| async move { i.ready().await }) {
            tracing::warn!(error = %e, event = "store_unreachable", "store: the database cannot be reached now; retrying on every use");
        }
        if cfg.retention_days > 0 && tokio::runtime::Handle::try_current().is_ok() {
            store.spawn_retention();
        }
        store.spawn_feed();
        Ok(store)
    }

    /// Feeds live followers the opens other nodes commit: while anyone follows, looks for
    /// them every [`FEED_POLL`] (this node's own commits feed theirs at once).
    fn spawn_feed(&self) {
        let Some(rt) = &self.rt else { return };
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                if inner.feed.receiver_count() > 0
                    && let Err(e) = inner.feed_through(None).await
                {
                    tracing::debug!(error = %e, "live feed poll failed");
                }
                drop(inner);
                tokio::time::sleep(FEED_POLL).await;
            }
        });
    }

    /// Runs `f` on the store's runtime and waits for it, from any thread.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(rt) = &self.rt else {
            return Err(StoreError::Task("the store is closed".into()));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(Arc::clone(&self.inner));
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Task("the database task ended".into()))?
    }

    /// Purges at start and hourly, until the store is dropped.
    fn spawn_retention(&self) {
        let Some(rt) = &self.rt else { return };
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let days = u64::from(inner.cfg.retention_days);
                let cutoff = crate::clock::now_ms().saturating_sub(days * 86_400_000);
                match inner.purge(cutoff).await {
                    Ok(r) if r.messages + r.opens > 0 => {
                        tracing::info!(
                            messages = r.messages,
                            opens = r.opens,
                            days,
                            "retention purge"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention purge failed"),
                }
            }
        });
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Not from inside the runtime's own context: shut it down without waiting.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A pooled connection and when it was last taken.
struct Pooled {
    client: Client,
    used: std::time::Instant,
}

/// A connection idle longer than this is checked with a round trip before it is used.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection taken from the pool for one operation.
pub(crate) type Conn<'a> = tokio::sync::MappedMutexGuard<'a, Client>;

impl Inner {
    /// Sends the live feed every open committed after the last one it got, up to `upto`
    /// (all when `None`), in id order. Ids are committed in order on every node, so what a
    /// read sees is a prefix: nothing is skipped or sent twice.
    async fn feed_through(&self, upto: Option<u64>) -> Result<(), StoreError> {
        let mut fed = self.fed.lock().await;
        loop {
            if upto.is_some_and(|u| *fed >= u) {
                return Ok(());
            }
            let events = self.opens_after_id(*fed, upto, FEED_BATCH).await?;
            let full = events.len() == FEED_BATCH;
            for ev in events {
                *fed = super::shared::parse_id(&ev.id).unwrap_or(*fed);
                let _ = self.feed.send(ev);
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// A connection for an operation: the first use also migrates the schema and loads the
    /// node's mirrors ([`Inner::start`]), and tries again on the next use if that failed.
    async fn conn(&self) -> Result<Conn<'_>, StoreError> {
        self.ready().await?;
        self.raw_conn().await
    }

    /// Connected and migrated, once.
    async fn ready(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| self.start())
            .await
            .map(|_| ())
    }

    /// A connection, made (again) if it was never made or was lost.
    async fn raw_conn(&self) -> Result<Conn<'_>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let mut slot = self.conns[i].lock().await;
        let alive = match slot.as_ref() {
            None => false,
            Some(p) if p.client.is_closed() => false,
            // Idle a while: the server may have restarted under it. A round trip tells.
            Some(p) if p.used.elapsed() > IDLE_CHECK => p.client.simple_query("").await.is_ok(),
            Some(_) => true,
        };
        if !alive {
            *slot = Some(Pooled {
                client: self.connect().await?,
                used: std::time::Instant::now(),
            });
        }
        tokio::sync::MutexGuard::try_map(slot, |s| {
            s.as_mut().map(|p| {
                p.used = std::time::Instant::now();
                &mut p.client
            })
        })
        .map_err(|_| StoreError::Engine("no connection".into()))
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let mut config: tokio_postgres::Config = self
            .pg
            .url
            .parse()
            .map_err(|e| StoreError::Engine(format!("store.url: {e}")))?;
        if let Some(p) = &self.password {
            config.password(p);
        }
        config.application_name("pixelrelay");
        let unreachable = |e: tokio_postgres::Error| {
            StoreError::Engine(format!("cannot reach the database: {}", describe(&e)))
        };
        // TLS when the URL asks for it (`sslmode=require`), verified against the public roots
        // and `store.ca_file`; otherwise none (libpq's "prefer" would take any certificate).
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(&self.pg)?);
            let (client, conn) = config.connect(tls).await.map_err(unreachable)?;
            tokio::spawn(watch_connection(conn));
            return Ok(client);
        }
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, conn) = config.connect(NoTls).await.map_err(unreachable)?;
        tokio::spawn(watch_connection(conn));
        Ok(client)
    }

    /// The schema, then what this node mirrors in memory.
    async fn start(&self) -> Result<(), StoreError> {
        let mut c = self.raw_conn().await?;
        schema::migrate(&mut c)
            .await
            .map_err(|e| StoreError::Engine(e.to_string()))?;
        drop(c);
        let (counters, last_open, last_event) = {
            let c = self.raw_conn().await?;
            write::read_state(&*c).await?
        };
        *lock(&self.counters) = counters;
        *lock(&self.last_open) = last_open;
        *self.fed.lock().await = last_open;
        self.outbox_watch.send_modify(|v| v.last_seq = last_event);
        Ok(())
    }
}

/// Drives a connection until it ends, and says why it did.
async fn watch_connection<F>(conn: F)
where
    F: Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = conn.await {
        tracing::warn!(error = %describe(&e), "database connection lost");
    }
}

/// The rustls client configuration for the database: public roots plus `store.ca_file`.
fn tls_config(pg: &PostgresConfig) -> Result<rustls::ClientConfig, StoreError> {
    let bad = |e: String| StoreError::Engine(format!("store.ca_file: {e}"));
    let roots = crate::tls::trusted_roots(pg.ca_file.as_deref(), "store.ca_file")
        .map_err(StoreError::Engine)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The 8 bytes an endpoint id is stored as (big-endian: sorts as the unsigned id).
fn endpoint_key(endpoint: u64) -> Vec<u8> {
    endpoint.to_be_bytes().to_vec()
}

fn endpoint_of(b: &[u8]) -> Result<u64, StoreError> {
    let a: [u8; 8] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt("outbox endpoint"))?;
    Ok(u64::from_be_bytes(a))
}

/// A u64 as PostgreSQL's signed bigint (ids and times stay below 2^63).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A bigint read back as u64 (negative never written: 0).
fn unbig(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
