//! `relay.toml` → typed, validated structs.
//!
//! The file is read once at start-up. Every key is checked, and *every* error is reported with
//! its key (`smtp.listen[1]: invalid socket address "x"`), so `check-config` can print them all at
//! once instead of making the admin fix one typo per run. Unknown keys are errors too: a
//! misspelt `max_recipents` silently ignored is worse than a refusal to start.
//!
//! Each subsystem receives only its own section (`SmtpConfig`, `UpstreamConfig`, ...). Relative
//! paths are resolved against the directory of the config file. This module does no IO beyond
//! reading the file; secrets are loaded by `secret`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::net::Cidr;

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the file this was read from (for messages and `tail`/`stats`).
    pub source: PathBuf,
    /// Inbound SMTP listener.
    pub smtp: SmtpConfig,
    /// Where accepted mail goes.
    pub upstream: UpstreamConfig,
    /// Pixel insertion policy.
    pub tracking: TrackingConfig,
    /// Public pixel listener.
    pub http: HttpConfig,
    /// Private admin listener.
    pub admin: AdminConfig,
    /// The sled store.
    pub store: StoreConfig,
    /// Log output.
    pub log: LogConfig,
    /// `[[webhooks]]`: endpoints told about opens (and messages).
    pub webhooks: Vec<WebhookConfig>,
}

/// What the relay does with bare `<LF>` or `<CR>` inside DATA (Postfix's `smtpd_forbid_bare_newline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNewline {
    /// Accept and forward them as canonical `<CRLF>` line ends.
    Normalize,
    /// Refuse the message with `550 5.5.2`.
    Reject,
}

/// `[smtp]`.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Plain SMTP listeners (STARTTLS when `[smtp.tls]` is set).
    pub listen: Vec<SocketAddr>,
    /// Name in the banner, the EHLO reply and the `Received:` header.
    pub hostname: String,
    /// Largest message accepted, advertised as SIZE and enforced with 552.
    pub max_message_size: u64,
    /// Most RCPTs in one transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Most simultaneous SMTP sessions; more get 421 and are closed.
    pub max_connections: usize,
    /// Most simultaneous sessions from one client IP.
    pub max_connections_per_ip: usize,
    /// Networks that may relay without AUTH.
    pub allow_networks: Vec<Cidr>,
    /// How long to wait for the next command (RFC 5321 4.5.3.2.7: 5 min).
    pub command_timeout: Duration,
    /// How long to wait for the next chunk of DATA (RFC 5321 4.5.3.2.5: 3 min).
    pub data_timeout: Duration,
    /// Protocol errors tolerated before the session is closed with 421.
    pub max_errors: u32,
    /// Bare newline policy inside DATA.
    pub bare_newline: BareNewline,
    /// After SIGTERM: how long in-flight transactions may run before sessions get 421.
    pub shutdown_grace: Duration,
    /// `[smtp.tls]`: inbound TLS, when configured.
    pub tls: Option<SmtpTlsConfig>,
    /// `[smtp.auth]`: SMTP AUTH.
    pub auth: AuthConfig,
}

/// `[smtp.tls]`.
#[derive(Debug, Clone)]
pub struct SmtpTlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Implicit-TLS listeners (port 465 style).
    pub implicit_listen: Vec<SocketAddr>,
    /// Refuse MAIL before STARTTLS (530 5.7.0).
    pub required: bool,
}

/// One `[[smtp.auth.users]]` entry.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthUser {
    /// Login name.
    pub name: String,
    /// argon2id PHC string from `pixelrelay hash-password`.
    pub hash: String,
}

/// `[smtp.auth]`.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Offer AUTH without TLS (lab use only).
    pub allow_plaintext: bool,
    /// Accounts allowed to relay from anywhere.
    pub users: Vec<AuthUser>,
}

/// TLS towards the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain TCP.
    None,
    /// STARTTLS, required: a server that does not offer it is a temporary failure.
    StartTls,
    /// TLS from the first byte (port 465 style).
    Implicit,
}

/// Where accepted messages go.
#[derive(Debug, Clone)]
pub enum UpstreamTarget {
    /// A real smarthost.
    Smtp {
        /// `host:port` as written (resolved at each connect).
        address: String,
    },
    /// Try-it mode: write each message into a folder.
    Capture {
        /// The folder.
        dir: PathBuf,
    },
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Smarthost or capture folder.
    pub target: UpstreamTarget,
    /// TLS mode.
    pub tls: UpstreamTls,
    /// Verify the upstream certificate (false only for labs; logged loudly).
    pub tls_verify: bool,
    /// Extra CA bundle (PEM) trusted besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Name used for SNI and certificate verification; default the host part of `address`.
    pub server_name: Option<String>,
    /// AUTH user name, if the upstream needs AUTH.
    pub auth_user: Option<String>,
    /// File holding the AUTH password (must be 0600).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the AUTH password.
    pub password_env: Option<String>,
    /// Name we give in EHLO; default `smtp.hostname`.
    pub helo: String,
    /// TCP connect (and TLS handshake) timeout.
    pub connect_timeout: Duration,
    /// Timeout for the greeting and each command reply.
    pub command_timeout: Duration,
    /// Timeout for the reply after the message has been sent.
    pub data_timeout: Duration,
    /// Idle connections kept for reuse.
    pub pool_size: usize,
    /// How long an idle connection is kept.
    pub pool_idle: Duration,
}

