//! Where the stages meet: the SMTP session's backend.
//!
//! MAIL takes an upstream connection (pooled) and relays the command; each RCPT is relayed as
//! it comes, and the client gets the upstream's own reply, so per-recipient acceptance is exact.
//! After DATA the message goes through `rewrite` (pixel or not), the decision is recorded, the
//! message goes upstream, and the client gets the upstream's final reply, never a 250 the
//! upstream did not give. Any failure to reach or hear the upstream is a 4xx to the client.
//!
//! A failure of the tracking side (rewriter, store) never blocks a message: it goes out
//! unmodified and the reason is logged.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{info, warn};

use crate::capture::Capture;
use crate::clock;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::rewrite::{self, Decision, MessageInfo, Policy, SkipReason};
use crate::smtp::command::PathArg;
use crate::smtp::reply::{self, Reply};
use crate::smtp::{Backend, BackendFactory, Transaction};
use crate::store::{Delivery, MessageRecord};
use crate::token::{MessageId, Purpose, TokenKey};
use crate::upstream::{Connection, Upstream, UpstreamError};

/// Messages larger than this are rewritten on a blocking thread, not on the reactor.
const BLOCKING_REWRITE: usize = 1 << 20;

/// Where accepted mail goes.
pub enum Target {
    /// A real smarthost.
    Smtp(Arc<Upstream>),
    /// Try-it mode: a folder.
    Capture(Arc<Capture>),
}

/// The tracking set-up: policy, key, URL.
pub struct Tracking {
    /// Rewrite rules.
    pub policy: Policy,
    /// Token key.
    pub key: TokenKey,
    /// `tracking.base_url`.
    pub base_url: String,
}

/// Where relayed messages are recorded: the store's journal. Both calls return once the
/// entry is in the kernel (one `write`, no fsync), so a `kill -9` after them loses nothing; the
/// store's indexer moves it into the database behind.
pub trait Recorder: Send + Sync + 'static {
    /// Called before the message goes upstream. An error means "forward untracked".
    fn record(&self, rec: &MessageRecord) -> Result<(), String>;
    /// Called with the upstream's final reply, before the client hears it.
    fn finish(&self, id: &MessageId, delivery: &Delivery) -> Result<(), String>;
}

impl Recorder for Ingest {
    fn record(&self, rec: &MessageRecord) -> Result<(), String> {
        self.journal_message(rec).map_err(|e| e.to_string())
    }

    fn finish(&self, id: &MessageId, delivery: &Delivery) -> Result<(), String> {
        self.journal_finish(id, delivery).map_err(|e| e.to_string())
    }
}

/// Shared by every session.
pub struct Relay {
    /// Upstream or capture folder.
    pub target: Target,
    /// `None` when tracking is off.
    pub tracking: Option<Tracking>,
    /// `None` when nothing is recorded (tests).
    pub recorder: Option<Arc<dyn Recorder>>,
    /// `tracking.opt_out_header`: removed from every message, tracked or not.
    pub opt_out_header: String,
    /// Prometheus series (sessions, transactions, replies, decisions, latency).
    pub metrics: Arc<Metrics>,
}

/// The factory the listener uses: hands each session a clone of the shared relay.
pub struct RelayFactory(pub Arc<Relay>);

impl BackendFactory for RelayFactory {
    type Backend = RelaySession;

    fn backend(&self, peer: SocketAddr) -> RelaySession {
        self.0.metrics.smtp_session();
        RelaySession {
            relay: Some(Arc::clone(&self.0)),
            conn: None,
            peer,
            mail: None,
            failed: None,
        }
    }
}

/// One session's view of the relay: its upstream connection and transaction.
pub struct RelaySession {
    /// The shared relay.
    relay: Option<Arc<Relay>>,
    /// Upstream connection during a transaction.
    conn: Option<Connection>,
    /// Client address (logs).
    peer: SocketAddr,
    /// MAIL FROM of the open transaction.
    mail: Option<PathArg>,
    /// The upstream connection broke mid-transaction: every later step gets this reply.
    failed: Option<Reply>,
}

impl RelaySession {
    fn relay(&self) -> Option<Arc<Relay>> {
        self.relay.clone()
    }

    fn upstream_failed(&mut self, stage: &str, e: &UpstreamError) -> Reply {
        warn!(client = %self.peer, stage, error = %e, event = "upstream_error", "upstream failure");
        self.conn = None;
        let r = client_reply(e);
        self.failed = Some(r.clone());
        r
    }
}

