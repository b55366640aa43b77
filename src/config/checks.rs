//! What is checked across sections once every section is read, where the config file is found,
//! and the warnings `check-config` and `serve` print for a config that works but would not do
//! what a production host needs.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{Config, MilterListen, UpstreamTarget};

/// Where the config is looked for after `-c` and `PIXELRELAY_CONFIG`, in order.
pub const SEARCH: [&str; 2] = ["relay.toml", "/etc/pixelrelay/relay.toml"];

/// The config file to read: `explicit` (`-c`), else `env` (`PIXELRELAY_CONFIG`), else the
/// first of [`SEARCH`] that exists. The error says where it looked.
pub fn locate(explicit: Option<&Path>, env: Option<&std::ffi::OsStr>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(e) = env.filter(|e| !e.is_empty()) {
        return Ok(PathBuf::from(e));
    }
    SEARCH
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            format!(
                "no config file: give -c PATH, or set PIXELRELAY_CONFIG, or create ./{} or {}",
                SEARCH[0], SEARCH[1]
            )
        })
}

/// A TOML syntax error with its line and column (1-based).
pub(super) fn syntax(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    let Some(before) = e.span().and_then(|s| text.get(..s.start)) else {
        return format!("syntax error: {message}");
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("syntax error at line {line}, column {column}: {message}")
}

/// Levels `log.level` may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `log.level`: a level, or comma-separated `level` and `target=level` directives.
pub(super) fn log_level(level: &str) -> Result<(), String> {
    let is_level = |l: &str| LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l.trim()));
    let ok = !level.trim().is_empty()
        && level.split(',').all(|d| match d.split_once('=') {
            Some((target, l)) => !target.trim().is_empty() && is_level(l),
            None => is_level(d),
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "log.level: \"{level}\" is not a level: one of {}, or directives like \"info,pixelrelay=debug\"",
            LEVELS.join(", ")
        ))
    }
}

/// Every TCP listener the config names, with its key.
fn listeners(cfg: &Config) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    for (i, a) in cfg.smtp.listen.iter().enumerate() {
        out.push((format!("smtp.listen[{i}]"), *a));
    }
    if let Some(t) = &cfg.smtp.tls {
        for (i, a) in t.implicit_listen.iter().enumerate() {
            out.push((format!("smtp.tls.implicit_listen[{i}]"), *a));
        }
    }
    if let Some(h) = &cfg.http {
        out.push(("http.listen".into(), h.listen));
    }
    if let Some(a) = &cfg.admin {
        out.push(("admin.listen".into(), a.listen));
    }
    if let Some(MilterListen::Tcp(a)) = cfg.milter.as_ref().map(|m| &m.listen) {
        out.push(("milter.listen".into(), *a));
    }
    out
}

/// Two listeners on one address (`serve` would fail to bind the second): one error each.
pub(super) fn duplicate_listeners(cfg: &Config) -> Vec<String> {
    let all = listeners(cfg);
    let mut errors = Vec::new();
    for (i, (key, a)) in all.iter().enumerate() {
        // Port 0: the kernel picks a free port for each.
        if a.port() == 0 {
            continue;
        }
        let clash = all[..i].iter().find(|(_, b)| {
            b.port() == a.port()
                && b.is_ipv4() == a.is_ipv4()
                && (b.ip() == a.ip() || b.ip().is_unspecified() || a.ip().is_unspecified())
        });
        if let Some((other, _)) = clash {
            errors.push(format!(
                "{key}: {a} is also {other}: one listener per address"
            ));
        }
    }
    errors
}

/// The host of a URL (`http://host:port/path`), brackets of an IPv6 literal removed.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(authority.split(':').next().unwrap_or(authority))
}

/// Loopback, private, link-local, unspecified, or `localhost`: not reachable from the mail
/// clients of recipients elsewhere.
fn local_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        Ok(IpAddr::V6(v6)) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

impl Config {
    /// What works but would not do what a production host needs, one line each, naming the
    /// key: pixels pointing at a loopback or private address while mail is relayed for real,
    /// and a loopback pixel listener with a public `base_url` and no proxy configured in front.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let base = &self.tracking.base_url;
        let host = url_host(base).unwrap_or("");
        if let UpstreamTarget::Smtp { address } = &self.upstream.target
            && self.tracking.enabled
            && local_host(host)
        {
            out.push(format!(
                "tracking.base_url: {base} is a loopback or private address, yet mail is relayed for real (upstream.address = {address}): recipients' mail clients cannot load the pixel; set it to your tracking domain"
            ));
        }
        if let Some(h) = &self.http
            && h.listen.ip().is_loopback()
            && h.trusted_proxies.is_empty()
            && !host.is_empty()
            && !local_host(host)
        {
            out.push(format!(
                "http.listen: {} is loopback, so {base} reaches it only through a reverse proxy, and http.trusted_proxies is empty: listen on a public address, or name the proxy in http.trusted_proxies",
                h.listen
            ));
        }
        if let Some(acme) = self.http.as_ref().and_then(|h| h.acme.as_ref()) {
            out.extend(acme_warnings(base, host, &acme.domains));
        }
        out
    }
}

/// With `[http.acme]`, pixels that would not reach the certificate it obtains.
fn acme_warnings(base: &str, host: &str, domains: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if !base.starts_with("https://") {
        out.push(format!(
            "tracking.base_url: {base} is not https, yet http.acme gets a certificate for {}: pixels and clicks would go unencrypted to a listener that only speaks TLS",
            domains.join(", ")
        ));
    } else if !domains.iter().any(|d| d.eq_ignore_ascii_case(host)) {
        out.push(format!(
            "http.acme.domains: {} does not include {host}, the host of tracking.base_url: mail clients would be shown a certificate for another name",
            domains.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(url_host("http://127.0.0.1:8080"), Some("127.0.0.1"));
        assert_eq!(url_host("https://t.example.com/x"), Some("t.example.com"));
        assert_eq!(url_host("http://[::1]:8080/"), Some("::1"));
        assert_eq!(url_host("https://u@h.example:443"), Some("h.example"));
        assert!(local_host("127.0.0.1") && local_host("10.1.2.3") && local_host("::1"));
        assert!(local_host("fd00::1") && local_host("LOCALHOST") && local_host("192.168.0.1"));
        assert!(!local_host("t.example.com") && !local_host("203.0.113.9"));
        assert!(!local_host("2001:db8::1"));
    }

    #[test]
    fn acme_domains_must_cover_the_base_url() {
        let names = ["track.example.com".to_string()];
        let ok = acme_warnings("https://track.example.com", "track.example.com", &names);
        assert!(ok.is_empty(), "{ok:?}");
        let other = acme_warnings("https://t.example.net/x", "t.example.net", &names);
        assert!(other[0].starts_with("http.acme.domains: "), "{other:?}");
        let plain = acme_warnings("http://track.example.com", "track.example.com", &names);
        assert!(plain[0].starts_with("tracking.base_url: "), "{plain:?}");
    }

    #[test]
    fn log_levels() {
        for ok in ["info", "DEBUG", "warn,pixelrelay=debug", "off"] {
            assert!(log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "verbose", "info,", "pixelrelay=loud", "=info"] {
            assert!(log_level(bad).unwrap_err().contains("log.level"), "{bad}");
        }
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let text = "[smtp]\nlisten = [\"127.0.0.1:25\"\nhostname = \"x\"\n";
        let e = text.parse::<toml::Table>().unwrap_err();
        let msg = syntax(text, &e);
        assert!(msg.starts_with("syntax error at line 3, column "), "{msg}");
    }
}
