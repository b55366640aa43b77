//! Shared test helpers: a scriptable fake upstream (modelled on go-smtp's test backend), an
//! in-process relay launcher on port 0, and a line-level SMTP client.

#![allow(dead_code)]

pub mod pg;
pub mod postfix;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pixelrelay::config::Config;
use pixelrelay::server::{Addresses, Server};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};

/// What the fake upstream does at a stage.
#[derive(Clone, Debug)]
pub enum Act {
    /// Answer with this line (without CRLF), e.g. "250 2.0.0 Ok".
    Reply(String),
    /// Never answer.
    Stall,
    /// Close the connection.
    Drop,
}

impl Act {
    pub fn reply(s: &str) -> Act {
        Act::Reply(s.to_string())
    }
}

/// The fake upstream's script, changeable while it runs.
#[derive(Clone, Debug)]
pub struct Script {
    pub greeting: Act,
    pub mail: Act,
    /// Per RCPT address; default for others.
    pub rcpt: Act,
    pub rcpt_overrides: Vec<(String, Act)>,
    pub data: Act,
    /// After the message.
    pub end: Act,
    /// PIPELINING offered in the EHLO reply.
    pub pipelining: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: Act::reply("220 fake.upstream ESMTP"),
            mail: Act::reply("250 2.1.0 Ok"),
            rcpt: Act::reply("250 2.1.5 Ok"),
            rcpt_overrides: Vec::new(),
            data: Act::reply("354 go ahead"),
            end: Act::reply("250 2.0.0 Ok: queued as FAKE"),
            pipelining: true,
        }
    }
}

/// A message the fake upstream accepted (answered 250 to).
#[derive(Clone, Debug)]
pub struct Got {
    pub from: String,
    pub rcpts: Vec<String>,
    /// Content after dot-unstuffing, without the terminating ".\r\n".
    pub data: Vec<u8>,
    /// The raw MAIL and RCPT lines.
    pub lines: Vec<String>,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub script: Arc<Mutex<Script>>,
    pub got: Arc<Mutex<Vec<Got>>>,
    pub connections: Arc<Mutex<usize>>,
    /// Notified whenever a message is accepted.
    pub delivered: Arc<Notify>,
}

/// TLS and AUTH options of the fake upstream.
#[derive(Clone, Default)]
pub struct Security {
    /// Certificate and key; with it STARTTLS is offered (or TLS is implicit).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// TLS from the first byte instead of STARTTLS.
    pub implicit: bool,
    /// Required credentials (AUTH PLAIN or LOGIN before MAIL).
    pub auth: Option<(String, String)>,
    /// Offer AUTH LOGIN only.
    pub login_only: bool,
}

/// A self-signed certificate for `localhost`: (acceptor, PEM of the certificate).
pub fn test_tls() -> (tokio_rustls::TlsAcceptor, String) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    pixelrelay::server::install_crypto();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = ck.cert.pem();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), pem)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// What one fake session shares with the server.
#[derive(Clone)]
struct Ctx {
    script: Arc<Mutex<Script>>,
    got: Arc<Mutex<Vec<Got>>>,
    delivered: Arc<Notify>,
    sec: Security,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        Self::start_with(Script::default()).await
    }

    pub async fn start_with(script: Script) -> FakeUpstream {
        Self::start_secure(script, Security::default()).await
    }

    pub async fn start_secure(script: Script, sec: Security) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(script));
        let got = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let delivered = Arc::new(Notify::new());
        let ctx = Ctx {
            script: script.clone(),
            got: got.clone(),
            delivered: delivered.clone(),
            sec,
        };
        let c = connections.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                *c.lock().unwrap() += 1;
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let mut io: Box<dyn Io> = Box::new(sock);
                    let mut secure = false;
                    if ctx.sec.implicit {
                        let Some(acc) = &ctx.sec.tls else { return };
                        let Ok(tls) = acc.accept(io).await else {
                            return;
                        };
                        io = Box::new(tls);
                        secure = true;
                    }
                    let mut greet = true;
                    // A session returns its stream when the client asked for STARTTLS.
                    while let Some(plain) = fake_session(io, &ctx, secure, greet).await {
                        let Some(acc) = &ctx.sec.tls else { return };
                        let Ok(tls) = acc.accept(plain).await else {
                            return;
                        };
                        io = Box::new(tls);
                        secure = true;
                        greet = false;
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            script,
            got,
            connections,
            delivered,
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
    }

    pub fn messages(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    pub fn connection_count(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), act: &Act) -> bool {
    match act {
        Act::Reply(s) => w.write_all(format!("{s}\r\n").as_bytes()).await.is_ok(),
        Act::Stall => {
            std::future::pending::<()>().await;
            false
        }
        Act::Drop => false,
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).to_string()
}

