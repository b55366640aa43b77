//! One milter connection: the message as the MTA hands it over, stage by stage, and what
//! pixelrelay answers at its end.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use miltr_common::actions::{Action, Continue};
use miltr_common::commands::{Body, Header, Macro, Mail, Recipient};
use miltr_common::modifications::ModificationResponse;
use miltr_common::modifications::body::ReplaceBody;
use miltr_common::modifications::headers::ChangeHeader;
use miltr_common::optneg::{Capability, OptNeg};
use tracing::{info, warn};

use super::MilterFront;
use crate::budget::Reservation;
use crate::clock;
use crate::rewrite::{Decision, Envelope, MessageInfo, SkipReason};
use crate::store::{Delivery, MessageRecord};
use crate::token::MessageId;

/// Messages larger than this are rewritten on a blocking thread, not on the reactor.
const BLOCKING_REWRITE: usize = 1 << 20;

/// Body bytes per replacement packet (the milter protocol's packets are under 64 KiB).
const REPLACE_CHUNK: usize = 65_000;

/// The state of one milter connection: the message under way.
pub(super) struct Conn {
    /// The rules of this message.
    front: Arc<MilterFront>,
    /// Where the rules of the next message come from (a config reload replaces them).
    live: Arc<ArcSwap<MilterFront>>,
    /// The MTA's queue id (`i` macro), once sent.
    queue_id: Option<String>,
    sender: String,
    rcpts: Vec<String>,
    /// Header fields in order, as the MTA sent them.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Why the message is no longer buffered (over `max_size`, or no room in the memory
    /// budget): it goes unchanged.
    unbuffered: Option<SkipReason>,
    size: usize,
    /// What the buffered message holds of `smtp.max_inflight_bytes`.
    reserved: Option<Reservation>,
    /// Opt-out header fields seen (each is removed, buffered or not).
    opt_outs: u32,
    /// Between MAIL and the end of the message (or an abort).
    in_message: bool,
}

impl Conn {
    pub(super) fn new(live: Arc<ArcSwap<MilterFront>>) -> Conn {
        Conn {
            front: live.load_full(),
            live,
            queue_id: None,
            sender: String::new(),
            rcpts: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
            unbuffered: None,
            size: 0,
            reserved: None,
            opt_outs: 0,
            in_message: false,
        }
    }

    /// Forgets the message (a new MAIL, the end of one, an abort).
    fn reset(&mut self) {
        self.in_message = false;
        self.rcpts.clear();
        self.headers = Vec::new();
        self.body = Vec::new();
        self.unbuffered = None;
        self.size = 0;
        self.reserved = None;
        self.opt_outs = 0;
    }

    /// No message under way: between messages, or before the first.
    pub(super) fn idle(&self) -> bool {
        !self.in_message
    }

    /// Counts `n` more bytes of the message and reserves them; past `max_size`, or when the
    /// memory budget has no room, it is no longer kept (and goes unchanged).
    fn grow(&mut self, n: usize) -> bool {
        self.size = self.size.saturating_add(n);
        if self.unbuffered.is_none() {
            if self.size > self.front.max_size {
                self.unbuffered = Some(SkipReason::TooLarge);
            } else if !self.reserve(self.size) {
                self.unbuffered = Some(SkipReason::Memory);
            }
            if self.unbuffered.is_some() {
                self.headers = Vec::new();
                self.body = Vec::new();
                self.reserved = None;
            }
        }
        self.unbuffered.is_none()
    }

    /// Holds `total` bytes of the budget for this message, if they fit (counted as a refusal
    /// when they do not).
    fn reserve(&mut self, total: usize) -> bool {
        let Some(budget) = &self.front.budget else {
            return true;
        };
        let ok = match &mut self.reserved {
            Some(r) => r.grow_to(total),
            None => budget
                .try_reserve(total)
                .map(|r| self.reserved = Some(r))
                .is_some(),
        };
        if !ok {
            budget.count_refusal();
            warn!(
                size = total,
                event = "insufficient_storage",
                "no memory to rewrite now; the milter lets the message through unchanged"
            );
        }
        ok
    }

