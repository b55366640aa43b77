//! `[http.acme]`: the pixel listener's certificate from an ACME CA (Let's Encrypt by default).

use std::path::PathBuf;

use super::reader::Reader;

/// Let's Encrypt's production directory, the default `http.acme.directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `[http.acme]`.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Names on the certificate (the tracking domain first).
    pub domains: Vec<String>,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// Account key and certificates (0700 directory, 0600 files).
    pub cache: PathBuf,
    /// Extra CA certificates (PEM) trusted for the directory's HTTPS, for a private CA.
    pub ca_file: Option<PathBuf>,
}

/// Reads `[http.acme]` (present: the caller checked).
pub(super) fn read_acme(r: &mut Reader<'_>) -> AcmeConfig {
    let mut s = r.subsection("http", "acme", "http.acme");
    let domains = s.get::<Vec<String>>("domains", Vec::new());
    if domains.is_empty() {
        s.err("domains", "missing: the names the certificate is for");
    }
    let mut names = Vec::new();
    for (i, d) in domains.iter().enumerate() {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        match dns_name(&d) {
            Ok(()) => names.push(d),
            Err(e) => {
                s.r.errors
                    .push(format!("http.acme.domains[{i}]: \"{d}\" {e}"))
            }
        }
    }
    let contact = match s.raw("contact") {
        None => Vec::new(),
        Some(toml::Value::String(c)) => vec![c],
        Some(_) => s.get::<Vec<String>>("contact", Vec::new()),
    };
    for (i, c) in contact.iter().enumerate() {
        if !c.starts_with("mailto:") || c.len() <= "mailto:".len() {
            s.r.errors.push(format!(
                "http.acme.contact[{i}]: \"{c}\" is not a mailto: URL"
            ));
        }
    }
    let directory = s.get::<String>("directory", LETS_ENCRYPT.to_string());
    if !directory.starts_with("https://") {
        s.err("directory", format!("\"{directory}\" is not an https URL"));
    }
    let cache = s.path("cache", "data/acme");
    let ca_file = s.opt_path("ca_file");
    if let Some(p) = &ca_file
        && let Err(e) = std::fs::File::open(p)
    {
        s.err("ca_file", format!("cannot read {}: {e}", p.display()));
    }
    s.finish();
    AcmeConfig {
        domains: names,
        contact,
        directory,
        cache,
        ca_file,
    }
}

/// A name a CA validates with TLS-ALPN-01: letters, digits and hyphens in dot-separated labels
/// of 1–63 characters, not an address, no wildcard.
fn dns_name(d: &str) -> Result<(), &'static str> {
    if d.contains('*') {
        return Err("is a wildcard (TLS-ALPN-01 cannot validate one)");
    }
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err("is an address, not a domain name");
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if d.is_empty() || d.len() > 253 || !d.split('.').all(label_ok) {
        return Err("is not a domain name");
    }
    Ok(())
}
