//! Where the stages meet: the SMTP session's backend.
//!
//! MAIL takes an upstream connection (pooled); MAIL, RCPT and DATA are relayed as the session
//! hands them over, a pipelined group in one write when the upstream offers PIPELINING, and
//! the client gets the upstream's own reply to each, so per-recipient acceptance is exact and
//! the 354 is the upstream's. After the message the content goes through `rewrite` (pixel or
//! not), the decision is recorded, the message goes upstream, and the client gets the
//! upstream's final reply, never a 250 the upstream did not give. Any failure to reach or hear
//! the upstream is a 4xx to the client.
//!
//! A failure of the tracking side (rewriter, store) never blocks a message: it goes out
//! unmodified and the reason is logged.

use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{info, warn};

use crate::budget::Reservation;
use crate::capture::Capture;
use crate::clock;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::rewrite::{self, Decision, MessageInfo, Policy, SkipReason};
use crate::smtp::reply::{self, Reply};
use crate::smtp::{Backend, BackendFactory, Envelope, Transaction};
use crate::store::{Delivery, MessageRecord};
use crate::token::{MessageId, Purpose, TokenKey};
use crate::upstream::{Connection, Upstream, UpstreamError};

mod wire;
use wire::{begin, lines, stage};

/// Messages larger than this are rewritten on a blocking thread, not on the reactor.
const BLOCKING_REWRITE: usize = 1 << 20;

/// Where accepted mail goes.
pub enum Target {
    /// A real smarthost.
    Smtp(Arc<Upstream>),
    /// Try-it mode: a folder.
    Capture(Arc<Capture>),
    /// No upstream: the node takes no SMTP (no listener reaches this; a session would get a
    /// 451).
    Off,
}

/// The tracking set-up: policy, key, URL. Cloned for the milter front end.
#[derive(Clone)]
pub struct Tracking {
    /// Rewrite rules.
    pub policy: Policy,
    /// Token key.
    pub key: TokenKey,
    /// `tracking.base_url`.
    pub base_url: String,
    /// With `tracking.clicks`: the URL patterns left alone (`tracking.click_exclude`); `None`
    /// rewrites no link.
    pub click_exclude: Option<Vec<String>>,
}

impl Tracking {
    /// The rewrite of `content` for message `id`: the pixel at `pixel_url` and, with clicks
    /// on, the part's links as `{base_url}/c/{token}`.
    fn rewrite(
        &self,
        env: &rewrite::Envelope<'_>,
        content: &[u8],
        pixel_url: &str,
        id: &MessageId,
    ) -> rewrite::Rewritten {
        let Some(exclude) = &self.click_exclude else {
            return rewrite::rewrite(env, content, pixel_url, &self.policy);
        };
        let own_prefix = format!("{}/c/", self.base_url);
        let url = |link: u16, url: &str| self.key.mint_click_url(&own_prefix, id, link, url);
        let links = rewrite::Links {
            exclude,
            own_prefix: &own_prefix,
            url: &url,
        };
        rewrite::rewrite_with_links(env, content, pixel_url, Some(&links), &self.policy)
    }

    /// [`Tracking::rewrite`] with the pixel URL of message `id` minted: what the milter runs.
    pub fn rewrite_message(
        &self,
        env: &rewrite::Envelope<'_>,
        content: &[u8],
        id: &MessageId,
    ) -> rewrite::Rewritten {
        let url = format!(
            "{}/o/{}.gif",
            self.base_url,
            self.key.mint(Purpose::Open, id)
        );
        self.rewrite(env, content, &url, id)
    }
}

/// Where relayed messages are recorded: the store's journal. Both calls return once the
/// entry is in the kernel (one `write`, no fsync), so a `kill -9` after them loses nothing; the
/// store's indexer moves it into the database behind.
pub trait Recorder: Send + Sync + 'static {
    /// Called before the message goes upstream. An error means "forward untracked".
    fn record(&self, rec: &MessageRecord) -> Result<(), String>;
    /// Called with the upstream's final reply, before the client hears it.
    fn finish(&self, id: &MessageId, delivery: &Delivery) -> Result<(), String>;
    /// [`Recorder::record`] and [`Recorder::finish`] at once, when the reply is known with the
    /// record (the milter's messages): both recorded, or an error.
    fn record_finished(&self, rec: &MessageRecord, delivery: &Delivery) -> Result<(), String> {
        self.record(rec)?;
        self.finish(&rec.id, delivery)
    }
}

