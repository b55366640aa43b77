//! The SMTP client towards the upstream smarthost, and its connection pool.
//!
//! A small client of our own rather than lettre's `AsyncSmtpConnection`: a proxy needs the
//! upstream's EHLO keywords (to pass SIZE/BODY/DSN/SMTPUTF8 parameters only where they are
//! understood), verbatim parameter relay (lettre re-encodes them), the reply to each command
//! as data rather than as an error, a timeout on every step, and control over the bytes read
//! before and after STARTTLS. Everything here is bounded: reply lines, reply size, and time.
//!
//! Connections are pooled: after a completed transaction the session is clean (RFC 5321
//! 4.1.1.4), after an aborted one it is `RSET`; idle ones older than `pool_idle`, or with
//! unexpected bytes waiting (a `421` timeout notice), are dropped. A reused connection that
//! fails on MAIL is replaced by a fresh one transparently, since nothing has been relayed yet.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{UpstreamConfig, UpstreamTarget, UpstreamTls, split_host_port};
use crate::smtp::reply::Reply;

mod extensions;
mod tls;
pub mod xforward;

pub use extensions::Extensions;

use tls::tls_config;

/// Longest reply line accepted from the upstream.
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply.
const MAX_REPLY_LINES: usize = 64;
/// Output buffer size while sending a message.
const WRITE_CHUNK: usize = 64 * 1024;