    /// The message put back together: the header fields (CRLF, folded lines as sent) and the
    /// body.
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.size + 4 * self.headers.len() + 2);
        for (name, value) in &self.headers {
            m.extend_from_slice(name.as_bytes());
            m.push(b':');
            if !value.starts_with([' ', '\t']) {
                m.push(b' ');
            }
            let mut prev = 0u8;
            for &b in value.as_bytes() {
                if b == b'\n' && prev != b'\r' {
                    m.push(b'\r');
                }
                m.push(b);
                prev = b;
            }
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(b"\r\n");
        m.extend_from_slice(&self.body);
        m
    }

    /// The decision, rewrite and record at the end of a message; what the MTA is told.
    async fn finish(&mut self) -> ModificationResponse {
        let started = std::time::Instant::now();
        let front = Arc::clone(&self.front);
        let id = MessageId::random();
        let queue_id = self
            .queue_id
            .clone()
            .unwrap_or_else(crate::smtp::new_queue_id);
        let mut mods = ModificationResponse::builder();
        // The opt-out header goes whatever the decision, as in relay mode (an empty value
        // deletes the n-th field of that name; the last first, so that no deletion renumbers
        // the ones still to come).
        for nth in (1..=self.opt_outs).rev() {
            mods.push(ChangeHeader::new(nth, front.opt_out_header.as_bytes(), b""));
        }
        // The rewrite's copies besides the buffered message: the message put back together,
        // then twice it (four times with click tracking), as in relay mode.
        let factor = match &front.tracking {
            Some(t) if t.click_exclude.is_some() => 5,
            _ => 3,
        };
        if self.unbuffered.is_none()
            && front.tracking.is_some()
            && self.rcpts.len() == 1
            && !self.reserve(self.size.saturating_mul(factor))
        {
            self.unbuffered = Some(SkipReason::Memory);
        }
        let (decision, info, new_body) = match self.unbuffered {
            Some(why) => (Decision::Skipped(why), MessageInfo::default(), None),
            None => self.rewrite(&id).await,
        };
        let record = MessageRecord {
            id,
            queue_id: queue_id.clone(),
            at_ms: clock::now_ms(),
            sender: self.sender.clone(),
            recipients: self.rcpts.clone(),
            message_id: info.message_id,
            subject: info.subject,
            size: self.size as u64,
            tracked: decision == Decision::Tracked,
            skip_reason: match decision {
                Decision::Tracked => None,
                Decision::Skipped(r) => Some(r.as_str().to_string()),
            },
        };
        let recorded = front.recorder.as_ref().is_none_or(|rec| {
            let done = Delivery {
                accepted: true,
                reply: "250 handed to the MTA (milter)".into(),
                at_ms: record.at_ms,
            };
            match rec.record_finished(&record, &done) {
                Ok(()) => true,
                Err(e) => {
                    warn!(queue_id = %queue_id, error = %e, event = "store_error", "store failed; message accepted unchanged");
                    false
                }
            }
        });
        let tracked = recorded && new_body.is_some();
        if let Some(body) = new_body.filter(|_| recorded) {
            for chunk in body.chunks(REPLACE_CHUNK) {
                mods.push(ReplaceBody::new(chunk));
            }
        }
        info!(
            queue_id = %queue_id,
            msg = %id,
            message_id = record.message_id.as_deref().unwrap_or("-"),
            rcpts = self.rcpts.len(),
            size = self.size,
            tracked,
            reason = record.skip_reason.as_deref().unwrap_or("-"),
            "milter"
        );
        if let Some(m) = &front.metrics {
            let decision = match (recorded, tracked) {
                (false, _) => "store_error",
                (true, true) => "tracked",
                (true, false) => record.skip_reason.as_deref().unwrap_or("unchanged"),
            };
            m.milter.message(decision, started.elapsed());
        }
        mods.contin()
    }

    /// The rewrite of the message (on a blocking thread when large): the decision, the header
    /// facts and, when tracked, the new body.
    async fn rewrite(&mut self, id: &MessageId) -> (Decision, MessageInfo, Option<Vec<u8>>) {
        let Some(_) = &self.front.tracking else {
            return (
                Decision::Skipped(SkipReason::Disabled),
                MessageInfo::default(),
                None,
            );
        };
        let content = self.message();
        self.body = Vec::new();
        let (front, sender, rcpts, id) = (
            Arc::clone(&self.front),
            self.sender.clone(),
            self.rcpts.clone(),
            *id,
        );
        let run = move || {
            let t = front.tracking.as_ref()?;
            let env = Envelope {
                sender: &sender,
                recipients: &rcpts,
            };
            let r = t.rewrite_message(&env, &content, &id);
            // The new body is what follows the header block: moved down in place, not copied.
            let body = r.message.and_then(|mut m| {
                let at = memchr::memmem::find(&m, b"\r\n\r\n")?;
                m.drain(..at + 4);
                Some(m)
            });
            Some((r.decision, r.info, body))
        };
        let out = if self.size < BLOCKING_REWRITE {
            Ok(run())
        } else {
            tokio::task::spawn_blocking(run).await
        };
        match out {
            Ok(Some((d, info, body))) => (d, info, body.filter(|_| d == Decision::Tracked)),
            Ok(None) => (
                Decision::Skipped(SkipReason::Disabled),
                MessageInfo::default(),
                None,
            ),
            Err(e) => {
                warn!(error = %e, event = "rewrite_panic", "rewriter failed; message accepted unchanged");
                (
                    Decision::Skipped(SkipReason::Unparseable),
                    MessageInfo::default(),
                    None,
                )
            }
        }
    }
}

