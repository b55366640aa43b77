//! `[http]` (the pixel listener, with `[http.acme]`) and `[admin]`.

use super::reader::Reader;
use super::{AdminConfig, HttpConfig};

/// `[http]`, or `None` when the section is absent (no pixel listener on this node).
pub(super) fn read_http(r: &mut Reader<'_>) -> Option<HttpConfig> {
    if !r.root.contains_key("http") {
        return None;
    }
    let mut s = r.section("http");
    let cfg = HttpConfig {
        listen: s.addr("listen", "127.0.0.1:8080"),
        trusted_proxies: s.cidrs("trusted_proxies", &[]),
        header_timeout: s.seconds("header_timeout", 10),
        idle_timeout: s.seconds("idle_timeout", 60),
        max_connections: s.positive("max_connections", 10_000) as usize,
        workers: s.count("workers", 0, 1024) as usize,
        tls: None,
        acme: None,
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
    let has_acme = s.raw("acme").is_some();
    if has_acme && cfg.tls.is_some() {
        s.err(
            "acme",
            "cannot be used with http.tls_cert: one certificate source",
        );
    }
    s.finish();
    if has_acme {
        cfg.acme = Some(super::acme::read_acme(r));
    }
    Some(cfg)
}

/// `[admin]`, or `None` when the section is absent (no admin API on this node).
pub(super) fn read_admin(r: &mut Reader<'_>) -> Option<AdminConfig> {
    if !r.root.contains_key("admin") {
        return None;
    }
    let mut s = r.section("admin");
    let cfg = AdminConfig {
        listen: s.addr("listen", "127.0.0.1:8081"),
        token_file: s.path("token_file", "data/admin.token"),
    };
    s.finish();
    Some(cfg)
}
