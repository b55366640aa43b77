//! One reader per `relay.toml` section: its keys, defaults and checks.

use std::time::Duration;

use super::reader::{Reader, Section, parse_addr};
use super::*;

pub(super) fn read_smtp(r: &mut Reader<'_>) -> SmtpConfig {
    let mut s = r.section("smtp");
    let listen = s.addrs("listen", &["127.0.0.1:2525"]);
    let hostname = s.get::<String>("hostname", "pixelrelay.localdomain".into());
    if hostname.is_empty() || hostname.contains(|c: char| c.is_whitespace() || c.is_control()) {
        s.err("hostname", format!("\"{hostname}\" is not a host name"));
    }
    let max_message_size = s.positive("max_message_size", 52_428_800);
    let max_inflight_bytes = match s.raw("max_inflight_bytes") {
        None => crate::budget::default_limit(max_message_size),
        Some(_) => {
            let n = s.positive("max_inflight_bytes", max_message_size);
            if n < max_message_size {
                s.err(
                    "max_inflight_bytes",
                    format!("{n} is less than max_message_size ({max_message_size}): the largest message could never be taken"),
                );
            }
            n
        }
    };
    let cfg = SmtpConfig {
        listen,
        hostname,
        max_message_size,
        max_inflight_bytes,
        max_recipients: s.positive("max_recipients", 100) as usize,
        one_recipient_per_transaction: s.get("one_recipient_per_transaction", false),
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
        cfg.tls = Some(read_smtp_tls(r));
    }
    if has_auth {
        cfg.auth = read_smtp_auth(r);
    }
    cfg
}

fn read_smtp_tls(r: &mut Reader<'_>) -> SmtpTlsConfig {
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
    SmtpTlsConfig {
        cert,
        key,
        implicit_listen: addrs,
        required,
    }
}

fn read_smtp_auth(r: &mut Reader<'_>) -> AuthConfig {
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
    AuthConfig {
        allow_plaintext,
        users,
    }
}

/// `[upstream]`; it may be left out only when the node takes no SMTP (`smtp_off`).
pub(super) fn read_upstream(r: &mut Reader<'_>, hostname: &str, smtp_off: bool) -> UpstreamConfig {
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
        (None, None) if smtp_off && s.table.is_none() => UpstreamTarget::None,
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
        xforward: s.get("xforward", false),
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

pub(super) fn read_tracking(r: &mut Reader<'_>) -> TrackingConfig {
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
        previous_secret_files: previous_secret_files(&mut s),
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
        clicks: s.get("clicks", false),
        click_exclude: click_exclude(&mut s),
    };
    s.finish();
    cfg
}

/// `tracking.click_exclude`: substrings, none empty (an empty one would exclude every link).
fn click_exclude(s: &mut Section<'_, '_>) -> Vec<String> {
    let default = crate::rewrite::links::DEFAULT_EXCLUDE
        .map(str::to_string)
        .to_vec();
    let patterns = s.get::<Vec<String>>("click_exclude", default);
    for (i, p) in patterns.iter().enumerate() {
        if p.trim().is_empty() {
            s.err(
                &format!("click_exclude[{i}]"),
                "is empty: it would match every link (use clicks = false to track none)",
            );
        }
    }
    patterns
}

/// `tracking.networks`: absent means the built-in scanner list.
/// `tracking.previous_secret_files`: paths, none empty.
fn previous_secret_files(s: &mut Section<'_, '_>) -> Vec<PathBuf> {
    let list = s
        .opt::<Vec<String>>("previous_secret_files")
        .unwrap_or_default();
    let mut out = Vec::new();
    for (i, f) in list.iter().enumerate() {
        if f.trim().is_empty() {
            s.err(&format!("previous_secret_files[{i}]"), "must not be empty");
        } else {
            out.push(s.r.base.join(f));
        }
    }
    out
}

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

pub(super) fn read_store(r: &mut Reader<'_>) -> StoreConfig {
    let mut s = r.section("store");
    let cfg = StoreConfig {
        path: s.path("path", "data/pixelrelay.db"),
        subjects: s.get("subjects", false),
        anonymize_ip: s.get("anonymize_ip", false),
        retention_days: s.get::<u32>("retention_days", 0),
        flush_interval: s.millis("flush_interval_ms", 500),
        open_log: s.opt_path("open_log"),
        postgres: None,
    };
    let mut cfg = cfg;
    cfg.postgres = postgres(&mut s);
    s.finish();
    cfg
}

/// `backend`, `url` and `password_file` of `[store]`: `Some` for `backend = "postgres"`.
fn postgres(s: &mut Section<'_, '_>) -> Option<PostgresConfig> {
    let postgres = s.choice("backend", false, &[("sled", false), ("postgres", true)]);
    let url = s.opt::<String>("url");
    let password_file = s.opt_path("password_file");
    let ca_file = s.opt_path("ca_file");
    if !postgres {
        if url.is_some() {
            s.err("url", "only with backend = \"postgres\"");
        }
        return None;
    }
    let Some(url) = url else {
        s.err(
            "url",
            "missing: backend = \"postgres\" needs url = \"postgres://USER@HOST:PORT/DB\"",
        );
        return None;
    };
    match url.parse::<tokio_postgres::Config>() {
        Err(e) => s.err("url", format!("not a PostgreSQL URL: {e}")),
        Ok(c) if c.get_password().is_some() => s.err(
            "url",
            "holds a password: put it in store.password_file (0600) or PIXELRELAY_PG_PASSWORD",
        ),
        Ok(_) => {}
    }
    Some(PostgresConfig {
        url,
        password_file,
        ca_file,
    })
}

pub(super) fn read_log(r: &mut Reader<'_>) -> LogConfig {
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

pub(super) fn read_webhooks(r: &mut Reader<'_>) -> Vec<WebhookConfig> {
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
        let secret = webhook_secret(&mut s);
        let (open, message, click) = webhook_events(&mut s);
        let headers = webhook_headers(&mut s);
        let mut cfg = WebhookConfig::new(&url, secret);
        cfg.open = open;
        cfg.message = message;
        cfg.click = click;
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

/// `secret_file` or `secret_env` of one `[[webhooks]]` table (never `secret`).
fn webhook_secret(s: &mut Section<'_, '_>) -> WebhookSecret {
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
    secret
}

/// `events` of one `[[webhooks]]` table: (open, message, click).
fn webhook_events(s: &mut Section<'_, '_>) -> (bool, bool, bool) {
    let events = s.get::<Vec<String>>("events", vec!["open".to_string()]);
    let (mut open, mut message, mut click) = (false, false, false);
    for (j, e) in events.iter().enumerate() {
        match e.as_str() {
            "open" => open = true,
            "message" => message = true,
            "click" => click = true,
            other => s.err(
                &format!("events[{j}]"),
                format!("\"{other}\" is not one of open | click | message"),
            ),
        }
    }
    if events.is_empty() {
        s.err("events", "needs at least one of open | click | message");
    }
    (open, message, click)
}

/// `headers` of one `[[webhooks]]` table: names checked, values without CR, LF or NUL.
fn webhook_headers(s: &mut Section<'_, '_>) -> Vec<(String, String)> {
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
    headers
}