/// One SMTP session of the fake upstream; `Some(stream)` asks the caller for a TLS handshake.
async fn fake_session(
    io: Box<dyn Io>,
    ctx: &Ctx,
    secure: bool,
    greet: bool,
) -> Option<Box<dyn Io>> {
    let (r, mut w) = tokio::io::split(io);
    let mut r = BufReader::new(r);
    let sc = || ctx.script.lock().unwrap().clone();
    if greet && !send(&mut w, &sc().greeting).await {
        return None;
    }
    let mut cur: Option<Got> = None;
    let mut authed = ctx.sec.auth.is_none();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let act = if upper.starts_with("EHLO") {
            let mut ext = String::from("250-fake.upstream\r\n");
            if sc().pipelining {
                ext.push_str("250-PIPELINING\r\n");
            }
            ext.push_str("250-SIZE 100000000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n");
            if ctx.sec.tls.is_some() && !secure {
                ext.push_str("250-STARTTLS\r\n");
            }
            if ctx.sec.auth.is_some() {
                ext.push_str(if ctx.sec.login_only {
                    "250-AUTH LOGIN\r\n"
                } else {
                    "250-AUTH PLAIN LOGIN\r\n"
                });
            }
            ext.push_str("250 ENHANCEDSTATUSCODES");
            Act::Reply(ext)
        } else if upper.starts_with("HELO") {
            Act::reply("250 fake.upstream")
        } else if upper == "STARTTLS" && ctx.sec.tls.is_some() && !secure {
            w.write_all(b"220 2.0.0 Ready to start TLS\r\n")
                .await
                .ok()?;
            // Anything buffered after STARTTLS is discarded (no command injection).
            return Some(Box::new(r.into_inner().unsplit(w)));
        } else if upper.starts_with("AUTH PLAIN") {
            let want = ctx.sec.auth.clone().unwrap_or_default();
            let got = b64(text.get(11..).unwrap_or(""));
            if got == format!("\0{}\0{}", want.0, want.1) {
                authed = true;
                Act::reply("235 2.7.0 Authentication successful")
            } else {
                Act::reply("535 5.7.8 Authentication failed")
            }
        } else if upper == "AUTH LOGIN" {
            let want = ctx.sec.auth.clone().unwrap_or_default();
            let mut answers = Vec::new();
            for prompt in ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"] {
                w.write_all(format!("{prompt}\r\n").as_bytes()).await.ok()?;
                let mut l = String::new();
                r.read_line(&mut l).await.ok()?;
                answers.push(b64(&l));
            }
            if answers == [want.0, want.1] {
                authed = true;
                Act::reply("235 2.7.0 Authentication successful")
            } else {
                Act::reply("535 5.7.8 Authentication failed")
            }
        } else if upper.starts_with("MAIL FROM:") && !authed {
            Act::reply("530 5.7.0 Authentication required")
        } else if upper.starts_with("MAIL FROM:") {
            let a = sc().mail;
            if matches!(&a, Act::Reply(s) if s.starts_with('2')) {
                let from = text[10..]
                    .trim()
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or("")
                    .to_string();
                cur = Some(Got {
                    from,
                    rcpts: vec![],
                    data: vec![],
                    lines: vec![text.clone()],
                });
            }
            a
        } else if upper.starts_with("RCPT TO:") && cur.is_none() {
            Act::reply("503 5.5.1 Error: need MAIL command")
        } else if upper == "DATA" && cur.as_ref().is_none_or(|c| c.rcpts.is_empty()) {
            Act::reply("554 5.5.1 Error: no valid recipients")
        } else if upper.starts_with("RCPT TO:") {
            let addr = text[8..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string();
            let s = sc();
            let a = s
                .rcpt_overrides
                .iter()
                .find(|(k, _)| *k == addr)
                .map(|(_, a)| a.clone())
                .unwrap_or(s.rcpt);
            if let (Act::Reply(r), Some(c)) = (&a, cur.as_mut()) {
                c.lines.push(text.clone());
                if r.starts_with('2') {
                    c.rcpts.push(addr);
                }
            }
            a
        } else if upper == "DATA" {
            let a = sc().data;
            if !matches!(&a, Act::Reply(s) if s.starts_with("354")) {
                a
            } else {
                if !send(&mut w, &a).await {
                    return None;
                }
                let mut data = Vec::new();
                let mut l = Vec::new();
                loop {
                    l.clear();
                    if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                        return None;
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
                }
                let end = sc().end;
                if matches!(&end, Act::Reply(s) if s.starts_with('2'))
                    && let Some(mut c) = cur.take()
                {
                    c.data = data;
                    ctx.got.lock().unwrap().push(c);
                    ctx.delivered.notify_waiters();
                }
                cur = None;
                end
            }
        } else if upper == "RSET" {
            cur = None;
            Act::reply("250 2.0.0 Ok")
        } else if upper == "QUIT" {
            let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
            return None;
        } else if upper == "NOOP" {
            Act::reply("250 2.0.0 Ok")
        } else {
            Act::reply("502 5.5.2 unknown")
        };
        if !send(&mut w, &act).await {
            return None;
        }
    }
}