impl Recorder for Ingest {
    fn record(&self, rec: &MessageRecord) -> Result<(), String> {
        self.journal_message(rec).map_err(|e| e.to_string())
    }

    fn finish(&self, id: &MessageId, delivery: &Delivery) -> Result<(), String> {
        self.journal_finish(id, delivery).map_err(|e| e.to_string())
    }

    fn record_finished(&self, rec: &MessageRecord, delivery: &Delivery) -> Result<(), String> {
        self.journal_message_finished(rec, delivery)
            .map_err(|e| e.to_string())
    }
}

/// Shared by every session.
pub struct Relay {
    /// Upstream or capture folder (one, shared by the relays a config reload makes).
    pub target: Arc<Target>,
    /// `None` when tracking is off.
    pub tracking: Option<Tracking>,
    /// `None` when nothing is recorded (tests).
    pub recorder: Option<Arc<dyn Recorder>>,
    /// `tracking.opt_out_header`: removed from every message, tracked or not.
    pub opt_out_header: String,
    /// Prometheus series (sessions, transactions, replies, decisions, latency).
    pub metrics: Arc<Metrics>,
}

/// The factory the listener uses: hands each session the relay of the moment, which a config
/// reload replaces (tracking rules); a session takes the current one again at each `MAIL`.
pub struct RelayFactory(pub Arc<ArcSwap<Relay>>);

impl BackendFactory for RelayFactory {
    type Backend = RelaySession;

    fn backend(&self, peer: SocketAddr) -> RelaySession {
        let relay = self.0.load_full();
        relay.metrics.smtp_session();
        RelaySession {
            relay: Some(relay),
            live: Arc::clone(&self.0),
            conn: None,
            peer,
            in_data: false,
            failed: None,
        }
    }
}

/// One session's view of the relay: its upstream connection and transaction.
pub struct RelaySession {
    /// The relay of this transaction.
    relay: Option<Arc<Relay>>,
    /// Where the relay of the next transaction comes from.
    live: Arc<ArcSwap<Relay>>,
    /// Upstream connection during a transaction.
    conn: Option<Connection>,
    /// Client address (logs).
    peer: SocketAddr,
    /// The upstream answered DATA with 354 and waits for the message.
    in_data: bool,
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

/// Records the upstream's final reply to message `id` (a failure is logged: the message went).
fn record_reply(rec: &dyn Recorder, id: &MessageId, queue_id: &str, r: &Reply) {
    let delivery = Delivery {
        accepted: r.is_positive(),
        reply: r.one_line(),
        at_ms: clock::now_ms(),
    };
    if let Err(e) = rec.finish(id, &delivery) {
        warn!(queue_id = %queue_id, error = %e, event = "store_error", "cannot record the upstream reply");
    }
}

impl Backend for RelaySession {
    fn working_room(&self, recipients: usize, size: usize) -> usize {
        match self.relay().as_ref().and_then(|r| r.tracking.as_ref()) {
            // The rewrite's copy: twice the message at most, four times with click tracking
            // (`tests/rewrite_memory.rs` measures both).
            Some(t) if recipients == 1 && size as u64 <= t.policy.max_rewrite_size => {
                size.saturating_mul(if t.click_exclude.is_some() { 4 } else { 2 })
            }
            _ => 0,
        }
    }