/// What the client hears when the upstream failed: always temporary, so its queue retries
/// (the detail goes to the log, as Postfix's smtpd_proxy does).
fn client_reply(e: &UpstreamError) -> Reply {
    match e {
        UpstreamError::Timeout(_) => reply::upstream_timeout(),
        UpstreamError::Protocol(..) => reply::upstream_protocol_error(),
        _ => reply::upstream_unavailable(),
    }
}

/// `MAIL FROM:<a> params` / `RCPT TO:<a> params` with only the parameters the upstream knows.
fn path_command(verb: &str, arg: &PathArg, conn: &Connection) -> String {
    let mut line = format!("{verb}:<{}>", arg.address);
    for (k, v) in &arg.params {
        if conn.ext.allows_param(k) {
            line.push(' ');
            line.push_str(k);
            if let Some(v) = v {
                line.push('=');
                line.push_str(v);
            }
        }
    }
    line
}

impl Backend for RelaySession {
    async fn mail(&mut self, queue_id: &str, mail: &PathArg) -> Reply {
        self.failed = None;
        let Some(relay) = self.relay() else {
            return reply::local_error();
        };
        let r = match &relay.target {
            Target::Capture(_) => reply::sender_ok(),
            Target::Smtp(up) => {
                // Parameters depend on the connection's EHLO, so build the line per attempt.
                let line = |c: &Connection| path_command("MAIL FROM", mail, c);
                match begin(up, &line).await {
                    Ok((conn, r)) => {
                        relay.metrics.upstream_reply("mail", r.code);
                        if r.is_positive() {
                            self.conn = Some(conn);
                        } else {
                            up.give_back(conn);
                        }
                        r
                    }
                    Err(e) => {
                        warn!(queue_id, client = %self.peer, error = %e, event = "upstream_error", "upstream unavailable at MAIL");
                        client_reply(&e)
                    }
                }
            }
        };
        if r.is_positive() {
            self.mail = Some(mail.clone());
        }
        r
    }

    async fn rcpt(&mut self, rcpt: &PathArg) -> Reply {
        if let Some(r) = &self.failed {
            return r.clone();
        }
        let Some(relay) = self.relay() else {
            return reply::local_error();
        };
        match &relay.target {
            Target::Capture(_) => reply::rcpt_ok(),
            Target::Smtp(_) => {
                let Some(conn) = self.conn.as_mut() else {
                    return reply::upstream_unavailable();
                };
                let line = path_command("RCPT TO", rcpt, conn);
                match conn.command(&line, "RCPT TO").await {
                    Ok(r) => {
                        relay.metrics.upstream_reply("rcpt", r.code);
                        r
                    }
                    Err(e) => self.upstream_failed("RCPT TO", &e),
                }
            }
        }
    }

    async fn data(&mut self, txn: Transaction) -> Reply {
        if let Some(r) = self.failed.take() {
            self.reset().await;
            return r;
        }
        let Some(relay) = self.relay() else {
            return reply::local_error();
        };
        let Transaction {
            queue_id,
            peer,
            mail,
            recipients,
            content: original,
            started,
            ..
        } = txn;
        let received_at = clock::now_ms();
        let data_started = std::time::Instant::now();
        let id = MessageId::random();
        let (original, rewritten, decision, info) =
            track(&relay, &mail.address, &recipients, original, &id).await;
        let (tracked, skip_reason) = match decision {
            Decision::Tracked => (true, None),
            Decision::Skipped(r) => (false, Some(r.as_str().to_string())),
        };
        let record = MessageRecord {
            id,
            queue_id: queue_id.clone(),
            at_ms: received_at,
            sender: mail.address.clone(),
            recipients: recipients.clone(),
            message_id: info.message_id,
            subject: info.subject,
            size: rewritten.as_ref().unwrap_or(&original).len() as u64,
            tracked,
            skip_reason,
        };
        // Record before relaying, so that a pixel loaded a moment after delivery finds its
        // message and a crash cannot lose the record of a message the upstream may have. If
        // the store cannot take it, the message goes out as it came, unrecorded.
        let mut decision = decision;
        let recorder = match &relay.recorder {
            Some(rec) => match rec.record(&record) {
                Ok(()) => Some(rec),
                Err(e) => {
                    warn!(queue_id = %queue_id, error = %e, event = "store_error", "store failed; forwarding untracked");
                    if decision == Decision::Tracked {
                        decision = Decision::Skipped(SkipReason::Store);
                    }
                    None
                }
            },
            None => None,
        };
        let changed = rewritten.is_some() && decision != Decision::Skipped(SkipReason::Store);
        let content = match (decision, rewritten) {
            (Decision::Skipped(SkipReason::Store), _) | (_, None) => original,
            (_, Some(new)) => new,
        };
        let r = match &relay.target {
            Target::Capture(cap) => cap.deliver(&queue_id, &content).await,
            Target::Smtp(up) => match self.conn.take() {
                None => reply::upstream_unavailable(),
                Some(mut conn) => match conn.send_message(&content).await {
                    Ok(r) => {
                        relay.metrics.upstream_reply("data", r.code);
                        up.give_back(conn);
                        r
                    }
                    Err(e) => self.upstream_failed("DATA", &e),
                },
            },
        };
        self.failed = None;
        self.mail = None;
        if let Some(rec) = recorder {
            let delivery = Delivery {
                accepted: r.is_positive(),
                reply: r.one_line(),
                at_ms: clock::now_ms(),
            };
            if let Err(e) = rec.finish(&id, &delivery) {
                warn!(queue_id = %queue_id, error = %e, event = "store_error", "cannot record the upstream reply");
            }
        }
        let tracking = match decision {
            Decision::Tracked => "tracked",
            Decision::Skipped(reason) => reason.as_str(),
        };
        info!(
            queue_id = %queue_id,
            client = %peer,
            from = %mail.address,
            rcpts = %recipients.join(","),
            size = content.len(),
            tracking,
            changed,
            reply = %r.one_line(),
            duration_ms = started.elapsed().as_millis() as u64,
            "relayed"
        );
        let took = data_started.elapsed();
        relay
            .metrics
            .transaction(tracking, r.code, content.len(), took);
        r
    }