/// An address as the MTA sends it, without angle brackets.
fn bare(a: &str) -> String {
    a.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

#[async_trait]
impl miltr_server::Milter for Conn {
    type Error = std::convert::Infallible;

    async fn option_negotiation(
        &mut self,
        theirs: OptNeg,
    ) -> Result<OptNeg, miltr_server::Error<Self::Error>> {
        // Only what a rewrite needs: the body replaced, a header field removed.
        let ours = OptNeg {
            capabilities: Capability::SMFIF_CHGBODY | Capability::SMFIF_CHGHDRS,
            ..OptNeg::default()
        };
        Ok(ours
            .merge_compatible(&theirs)
            .map_err(miltr_common::ProtocolError::CompatibilityError)?)
    }

    async fn macro_(&mut self, m: Macro) -> Result<(), Self::Error> {
        for (k, v) in m.macros() {
            if k == b"i" && !v.is_empty() {
                self.queue_id = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
        Ok(())
    }

    async fn mail(&mut self, mail: Mail) -> Result<Action, Self::Error> {
        self.reset();
        self.front = self.live.load_full();
        self.queue_id = None;
        self.sender = bare(&mail.sender());
        self.in_message = true;
        Ok(Continue.into())
    }

    async fn rcpt(&mut self, rcpt: Recipient) -> Result<Action, Self::Error> {
        self.rcpts.push(bare(&rcpt.recipient()));
        Ok(Continue.into())
    }

    async fn header(&mut self, h: Header) -> Result<Action, Self::Error> {
        let (name, value) = (h.name().into_owned(), h.value().into_owned());
        // Counted even past the limit: the opt-out header must still go.
        if name.eq_ignore_ascii_case(&self.front.opt_out_header) {
            self.opt_outs += 1;
        }
        if self.grow(name.len() + value.len() + 4) {
            self.headers.push((name, value));
        }
        Ok(Continue.into())
    }

    async fn body(&mut self, b: Body) -> Result<Action, Self::Error> {
        let chunk = b.as_bytes();
        if self.grow(chunk.len()) {
            self.body.extend_from_slice(chunk);
        }
        Ok(Continue.into())
    }

    async fn end_of_body(&mut self) -> Result<ModificationResponse, Self::Error> {
        let r = self.finish().await;
        self.reset();
        Ok(r)
    }

    async fn abort(&mut self) -> Result<(), Self::Error> {
        self.reset();
        Ok(())
    }
}