/// What to do with a message that already carries a DKIM signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDkimSigned {
    /// Forward it untouched (the pixel would break the signature).
    Skip,
    /// Insert the pixel anyway.
    Track,
}

/// `[tracking]`.
#[derive(Debug, Clone)]
pub struct TrackingConfig {
    /// Insert pixels at all.
    pub enabled: bool,
    /// Public URL prefix of the pixel (no trailing slash).
    pub base_url: String,
    /// HMAC key for tokens (generated 0600 when missing).
    pub secret_file: PathBuf,
    /// DKIM-signed mail policy.
    pub on_dkim_signed: OnDkimSigned,
    /// Header that opts a message out; always removed before forwarding.
    pub opt_out_header: String,
    /// When non-empty, only these sender domains are tracked.
    pub sender_domains: Vec<String>,
    /// Recipient domains never tracked.
    pub exclude_recipient_domains: Vec<String>,
    /// Larger messages are forwarded untouched.
    pub max_rewrite_size: u64,
    /// An open this soon after the relay handed the message upstream is marked as a machine
    /// (0: no timing rules at all).
    pub machine_window: Duration,
    /// A load from a `probable` catalogue network this soon after hand-off is a machine.
    pub probable_window: Duration,
    /// Network catalogue files, in order (later rows win ties).
    pub networks: Vec<NetworkSource>,
    /// MaxMind-format ASN database (`GeoLite2-ASN` layout), for the scanner-ASN rule.
    pub asn_db: Option<PathBuf>,
    /// MaxMind-format country database (`GeoLite2-Country` layout), for the `country` field.
    pub country_db: Option<PathBuf>,
}

/// One entry of `tracking.networks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkSource {
    /// `builtin:scanners.csv`: the copy of `contrib/networks/scanners.csv` built into the binary
    /// (the default when the key is absent).
    Builtin,
    /// A catalogue file (pixelrelay's format or Apple's egress list).
    File(PathBuf),
}

/// How `tracking.networks` names the built-in scanner list.
pub const BUILTIN_NETWORKS: &str = "builtin:scanners.csv";

/// `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Public pixel listener.
    pub listen: SocketAddr,
    /// Peers whose `X-Forwarded-For`/`Forwarded` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Time allowed to read a request's headers (slowloris).
    pub header_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// Most simultaneous connections on the pixel listener.
    pub max_connections: usize,
    /// Threads serving the pixel listener, each with its own event loop; 0: one per CPU.
    pub workers: usize,
    /// Serve HTTPS directly with this certificate chain and key (PEM), instead of plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Private listener: API, stream, dashboard, metrics.
    pub listen: SocketAddr,
    /// Bearer token file (generated 0600 when missing).
    pub token_file: PathBuf,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled directory.
    pub path: PathBuf,
    /// Keep message subjects.
    pub subjects: bool,
    /// Store IPv4 /24 and IPv6 /48 only.
    pub anonymize_ip: bool,
    /// Purge messages and opens older than this many days (0 = keep forever).
    pub retention_days: u32,
    /// sled flush interval: at most this much is lost on a power cut.
    pub flush_interval: Duration,
    /// Optional JSON-lines file of opens.
    pub open_log: Option<PathBuf>,
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// human | json.
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `pixelrelay=debug`.
    pub level: String,
}

/// Where a webhook's signing secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookSecret {
    /// A file of mode 0600 (read with `secret::read`).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// One `[[webhooks]]` endpoint.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// The HMAC key for `X-Pixelrelay-Signature`.
    pub secret: WebhookSecret,
    /// Send `open` events.
    pub open: bool,
    /// Send `message` events (each relayed message with its tracking decision and reply).
    pub message: bool,
    /// Time allowed for one attempt: connect, TLS, request and response.
    pub timeout: Duration,
    /// Extra request headers (names checked, values free of CR/LF).
    pub headers: Vec<(String, String)>,
    /// An event still undelivered this long after it happened goes to the dead letters.
    pub max_age: Duration,
    /// Requests in flight to this endpoint at most.
    pub concurrency: usize,
    /// First retry delay (doubled per failed attempt, with jitter). Not a TOML key: 1 s.
    pub retry_min: Duration,
    /// Longest retry delay. Not a TOML key: 10 min.
    pub retry_max: Duration,
}

impl WebhookConfig {
    /// An endpoint with the documented defaults (tests and tools build on this).
    pub fn new(url: &str, secret: WebhookSecret) -> WebhookConfig {
        WebhookConfig {
            url: url.to_string(),
            secret,
            open: true,
            message: false,
            timeout: Duration::from_secs(10),
            headers: Vec::new(),
            max_age: Duration::from_secs(86_400),
            concurrency: 4,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
        }
    }
}

