//! `[milter]`: the milter front end (Postfix `smtpd_milters`), off without the section.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::reader::{Reader, parse_addr};

/// Where the milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterListen {
    /// `"127.0.0.1:8891"`: Postfix's `inet:127.0.0.1:8891`.
    Tcp(SocketAddr),
    /// `"unix:/run/pixelrelay/milter.sock"`: Postfix's `unix:…` (created 0660).
    Unix(PathBuf),
}

/// `[milter]`.
#[derive(Debug, Clone)]
pub struct MilterConfig {
    /// The socket.
    pub listen: MilterListen,
    /// Most simultaneous milter connections (Postfix opens one per SMTP session); more wait.
    pub max_connections: usize,
}

pub(super) fn read_milter(r: &mut Reader<'_>) -> Option<MilterConfig> {
    if !r.root.contains_key("milter") {
        return None;
    }
    let mut s = r.section("milter");
    let spec = s.get::<String>("listen", "127.0.0.1:8891".into());
    let listen = match spec.strip_prefix("unix:") {
        Some("") => {
            s.err("listen", "unix: needs a socket path");
            MilterListen::Unix(PathBuf::new())
        }
        Some(path) => MilterListen::Unix(s.r.base.join(path)),
        None => match parse_addr(spec.strip_prefix("inet:").unwrap_or(&spec)) {
            Ok(a) => MilterListen::Tcp(a),
            Err(e) => {
                s.err("listen", format!("{e}, or unix:/path/to/socket"));
                MilterListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)))
            }
        },
    };
    let cfg = MilterConfig {
        listen,
        max_connections: s.positive("max_connections", 1000) as usize,
    };
    s.finish();
    Some(cfg)
}