    async fn envelope(&mut self, cmds: &[Envelope]) -> Vec<Reply> {
        if matches!(cmds.first(), Some(Envelope::Mail { .. })) {
            // A new transaction: the rules of the moment.
            self.relay = Some(self.live.load_full());
        }
        let Some(relay) = self.relay() else {
            return vec![reply::local_error(); cmds.len()];
        };
        match &*relay.target {
            Target::Capture(_) => cmds
                .iter()
                .map(|c| match c {
                    Envelope::Mail { .. } => reply::sender_ok(),
                    Envelope::Rcpt(_) => reply::rcpt_ok(),
                    Envelope::Data => reply::start_data(),
                })
                .collect(),
            Target::Smtp(up) => self.relay_envelope(&relay, up, cmds).await,
            Target::Off => vec![reply::local_error(); cmds.len()],
        }
    }

    async fn data(&mut self, mut txn: Transaction) -> Reply {
        if let Some(r) = self.failed.take() {
            self.reset().await;
            return r;
        }
        let Some(relay) = self.relay() else {
            return reply::local_error();
        };
        let received_at = clock::now_ms();
        let data_started = std::time::Instant::now();
        let id = MessageId::random();
        let content = std::mem::take(&mut txn.content);
        let (mail, recipients) = (&txn.mail, &txn.recipients);
        let tracked = track(
            &relay,
            &mail.address,
            recipients,
            content,
            &id,
            &mut txn.reserved,
        );
        let (original, rewritten, decision, info) = match tracked.await {
            Ok(t) => t,
            Err(r) => {
                self.reset().await;
                return r;
            }
        };
        let record = MessageRecord {
            id,
            queue_id: txn.queue_id.clone(),
            at_ms: received_at,
            sender: mail.address.clone(),
            recipients: recipients.clone(),
            message_id: info.message_id,
            subject: info.subject,
            size: rewritten.as_ref().unwrap_or(&original).len() as u64,
            tracked: decision == Decision::Tracked,
            skip_reason: match decision {
                Decision::Tracked => None,
                Decision::Skipped(r) => Some(r.as_str().to_string()),
            },
        };
        let (recorder, decision) = record_first(&relay, &record, decision);
        let changed = rewritten.is_some() && decision != Decision::Skipped(SkipReason::Store);
        let content = match (decision, rewritten) {
            (Decision::Skipped(SkipReason::Store), _) | (_, None) => original,
            (_, Some(new)) => new,
        };
        let r = self.forward(&relay, &txn.queue_id, &content).await;
        self.failed = None;
        self.in_data = false;
        if let Some(rec) = recorder {
            record_reply(rec.as_ref(), &id, &txn.queue_id, &r);
        }
        let tracking = match decision {
            Decision::Tracked => "tracked",
            Decision::Skipped(reason) => reason.as_str(),
        };
        info!(
            queue_id = %txn.queue_id,
            msg = %id,
            message_id = record.message_id.as_deref().unwrap_or("-"),
            client = %txn.peer,
            from = %mail.address,
            rcpts = %recipients.join(","),
            size = content.len(),
            tracking,
            changed,
            reply = %r.one_line(),
            duration_ms = txn.started.elapsed().as_millis() as u64,
            "relayed"
        );
        let took = data_started.elapsed();
        (relay.metrics).transaction(tracking, r.code, content.len(), took);
        r
    }

    async fn reset(&mut self) {
        self.failed = None;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // After a 354 the upstream reads everything as the message: the connection cannot
        // be reset, only closed (dropping it is closing it).
        if std::mem::take(&mut self.in_data) {
            return;
        }
        let Some(relay) = self.relay() else { return };
        if let Target::Smtp(up) = &*relay.target
            && let Ok(r) = conn.command("RSET", "RSET").await
            && r.is_positive()
        {
            up.give_back(conn);
        }
    }
}

impl RelaySession {
    /// Sends the message on the connection waiting in DATA (or to the capture folder) and
    /// returns the reply the client gets.
    async fn forward(&mut self, relay: &Relay, queue_id: &str, content: &[u8]) -> Reply {
        match &*relay.target {
            Target::Capture(cap) => cap.deliver(queue_id, content).await,
            Target::Off => reply::local_error(),
            Target::Smtp(up) => match self.conn.take() {
                None => reply::upstream_unavailable(),
                Some(mut conn) => match conn.send_body(content).await {
                    Ok(r) => {
                        relay.metrics.upstream_reply("data", r.code);
                        up.give_back(conn);
                        r
                    }
                    Err(e) => self.upstream_failed("DATA", &e),
                },
            },
        }
    }