/// A relay running in-process.
pub struct Relay {
    pub addrs: Addresses,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    pub fn smtp(&self) -> SocketAddr {
        self.addrs.smtp[0]
    }

    /// The pixel listener (the config must have `[http]`).
    pub fn http(&self) -> SocketAddr {
        self.addrs.http.expect("this relay has a pixel listener")
    }

    /// The admin listener (the config must have `[admin]`).
    pub fn admin(&self) -> SocketAddr {
        self.addrs.admin.expect("this relay has an admin listener")
    }

    /// Graceful shutdown; waits for the server to finish. Returns the relay's folder (its
    /// config, secrets and store), deleted when dropped.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        let Relay { dir, .. } = self;
        dir
    }
}

/// A config text for a relay on port 0 towards `upstream`, plus `extra` TOML appended.
pub fn config_text(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[smtp]
listen = ["127.0.0.1:0"]
hostname = "relay.test"
{extra_smtp}
[upstream]
address = "{upstream}"
command_timeout = 5
data_timeout = 5
connect_timeout = 5
[tracking]
base_url = "http://127.0.0.1:8080"
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
"#,
        extra_smtp = extra
    )
}

/// Starts a relay with `config` (TOML); relative paths land in a fresh temp dir.
pub async fn start_relay(config: &str) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("relay.toml"), config).unwrap();
    let cfg =
        Config::load(&dir.path().join("relay.toml")).unwrap_or_else(|e| panic!("config: {e}"));
    let server = Server::bind(cfg).await.unwrap();
    let addrs = server.addresses();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Relay {
        addrs,
        dir,
        stop: Some(tx),
        task: Some(task),
    }
}