/// Every problem found in a config file, each naming its key.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("cannot read: {e}")]))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let mut cfg = Self::parse(&text, &base)?;
        cfg.source = path.to_path_buf();
        Ok(cfg)
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("syntax: {}", e.message())]))?;
        let mut errors = Vec::new();
        let known = [
            "smtp", "upstream", "tracking", "http", "admin", "store", "log", "webhooks",
        ];
        for key in root.keys() {
            if !known.contains(&key.as_str()) {
                errors.push(format!("{key}: unknown section"));
            }
        }
        let mut r = Reader {
            root: &root,
            base,
            errors: &mut errors,
        };
        let smtp = read_smtp(&mut r);
        let upstream = read_upstream(&mut r, &smtp.hostname);
        let tracking = read_tracking(&mut r);
        let http = read_http(&mut r);
        let admin = read_admin(&mut r);
        let store = read_store(&mut r);
        let log = read_log(&mut r);
        let webhooks = read_webhooks(&mut r);
        if errors.is_empty() {
            Ok(Config {
                source: base.join("relay.toml"),
                smtp,
                upstream,
                tracking,
                http,
                admin,
                store,
                log,
                webhooks,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// One line for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.smtp.listen.iter().map(ToString::to_string).collect();
        let mode = match &self.upstream.target {
            UpstreamTarget::Smtp { address } => {
                format!("relay to {address} (tls={:?})", self.upstream.tls)
            }
            UpstreamTarget::Capture { dir } => {
                format!(
                    "CAPTURE mode: messages are written to {} and not relayed",
                    dir.display()
                )
            }
        };
        let hooks = match self.webhooks.len() {
            0 => String::new(),
            1 => "; 1 webhook".to_string(),
            n => format!("; {n} webhooks"),
        };
        format!(
            "ok: smtp on {} -> {mode}; pixel http://{}; admin http://{}; store {}{hooks}",
            listen.join(","),
            self.http.listen,
            self.admin.listen,
            self.store.path.display()
        )
    }
}

/// Walks the TOML tree, collecting errors instead of stopping at the first.
struct Reader<'a> {
    root: &'a toml::Table,
    base: &'a Path,
    errors: &'a mut Vec<String>,
}

/// One `[section]` being read; remembers which keys were used so that the rest are reported.
struct Section<'r, 'a> {
    name: String,
    table: Option<&'a toml::Table>,
    used: BTreeSet<&'static str>,
    r: &'r mut Reader<'a>,
}

impl<'a> Reader<'a> {
    /// `[parent.name]`, reported as `label`.
    fn subsection<'r>(
        &'r mut self,
        parent: &str,
        name: &str,
        label: &'static str,
    ) -> Section<'r, 'a> {
        let table = match self.root.get(parent).and_then(|p| p.get(name)) {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                self.errors
                    .push(format!("{label}: must be a table ([{label}])"));
                None
            }
        };
        Section {
            name: label.to_string(),
            table,
            used: BTreeSet::new(),
            r: self,
        }
    }

    fn section<'r>(&'r mut self, name: &'static str) -> Section<'r, 'a> {
        let table = match self.root.get(name) {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => {
                self.errors
                    .push(format!("{name}: must be a table ([{name}])"));
                None
            }
        };
        Section {
            name: name.to_string(),
            table,
            used: BTreeSet::new(),
            r: self,
        }
    }

    /// One table of an array of tables (`[[name]]`), reported as `label` (`webhooks[0]`).
    fn item<'r>(&'r mut self, label: String, table: &'a toml::Table) -> Section<'r, 'a> {
        Section {
            name: label,
            table: Some(table),
            used: BTreeSet::new(),
            r: self,
        }
    }
}

impl Section<'_, '_> {
    fn err(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.r.errors.push(format!("{}.{key}: {msg}", self.name));
    }

    fn raw(&mut self, key: &'static str) -> Option<toml::Value> {
        self.used.insert(key);
        self.table.and_then(|t| t.get(key)).cloned()
    }

    /// A key of any deserialisable type, or `default` (with an error) when it is wrong.
    fn get<T: DeserializeOwned>(&mut self, key: &'static str, default: T) -> T {
        match self.raw(key) {
            None => default,
            Some(v) => match v.try_into::<T>() {
                Ok(t) => t,
                Err(e) => {
                    self.err(key, e.message().trim());
                    default
                }
            },
        }
    }