    /// Relays a group of commands on the transaction's connection (a pooled one for MAIL),
    /// pipelined when the upstream offers PIPELINING.
    async fn relay_envelope(
        &mut self,
        relay: &Relay,
        up: &Upstream,
        cmds: &[Envelope],
    ) -> Vec<Reply> {
        let opens = matches!(cmds.first(), Some(Envelope::Mail { .. }));
        if opens {
            self.failed = None;
            // A connection still held is clean unless it waits in DATA (then it is closed).
            if let Some(conn) = self.conn.take()
                && !std::mem::take(&mut self.in_data)
            {
                up.give_back(conn);
            }
        }
        if let Some(r) = &self.failed {
            return vec![r.clone(); cmds.len()];
        }
        let conn = match (opens, self.conn.take()) {
            (true, _) => begin(up, cmds, self.peer).await,
            (false, Some(mut conn)) => {
                let r = conn.exchange(&lines(cmds, &conn)).await;
                Ok((conn, r))
            }
            (false, None) => return vec![reply::upstream_unavailable(); cmds.len()],
        };
        let (conn, result) = match conn {
            Ok(c) => c,
            Err(e) => {
                warn!(client = %self.peer, error = %e, event = "upstream_error", "upstream unavailable at MAIL");
                return vec![client_reply(&e); cmds.len()];
            }
        };
        let mut replies = match result {
            Ok(replies) => replies,
            Err((mut got, e)) => {
                let stage = stage(cmds.get(got.len()));
                let r = self.upstream_failed(stage, &e);
                got.resize(cmds.len(), r);
                return got;
            }
        };
        for (cmd, r) in cmds.iter().zip(&replies) {
            // `data` counts the upstream's last word on a message: a refused DATA, or the
            // reply to the message (the 354 in between is not an outcome).
            match cmd {
                Envelope::Mail { .. } => relay.metrics.upstream_reply("mail", r.code),
                Envelope::Rcpt(_) => relay.metrics.upstream_reply("rcpt", r.code),
                Envelope::Data if r.code != 354 => relay.metrics.upstream_reply("data", r.code),
                Envelope::Data => {}
            }
        }
        let refused = opens && replies.first().is_some_and(|r| !r.is_positive());
        let closing = replies.last().is_some_and(|r| r.code == 421);
        // A 421 or a refused MAIL ends the group early (the rest were not sent, or the
        // upstream is closing): the remaining commands share that fate.
        if let Some(last) = replies.last().cloned()
            && replies.len() < cmds.len()
        {
            replies.resize(cmds.len(), last);
        }
        if closing {
            self.failed = Some(reply::upstream_unavailable());
            drop(conn);
        } else if refused && replies.iter().any(|r| r.code == 354) {
            // An upstream that took DATA without a sender waits for a message: not reusable.
            drop(conn);
        } else if refused {
            // No transaction is open upstream: the connection is clean for the next one.
            up.give_back(conn);
        } else {
            self.in_data = matches!(cmds.last(), Some(Envelope::Data))
                && replies.last().is_some_and(|r| r.code == 354);
            self.conn = Some(conn);
        }
        replies
    }
}

/// Records the message before it is relayed, so that a pixel loaded a moment after delivery
/// finds its message and a crash cannot lose the record of a message the upstream may have.
/// If the store cannot take it, the message goes out as it came, unrecorded: the recorder to
/// finish with (none then) and the decision that holds.
fn record_first<'r>(
    relay: &'r Relay,
    record: &MessageRecord,
    decision: Decision,
) -> (Option<&'r Arc<dyn Recorder>>, Decision) {
    let Some(rec) = &relay.recorder else {
        return (None, decision);
    };
    match rec.record(record) {
        Ok(()) => (Some(rec), decision),
        Err(e) => {
            warn!(queue_id = %record.queue_id, error = %e, event = "store_error", "store failed; forwarding untracked");
            match decision {
                Decision::Tracked => (None, Decision::Skipped(SkipReason::Store)),
                d => (None, d),
            }
        }
    }
}