/// Any byte stream (plain TCP or TLS).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why talking to the upstream failed. Each maps to the 4xx the client gets.
#[derive(Debug)]
pub enum UpstreamError {
    /// TCP connect or name resolution failed.
    Connect(String),
    /// No answer in time at this stage.
    Timeout(&'static str),
    /// TLS set-up or handshake failed.
    Tls(String),
    /// The connection broke at this stage.
    Io(&'static str, io::Error),
    /// The upstream closed the connection at this stage.
    Closed(&'static str),
    /// The upstream said something that is not SMTP.
    Protocol(&'static str, String),
    /// The upstream refused the session itself (greeting, EHLO, STARTTLS or AUTH).
    Refused(&'static str, Reply),
}

impl UpstreamError {
    /// Whether a fresh connection might succeed where a pooled one failed.
    pub fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Io(..) | UpstreamError::Closed(_) | UpstreamError::Protocol(..)
        )
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Timeout(stage) => write!(f, "timeout at {stage}"),
            UpstreamError::Tls(e) => write!(f, "tls: {e}"),
            UpstreamError::Io(stage, e) => write!(f, "i/o error at {stage}: {e}"),
            UpstreamError::Closed(stage) => write!(f, "connection closed at {stage}"),
            UpstreamError::Protocol(stage, e) => write!(f, "protocol error at {stage}: {e}"),
            UpstreamError::Refused(stage, r) => write!(f, "refused at {stage}: {}", r.one_line()),
        }
    }
}

impl std::error::Error for UpstreamError {}

/// One connection to the upstream, past greeting, EHLO, STARTTLS and AUTH.
pub struct Connection {
    /// The stream.
    io: Box<dyn Io>,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
    /// EHLO keywords.
    pub ext: Extensions,
    /// Taken from the pool rather than freshly connected.
    pub reused: bool,
    /// Remote address (for logs).
    pub peer: SocketAddr,
    /// Timeouts.
    timeouts: Timeouts,
}

/// Per-stage timeouts.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// Greeting and each command.
    command: Duration,
    /// The reply after the message.
    data: Duration,
}

impl Connection {
    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
    ) -> Result<Reply, UpstreamError> {
        let mut wire = Vec::with_capacity(line.len() + 2);
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"\r\n");
        self.write(&wire, stage).await?;
        self.read_reply(stage, self.timeouts.command).await
    }

    /// Sends command lines (CRLF added) and reads one reply per line. With PIPELINING the
    /// lines go out in one write and the replies are read after it (RFC 2920; the last line
    /// may be DATA); without it each line waits for its reply, and nothing follows a refused
    /// MAIL. A 421 ends the exchange (the upstream is closing). On an error, the replies read
    /// before it come with it.
    pub async fn exchange(
        &mut self,
        lines: &[(String, &'static str)],
    ) -> Result<Vec<Reply>, (Vec<Reply>, UpstreamError)> {
        let mut replies = Vec::with_capacity(lines.len());
        if self.ext.pipelining {
            let mut wire = Vec::with_capacity(lines.iter().map(|(l, _)| l.len() + 2).sum());
            for (line, _) in lines {
                wire.extend_from_slice(line.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            let stage = lines.first().map_or("command", |(_, s)| s);
            self.write(&wire, stage)
                .await
                .map_err(|e| (Vec::new(), e))?;
            for (_, stage) in lines {
                match self.read_reply(stage, self.timeouts.command).await {
                    Ok(r) => {
                        let closing = r.code == 421;
                        replies.push(r);
                        if closing {
                            break;
                        }
                    }
                    Err(e) => return Err((replies, e)),
                }
            }
            return Ok(replies);
        }
        for (line, stage) in lines {
            match self.command(line, stage).await {
                Ok(r) => {
                    let stop = r.code == 421 || (line.starts_with("MAIL") && !r.is_positive());
                    replies.push(r);
                    if stop {
                        break;
                    }
                }
                Err(e) => return Err((replies, e)),
            }
        }
        Ok(replies)
    }

    /// Sends the message after the upstream's 354 (dot-stuffed, terminated) and reads the
    /// reply to it.
    pub async fn send_body(&mut self, content: &[u8]) -> Result<Reply, UpstreamError> {
        // Stuffed and written a chunk at a time: the copy never exceeds WRITE_CHUNK, however
        // far apart the dot lines are.
        let mut out = Vec::with_capacity(content.len().min(WRITE_CHUNK) + 8);
        let mut last = 0;
        if content.first() == Some(&b'.') {
            out.push(b'.');
        }
        for pos in memchr::memmem::find_iter(content, b"\n.") {
            self.put(&mut out, &content[last..=pos]).await?;
            out.push(b'.');
            last = pos + 1;
        }
        self.put(&mut out, &content[last..]).await?;
        if !content.is_empty() && !content.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.write(&out, "message").await?;
        self.read_reply("end of data", self.timeouts.data).await
    }

    /// Appends `bytes` to `out`, writing `out` whenever it holds WRITE_CHUNK.
    async fn put(&mut self, out: &mut Vec<u8>, mut bytes: &[u8]) -> Result<(), UpstreamError> {
        while !bytes.is_empty() {
            let room = WRITE_CHUNK.saturating_sub(out.len()).max(1);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            out.extend_from_slice(now);
            bytes = rest;
            if out.len() >= WRITE_CHUNK {
                self.write(out, "message").await?;
                out.clear();
            }
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), UpstreamError> {
        match tokio::time::timeout(self.timeouts.command, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        {
            Err(_) => Err(UpstreamError::Timeout(stage)),
            Ok(Err(e)) => Err(UpstreamError::Io(stage, e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn read_reply(
        &mut self,
        stage: &'static str,
        timeout: Duration,
    ) -> Result<Reply, UpstreamError> {
        match tokio::time::timeout(timeout, read_reply(&mut self.io, &mut self.buf, stage)).await {
            Err(_) => Err(UpstreamError::Timeout(stage)),
            Ok(r) => r,
        }
    }

    /// Whether the connection still looks usable: nothing unexpected waiting, not closed.
    /// Polls the socket exactly once (no timer: a zero timeout would wait for the next tick
    /// of tokio's 1 ms timer wheel on every reuse).
    async fn is_idle_and_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut probe);
        let io = &mut self.io;
        std::future::poll_fn(
            |cx| match std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb) {
                std::task::Poll::Pending => std::task::Poll::Ready(true),
                // Closed, an error, or bytes nobody asked for (a 421 before closing): unusable.
                std::task::Poll::Ready(_) => std::task::Poll::Ready(false),
            },
        )
        .await
    }

    /// Politely ends the session.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.io.write_all(b"QUIT\r\n").await;
            let _ = self.io.flush().await;
            let mut sink = [0u8; 512];
            let _ = self.io.read(&mut sink).await;
        })
        .await;
    }
}

/// Reads one (possibly multi-line) reply.
async fn read_reply<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut Vec<u8>,
    stage: &'static str,
) -> Result<Reply, UpstreamError> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut code: Option<u16> = None;
    loop {
        let Some(pos) = memchr::memchr(b'\n', buf) else {
            if buf.len() > MAX_REPLY_LINE {
                return Err(UpstreamError::Protocol(stage, "reply line too long".into()));
            }
            let mut chunk = [0u8; 4096];
            let n = io
                .read(&mut chunk)
                .await
                .map_err(|e| UpstreamError::Io(stage, e))?;
            if n == 0 {
                return Err(UpstreamError::Closed(stage));
            }
            buf.extend_from_slice(&chunk[..n]);
            continue;
        };
        let mut line: Vec<u8> = buf.drain(..=pos).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(UpstreamError::Protocol(
                stage,
                format!("bad reply line {:?}", String::from_utf8_lossy(&line)),
            ));
        }
        let this = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        if *code.get_or_insert(this) != this {
            return Err(UpstreamError::Protocol(
                stage,
                "reply codes differ between lines".into(),
            ));
        }
        let sep = line.get(3).copied();
        let text = if line.len() > 4 {
            line[4..].to_vec()
        } else {
            Vec::new()
        };
        lines.push(text);
        match sep {
            None | Some(b' ') => break,
            Some(b'-') if lines.len() < MAX_REPLY_LINES => {}
            Some(b'-') => return Err(UpstreamError::Protocol(stage, "reply too long".into())),
            Some(_) => return Err(UpstreamError::Protocol(stage, "bad reply separator".into())),
        }
    }
    Ok(Reply::from_upstream(code.unwrap_or(0), &lines))
}