/// A minimal SMTP client that speaks line by line.
pub struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    /// [`Client::connect`] from local address `from` (another loopback address, to tell
    /// clients apart in a peer's logs).
    pub async fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let s = sock.connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    /// Reads one full reply: (code, all text joined by '\n'). Code 0 = connection closed.
    pub async fn reply(&mut self) -> (u16, String) {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return (0, text.join("\n"));
            }
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            text.push(line.get(4..).unwrap_or("").trim_end().to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return (code, text.join("\n"));
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Reads until EOF (after QUIT or a 421).
    pub async fn rest(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = self.r.read_to_end(&mut v).await;
        v
    }

    /// Greeting + EHLO.
    pub async fn hello(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        assert_eq!(c.reply().await.0, 220);
        assert_eq!(c.cmd("EHLO client.test").await.0, 250);
        c
    }

    /// A whole transaction; returns the final reply. `data` is raw content (dot-stuffed here).
    pub async fn send_mail(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> (u16, String) {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if r.0 != 250 {
            return r;
        }
        let mut any = false;
        let mut last = (0, String::new());
        for rc in rcpts {
            last = self.cmd(&format!("RCPT TO:<{rc}>")).await;
            if last.0 == 250 {
                any = true;
            }
        }
        if !any {
            // No recipient accepted: that refusal is the answer; DATA would only say 554.
            assert_eq!(self.cmd("RSET").await.0, 250);
            return last;
        }
        let r = self.cmd("DATA").await;
        if r.0 != 354 {
            return r;
        }
        self.send(&dot_stuff(data)).await;
        self.reply().await
    }
}

/// Dot-stuffs CRLF content and appends the terminator.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut at_start = true;
    for &b in data {
        if at_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_start = b == b'\n';
    }
    if !data.is_empty() && !data.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Removes the first header block line(s) starting with "Received:" that the relay added.
pub fn strip_received(data: &[u8]) -> &[u8] {
    assert!(
        data.starts_with(b"Received: from "),
        "relay did not prepend Received: {:?}",
        String::from_utf8_lossy(&data[..data.len().min(200)])
    );
    let mut i = 0;
    loop {
        let end = data[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| i + p + 2)
            .unwrap_or(data.len());
        i = end;
        if i >= data.len() || (data[i] != b'\t' && data[i] != b' ') {
            return &data[i..];
        }
    }
}

/// The corpus folder, if `PIXELRELAY_CORPUS` is set (panics if set but missing).
pub fn corpus_dir() -> Option<PathBuf> {
    match std::env::var_os("PIXELRELAY_CORPUS") {
        None => {
            eprintln!("corpus tests did not run: PIXELRELAY_CORPUS not set");
            None
        }
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_dir(),
                "PIXELRELAY_CORPUS={} is not a directory",
                p.display()
            );
            Some(p)
        }
    }
}

/// `b` with every CRLF turned into LF (a lone CR stays).
pub fn to_lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for (i, &c) in b.iter().enumerate() {
        if !(c == b'\r' && b.get(i + 1) == Some(&b'\n')) {
            out.push(c);
        }
    }
    out
}

/// Every regular file below `dir`, sorted.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The message a capture-mode relay wrote into `outbox` (its `.eml`; the first if several).
#[allow(dead_code)] // Not every test binary relays in capture mode.
pub fn captured(outbox: &Path) -> Vec<u8> {
    let eml = files_below(outbox)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "eml"))
        .unwrap_or_else(|| panic!("no .eml captured in {}", outbox.display()));
    std::fs::read(eml).unwrap()
}

