//! MAIL, RCPT and DATA: checked here, answered by the backend in groups.
//!
//! A client that pipelines (RFC 2920: Postfix sends MAIL, RCPT and DATA in one packet) has
//! its commands checked one by one as they are read; those that pass are collected into a
//! group and handed to the backend together, so the relay can pass the whole group upstream in
//! one write and wait for the upstream once instead of once per command. The group is answered
//! when DATA arrives, before any other command, and before the session waits for input;
//! replies go out in command order (a refusal given here waits behind the answers before it).
//! Until then the transaction is provisional: a MAIL the backend refuses undoes it, and only
//! the RCPTs it accepts count. A DATA the backend refuses ends the transaction.

use super::*;

/// A command the backend answers. The backend gets them in the client's order, a group at a
/// time, and answers each one.
#[derive(Debug, Clone)]
pub enum Envelope {
    /// MAIL FROM, with the session's queue id for the transaction it opens and what the
    /// client said in HELO/EHLO (name, and whether it was EHLO).
    Mail {
        queue_id: String,
        path: PathArg,
        helo: Option<(String, bool)>,
    },
    /// RCPT TO.
    Rcpt(PathArg),
    /// DATA: a 354 means the backend is ready for the message (`Backend::data` follows); any
    /// other answer goes to the client instead of the 354.
    Data,
}

/// A reply slot while a group is out: a reply given here, or the backend's next answer.
pub(super) enum Held {
    Reply(Reply),
    Answer,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    /// Has the backend answer the group collected so far and queues every held reply in order.
    /// Returns the answer to DATA when DATA ended the group.
    pub(super) async fn resolve(&mut self) -> Option<Reply> {
        if self.group.is_empty() {
            return None;
        }
        let group = std::mem::take(&mut self.group);
        let held = std::mem::take(&mut self.held);
        // Boxed, as every backend call: an idle session's task holds none of their state.
        let mut answers = Box::pin(self.backend.envelope(&group)).await.into_iter();
        let mut commands = group.into_iter();
        let mut mail_refused = false;
        let mut data = None;
        for slot in held {
            let r = match slot {
                Held::Reply(r) => r,
                Held::Answer => {
                    let cmd = commands.next();
                    // A backend that answers too few commands has failed them all.
                    let a = answers.next().unwrap_or_else(reply::local_error);
                    match cmd {
                        Some(Envelope::Mail { .. }) if !a.is_positive() => {
                            self.txn = None;
                            self.mail_refused = true;
                            mail_refused = true;
                            a
                        }
                        // After a refused MAIL the rest of the group has no transaction.
                        Some(Envelope::Rcpt(_) | Envelope::Data) if mail_refused => {
                            reply::need_mail()
                        }
                        Some(Envelope::Rcpt(path)) => {
                            if a.is_positive()
                                && let Some(txn) = self.txn.as_mut()
                            {
                                txn.accepted.push(path.address);
                            }
                            a
                        }
                        Some(Envelope::Data) => {
                            data = Some(a);
                            continue;
                        }
                        Some(Envelope::Mail { .. }) | None => a,
                    }
                }
            };
            self.outbuf.extend_from_slice(r.to_wire().as_bytes());
        }
        data
    }

    /// Queues `Answer` for a command that joins the group.
    fn join(&mut self, cmd: Envelope) {
        self.group.push(cmd);
        self.held.push(Held::Answer);
    }

    pub(super) fn mail(&mut self, arg: PathArg) -> Step {
        // Until this one is accepted, what follows it has no transaction either.
        self.mail_refused = true;
        if self.helo.is_none() {
            return self.reject(reply::need_helo());
        }
        if self.txn.is_some() {
            return self.reject(reply::nested_mail());
        }
        if self.cfg.tls_required && !self.secure {
            return self.reject(reply::need_starttls());
        }
        if let Err(r) = self.check_mail_params(&arg) {
            return self.reject(r);
        }
        // A declared size with no room now: come back later (not a protocol error).
        if let Some(size) = declared_size(&arg)
            && !self.cfg.budget.has_room(size)
        {
            info!(client = %self.peer, size, event = "insufficient_storage", "MAIL refused: no memory for a message this size now");
            self.count("insufficient_storage");
            self.cfg.budget.count_refusal();
            self.queue(&reply::insufficient_storage());
            return Step::Continue;
        }
        let queue_id = new_queue_id();
        debug!(queue_id = %queue_id, from = %arg.address, "mail");
        // A client that may not relay gets its MAIL accepted locally and every RCPT refused
        // (as Postfix does): the backend is never asked on its behalf.
        if self.may_relay {
            self.join(Envelope::Mail {
                queue_id: queue_id.clone(),
                path: arg.clone(),
                helo: self.helo.clone(),
            });
        } else {
            self.queue(&reply::sender_ok());
        }
        self.mail_refused = false;
        self.txn = Some(Txn {
            queue_id,
            mail: arg,
            accepted: Vec::new(),
            rcpt_count: 0,
            started: Instant::now(),
        });
        Step::Continue
    }

    fn check_mail_params(&self, arg: &PathArg) -> Result<(), Reply> {
        let mut utf8 = false;
        for (k, v) in &arg.params {
            match (k.as_str(), v.as_deref()) {
                ("SIZE", Some(v)) => {
                    let size: u64 = v.parse().map_err(|_| reply::bad_mail_syntax())?;
                    if size > self.cfg.max_message_size as u64 {
                        return Err(reply::message_too_big());
                    }
                }
                ("BODY", Some(v))
                    if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {}
                ("SMTPUTF8", None) => utf8 = true,
                ("RET", Some(v))
                    if v.eq_ignore_ascii_case("FULL") || v.eq_ignore_ascii_case("HDRS") => {}
                ("ENVID", Some(_)) => {}
                _ => return Err(reply::bad_parameter()),
            }
        }
        if !utf8 && !arg.address.is_ascii() {
            return Err(reply::need_smtputf8());
        }
        Ok(())
    }