/// An idle pooled connection.
struct Idle {
    /// The connection.
    conn: Connection,
    /// When it went idle.
    since: Instant,
}

/// Connects to the upstream and keeps a pool of idle connections.
pub struct Upstream {
    /// Host (name or IP) as configured.
    host: String,
    /// Port.
    port: u16,
    /// TLS mode.
    tls: UpstreamTls,
    /// rustls connector, when TLS is used.
    connector: Option<TlsConnector>,
    /// SNI / verification name.
    server_name: Option<ServerName<'static>>,
    /// EHLO name.
    helo: String,
    /// AUTH credentials.
    auth: Option<(String, String)>,
    /// Connect timeout.
    connect_timeout: Duration,
    /// Stage timeouts.
    timeouts: Timeouts,
    /// Most idle connections kept.
    pool_size: usize,
    /// Idle lifetime.
    pool_idle: Duration,
    /// Idle connections, most recent last.
    pool: Mutex<Vec<Idle>>,
    /// `upstream.xforward`.
    pub xforward: bool,
}

impl Upstream {
    /// Builds the client from `[upstream]`; `password` was read from its file or variable.
    pub fn new(cfg: &UpstreamConfig, password: Option<String>) -> Result<Upstream, String> {
        let UpstreamTarget::Smtp { address } = &cfg.target else {
            return Err("upstream.address: not set (capture mode)".into());
        };
        let (host, port) =
            split_host_port(address).map_err(|e| format!("upstream.address: {e}"))?;
        let (connector, server_name) = if cfg.tls == UpstreamTls::None {
            (None, None)
        } else {
            let name = cfg.server_name.clone().unwrap_or_else(|| host.clone());
            let server_name = ServerName::try_from(name.clone())
                .map_err(|_| format!("upstream.server_name: invalid name \"{name}\""))?;
            (
                Some(TlsConnector::from(Arc::new(tls_config(cfg)?))),
                Some(server_name),
            )
        };
        let auth = match (&cfg.auth_user, password) {
            (Some(u), Some(p)) => Some((u.clone(), p)),
            (Some(_), None) => return Err("upstream.auth_user: no password available".into()),
            _ => None,
        };
        Ok(Upstream {
            host,
            port,
            tls: cfg.tls,
            connector,
            server_name,
            helo: cfg.helo.clone(),
            auth,
            connect_timeout: cfg.connect_timeout,
            timeouts: Timeouts {
                command: cfg.command_timeout,
                data: cfg.data_timeout,
            },
            pool_size: cfg.pool_size,
            pool_idle: cfg.pool_idle,
            pool: Mutex::new(Vec::new()),
            xforward: cfg.xforward,
        })
    }

    /// `host:port` for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// An idle pooled connection if a healthy one is there, else a new one.
    pub async fn take(&self) -> Result<Connection, UpstreamError> {
        loop {
            let idle = {
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                pool.pop()
            };
            let Some(mut idle) = idle else { break };
            if idle.since.elapsed() < self.pool_idle && idle.conn.is_idle_and_open().await {
                idle.conn.reused = true;
                return Ok(idle.conn);
            }
        }
        self.connect().await
    }

