//! One inbound SMTP session: the protocol state machine over any byte stream.
//!
//! The session owns the protocol (order of commands, limits, pipelining, DATA, timeouts) and
//! nothing else: what MAIL, RCPT and the message *do* is the `Backend`'s business (the relay in
//! production, a recorder in tests). It runs over any `AsyncRead + AsyncWrite`, so tests drive it
//! through an in-memory duplex pipe without sockets.
//!
//! Pipelining (RFC 2920): every complete command in the input buffer is handled in order and
//! its reply queued; queued replies are written whenever the session is about to wait for the
//! client, so reply order always equals command order. MAIL, RCPT and DATA that pass the
//! session's checks go to the backend as one group (`envelope.rs`), so a pipelined envelope
//! costs the relay one exchange with the upstream, not one per command.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::auth::{self, Authenticator};
use super::command::{self, Command, PathArg};
use super::data::{self, DataReader};
use super::reply::{self, Reply};
use crate::budget::{Budget, Reservation};
use crate::clock;
use crate::config::{BareNewline, SmtpConfig};
use crate::metrics::Metrics;
use crate::net::{self, Cidr};
use crate::shutdown::Shutdown;

mod envelope;
mod exchange;
mod message;

pub use envelope::Envelope;
use envelope::Held;

/// Longest command line (with CRLF), RFC 5321 4.5.3.1.4.
const MAX_COMMAND_LINE: usize = 512;
/// MAIL and RCPT may be longer: ESMTP parameters (SIZE, ORCPT, ENVID) extend the limit.
const MAX_PATH_COMMAND_LINE: usize = 2048;
/// Room for the next read while a message is coming: 64 KiB at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Room for the next read between messages: commands are short, and an idle connection
/// should cost little (a pipelined group longer than this takes another read).
const COMMAND_CHUNK: usize = 1024;
/// An input buffer larger than this is given back once a message has been read.
const KEEP_BETWEEN_MESSAGES: usize = 4 * 1024;

/// The limits and names a session needs; built once from `[smtp]`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Banner, EHLO and `Received:` name.
    pub hostname: String,
    /// Largest message, advertised as SIZE.
    pub max_message_size: usize,
    /// RCPTs per transaction.
    pub max_recipients: usize,
    /// `LIMITS RCPTMAX=1` in the EHLO reply (`smtp.one_recipient_per_transaction`).
    pub rcptmax_one: bool,
    /// Wait for a command.
    pub command_timeout: Duration,
    /// Wait for the next DATA bytes.
    pub data_timeout: Duration,
    /// Errors before 421.
    pub max_errors: u32,
    /// Bare newline policy.
    pub bare_newline: BareNewline,
    /// Who may relay without AUTH.
    pub allow_networks: Vec<Cidr>,
    /// STARTTLS is offered (a certificate is configured).
    pub tls: bool,
    /// MAIL is refused before STARTTLS.
    pub tls_required: bool,
    /// AUTH accounts, when any are configured.
    pub auth: Option<Arc<Authenticator>>,
    /// AUTH offered without TLS.
    pub auth_plaintext: bool,
    /// Where refusals are counted (none in tests).
    pub metrics: Option<Arc<Metrics>>,
    /// Memory for messages in flight, shared by every session (`smtp.max_inflight_bytes`).
    pub budget: Arc<Budget>,
}

impl SessionConfig {
    /// From the `[smtp]` section.
    pub fn from_config(c: &SmtpConfig) -> SessionConfig {
        SessionConfig {
            hostname: c.hostname.clone(),
            max_message_size: usize::try_from(c.max_message_size).unwrap_or(usize::MAX),
            max_recipients: if c.one_recipient_per_transaction {
                1
            } else {
                c.max_recipients
            },
            rcptmax_one: c.one_recipient_per_transaction,
            command_timeout: c.command_timeout,
            data_timeout: c.data_timeout,
            max_errors: c.max_errors,
            bare_newline: c.bare_newline,
            allow_networks: c.allow_networks.clone(),
            tls: c.tls.is_some(),
            tls_required: c.tls.as_ref().is_some_and(|t| t.required),
            auth: (!c.auth.users.is_empty())
                .then(|| Arc::new(Authenticator::new(c.auth.users.clone()))),
            auth_plaintext: c.auth.allow_plaintext,
            metrics: None,
            budget: Budget::new(usize::try_from(c.max_inflight_bytes).unwrap_or(usize::MAX)),
        }
    }
}