    pub(super) fn rcpt(&mut self, arg: PathArg) -> Step {
        let Some(txn) = self.txn.as_mut() else {
            return self.need_mail();
        };
        if txn.rcpt_count >= self.cfg.max_recipients {
            self.queue(&reply::too_many_recipients());
            return Step::Continue;
        }
        for (k, v) in &arg.params {
            let ok = matches!(
                (k.as_str(), v.as_deref()),
                ("NOTIFY", Some(_)) | ("ORCPT", Some(_))
            );
            if !ok {
                return self.reject(reply::bad_parameter());
            }
        }
        if !arg.address.is_ascii() && txn.mail.param("SMTPUTF8").is_none() {
            return self.reject(reply::need_smtputf8());
        }
        if !self.may_relay {
            warn!(client = %self.peer, rcpt = %arg.address, event = "relay_denied", "relay access denied");
            self.count("relay_denied");
            return self.reject(reply::relay_denied());
        }
        txn.rcpt_count += 1;
        self.join(Envelope::Rcpt(arg));
        Step::Continue
    }

    /// DATA: joins the group when a recipient is or may be accepted, and the 354 is the
    /// backend's.
    pub(super) async fn data_command(&mut self) -> Step {
        let pending_rcpt = self.group.iter().any(|c| matches!(c, Envelope::Rcpt(_)));
        match &self.txn {
            None => {
                self.resolve().await;
                return self.need_mail();
            }
            Some(t) if t.rcpt_count == 0 => {
                self.resolve().await;
                return self.reject(reply::need_rcpt());
            }
            Some(t) if t.accepted.is_empty() && !pending_rcpt => {
                self.resolve().await;
                return self.reject(reply::no_valid_recipients());
            }
            Some(t) => match self.reserve(t) {
                Some((message, working)) => {
                    self.reserved = Some(message);
                    self.working = working;
                    self.join(Envelope::Data);
                }
                None => {
                    // No memory for the message now: the client's queue retries later.
                    self.resolve().await;
                    if self.txn.is_none() {
                        return self.need_mail();
                    }
                    info!(client = %self.peer, event = "insufficient_storage", "DATA refused: the in-flight budget is spent");
                    self.count("insufficient_storage");
                    self.cfg.budget.count_refusal();
                    self.queue(&reply::insufficient_storage());
                    self.abort().await;
                    return Step::Continue;
                }
            },
        }
        let answer = self.resolve().await.unwrap_or_else(reply::local_error);
        match &self.txn {
            // The MAIL was refused: its reply and a 503 for DATA are already queued.
            None => {
                self.release();
                Step::Continue
            }
            Some(t) if t.accepted.is_empty() => {
                self.release();
                if answer.code == 354 {
                    // The backend is waiting for a message that will not come: the
                    // transaction is over.
                    self.txn = None;
                    Box::pin(self.backend.reset()).await;
                }
                self.reject(reply::no_valid_recipients())
            }
            _ if answer.code != 354 => {
                self.release();
                self.queue(&answer);
                self.abort().await;
                Step::Continue
            }
            Some(_) => {
                self.queue(&reply::start_data());
                Step::Data
            }
        }
    }

    /// 503 to RCPT or DATA without a transaction: a protocol error, unless it follows a
    /// refused MAIL (a pipelining client sends them before it hears the refusal).
    fn need_mail(&mut self) -> Step {
        if self.mail_refused {
            self.queue(&reply::need_mail());
            Step::Continue
        } else {
            self.reject(reply::need_mail())
        }
    }

    /// Reserves memory for the message `t` is about to send: its declared size (and a little
    /// for our header and the stuffing the reader drops), else a first 64 KiB that grows as
    /// the message does; and, apart, the room the backend needs to work on it. When both
    /// could fit the budget but do not now, `None`: the client comes back later and the
    /// message is then handled in full. Only a message whose working room could never fit
    /// is taken with the message's own room alone.
    fn reserve(&self, t: &Txn) -> Option<(Reservation, Option<Reservation>)> {
        let expected =
            declared_size(&t.mail).map_or(FIRST_RESERVATION, |d| d.saturating_add(d / 32));
        let bytes = expected
            .min(self.cfg.max_message_size)
            .saturating_add(RECEIVED_ROOM);
        let budget = &self.cfg.budget;
        let room = self.backend.working_room(t.rcpt_count, bytes);
        if room == 0 || bytes.saturating_add(room) > budget.limit() {
            return budget.try_reserve(bytes).map(|r| (r, None));
        }
        let working = budget.try_reserve(room)?;
        Some((budget.try_reserve(bytes)?, Some(working)))
    }

    /// Gives back what was reserved at DATA.
    pub(super) fn release(&mut self) {
        self.reserved = None;
        self.working = None;
    }
}

/// Memory reserved at DATA for a message without `SIZE=`; it grows as the message does.
const FIRST_RESERVATION: usize = 64 * 1024;
/// Room for our `Received:` header in a reservation.
pub(super) const RECEIVED_ROOM: usize = 1024;

/// The `SIZE=` a MAIL declared, if any.
pub(super) fn declared_size(mail: &PathArg) -> Option<usize> {
    mail.param("SIZE")
        .flatten()
        .and_then(|v| v.parse::<usize>().ok())
}
