//! The commands that hold the session in an exchange of their own: STARTTLS (the session
//! ends so the listener can wrap the stream) and AUTH (challenge and response lines).

use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    pub(super) fn starttls(&mut self) -> Step {
        if !self.cfg.tls {
            return self.reject(reply::not_implemented());
        }
        if self.secure {
            return self.reject(reply::already_tls());
        }
        if self.txn.is_some() {
            return self.reject(reply::not_in_transaction());
        }
        self.queue(&reply::ready_for_tls());
        // RFC 3207 (the STARTTLS command-injection bug class): nothing the client pipelined
        // after STARTTLS may be executed once TLS is up.
        self.inbuf.clear();
        self.start = 0;
        Step::Close(End::StartTls)
    }

    /// Reads one line inside a command (an AUTH exchange). `Ok(None)` for an overlong line.
    pub(super) async fn read_line(&mut self) -> Result<Option<Vec<u8>>, End> {
        loop {
            if let Some(line) = self.take_line() {
                return Ok(line.ok());
            }
            self.fill(self.cfg.command_timeout).await?;
        }
    }

    /// Sends a 334 challenge and reads the base64 answer; `Err(step)` ends the exchange.
    pub(super) async fn challenge(&mut self, prompt: &str) -> Result<Vec<u8>, Step> {
        self.queue(&Reply::new(334, prompt.to_string()));
        let line = match self.read_line().await {
            Ok(Some(l)) => l,
            Ok(None) => return Err(self.reject(reply::line_too_long())),
            Err(end) => return Err(Step::Close(end)),
        };
        if line == b"*" {
            return Err(self.reject(reply::auth_cancelled()));
        }
        auth::b64(&String::from_utf8_lossy(&line))
            .ok_or_else(|| self.reject(reply::auth_bad_base64()))
    }

    /// Reads the credentials of an AUTH exchange; `Err(step)` when it ended without any.
    pub(super) async fn credentials(
        &mut self,
        mech: &str,
        initial: Option<&str>,
    ) -> Result<Option<(String, String)>, Step> {
        let decode = |s: &str| auth::b64(s);
        match mech {
            "PLAIN" => {
                let resp = match initial {
                    Some("=") => Vec::new(),
                    Some(i) => decode(i).ok_or_else(|| self.reject(reply::auth_bad_base64()))?,
                    None => self.challenge("").await?,
                };
                Ok(auth::parse_plain(&resp))
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => decode(i).ok_or_else(|| self.reject(reply::auth_bad_base64()))?,
                    None => self.challenge("VXNlcm5hbWU6").await?,
                };
                let pass = self.challenge("UGFzc3dvcmQ6").await?;
                Ok(match (String::from_utf8(user), String::from_utf8(pass)) {
                    (Ok(u), Ok(p)) if !u.is_empty() => Some((u, p)),
                    _ => None,
                })
            }
            _ => Err(self.reject(reply::auth_mechanism())),
        }
    }

    pub(super) async fn auth(&mut self, args: &str) -> Step {
        let Some(authn) = self.cfg.auth.clone() else {
            return self.reject(reply::not_implemented());
        };
        if !self.secure && !self.cfg.auth_plaintext {
            return self.reject(reply::encryption_required());
        }
        if self.authed.is_some() {
            return self.reject(reply::already_authenticated());
        }
        if self.txn.is_some() {
            return self.reject(reply::not_in_transaction());
        }
        let mut words = args.split_ascii_whitespace();
        let mech = words.next().unwrap_or("").to_ascii_uppercase();
        let creds = match self.credentials(&mech, words.next()).await {
            Ok(c) => c,
            Err(step) => return step,
        };
        let ip = self.peer.ip();
        if let Some((user, pass)) = creds
            && authn.verify(user.clone(), pass).await
        {
            info!(client = %self.peer, user = %user, event = "auth", "authenticated");
            authn.succeeded(ip);
            self.authed = Some(user);
            self.may_relay = true;
            self.queue(&reply::auth_ok());
            return Step::Continue;
        }
        let (count, delay) = authn.failed(ip);
        self.count("auth_failed");
        warn!(client = %self.peer, failures = count, event = "auth_failed", "authentication failed");
        // Answer slowly: a password guesser gets a few tries a minute, not thousands.
        if self.flush().await.is_err() {
            return Step::Close(End::Closed);
        }
        tokio::time::sleep(delay).await;
        self.reject(reply::auth_failed())
    }
}