    fn opt<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        match self.raw(key) {
            None => None,
            Some(v) => match v.try_into::<T>() {
                Ok(t) => Some(t),
                Err(e) => {
                    self.err(key, e.message().trim());
                    None
                }
            },
        }
    }

    fn positive(&mut self, key: &'static str, default: u64) -> u64 {
        let v = self.get::<i64>(key, default as i64);
        if v <= 0 {
            self.err(key, format!("must be a positive number, not {v}"));
            return default;
        }
        v as u64
    }

    /// A whole number from 0 to `max`.
    fn count(&mut self, key: &'static str, default: u64, max: u64) -> u64 {
        let v = self.get::<i64>(key, default as i64);
        if v < 0 || v as u64 > max {
            self.err(key, format!("must be a number from 0 to {max}, not {v}"));
            return default;
        }
        v as u64
    }

    fn seconds(&mut self, key: &'static str, default: u64) -> Duration {
        Duration::from_secs(self.positive(key, default))
    }

    fn millis(&mut self, key: &'static str, default: u64) -> Duration {
        Duration::from_millis(self.positive(key, default))
    }

    fn addr(&mut self, key: &'static str, default: &str) -> SocketAddr {
        let s = self.get::<String>(key, default.to_string());
        parse_addr(&s).unwrap_or_else(|e| {
            self.err(key, e);
            fallback_addr()
        })
    }

    fn addrs(&mut self, key: &'static str, default: &[&str]) -> Vec<SocketAddr> {
        let list = self.get::<Vec<String>>(key, default.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match parse_addr(s) {
                Ok(a) => out.push(a),
                Err(e) => self.r.errors.push(format!("{}.{key}[{i}]: {e}", self.name)),
            }
        }
        if out.is_empty() && !list.is_empty() {
            return out;
        }
        if list.is_empty() {
            self.err(key, "needs at least one address");
        }
        out
    }

    fn cidrs(&mut self, key: &'static str, default: &[&str]) -> Vec<Cidr> {
        let list = self.get::<Vec<String>>(key, default.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.parse::<Cidr>() {
                Ok(c) => out.push(c),
                Err(e) => self.r.errors.push(format!("{}.{key}[{i}]: {e}", self.name)),
            }
        }
        out
    }

    fn path(&mut self, key: &'static str, default: &str) -> PathBuf {
        let s = self.get::<String>(key, default.to_string());
        if s.is_empty() {
            self.err(key, "must not be empty");
        }
        self.r.base.join(s)
    }

    fn opt_path(&mut self, key: &'static str) -> Option<PathBuf> {
        self.opt::<String>(key).map(|s| self.r.base.join(s))
    }

    /// An optional path where `""` also means none.
    fn opt_path_or_none(&mut self, key: &'static str) -> Option<PathBuf> {
        self.opt::<String>(key)
            .filter(|s| !s.is_empty())
            .map(|s| self.r.base.join(s))
    }

    fn choice<T: Copy>(&mut self, key: &'static str, default: T, options: &[(&str, T)]) -> T {
        let Some(s) = self.opt::<String>(key) else {
            return default;
        };
        match options.iter().find(|(n, _)| *n == s) {
            Some((_, v)) => *v,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.err(key, format!("\"{s}\" is not one of {}", names.join(" | ")));
                default
            }
        }
    }

    fn domains(&mut self, key: &'static str) -> Vec<String> {
        let list = self.get::<Vec<String>>(key, Vec::new());
        let mut out = Vec::new();
        for (i, d) in list.iter().enumerate() {
            let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
            if d.is_empty() || d.contains(char::is_whitespace) || d.contains('@') {
                self.r
                    .errors
                    .push(format!("{}.{key}[{i}]: \"{d}\" is not a domain", self.name));
            } else {
                out.push(d);
            }
        }
        out
    }

    /// Reports keys present in the file that nobody read.
    fn finish(self) {
        let Some(t) = self.table else { return };
        for key in t.keys() {
            if !self.used.contains(key.as_str()) {
                self.r
                    .errors
                    .push(format!("{}.{key}: unknown key", self.name));
            }
        }
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "invalid socket address \"{s}\" (expected IP:PORT, e.g. 127.0.0.1:2525 or [::1]:2525)"
        )
    })
}