/// One accepted message, handed to the backend after DATA.
#[derive(Debug)]
pub struct Transaction {
    /// Our id for this transaction (logs, `Received:`).
    pub queue_id: String,
    /// Client address.
    pub peer: SocketAddr,
    /// Name the client gave in HELO/EHLO.
    pub helo: String,
    /// MAIL FROM.
    pub mail: PathArg,
    /// RCPTs the backend accepted, in order.
    pub recipients: Vec<String>,
    /// Message content, unstuffed, CRLF line ends, our `Received:` header first.
    pub content: Vec<u8>,
    /// The memory `content` holds, reserved from the budget; the backend grows it before it
    /// makes a copy (the rewrite), and it is given back when the transaction ends.
    pub reserved: Reservation,
    /// When MAIL FROM arrived.
    pub started: Instant,
}

/// What a session does with MAIL, RCPT and the message.
pub trait Backend: Send {
    /// Answers a group of commands the session accepted, one reply per command, in order
    /// (the client pipelined them, or it is a group of one). A 2xx to MAIL opens the
    /// transaction; a 2xx to RCPT counts the recipient as accepted; a 354 to DATA means the
    /// message follows. Replies go to the client as they are.
    fn envelope(&mut self, cmds: &[Envelope]) -> impl Future<Output = Vec<Reply>> + Send;
    /// The message; the reply is the final answer for the transaction. Only called after a
    /// 354 to DATA with at least one RCPT accepted.
    fn data(&mut self, txn: Transaction) -> impl Future<Output = Reply> + Send;
    /// Abandons the current transaction (RSET, a new EHLO, a refused message, the end of the
    /// session).
    fn reset(&mut self) -> impl Future<Output = ()> + Send;
    /// Memory the backend will need besides the message itself to handle one of `size` bytes
    /// to `recipients` recipients (a rewrite's copy): the session reserves it with the
    /// message at DATA, so that a message it takes is handled in full, not degraded later.
    fn working_room(&self, recipients: usize, size: usize) -> usize {
        let _ = (recipients, size);
        0
    }
}

/// Why the session ended (for the listener and logs).
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// QUIT.
    Quit,
    /// The client closed the connection.
    Closed,
    /// We closed it with a 421.
    Dropped(&'static str),
    /// The client asked for TLS: the caller does the handshake and starts a new session.
    StartTls,
}

/// Transaction state.
#[derive(Debug)]
struct Txn {
    queue_id: String,
    mail: PathArg,
    accepted: Vec<String>,
    rcpt_count: usize,
    started: Instant,
}

/// A running session.
pub struct Session<S, B> {
    /// The client connection.
    io: S,
    /// Bytes read but not consumed yet (from `start`).
    inbuf: Vec<u8>,
    /// Start of unconsumed input in `inbuf`.
    start: usize,
    /// Replies not yet written.
    outbuf: Vec<u8>,
    /// Commands accepted here and waiting for the backend's answer (a pipelined group).
    group: Vec<Envelope>,
    /// Replies held behind the group's answers, in command order.
    held: Vec<Held>,
    /// Limits and names.
    cfg: Arc<SessionConfig>,
    /// Whatever handles the mail.
    backend: B,
    /// Client address.
    peer: SocketAddr,
    /// HELO/EHLO name and whether it was EHLO.
    helo: Option<(String, bool)>,
    /// Open transaction, if any.
    txn: Option<Txn>,
    /// Protocol errors so far.
    errors: u32,
    /// Inside an overlong command line that was already refused.
    discarding: bool,
    /// Reading a message: a transaction is in flight even though `txn` was taken.
    in_data: bool,
    /// Memory reserved at DATA for the message to come.
    reserved: Option<Reservation>,
    /// Memory reserved at DATA for the backend's work on it ([`Backend::working_room`]).
    working: Option<Reservation>,
    /// The last MAIL was refused: the RCPT and DATA a pipelining client sent behind it get
    /// 503 without counting as errors (it could not have known).
    mail_refused: bool,
    /// The connection is TLS (implicit or after STARTTLS).
    secure: bool,
    /// Authenticated user, if any.
    authed: Option<String>,
    /// Send the 220 greeting (not after STARTTLS).
    greet: bool,
    /// May this client relay (network or AUTH)?
    may_relay: bool,
    /// Graceful shutdown begun: close when idle.
    shutdown: Shutdown,
    /// Grace period over: close even mid-transaction.
    hard_stop: Shutdown,
}

/// Outcome of handling one command.
enum Step {
    Continue,
    Data,
    Close(End),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    /// A session on `io` for the client at `peer`.
    pub fn new(
        io: S,
        peer: SocketAddr,
        cfg: Arc<SessionConfig>,
        backend: B,
        shutdown: Shutdown,
        hard_stop: Shutdown,
    ) -> Self {
        let may_relay = net::any_contains(&cfg.allow_networks, peer.ip());
        Session {
            io,
            inbuf: Vec::new(),
            start: 0,
            outbuf: Vec::new(),
            group: Vec::new(),
            held: Vec::new(),
            cfg,
            backend,
            peer,
            helo: None,
            txn: None,
            errors: 0,
            discarding: false,
            in_data: false,
            reserved: None,
            working: None,
            mail_refused: false,
            secure: false,
            authed: None,
            greet: true,
            may_relay,
            shutdown,
            hard_stop,
        }
    }

