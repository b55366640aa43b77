//! DATA: reading the message after 354, handing it to the backend, and the `Received:`
//! header the relay prepends.

use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    /// Reads the message after 354 and hands it to the backend.
    pub(super) async fn data(&mut self) -> Result<(), End> {
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        let received = self.received_header(&txn);
        // The backend's working room, held here so that every early return gives it back.
        let working = self.working.take();
        // The buffer takes what was reserved at DATA (the declared size when the client gave
        // one, as MTAs do: one allocation instead of a doubling series) and grows only by
        // what the budget grants.
        let budget = &self.cfg.budget;
        let reserved =
            (self.reserved.take()).or_else(|| budget.try_reserve(envelope::RECEIVED_ROOM));
        let Some(mut reserved) = reserved else {
            return self.refuse_for_memory(&txn.queue_id).await;
        };
        let mut content = Vec::with_capacity(reserved.bytes().max(received.len()));
        content.extend_from_slice(received.as_bytes());
        let mut reader = DataReader::new(content, self.cfg.max_message_size);
        if !self.read_message(&mut reader, &mut reserved).await? {
            return self.refuse_for_memory(&txn.queue_id).await;
        }
        let done = reader.finish();
        if done.overflow {
            info!(queue_id = %txn.queue_id, client = %self.peer, event = "too_big", "message refused: over max_message_size");
            Box::pin(self.backend.reset()).await;
            self.queue(&reply::message_too_big());
            return Ok(());
        }
        let content = match (done.bare_newline, self.cfg.bare_newline) {
            (false, _) => done.content,
            (true, BareNewline::Reject) => {
                info!(queue_id = %txn.queue_id, client = %self.peer, event = "bare_newline", "message refused: bare <CR> or <LF>");
                Box::pin(self.backend.reset()).await;
                self.queue(&reply::bare_newline());
                return Ok(());
            }
            // The normalised copy needs memory too (at most one extra octet per 64).
            (true, BareNewline::Normalize) => {
                let c = done.content;
                if !reserved.grow(c.len() + c.len() / 64 + 64) {
                    return self.refuse_for_memory(&txn.queue_id).await;
                }
                data::normalize_newlines(&c)
            }
        };
        if let Some(working) = working {
            reserved.absorb(working);
        }
        let (helo, _) = self.helo.clone().unwrap_or_default();
        let r = Box::pin(self.backend.data(Transaction {
            queue_id: txn.queue_id,
            peer: self.peer,
            helo,
            mail: txn.mail,
            recipients: txn.accepted,
            content,
            reserved,
            started: txn.started,
        }))
        .await;
        self.queue(&r);
        Ok(())
    }

    /// Feeds the client's bytes to `reader` up to the final dot, growing `reserved` as the
    /// message does. `false` when the budget ran out: the rest was read and dropped.
    async fn read_message(
        &mut self,
        reader: &mut DataReader,
        reserved: &mut Reservation,
    ) -> Result<bool, End> {
        let mut out_of_memory = false;
        loop {
            let input = &self.inbuf[self.start..];
            if !out_of_memory && !make_room(reader, reserved, input.len()) {
                out_of_memory = true;
                reader.stop_storing();
            }
            let (used, end) = reader.feed(input);
            self.start += used;
            if end {
                return Ok(!out_of_memory);
            }
            if let Err(end) = self.fill(self.cfg.data_timeout).await {
                Box::pin(self.backend.reset()).await;
                return Err(end);
            }
        }
    }

    /// Ends a transaction the memory budget has no room for with 452 4.3.1.
    async fn refuse_for_memory(&mut self, queue_id: &str) -> Result<(), End> {
        info!(queue_id = %queue_id, client = %self.peer, event = "insufficient_storage", "message refused: the in-flight budget is spent");
        self.count("insufficient_storage");
        self.cfg.budget.count_refusal();
        Box::pin(self.backend.reset()).await;
        self.queue(&reply::insufficient_storage());
        Ok(())
    }

    pub(super) async fn abort(&mut self) {
        if self.txn.take().is_some() {
            Box::pin(self.backend.reset()).await;
        }
    }

    pub(super) fn received_header(&self, txn: &Txn) -> String {
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let helo: String = helo
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_graphic() && c != '(' && c != ')' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let ip = net::canonical(self.peer.ip());
        let proto = match (esmtp, self.secure, self.authed.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let mut h = format!(
            "Received: from {helo} ([{ip}])\r\n\tby {} (pixelrelay) with {proto} id {}",
            self.cfg.hostname, txn.queue_id
        );
        if let [only] = txn.accepted.as_slice()
            && only.chars().all(|c| !c.is_control())
        {
            h.push_str(&format!("\r\n\tfor <{only}>"));
        }
        h.push_str(&format!("; {}\r\n", clock::rfc5322(clock::now_ms())));
        h
    }
}

/// Makes sure `reader` can take `incoming` more bytes without growing its buffer past what
/// `reserved` holds: grows both, doubling while the budget allows, else by what is needed.
/// `false` when the budget has no room for the next bytes.
fn make_room(reader: &mut DataReader, reserved: &mut Reservation, incoming: usize) -> bool {
    let need = reader.len().saturating_add(incoming);
    if need <= reader.capacity() {
        return true;
    }
    let doubled = reader.capacity().saturating_mul(2).max(need);
    let target = if reserved.grow_to(doubled) {
        doubled
    } else if reserved.grow_to(need) {
        need
    } else {
        return false;
    };
    reader.reserve_exact(target - reader.len());
    true
}