fn fallback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn read_smtp(r: &mut Reader<'_>) -> SmtpConfig {
    let mut s = r.section("smtp");
    let listen = s.addrs("listen", &["127.0.0.1:2525"]);
    let hostname = s.get::<String>("hostname", "pixelrelay.localdomain".into());
    if hostname.is_empty() || hostname.contains(|c: char| c.is_whitespace() || c.is_control()) {
        s.err("hostname", format!("\"{hostname}\" is not a host name"));
    }
    let cfg = SmtpConfig {
        listen,
        hostname,
        max_message_size: s.positive("max_message_size", 52_428_800),
        max_recipients: s.positive("max_recipients", 100) as usize,
        max_connections: s.positive("max_connections", 1000) as usize,
        max_connections_per_ip: s.positive("max_connections_per_ip", 100) as usize,
        allow_networks: s.cidrs("allow_networks", &["127.0.0.0/8", "::1/128"]),
        command_timeout: s.seconds("command_timeout", 300),
        data_timeout: s.seconds("data_timeout", 180),
        max_errors: s.positive("max_errors", 10) as u32,
        bare_newline: s.choice(
            "bare_newline",
            BareNewline::Normalize,
            &[
                ("normalize", BareNewline::Normalize),
                ("reject", BareNewline::Reject),
            ],
        ),
        shutdown_grace: s.seconds("shutdown_grace", 30),
        tls: None,
        auth: AuthConfig::default(),
    };
    // Sub-tables are read below; mark them as known.
    let (has_tls, has_auth) = (s.raw("tls").is_some(), s.raw("auth").is_some());
    s.finish();
    let mut cfg = cfg;
    if has_tls {
        let mut t = r.subsection("smtp", "tls", "smtp.tls");
        let cert = t.path("cert", "");
        let key = t.path("key", "");
        for (k, p) in [("cert", &cert), ("key", &key)] {
            if let Err(e) = std::fs::File::open(p) {
                t.err(k, format!("cannot read {}: {e}", p.display()));
            }
        }
        let implicit_listen = t.get::<Vec<String>>("implicit_listen", Vec::new());
        let mut addrs = Vec::new();
        for (i, a) in implicit_listen.iter().enumerate() {
            match parse_addr(a) {
                Ok(a) => addrs.push(a),
                Err(e) => {
                    t.r.errors
                        .push(format!("smtp.tls.implicit_listen[{i}]: {e}"))
                }
            }
        }
        let required = t.get("required", false);
        t.finish();
        cfg.tls = Some(SmtpTlsConfig {
            cert,
            key,
            implicit_listen: addrs,
            required,
        });
    }
    if has_auth {
        let mut a = r.subsection("smtp", "auth", "smtp.auth");
        let allow_plaintext = a.get("allow_plaintext", false);
        let users = a.get::<Vec<AuthUser>>("users", Vec::new());
        for (i, u) in users.iter().enumerate() {
            if u.name.is_empty() || u.name.contains(|c: char| c.is_control()) {
                a.r.errors
                    .push(format!("smtp.auth.users[{i}].name: invalid user name"));
            }
            if !u.hash.starts_with("$argon2id$") || argon2::PasswordHash::new(&u.hash).is_err() {
                a.r.errors.push(format!(
                    "smtp.auth.users[{i}].hash: not an argon2id hash (make one with `pixelrelay hash-password`)"
                ));
            }
        }
        a.finish();
        cfg.auth = AuthConfig {
            allow_plaintext,
            users,
        };
    }
    cfg
}

fn read_upstream(r: &mut Reader<'_>, hostname: &str) -> UpstreamConfig {
    let mut s = r.section("upstream");
    let address = s.opt::<String>("address");
    let capture = s.opt_path("capture_dir");
    let target = match (address, capture) {
        (Some(_), Some(_)) => {
            s.err(
                "capture_dir",
                "set either upstream.address or upstream.capture_dir, not both",
            );
            UpstreamTarget::Smtp {
                address: String::new(),
            }
        }
        (Some(a), None) => {
            if let Err(e) = split_host_port(&a) {
                s.err("address", e);
            }
            UpstreamTarget::Smtp { address: a }
        }
        (None, Some(dir)) => UpstreamTarget::Capture { dir },
        (None, None) => {
            s.err("address", "missing: set upstream.address (the smarthost) or upstream.capture_dir (try-it mode)");
            UpstreamTarget::Smtp {
                address: String::new(),
            }
        }
    };
    let cfg = UpstreamConfig {
        target,
        tls: s.choice(
            "tls",
            UpstreamTls::None,
            &[
                ("none", UpstreamTls::None),
                ("starttls", UpstreamTls::StartTls),
                ("implicit", UpstreamTls::Implicit),
            ],
        ),
        tls_verify: s.get("tls_verify", true),
        ca_file: s.opt_path("ca_file"),
        server_name: s.opt("server_name"),
        auth_user: s.opt("auth_user"),
        password_file: s.opt_path("password_file"),
        password_env: s.opt("password_env"),
        helo: s.get("helo", hostname.to_string()),
        connect_timeout: s.seconds("connect_timeout", 10),
        command_timeout: s.seconds("command_timeout", 120),
        data_timeout: s.seconds("data_timeout", 300),
        pool_size: s.get::<u32>("pool_size", 16) as usize,
        pool_idle: s.seconds("pool_idle", 30),
    };
    if cfg.auth_user.is_some() && cfg.password_file.is_none() && cfg.password_env.is_none() {
        s.err(
            "auth_user",
            "needs upstream.password_file or upstream.password_env (never a password in the TOML)",
        );
    }
    if cfg.password_file.is_some() && cfg.password_env.is_some() {
        s.err(
            "password_env",
            "set either upstream.password_file or upstream.password_env, not both",
        );
    }
    if s.raw("password").is_some() {
        s.err("password", "passwords are not read from relay.toml: use upstream.password_file or upstream.password_env");
    }
    s.finish();
    cfg
}

/// Splits `host:port` (`[v6]:port` too). Used for the upstream address, which may be a name.
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("invalid address \"{s}\" (expected HOST:PORT, e.g. 127.0.0.1:25)");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h.to_string(), p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
        if h.contains(':') {
            return Err(bad());
        }
        (h.to_string(), p)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