    /// Marks the connection as already encrypted (implicit TLS).
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// The session that follows STARTTLS: no greeting, encrypted, and the error count carried
    /// over so that a TLS restart does not reset the error limit.
    pub fn after_starttls(mut self, errors: u32) -> Self {
        self.greet = false;
        self.secure = true;
        self.errors = errors;
        self
    }

    /// Greets the client and runs the session to its end (STARTTLS ends it too).
    pub async fn run(self) -> End {
        self.run_upgradable().await.0
    }

    /// Like `run`, but on STARTTLS hands back the stream, the backend and the error count so
    /// that the caller can run the handshake and a fresh session over TLS (RFC 3207: all
    /// state is discarded, including anything the client pipelined after STARTTLS).
    pub async fn run_upgradable(mut self) -> (End, Option<(S, B, u32)>) {
        if self.greet {
            let greeting = reply::greeting(&self.cfg.hostname);
            self.queue(&greeting);
        }
        let end = self.run_loop().await;
        if end == End::StartTls {
            if self.flush().await.is_err() {
                return (End::Closed, None);
            }
            return (end, Some((self.io, self.backend, self.errors)));
        }
        if self.txn.take().is_some() {
            Box::pin(self.backend.reset()).await;
        }
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
        (end, None)
    }

    async fn run_loop(&mut self) -> End {
        loop {
            // Handle every complete command already buffered (pipelining).
            while let Some(line) = self.take_line() {
                // MAIL and RCPT join the group, and DATA ends it; anything else is answered
                // after it.
                let joins = line.as_ref().is_ok_and(|l| {
                    starts_with_ci(l, b"MAIL ")
                        || starts_with_ci(l, b"RCPT ")
                        || starts_with_ci(l, b"DATA")
                });
                if !joins {
                    self.resolve().await;
                }
                let step = match line {
                    Ok(line) => self.command(&line).await,
                    Err(r) => {
                        self.queue(&r);
                        self.error()
                    }
                };
                match step {
                    Step::Continue => {}
                    Step::Close(end) => {
                        self.resolve().await;
                        return end;
                    }
                    Step::Data => {
                        self.in_data = true;
                        let r = self.data().await;
                        self.in_data = false;
                        if let Err(end) = r {
                            return end;
                        }
                    }
                }
            }
            if self.shutdown.is_triggered() && self.txn.is_none() {
                self.queue(&reply::shutting_down());
                return End::Dropped("shutdown");
            }
            if let Err(end) = self.fill(self.cfg.command_timeout).await {
                return end;
            }
        }
    }

