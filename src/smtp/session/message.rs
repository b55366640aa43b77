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
        // Size the buffer from the client's SIZE= when it gave one (MTAs do): a message then
        // takes one allocation instead of a doubling series that can reach twice its size.
        let declared = txn
            .mail
            .param("SIZE")
            .flatten()
            .and_then(|v| v.parse::<usize>().ok());
        let expected = declared
            .unwrap_or(16 * 1024)
            .saturating_add(declared.map_or(0, |d| d / 32));
        let capacity = received.len() + expected.min(self.cfg.max_message_size);
        let mut content = Vec::with_capacity(capacity);
        content.extend_from_slice(received.as_bytes());
        let mut reader = DataReader::new(content, self.cfg.max_message_size);
        loop {
            let (used, end) = reader.feed(&self.inbuf[self.start..]);
            self.start += used;
            if end {
                break;
            }
            if let Err(end) = self.fill(self.cfg.data_timeout).await {
                self.backend.reset().await;
                return Err(end);
            }
        }
        let done = reader.finish();
        if done.overflow {
            info!(queue_id = %txn.queue_id, client = %self.peer, event = "too_big", "message refused: over max_message_size");
            self.backend.reset().await;
            self.queue(&reply::message_too_big());
            return Ok(());
        }
        let mut content = done.content;
        if done.bare_newline {
            match self.cfg.bare_newline {
                BareNewline::Reject => {
                    info!(queue_id = %txn.queue_id, client = %self.peer, event = "bare_newline", "message refused: bare <CR> or <LF>");
                    self.backend.reset().await;
                    self.queue(&reply::bare_newline());
                    return Ok(());
                }
                BareNewline::Normalize => content = data::normalize_newlines(&content),
            }
        }
        let (helo, _) = self.helo.clone().unwrap_or_default();
        let r = self
            .backend
            .data(Transaction {
                queue_id: txn.queue_id,
                peer: self.peer,
                helo,
                mail: txn.mail,
                recipients: txn.accepted,
                content,
                started: txn.started,
            })
            .await;
        self.queue(&r);
        Ok(())
    }

    pub(super) async fn abort(&mut self) {
        if self.txn.take().is_some() {
            self.backend.reset().await;
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