fn read_tracking(r: &mut Reader<'_>) -> TrackingConfig {
    let mut s = r.section("tracking");
    let base_url = s.get::<String>("base_url", "http://127.0.0.1:8080".into());
    if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
        || base_url
            .contains(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '>' || c == '\'')
    {
        s.err("base_url", format!("\"{base_url}\" is not an http(s) URL"));
    }
    let opt_out_header = s.get::<String>("opt_out_header", "X-Track-Opens".into());
    if opt_out_header.is_empty()
        || !opt_out_header
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':')
    {
        s.err(
            "opt_out_header",
            format!("\"{opt_out_header}\" is not a header name"),
        );
    }
    let cfg = TrackingConfig {
        enabled: s.get("enabled", true),
        base_url: base_url.trim_end_matches('/').to_string(),
        secret_file: s.path("secret_file", "data/secret.key"),
        on_dkim_signed: s.choice(
            "on_dkim_signed",
            OnDkimSigned::Skip,
            &[("skip", OnDkimSigned::Skip), ("track", OnDkimSigned::Track)],
        ),
        opt_out_header,
        sender_domains: s.domains("sender_domains"),
        exclude_recipient_domains: s.domains("exclude_recipient_domains"),
        max_rewrite_size: s.positive("max_rewrite_size", 26_214_400),
        machine_window: Duration::from_secs(s.count("machine_window", 30, 86_400)),
        probable_window: Duration::from_secs(s.count("probable_window", 900, 7 * 86_400)),
        networks: networks(&mut s),
        asn_db: s.opt_path_or_none("asn_db"),
        country_db: s.opt_path_or_none("country_db"),
    };
    s.finish();
    cfg
}

/// `tracking.networks`: absent means the built-in scanner list.
fn networks(s: &mut Section<'_, '_>) -> Vec<NetworkSource> {
    let Some(list) = s.opt::<Vec<String>>("networks") else {
        return vec![NetworkSource::Builtin];
    };
    let mut out = Vec::new();
    for (i, f) in list.iter().enumerate() {
        if f == BUILTIN_NETWORKS {
            out.push(NetworkSource::Builtin);
        } else if f.trim().is_empty() {
            s.err(&format!("networks[{i}]"), "must not be empty");
        } else {
            out.push(NetworkSource::File(s.r.base.join(f)));
        }
    }
    out
}

fn read_http(r: &mut Reader<'_>) -> HttpConfig {
    let mut s = r.section("http");
    let cfg = HttpConfig {
        listen: s.addr("listen", "127.0.0.1:8080"),
        trusted_proxies: s.cidrs("trusted_proxies", &[]),
        header_timeout: s.seconds("header_timeout", 10),
        idle_timeout: s.seconds("idle_timeout", 60),
        max_connections: s.positive("max_connections", 10_000) as usize,
        workers: s.count("workers", 0, 1024) as usize,
        tls: None,
    };
    let (cert, key) = (s.opt_path("tls_cert"), s.opt_path("tls_key"));
    let mut cfg = cfg;
    match (cert, key) {
        (Some(c), Some(k)) => {
            for (name, p) in [("tls_cert", &c), ("tls_key", &k)] {
                if let Err(e) = std::fs::File::open(p) {
                    s.err(name, format!("cannot read {}: {e}", p.display()));
                }
            }
            cfg.tls = Some((c, k));
        }
        (None, None) => {}
        (Some(_), None) => s.err("tls_key", "missing: http.tls_cert needs http.tls_key"),
        (None, Some(_)) => s.err("tls_cert", "missing: http.tls_key needs http.tls_cert"),
    }
    s.finish();
    cfg
}

fn read_admin(r: &mut Reader<'_>) -> AdminConfig {
    let mut s = r.section("admin");
    let cfg = AdminConfig {
        listen: s.addr("listen", "127.0.0.1:8081"),
        token_file: s.path("token_file", "data/admin.token"),
    };
    s.finish();
    cfg
}

fn read_store(r: &mut Reader<'_>) -> StoreConfig {
    let mut s = r.section("store");
    let cfg = StoreConfig {
        path: s.path("path", "data/pixelrelay.db"),
        subjects: s.get("subjects", false),
        anonymize_ip: s.get("anonymize_ip", false),
        retention_days: s.get::<u32>("retention_days", 0),
        flush_interval: s.millis("flush_interval_ms", 500),
        open_log: s.opt_path("open_log"),
    };
    s.finish();
    cfg
}

fn read_log(r: &mut Reader<'_>) -> LogConfig {
    let mut s = r.section("log");
    let cfg = LogConfig {
        format: s.choice(
            "format",
            LogFormat::Human,
            &[("human", LogFormat::Human), ("json", LogFormat::Json)],
        ),
        level: s.get("level", "info".to_string()),
    };
    s.finish();
    cfg
}

/// Headers a webhook may not set: the request framing and the signature are pixelrelay's.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "x-pixelrelay-timestamp",
    "x-pixelrelay-signature",
];

/// Checks a webhook URL: http or https, with a host. Shared with `notify`.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("\"{url}\" is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("\"{url}\" is not an http:// or https:// URL")),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("\"{url}\" has no host")),
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "\"{url}\": credentials in the URL are not supported (use headers)"
        ));
    }
    Ok(())
}