    async fn reset(&mut self) {
        self.mail = None;
        self.failed = None;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let Some(relay) = self.relay() else { return };
        if let Target::Smtp(up) = &relay.target
            && let Ok(r) = conn.command("RSET", "RSET").await
            && r.is_positive()
        {
            up.give_back(conn);
        }
    }
}

/// MAIL on a pooled connection, retried on a fresh one when the pooled one was dead
/// (nothing has been relayed on it yet, so the retry is safe).
async fn begin(
    up: &Upstream,
    line: &(dyn Fn(&Connection) -> String + Sync),
) -> Result<(Connection, Reply), UpstreamError> {
    let mut conn = up.take().await?;
    let first = conn.command(&line(&conn), "MAIL FROM").await;
    match first {
        Ok(r) if !(conn.reused && r.code == 421) => return Ok((conn, r)),
        Err(e) if !(conn.reused && e.is_connection_failure()) => return Err(e),
        _ => {}
    }
    let mut conn = up.connect().await?;
    let r = conn.command(&line(&conn), "MAIL FROM").await?;
    Ok((conn, r))
}

/// Original and rewritten bytes, the decision, and the header facts.
type Tracked = (Vec<u8>, Option<Vec<u8>>, Decision, MessageInfo);

/// Runs the rewriter (on a blocking thread for large messages).
async fn track(
    relay: &Arc<Relay>,
    sender: &str,
    recipients: &[String],
    content: Vec<u8>,
    id: &MessageId,
) -> Tracked {
    let Some(t) = &relay.tracking else {
        // Tracking off: still never forward our own control header.
        let stripped = rewrite::strip_opt_out(&content, &relay.opt_out_header);
        return (
            content,
            stripped,
            Decision::Skipped(SkipReason::Disabled),
            MessageInfo::default(),
        );
    };
    let url = format!("{}/o/{}.gif", t.base_url, t.key.mint(Purpose::Open, id));
    if content.len() < BLOCKING_REWRITE {
        let env = rewrite::Envelope { sender, recipients };
        let out = rewrite::rewrite(&env, &content, &url, &t.policy);
        return (content, out.message, out.decision, out.info);
    }
    // The blocking task shares the bytes, so a panic in the rewriter cannot take them along.
    let shared = Arc::new(content);
    let (relay, bytes) = (Arc::clone(relay), Arc::clone(&shared));
    let (sender, recipients) = (sender.to_string(), recipients.to_vec());
    let job = tokio::task::spawn_blocking(move || {
        let env = rewrite::Envelope {
            sender: &sender,
            recipients: &recipients,
        };
        relay
            .tracking
            .as_ref()
            .map(|t| rewrite::rewrite(&env, &bytes, &url, &t.policy))
    });
    let out = job.await;
    let content = Arc::try_unwrap(shared).unwrap_or_else(|a| a.as_ref().clone());
    match out {
        Ok(Some(out)) => (content, out.message, out.decision, out.info),
        Ok(None) => (
            content,
            None,
            Decision::Skipped(SkipReason::Disabled),
            MessageInfo::default(),
        ),
        Err(e) => {
            warn!(error = %e, event = "rewrite_panic", "rewriter failed; forwarding unmodified");
            (
                content,
                None,
                Decision::Skipped(SkipReason::Unparseable),
                MessageInfo::default(),
            )
        }
    }
}
