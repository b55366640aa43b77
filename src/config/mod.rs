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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::net::Cidr;

mod acme;
mod checks;
mod http;
mod milter;
mod reader;
mod sections;

pub use acme::{AcmeConfig, LETS_ENCRYPT};
pub use checks::{SEARCH, locate};
pub use milter::{MilterConfig, MilterListen};
use reader::Reader;
use sections::*;
pub use sections::{check_webhook_url, split_host_port};

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
    /// Public pixel listener; `None` (no `[http]` section): this node serves no pixels.
    pub http: Option<HttpConfig>,
    /// Private admin listener; `None` (no `[admin]` section): no admin API on this node.
    pub admin: Option<AdminConfig>,
    /// The sled store.
    pub store: StoreConfig,
    /// Log output.
    pub log: LogConfig,
    /// `[[webhooks]]`: endpoints told about opens (and messages).
    pub webhooks: Vec<WebhookConfig>,
    /// The milter front end; `None` (no `[milter]` section): no milter on this node.
    pub milter: Option<MilterConfig>,
    /// The file's TOML as written (a reload compares it key by key with the new file's).
    pub raw: toml::Table,
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
    /// Most bytes of messages held in memory at once, all transactions together; past it
    /// MAIL with a `SIZE=` that does not fit and DATA get 452 4.3.1 (`budget.rs`). Default: a
    /// quarter of the machine's (or the cgroup's) memory, at least one largest message.
    pub max_inflight_bytes: u64,
    /// Most RCPTs in one transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// One recipient per transaction: `LIMITS RCPTMAX=1` advertised (RFC 9422) and a second
    /// RCPT answered 452 4.5.3, so that the client sends every recipient a message of its own
    /// (each then tracked) without `smtp_destination_recipient_limit = 1`.
    pub one_recipient_per_transaction: bool,
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
    /// No `[upstream]` section on a node that takes no SMTP (`smtp.listen = []`): a pixel,
    /// admin or milter node relays nothing.
    None,
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
    /// Send Postfix's `XFORWARD` (the original client's name, address, port, protocol, HELO,
    /// queue id, source) before each MAIL when the upstream offers it.
    pub xforward: bool,
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
    /// Older token keys that still verify during a rotation (never generated, never minting).
    pub previous_secret_files: Vec<PathBuf>,
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
    /// Rewrite the links of a tracked message's HTML part to signed redirects.
    pub clicks: bool,
    /// Links whose URL contains one of these (ASCII case-insensitive) are left alone.
    pub click_exclude: Vec<String>,
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
    /// `[http.acme]`: HTTPS with a certificate obtained and renewed from an ACME CA.
    pub acme: Option<AcmeConfig>,
}

impl Default for HttpConfig {
    /// The values an `[http]` section with no keys gets (the pixel state of a node without a
    /// pixel listener is built from them too).
    fn default() -> HttpConfig {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trusted_proxies: Vec::new(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            workers: 0,
            tls: None,
            acme: None,
        }
    }
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
    /// `backend = "postgres"`: the shared database (`None`: sled at `path`).
    pub postgres: Option<PostgresConfig>,
}

/// `[store] backend = "postgres"`: where the shared store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `postgres://USER@HOST:PORT/DB` (never with a password in it).
    pub url: String,
    /// The password, 0600 (else `PIXELRELAY_PG_PASSWORD` in the environment, else none).
    pub password_file: Option<PathBuf>,
    /// With `sslmode=require` in the URL: CA certificates (PEM) trusted besides the public
    /// roots, for a database with a certificate of a private CA.
    pub ca_file: Option<PathBuf>,
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
    /// Send `click` events.
    pub click: bool,
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
            click: false,
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
            .map_err(|e: toml::de::Error| ConfigErrors(vec![checks::syntax(text, &e)]))?;
        let mut errors = Vec::new();
        let known = [
            "smtp", "upstream", "tracking", "http", "admin", "store", "log", "webhooks", "milter",
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
        let smtp_off = smtp.listen.is_empty()
            && smtp
                .tls
                .as_ref()
                .is_none_or(|t| t.implicit_listen.is_empty());
        let upstream = read_upstream(&mut r, &smtp.hostname, smtp_off);
        let tracking = read_tracking(&mut r);
        let http = http::read_http(&mut r);
        let admin = http::read_admin(&mut r);
        let store = read_store(&mut r);
        let log = read_log(&mut r);
        let webhooks = read_webhooks(&mut r);
        let milter = milter::read_milter(&mut r);
        // Only for an otherwise valid config: a listen address that did not parse is already
        // the error to fix.
        if errors.is_empty() && smtp_off && http.is_none() && admin.is_none() && milter.is_none() {
            errors.push(
                "nothing to serve: smtp.listen is empty and there is no [http], [admin] or [milter] section"
                    .to_string(),
            );
        }
        if let Err(e) = checks::log_level(&log.level) {
            errors.push(e);
        }
        if errors.is_empty() {
            let cfg = Config {
                source: base.join("relay.toml"),
                smtp,
                upstream,
                tracking,
                http,
                admin,
                store,
                log,
                webhooks,
                milter,
                raw: root.clone(),
            };
            // Only once every address parsed: two listeners on one address.
            let clashes = checks::duplicate_listeners(&cfg);
            if clashes.is_empty() {
                Ok(cfg)
            } else {
                Err(ConfigErrors(clashes))
            }
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
            UpstreamTarget::None => "no upstream".to_string(),
        };
        let hooks = match self.webhooks.len() {
            0 => String::new(),
            1 => "; 1 webhook".to_string(),
            n => format!("; {n} webhooks"),
        };
        let smtp = if listen.is_empty() {
            "smtp off".to_string()
        } else {
            format!("smtp on {} -> {mode}", listen.join(","))
        };
        let pixel =
            self.http
                .as_ref()
                .map_or("pixel off".to_string(), |h| match (&h.acme, &h.tls) {
                    (Some(a), _) => format!(
                        "pixel https://{} (ACME certificate for {} from {})",
                        h.listen,
                        a.domains.join(", "),
                        a.directory
                    ),
                    (None, Some(_)) => format!("pixel https://{}", h.listen),
                    (None, None) => format!("pixel http://{}", h.listen),
                });
        let admin = self.admin.as_ref().map_or("admin off".to_string(), |a| {
            format!("admin http://{}", a.listen)
        });
        let store = match &self.store.postgres {
            Some(pg) => format!("postgres {}", pg.url),
            None => self.store.path.display().to_string(),
        };
        format!("ok: {smtp}; {pixel}; {admin}; store {store}{hooks}")
    }
}

#[cfg(test)]
mod tests;