/// Original and rewritten bytes, the decision, and the header facts.
type Tracked = (Vec<u8>, Option<Vec<u8>>, Decision, MessageInfo);

/// Runs the rewriter (on a blocking thread for large messages), once the memory its copy
/// takes is `reserved`: twice the message covers the rewrite's peak (`tests/rewrite_memory.rs`).
/// Without room for that the message goes as it is (skip reason `memory`); `Err` (452 4.3.1)
/// only when there is not even room to take our opt-out header out of it.
async fn track(
    relay: &Arc<Relay>,
    sender: &str,
    recipients: &[String],
    content: Vec<u8>,
    id: &MessageId,
    reserved: &mut Reservation,
) -> Result<Tracked, Reply> {
    let Some(t) = &relay.tracking else {
        // Tracking off: still never forward our own control header.
        return untracked(relay, content, SkipReason::Disabled, reserved);
    };
    let may_rewrite = recipients.len() == 1 && content.len() as u64 <= t.policy.max_rewrite_size;
    // Held: the message's buffer; needed besides: the rewrite's peak, twice the message (the
    // session reserved it at DATA when the client declared the size).
    let held = content.capacity();
    let room =
        may_rewrite && reserved.grow_to(held.saturating_add(content.len().saturating_mul(2)));
    if may_rewrite && !room && rewrite::may_copy_body(&content) {
        warn!(
            size = content.len(),
            event = "insufficient_storage",
            "no memory to rewrite now; forwarding without a pixel"
        );
        reserved.budget().count_refusal();
        return untracked(relay, content, SkipReason::Memory, reserved);
    }
    // A message that gets no pixel is only read: the copy that drops our opt-out header is
    // all it may need room for.
    if !room
        && rewrite::has_header(&content, &relay.opt_out_header)
        && !reserved.grow_to(held.saturating_add(content.len()))
    {
        reserved.budget().count_refusal();
        return Err(reply::insufficient_storage());
    }
    Ok(rewrite_now(relay, t, sender, recipients, content, id).await)
}

/// `content` as it goes without a pixel: without our opt-out header, whose removal is a copy
/// the budget must have room for.
fn untracked(
    relay: &Relay,
    content: Vec<u8>,
    why: SkipReason,
    reserved: &mut Reservation,
) -> Result<Tracked, Reply> {
    if rewrite::has_header(&content, &relay.opt_out_header)
        && !reserved.grow_to(content.capacity().saturating_add(content.len()))
    {
        reserved.budget().count_refusal();
        return Err(reply::insufficient_storage());
    }
    let stripped = rewrite::strip_opt_out(&content, &relay.opt_out_header);
    Ok((
        content,
        stripped,
        Decision::Skipped(why),
        MessageInfo::default(),
    ))
}

/// The rewrite proper.
async fn rewrite_now(
    relay: &Arc<Relay>,
    t: &Tracking,
    sender: &str,
    recipients: &[String],
    content: Vec<u8>,
    id: &MessageId,
) -> Tracked {
    let url = format!("{}/o/{}.gif", t.base_url, t.key.mint(Purpose::Open, id));
    if content.len() < BLOCKING_REWRITE {
        let env = rewrite::Envelope { sender, recipients };
        let out = t.rewrite(&env, &content, &url, id);
        return (content, out.message, out.decision, out.info);
    }
    // The blocking task shares the bytes, so a panic in the rewriter cannot take them along.
    let shared = Arc::new(content);
    let (relay, bytes) = (Arc::clone(relay), Arc::clone(&shared));
    let (sender, recipients) = (sender.to_string(), recipients.to_vec());
    let id = *id;
    let job = tokio::task::spawn_blocking(move || {
        let env = rewrite::Envelope {
            sender: &sender,
            recipients: &recipients,
        };
        relay
            .tracking
            .as_ref()
            .map(|t| t.rewrite(&env, &bytes, &url, &id))
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