    /// Writes queued replies, then reads more input. Errors are how the session ends.
    async fn fill(&mut self, timeout: Duration) -> Result<(), End> {
        self.resolve().await;
        if self.flush().await.is_err() {
            return Err(End::Closed);
        }
        if self.start > 0 && self.start * 2 >= self.inbuf.len() {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        if self.in_data {
            self.inbuf.reserve(READ_CHUNK);
        } else {
            // Between messages the buffer shrinks back to what commands need.
            if self.inbuf.capacity() > KEEP_BETWEEN_MESSAGES {
                self.inbuf
                    .shrink_to(KEEP_BETWEEN_MESSAGES.max(self.inbuf.len()));
            }
            self.inbuf.reserve(COMMAND_CHUNK);
        }
        let idle = self.txn.is_none() && !self.in_data;
        let mut soft = self.shutdown.clone();
        let mut hard = self.hard_stop.clone();
        let read = tokio::select! {
            r = tokio::time::timeout(timeout, self.io.read_buf(&mut self.inbuf)) => r,
            () = soft.wait(), if idle => {
                self.queue(&reply::shutting_down());
                return Err(End::Dropped("shutdown"));
            }
            () = hard.wait() => {
                self.queue(&reply::shutting_down());
                return Err(End::Dropped("shutdown"));
            }
        };
        match read {
            Err(_) => {
                self.queue(&reply::timeout());
                Err(End::Dropped("timeout"))
            }
            Ok(Ok(0)) | Ok(Err(_)) => Err(End::Closed),
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.outbuf.is_empty() {
            self.io.write_all(&self.outbuf).await?;
            self.outbuf.clear();
            if self.outbuf.capacity() > KEEP_BETWEEN_MESSAGES {
                self.outbuf = Vec::new();
            }
            self.io.flush().await?;
        }
        Ok(())
    }

    fn queue(&mut self, r: &Reply) {
        if self.group.is_empty() {
            self.outbuf.extend_from_slice(r.to_wire().as_bytes());
        } else {
            self.held.push(Held::Reply(r.clone()));
        }
    }

    /// The next complete command line (without line end), `Err` with the reply for an
    /// overlong one, `None` when more input is needed.
    fn take_line(&mut self) -> Option<Result<Vec<u8>, Reply>> {
        if self.discarding {
            // Skipping the rest of an overlong line already answered with 500.
            match memchr::memchr(b'\n', &self.inbuf[self.start..]) {
                Some(pos) => {
                    self.start += pos + 1;
                    self.discarding = false;
                }
                None => {
                    self.start = self.inbuf.len();
                    return None;
                }
            }
        }
        let buf = &self.inbuf[self.start..];
        match memchr::memchr(b'\n', buf) {
            Some(pos) => {
                let mut line = &buf[..pos];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let limit = if starts_with_ci(line, b"MAIL ") || starts_with_ci(line, b"RCPT ") {
                    MAX_PATH_COMMAND_LINE
                } else {
                    MAX_COMMAND_LINE
                };
                let result = if line.len() + 2 > limit {
                    Err(reply::line_too_long())
                } else {
                    Ok(line.to_vec())
                };
                self.start += pos + 1;
                Some(result)
            }
            None if buf.len() > MAX_PATH_COMMAND_LINE => {
                self.start = self.inbuf.len();
                self.discarding = true;
                Some(Err(reply::line_too_long()))
            }
            None => None,
        }
    }

    fn count(&self, reason: &'static str) {
        if let Some(m) = &self.cfg.metrics {
            m.smtp_refused(reason);
        }
    }

    fn error(&mut self) -> Step {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.queue(&reply::too_many_errors());
            self.count("too_many_errors");
            return Step::Close(End::Dropped("too many errors"));
        }
        Step::Continue
    }

    /// Queues `r`; a 5xx/4xx reply to a malformed or out-of-order command counts as an error.
    fn reject(&mut self, r: Reply) -> Step {
        self.queue(&r);
        self.error()
    }

    async fn command(&mut self, line: &[u8]) -> Step {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(r) => return self.reject(r),
        };
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true).await,
            Command::Helo(name) => self.ehlo(name, false).await,
            Command::Mail(arg) => self.mail(arg),
            Command::Rcpt(arg) => self.rcpt(arg),
            Command::Data => self.data_command().await,
            Command::Rset => {
                self.mail_refused = false;
                self.abort().await;
                self.queue(&reply::ok());
                Step::Continue
            }
            Command::Noop => {
                self.queue(&reply::ok());
                Step::Continue
            }
            Command::Quit => {
                self.queue(&reply::bye());
                Step::Close(End::Quit)
            }
            Command::Vrfy => {
                self.queue(&reply::vrfy());
                Step::Continue
            }
            Command::Expn => self.reject(reply::expn_disabled()),
            Command::Help => {
                self.queue(&reply::help());
                Step::Continue
            }
            Command::StartTls => self.starttls(),
            Command::Auth(args) => self.auth(&args).await,
            Command::NotImplemented => self.reject(reply::not_implemented()),
        }
    }

    async fn ehlo(&mut self, name: String, esmtp: bool) -> Step {
        self.mail_refused = false;
        self.abort().await;
        let r = if esmtp {
            let mut lines = vec![
                self.cfg.hostname.clone(),
                "PIPELINING".into(),
                format!("SIZE {}", self.cfg.max_message_size),
                "8BITMIME".into(),
                "SMTPUTF8".into(),
                "ENHANCEDSTATUSCODES".into(),
                "DSN".into(),
            ];
            if self.cfg.rcptmax_one {
                // RFC 9422: a client that knows it sends the other recipients in further
                // transactions at once; one that does not gets 452 4.5.3 for them.
                lines.push("LIMITS RCPTMAX=1".into());
            }
            if self.cfg.tls && !self.secure {
                lines.push("STARTTLS".into());
            }
            if self.cfg.auth.is_some() && (self.secure || self.cfg.auth_plaintext) {
                lines.push("AUTH PLAIN LOGIN".into());
            }
            lines.shrink_to_fit();
            Reply { code: 250, lines }
        } else {
            reply::helo(&self.cfg.hostname)
        };
        self.helo = Some((name, esmtp));
        self.queue(&r);
        Step::Continue
    }
}

fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A queue id: 10 hex digits of milliseconds and 6 random ones, so ids sort by time.
pub fn new_queue_id() -> String {
    let r: u32 = rand::random();
    format!(
        "{:010X}{:06X}",
        clock::now_ms() & 0xFF_FFFF_FFFF,
        r & 0xFF_FFFF
    )
}