/// Whether `name` is on PATH (or in /usr/sbin).
pub fn have(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    for d in path.split(':').chain(["/usr/sbin", "/usr/bin"]) {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// A peer tool that the test suite needs: present, or the test fails when the suite was asked
/// to require peers (`PIXELRELAY_REQUIRE_PEERS=1`, set by scripts/test), else skips loudly.
pub fn need(name: &str) -> Option<PathBuf> {
    match have(name) {
        Some(p) => Some(p),
        None if std::env::var_os("PIXELRELAY_REQUIRE_PEERS").is_some() => {
            panic!("{name} is required but not installed")
        }
        None => {
            eprintln!("SKIPPED: {name} not installed (scripts/test installs it)");
            None
        }
    }
}

/// The `pixelrelay` binary running as a child process.
pub struct Proc {
    pub child: std::process::Child,
    /// The SMTP address it reported as ready.
    pub smtp: SocketAddr,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Runs `pixelrelay -c CONFIG serve` and waits for its "ready" line. Its log level is
    /// `info`, or `PIXELRELAY_TEST_LOG` (e.g. `debug`) when a test is being looked into.
    pub fn serve(config: &Path) -> Proc {
        Self::start(
            config,
            Some(std::env::var("PIXELRELAY_TEST_LOG").unwrap_or("info".into())),
        )
    }

    /// [`Proc::serve`] with the log level of the config's `log.level` (no `RUST_LOG`).
    #[allow(dead_code)] // Not every test binary looks at the configured level.
    pub fn serve_at_configured_level(config: &Path) -> Proc {
        Self::start(config, None)
    }

    fn start(config: &Path, rust_log: Option<String>) -> Proc {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pixelrelay"));
        cmd.arg("-c").arg(config).arg("serve");
        match rust_log {
            Some(level) => cmd.env("RUST_LOG", level),
            None => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn pixelrelay");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[pixelrelay] {line}");
                if let Some(i) = line.find("ready smtp=") {
                    let addr = line[i + 11..]
                        .split([' ', ','])
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let _ = tx.send(addr);
                } else if line.contains("\"message\":\"ready\"") {
                    // JSON log format.
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    let smtp = v["smtp"]
                        .as_str()
                        .unwrap_or("")
                        .split(',')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let _ = tx.send(smtp);
                }
                l.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(a) => a,
            Err(e) => {
                let status = child.try_wait();
                let lines = log.lock().unwrap();
                let tail = &lines[lines.len().saturating_sub(20)..];
                panic!(
                    "pixelrelay did not become ready ({e}; exit: {status:?}); its last lines:\n{}",
                    tail.join("\n")
                );
            }
        };
        Proc {
            child,
            smtp: addr.parse().expect("ready address"),
            log,
        }
    }

    /// The ready line (`serve` returns as soon as it has seen the line; its reader thread
    /// stores the line just after, so poll for it briefly).
    fn ready_line(&self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("ready smtp="))
                .cloned();
            if let Some(l) = found {
                return l;
            }
            assert!(std::time::Instant::now() < deadline, "no ready line");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The address after `name=` in the ready line.
    fn ready_addr(&self, name: &str) -> SocketAddr {
        let line = self.ready_line();
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {name}= address in the ready line: {line}"))
    }

    /// The pixel listener's address.
    #[allow(dead_code)] // Not every test binary asks a child process for it.
    pub fn http_addr(&self) -> SocketAddr {
        self.ready_addr("http")
    }

    /// The admin listener's address.
    #[allow(dead_code)] // Not every test binary asks a child process for it.
    pub fn admin_addr(&self) -> SocketAddr {
        self.ready_addr("admin")
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port for a peer that cannot report the port it bound.
#[allow(unused_imports)] // Not every test binary restarts a listener.
pub use pg::free_port_for_restarts;

pub fn free_port() -> u16 {
    unclaimed(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

/// The first port from `probe` (a bind to port 0, closed again) that this test process has
/// not handed out before.
pub fn unclaimed(probe: impl Fn() -> u16) -> u16 {
    loop {
        let port = probe();
        if pg::claim_port(port) {
            return port;
        }
    }
}

/// Polls until something accepts connections at `addr` (a peer started as a process).
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("nothing listening on {addr}");
}

/// Polls `cond` until it holds (up to `secs`), for peers that report nothing.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every pixel URL (`…/o/TOKEN.gif`) in the decoded HTML parts of `message`.
pub fn pixel_urls(message: &[u8]) -> Vec<String> {
    let Some(msg) = mail_parser::MessageParser::default().parse(message) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for part in msg.parts.iter() {
        if !part.is_text_html() {
            continue;
        }
        let Some(html) = part.text_contents() else {
            continue;
        };
        let mut rest = html;
        while let Some(i) = rest.find("src=\"") {
            rest = &rest[i + 5..];
            let end = rest.find('"').unwrap_or(rest.len());
            let url = &rest[..end];
            if url.contains("/o/") && url.ends_with(".gif") {
                out.push(url.to_string());
            }
            rest = &rest[end..];
        }
    }
    out
}

/// A plain HTTP/1.1 GET over loopback: (status, head, body).
pub async fn http_get(url: &str, user_agent: &str) -> (u16, String, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(host).await.unwrap();
    let req = format!(
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head, buf[split..].to_vec())
}

/// Headless Chromium's flags for tests: no sandbox or GPU, and nothing that reaches beyond
/// loopback on its own.
pub const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// Headless Chromium with the flags that keep it on loopback; `None` if not installed.
pub fn chromium(args: &[&str]) -> Option<std::process::Output> {
    let bin = need("chromium")?;
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("run chromium");
    Some(out)
}

/// GET an admin path with the relay's bearer token; the body (asserting 200).
pub async fn admin_text(relay: &Relay, path: &str) -> String {
    let token = std::fs::read_to_string(relay.dir.path().join("data/admin.token")).unwrap();
    let mut s = TcpStream::connect(relay.admin()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(buf.len());
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    String::from_utf8_lossy(&buf[split..]).to_string()
}

/// GET an admin API path with the relay's bearer token; the JSON body.
pub async fn admin_json(relay: &Relay, path: &str) -> serde_json::Value {
    serde_json::from_str(&admin_text(relay, path).await).unwrap()
}

/// Whether Debian's MaxMind::DB::Writer is installed (scripts/test installs it).
pub fn have_mmdb_writer() -> bool {
    let ok = std::process::Command::new("perl")
        .args(["-MMaxMind::DB::Writer::Tree", "-e1"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("PIXELRELAY_REQUIRE_PEERS").is_none(),
            "libmaxmind-db-writer-perl is required but not installed"
        );
        eprintln!("SKIPPED: libmaxmind-db-writer-perl not installed (scripts/test installs it)");
    }
    ok
}

/// Writes a MaxMind-format database with `tests/data/mmdb.pl`.
pub fn write_mmdb(out: &Path, kind: &str, rows: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mmdb.pl");
    let status = std::process::Command::new("perl")
        .arg(script)
        .arg(out)
        .arg(kind)
        .args(rows)
        .status()
        .expect("run perl");
    assert!(status.success(), "mmdb.pl {kind} failed");
}

/// `pixelrelay -c CONFIG ARGS...`, run to completion.
pub fn pixelrelay_cli(args: &[&str], config: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pixelrelay"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// A tracked message to `rcpt` (subject "Hi"), recorded straight in the store as handed
/// upstream at `sent_at` (ms since the epoch); its id.
pub fn delivered_message(
    store: &pixelrelay::store::Store,
    rcpt: &str,
    sent_at: u64,
) -> pixelrelay::token::MessageId {
    use pixelrelay::store::{Delivery, MessageRecord};
    let id = pixelrelay::token::MessageId::random();
    store
        .record_message(&MessageRecord {
            id,
            queue_id: "Q".into(),
            at_ms: sent_at - 100,
            sender: "news@example.com".into(),
            recipients: vec![rcpt.into()],
            message_id: Some("<m1@example.com>".into()),
            subject: Some("Hi".into()),
            size: 10,
            tracked: true,
            skip_reason: None,
        })
        .unwrap();
    let delivery = Delivery {
        accepted: true,
        reply: "250 ok".into(),
        at_ms: sent_at,
    };
    store.finish_message(&id, &delivery).unwrap();
    id
}

/// The rewrite policy the rewrite tests share: pixels under `http://127.0.0.1:8080/o/`, DKIM-
/// signed mail skipped, messages up to `max_rewrite_size` rewritten.
pub fn rewrite_policy(max_rewrite_size: u64) -> pixelrelay::rewrite::Policy {
    pixelrelay::rewrite::Policy {
        pixel_prefix: "http://127.0.0.1:8080/o/".into(),
        on_dkim_signed: pixelrelay::config::OnDkimSigned::Skip,
        opt_out_header: "X-Track-Opens".into(),
        sender_domains: Vec::new(),
        exclude_recipient_domains: Vec::new(),
        max_rewrite_size,
    }
}

/// What an SMTP client puts on the wire for a file: every line end as CRLF.
pub fn canonical(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'\r', Some(b'\n')) => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            (b'\r', _) | (b'\n', _) => out.extend_from_slice(b"\r\n"),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends `mail` from news@example.com to bob@example.net with swaks to `server`, asserting it
/// was accepted; `None` when swaks is not installed (a failure under `PIXELRELAY_REQUIRE_PEERS`).
pub fn swaks_send(server: SocketAddr, mail: &str) -> Option<()> {
    let swaks = need("swaks")?;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.eml");
    std::fs::write(&f, mail).unwrap();
    let out = std::process::Command::new(swaks)
        .args([
            "--server",
            &server.to_string(),
            "--from",
            "news@example.com",
            "--to",
            "bob@example.net",
        ])
        .arg("--data")
        .arg(format!("@{}", f.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Some(())
}

/// GET on an admin API with its token; the whole response as text, empty if it cannot connect
/// (blocking: fit for `eventually`).
#[allow(dead_code)] // Not every test binary asks the admin API of a child process.
pub fn admin_get_blocking(addr: SocketAddr, token: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
