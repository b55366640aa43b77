//! SMTP AUTH (RFC 4954): PLAIN and LOGIN against `[[smtp.auth.users]]` argon2id hashes.
//!
//! Verification runs on a blocking thread (argon2 is deliberately slow). An unknown user is
//! checked against a dummy hash so that timing does not reveal which names exist. Failures are
//! counted per client IP and each further failure is answered more slowly (1 s per recent
//! failure, at most 10 s); credentials are never logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;

use crate::config::AuthUser;

/// Failures older than this are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// Longest delay before a failure reply.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// Checks credentials and remembers failures.
pub struct Authenticator {
    /// Accounts.
    users: Vec<AuthUser>,
    /// Verified against for unknown names.
    dummy: String,
    /// Recent failures per client IP.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Makes an argon2id PHC string for `password` (`pixelrelay hash-password`).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authenticator({} users)", self.users.len())
    }
}

impl Authenticator {
    /// From `[[smtp.auth.users]]`.
    pub fn new(users: Vec<AuthUser>) -> Authenticator {
        let dummy = hash_password("pixelrelay-dummy").unwrap_or_default();
        Authenticator {
            users,
            dummy,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any account exists (AUTH is offered only then).
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks a name and password.
    pub async fn verify(self: &Arc<Self>, user: String, password: String) -> bool {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let (hash, known) = match me.users.iter().find(|u| u.name == user) {
                Some(u) => (u.hash.as_str(), true),
                None => (me.dummy.as_str(), false),
            };
            let ok = PasswordHash::new(hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false);
            ok && known
        })
        .await
        .unwrap_or(false)
    }

    /// Records a failure from `ip`; returns how long to wait before answering.
    pub fn failed(&self, ip: IpAddr) -> (u32, Duration) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, at)| at.elapsed() < FAILURE_MEMORY);
        let e = map.entry(ip).or_insert((0, Instant::now()));
        e.0 += 1;
        e.1 = Instant::now();
        (e.0, Duration::from_secs(u64::from(e.0)).min(MAX_DELAY))
    }

    /// Forgets the failures of `ip` after a success.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

/// Decodes base64, or `None`.
pub fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// Splits a PLAIN response `authzid\0authcid\0passwd` into (user, password).
pub fn parse_plain(resp: &[u8]) -> Option<(String, String)> {
    let mut parts = resp.split(|&b| b == 0);
    let authz = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() || (!authz.is_empty() && authz != user.as_bytes())
    {
        return None;
    }
    Some((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let a = Arc::new(Authenticator::new(vec![AuthUser {
            name: "alice".into(),
            hash,
        }]));
        assert!(a.verify("alice".into(), "correct horse".into()).await);
        assert!(!a.verify("alice".into(), "wrong".into()).await);
        assert!(!a.verify("bob".into(), "correct horse".into()).await);
    }

    #[test]
    fn plain_responses() {
        assert_eq!(
            parse_plain(b"\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(
            parse_plain(b"alice\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(
            parse_plain(b"bob\0alice\0pw"),
            None,
            "no acting as another user"
        );
        assert_eq!(parse_plain(b"\0alice"), None);
        assert_eq!(parse_plain(b"\0\0pw"), None);
    }

    #[test]
    fn failures_slow_down() {
        let a = Authenticator::new(Vec::new());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(a.failed(ip), (1, Duration::from_secs(1)));
        assert_eq!(a.failed(ip), (2, Duration::from_secs(2)));
        a.succeeded(ip);
        assert_eq!(a.failed(ip).0, 1);
    }
}