fn read_webhooks(r: &mut Reader<'_>) -> Vec<WebhookConfig> {
    let root = r.root;
    let items = match root.get("webhooks") {
        None => return Vec::new(),
        Some(toml::Value::Array(a)) => a,
        Some(_) => {
            r.errors
                .push("webhooks: must be an array of tables ([[webhooks]])".to_string());
            return Vec::new();
        }
    };
    let mut out: Vec<WebhookConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(table) = item.as_table() else {
            r.errors
                .push(format!("webhooks[{i}]: must be a table ([[webhooks]])"));
            continue;
        };
        let mut s = r.item(format!("webhooks[{i}]"), table);
        let url = match s.opt::<String>("url") {
            Some(u) => {
                if let Err(e) = check_webhook_url(&u) {
                    s.err("url", e);
                } else if out.iter().any(|w| w.url == u) {
                    s.err("url", format!("\"{u}\" is configured twice"));
                }
                u
            }
            None => {
                s.err("url", "missing");
                String::new()
            }
        };
        let file = s.opt_path("secret_file");
        let env = s.opt::<String>("secret_env");
        let secret = match (file, env) {
            (Some(_), Some(e)) => {
                s.err(
                    "secret_env",
                    "set either secret_file or secret_env, not both",
                );
                WebhookSecret::Env(e)
            }
            (Some(p), None) => {
                if let Err(e) = crate::secret::read(&p) {
                    s.err("secret_file", e);
                }
                WebhookSecret::File(p)
            }
            (None, Some(e)) => {
                if e.is_empty() {
                    s.err("secret_env", "must name an environment variable");
                }
                WebhookSecret::Env(e)
            }
            (None, None) => {
                s.err(
                    "secret_file",
                    "missing: set secret_file (mode 0600) or secret_env (never a secret in the TOML)",
                );
                WebhookSecret::Env(String::new())
            }
        };
        if s.raw("secret").is_some() {
            s.err(
                "secret",
                "secrets are not read from relay.toml: use secret_file or secret_env",
            );
        }
        let events = s.get::<Vec<String>>("events", vec!["open".to_string()]);
        let (mut open, mut message) = (false, false);
        for (j, e) in events.iter().enumerate() {
            match e.as_str() {
                "open" => open = true,
                "message" => message = true,
                other => s.err(
                    &format!("events[{j}]"),
                    format!("\"{other}\" is not one of open | message"),
                ),
            }
        }
        if events.is_empty() {
            s.err("events", "needs at least one of open | message");
        }
        let mut headers = Vec::new();
        for (name, v) in s
            .get::<toml::Table>("headers", toml::Table::new())
            .into_iter()
        {
            let Some(value) = v.as_str() else {
                s.err(&format!("headers.{name}"), "must be a string");
                continue;
            };
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !name_ok {
                s.err(&format!("headers.{name}"), "is not a header name");
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                s.err(&format!("headers.{name}"), "is set by pixelrelay itself");
            } else if value.contains(['\r', '\n', '\0']) {
                s.err(&format!("headers.{name}"), "must not contain CR, LF or NUL");
            } else {
                headers.push((name, value.to_string()));
            }
        }
        let mut cfg = WebhookConfig::new(&url, secret);
        cfg.open = open;
        cfg.message = message;
        cfg.headers = headers;
        cfg.timeout = s.seconds("timeout", 10);
        cfg.max_age = s.seconds("max_age", 86_400);
        let concurrency = s.positive("concurrency", 4);
        if concurrency > 1024 {
            s.err("concurrency", format!("{concurrency} is more than 1024"));
        }
        cfg.concurrency = concurrency.min(1024) as usize;
        s.finish();
        out.push(cfg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("/etc/pixelrelay"))
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolves_paths() {
        let c = parse("[upstream]\naddress = \"127.0.0.1:25\"\n").expect("valid");
        assert_eq!(
            c.smtp.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.smtp.max_message_size, 52_428_800);
        assert_eq!(
            c.store.path,
            Path::new("/etc/pixelrelay/data/pixelrelay.db")
        );
        assert_eq!(c.tracking.on_dkim_signed, OnDkimSigned::Skip);
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let text = r#"
            [smtp]
            listen = ["127.0.0.1:2525", "nonsense"]
            max_recipents = 5
            max_recipients = -1
            [upstream]
            address = "127.0.0.1:25"
            tls = "sometimes"
            [http]
            listen = "localhost"
            workers = -2
            [bogus]
        "#;
        let errs = parse(text).expect_err("invalid").0;
        let joined = errs.join("\n");
        for needle in [
            "smtp.listen[1]: invalid socket address \"nonsense\"",
            "smtp.max_recipents: unknown key",
            "smtp.max_recipients: must be a positive number",
            "upstream.tls: \"sometimes\" is not one of none | starttls | implicit",
            "http.listen: invalid socket address \"localhost\"",
            "http.workers: must be a number from 0 to 1024, not -2",
            "bogus: unknown section",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert_eq!(errs.len(), 7, "{joined}");
    }

    #[test]
    fn address_and_capture_are_exclusive_and_one_is_required() {
        let e = parse("[upstream]\naddress = \"127.0.0.1:25\"\ncapture_dir = \"out\"\n")
            .expect_err("both");
        assert!(e.0[0].starts_with("upstream.capture_dir:"), "{e}");
        let e = parse("").expect_err("neither");
        assert!(e.0[0].starts_with("upstream.address: missing"), "{e}");
        let c = parse("[upstream]\ncapture_dir = \"data/outbox\"\n").expect("capture");
        assert!(
            matches!(c.upstream.target, UpstreamTarget::Capture { ref dir } if dir.ends_with("data/outbox"))
        );
    }

    #[test]
    fn password_in_toml_is_refused() {
        let e = parse("[upstream]\naddress = \"h:25\"\nauth_user = \"u\"\npassword = \"x\"\n")
            .expect_err("refused");
        let j = e.to_string();
        assert!(j.contains("upstream.password:"), "{j}");
        assert!(j.contains("upstream.auth_user: needs"), "{j}");
    }

    #[test]
    fn tls_and_auth_subsections() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.pem"), "x").unwrap();
        let text = r#"
            [smtp.tls]
            cert = "c.pem"
            key = "missing.pem"
            implicit_listen = ["127.0.0.1:4650", "bad"]
            colour = "blue"
            [smtp.auth]
            allow_plaintext = true
            [[smtp.auth.users]]
            name = "alice"
            hash = "plaintext"
            [upstream]
            address = "127.0.0.1:25"
        "#;
        let errs = Config::parse(text, dir.path())
            .expect_err("invalid")
            .to_string();
        for needle in [
            "smtp.tls.key: cannot read",
            "smtp.tls.implicit_listen[1]: invalid socket address",
            "smtp.tls.colour: unknown key",
            "smtp.auth.users[0].hash: not an argon2id hash",
        ] {
            assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
        }
        assert!(!errs.contains("smtp.tls.cert"), "{errs}");
        assert!(!errs.contains("smtp.tls: unknown"), "{errs}");
    }

    #[test]
    fn webhooks_are_read_and_checked_with_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("hook.secret");
        std::fs::write(&good, "s3cret\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        let open = dir.path().join("open.secret");
        std::fs::write(&open, "s3cret\n").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = r#"
            [upstream]
            address = "127.0.0.1:25"
            [[webhooks]]
            url = "https://hooks.example.com/pixel?x=1"
            secret_file = "hook.secret"
            events = ["open", "message"]
            timeout = 3
            max_age = 600
            concurrency = 2
            headers = { Authorization = "Bearer abc" }
            [[webhooks]]
            url = "http://127.0.0.1:9000/"
            secret_env = "HOOK_SECRET"
        "#;
        let c = Config::parse(text, dir.path()).expect("valid");
        assert_eq!(c.webhooks.len(), 2);
        let w = &c.webhooks[0];
        assert_eq!(w.secret, WebhookSecret::File(good.clone()));
        assert!(w.open && w.message);
        assert_eq!(w.timeout, Duration::from_secs(3));
        assert_eq!(w.max_age, Duration::from_secs(600));
        assert_eq!(w.concurrency, 2);
        assert_eq!(
            w.headers,
            vec![("Authorization".into(), "Bearer abc".into())]
        );
        let d = &c.webhooks[1];
        assert!(d.open && !d.message);
        assert_eq!(d.timeout, Duration::from_secs(10));
        assert_eq!(d.max_age, Duration::from_secs(86_400));
        assert_eq!(d.concurrency, 4);

        let bad = r#"
            [upstream]
            address = "127.0.0.1:25"
            [[webhooks]]
            url = "ftp://example.com/"
            secret_file = "open.secret"
            events = ["click"]
            headers = { "X-A" = "a\r\nInjected: yes", Host = "evil", "bad name" = "v" }
            concurrency = 0
            colour = "blue"
            [[webhooks]]
            secret = "inline"
        "#;
        let errs = Config::parse(bad, dir.path())
            .expect_err("invalid")
            .to_string();
        for needle in [
            "webhooks[0].url: \"ftp://example.com/\" is not an http:// or https:// URL",
            "webhooks[0].secret_file:",
            "chmod 600",
            "webhooks[0].events[0]: \"click\" is not one of open | message",
            "webhooks[0].headers.X-A: must not contain CR, LF or NUL",
            "webhooks[0].headers.Host: is set by pixelrelay itself",
            "webhooks[0].headers.bad name: is not a header name",
            "webhooks[0].concurrency: must be a positive number",
            "webhooks[0].colour: unknown key",
            "webhooks[1].url: missing",
            "webhooks[1].secret_file: missing",
            "webhooks[1].secret: secrets are not read from relay.toml",
        ] {
            assert!(errs.contains(needle), "missing {needle:?} in:\n{errs}");
        }
        let e = parse("[upstream]\naddress = \"h:25\"\n[webhooks]\nurl = \"http://x/\"\n")
            .expect_err("not an array");
        assert!(
            e.to_string()
                .contains("webhooks: must be an array of tables"),
            "{e}"
        );
    }

    #[test]
    fn host_port_split() {
        assert_eq!(
            split_host_port("mx.example.net:25").unwrap(),
            ("mx.example.net".into(), 25)
        );
        assert_eq!(split_host_port("[::1]:2525").unwrap(), ("::1".into(), 2525));
        assert!(split_host_port("::1:25").is_err());
        assert!(split_host_port("host").is_err());
        assert!(split_host_port("host:0").is_err());
    }
}