    /// Returns a connection whose session is clean (no open transaction) to the pool.
    pub fn give_back(&self, conn: Connection) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.pool_size {
            pool.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes every idle connection with QUIT (shutdown).
    pub async fn close_idle(&self) {
        let idle: Vec<Idle> =
            std::mem::take(&mut *self.pool.lock().unwrap_or_else(|p| p.into_inner()));
        for i in idle {
            i.conn.quit().await;
        }
    }

    /// Opens a new connection: TCP, (TLS), greeting, EHLO, (STARTTLS, EHLO), (AUTH).
    pub async fn connect(&self) -> Result<Connection, UpstreamError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| UpstreamError::Timeout("connect"))?
        .map_err(|e| UpstreamError::Connect(format!("{}: {e}", self.address())))?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp
            .peer_addr()
            .map_err(|e| UpstreamError::Io("connect", e))?;
        let timeouts = self.timeouts;
        let mut conn = if self.tls == UpstreamTls::Implicit {
            let io = self.handshake(tcp).await?;
            Connection {
                io,
                buf: Vec::new(),
                ext: Extensions::default(),
                reused: false,
                peer,
                timeouts,
            }
        } else {
            Connection {
                io: Box::new(tcp),
                buf: Vec::new(),
                ext: Extensions::default(),
                reused: false,
                peer,
                timeouts,
            }
        };
        let greeting = conn.read_reply("greeting", timeouts.command).await?;
        if greeting.code != 220 {
            return Err(UpstreamError::Refused("greeting", greeting));
        }
        self.ehlo(&mut conn).await?;
        if self.tls == UpstreamTls::StartTls {
            if !conn.ext.starttls {
                return Err(UpstreamError::Tls(
                    "upstream does not offer STARTTLS (upstream.tls = \"starttls\")".into(),
                ));
            }
            let r = conn.command("STARTTLS", "STARTTLS").await?;
            if r.code != 220 {
                return Err(UpstreamError::Refused("STARTTLS", r));
            }
            // Anything the server sent after its 220 and before the handshake is discarded.
            let Connection { io, .. } = conn;
            let plain: Box<dyn Io> = io;
            let io = self.handshake(plain).await?;
            conn = Connection {
                io,
                buf: Vec::new(),
                ext: Extensions::default(),
                reused: false,
                peer,
                timeouts,
            };
            self.ehlo(&mut conn).await?;
        }
        if let Some((user, pass)) = &self.auth {
            self.authenticate(&mut conn, user, pass).await?;
        }
        Ok(conn)
    }

    async fn ehlo(&self, conn: &mut Connection) -> Result<(), UpstreamError> {
        let r = conn.command(&format!("EHLO {}", self.helo), "EHLO").await?;
        if r.is_positive() {
            conn.ext = Extensions::parse(&r);
            return Ok(());
        }
        let r = conn.command(&format!("HELO {}", self.helo), "HELO").await?;
        if !r.is_positive() {
            return Err(UpstreamError::Refused("HELO", r));
        }
        conn.ext = Extensions::default();
        Ok(())
    }

    async fn authenticate(
        &self,
        conn: &mut Connection,
        user: &str,
        pass: &str,
    ) -> Result<(), UpstreamError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let r = if conn.ext.auth.iter().any(|m| m == "PLAIN") || conn.ext.auth.is_empty() {
            let token = b64.encode(format!("\0{user}\0{pass}"));
            conn.command(&format!("AUTH PLAIN {token}"), "AUTH").await?
        } else if conn.ext.auth.iter().any(|m| m == "LOGIN") {
            let r = conn.command("AUTH LOGIN", "AUTH").await?;
            if r.code != 334 {
                return Err(UpstreamError::Refused("AUTH", r));
            }
            let r = conn.command(&b64.encode(user), "AUTH").await?;
            if r.code != 334 {
                return Err(UpstreamError::Refused("AUTH", r));
            }
            conn.command(&b64.encode(pass), "AUTH").await?
        } else {
            return Err(UpstreamError::Protocol(
                "AUTH",
                "upstream offers neither PLAIN nor LOGIN".into(),
            ));
        };
        if r.code != 235 {
            return Err(UpstreamError::Refused("AUTH", r));
        }
        Ok(())
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
    ) -> Result<Box<dyn Io>, UpstreamError> {
        let (Some(connector), Some(name)) = (&self.connector, &self.server_name) else {
            return Err(UpstreamError::Tls("TLS is not configured".into()));
        };
        let tls = tokio::time::timeout(
            self.connect_timeout,
            connector.connect(name.clone(), stream),
        )
        .await
        .map_err(|_| UpstreamError::Timeout("TLS handshake"))?
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        Ok(Box::new(tls))
    }
}

#[cfg(test)]
mod tests;
