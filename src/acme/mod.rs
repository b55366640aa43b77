//! The tracking domain's certificate from an ACME CA (`[http.acme]`): obtained and renewed by
//! the pixel listener itself with TLS-ALPN-01 (RFC 8737) on its own HTTPS port, kept in the
//! cache directory (0700, files 0600), and swapped into new handshakes without touching
//! connections in progress.
//!
//! A cached certificate serves from the first handshake after a restart; renewal starts two
//! thirds of the way through its validity; a failed attempt is retried after 10 s, doubling to
//! an hour (Let's Encrypt allows five failed validations per name and hour).

mod cert;
mod client;

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

pub use cert::{ACME_TLS_ALPN, Resolver, validity};
use cert::{Issued, challenge_certificate};
use client::Client;

use crate::config::AcmeConfig;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// First retry after a failed attempt; doubles up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Longest wait between failed attempts.
const LAST_RETRY: Duration = Duration::from_secs(3600);
/// How long the CA may take to validate and to issue.
const CA_PATIENCE: Duration = Duration::from_secs(120);

/// The certificate manager of the pixel listener.
pub struct Acme {
    /// `[http.acme]`.
    cfg: AcmeConfig,
    /// What handshakes see.
    resolver: Arc<Resolver>,
    /// The certificate being served: its renewal time and its end (seconds since the epoch).
    served: std::sync::Mutex<Option<(i64, i64)>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Acme({:?})", self.cfg.domains)
    }
}

impl Acme {
    /// Checks the CA bundle, creates the cache directory and serves the cached certificate, if
    /// there is one for these domains and this directory.
    pub fn new(cfg: &AcmeConfig) -> Result<Acme, String> {
        Client::new(cfg.ca_file.as_deref())?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.cache)
            .map_err(|e| format!("http.acme.cache: {}: {e}", cfg.cache.display()))?;
        let acme = Acme {
            cfg: cfg.clone(),
            resolver: Arc::new(Resolver::default()),
            served: std::sync::Mutex::new(None),
        };
        let path = acme.cert_path();
        match std::fs::read(&path) {
            Ok(pem) => match Issued::from_pem(&pem) {
                Ok(issued) => acme.deploy(issued, "cache"),
                Err(e) => warn!(event = "acme_error", file = %path.display(), error = %e,
                    "cached certificate unusable; ordering a new one"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("http.acme.cache: {}: {e}", path.display())),
        }
        Ok(acme)
    }

    /// The pixel listener's TLS: the current certificate, `http/1.1`, and `acme-tls/1` for
    /// the CA's validations.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut sc = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("http.acme: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.resolver) as _);
        sc.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(Arc::new(sc))
    }

    /// Obtains and renews the certificate until shutdown; `metrics` shows its expiry and the
    /// orders' results.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown, metrics: Arc<Metrics>) {
        let mut retry = FIRST_RETRY;
        loop {
            let served = *self.served.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, not_after)) = served {
                metrics.ops.certificate(not_after);
            }
            let due = served.map(|(renew_at, _)| renew_at);
            tokio::select! {
                () = until(due) => {}
                () = shutdown.wait() => return,
            }
            let attempt = tokio::select! {
                r = self.obtain() => r,
                () = shutdown.wait() => return,
            };
            let outcome = attempt.and_then(|issued| self.store(issued));
            metrics.ops.acme_order(outcome.is_ok());
            match outcome {
                Ok(issued) => {
                    self.deploy(issued, "issued");
                    retry = FIRST_RETRY;
                }
                Err(e) => {
                    warn!(event = "acme_error", domains = ?self.cfg.domains, error = %e,
                        retry_in_s = retry.as_secs(), "cannot obtain a certificate; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = shutdown.wait() => return,
                    }
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
        }
    }

    /// Serves `issued` to new handshakes and schedules its renewal.
    fn deploy(&self, issued: Issued, source: &'static str) {
        self.resolver.set(Arc::clone(&issued.certified));
        let renew_at = issued.renew_at();
        *self.served.lock().unwrap_or_else(|p| p.into_inner()) = Some((renew_at, issued.not_after));
        info!(event = "acme_certificate", source, domains = ?self.cfg.domains,
            not_after = %crate::clock::rfc3339_ms(ms(issued.not_after)),
            renew_at = %crate::clock::rfc3339_ms(ms(renew_at)),
            "certificate deployed");
    }

    /// One order, from account to certificate chain.
    async fn obtain(&self) -> Result<(Issued, String), String> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = self
            .cfg
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = match account.new_order(&NewOrder::new(&ids)).await {
            Ok(o) => o,
            Err(instant_acme::Error::Api(p)) if is_unknown_account(&p) => {
                // The CA no longer knows the cached account (reset, deactivated): the next
                // attempt registers a new one.
                let _ = std::fs::remove_file(self.account_path());
                return Err(format!("new order: {p}; the cached account is dropped"));
            }
            Err(e) => return Err(format!("new order: {e}")),
        };
        let mut names = Vec::new();
        let result = self.answer_challenges(&mut order, &mut names).await;
        let ready = match result {
            Ok(()) => Ok(order.poll_ready(&patience()).await),
            Err(e) => Err(e),
        };
        for n in &names {
            self.resolver.end_challenge(n);
        }
        match ready? {
            Ok(OrderStatus::Ready) => {}
            // Refused: the challenges say why.
            Ok(OrderStatus::Invalid) | Err(instant_acme::Error::Api(_)) => {
                return Err(why_invalid(&mut order).await);
            }
            Ok(s) => return Err(format!("order is {s:?} after validation")),
            Err(e) => return Err(format!("validation: {e}")),
        }
        let key = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&patience())
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        let pem = format!("{key}{chain}");
        Ok((Issued::from_pem(pem.as_bytes())?, pem))
    }

    /// Puts up a TLS-ALPN-01 answer for every pending authorization of `order` and tells the
    /// CA to validate it; `names` collects the names answered for.
    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        names: &mut Vec<String>,
    ) -> Result<(), String> {
        let mut auths = order.authorizations();
        while let Some(auth) = auths.next().await {
            let mut auth = auth.map_err(|e| format!("authorization: {e}"))?;
            match auth.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => return Err(format!("authorization is {s:?}")),
            }
            let name = auth.identifier().to_string();
            let mut challenge = auth
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| format!("the CA offers no tls-alpn-01 challenge for {name}"))?;
            let digest = challenge.key_authorization().digest();
            let answer = challenge_certificate(&name, digest.as_ref())?;
            self.resolver.begin_challenge(&name, Arc::new(answer));
            names.push(name.clone());
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge for {name}: {e}"))?;
        }
        Ok(())
    }

    /// The ACME account: from the cache, or registered now (and cached, 0600).
    async fn account(&self) -> Result<Account, String> {
        let client = Client::new(self.cfg.ca_file.as_deref())?;
        let path = self.account_path();
        if let Ok(json) = crate::secret::read(&path) {
            let creds: AccountCredentials = serde_json::from_slice(&json)
                .map_err(|e| format!("{}: not ACME account credentials: {e}", path.display()))?;
            return Account::builder_with_http(Box::new(client))
                .from_credentials(creds)
                .await
                .map_err(|e| format!("account: {e}"));
        }
        let contact: Vec<&str> = self.cfg.contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = Account::builder_with_http(Box::new(client))
            .create(&new, self.cfg.directory.clone(), None)
            .await
            .map_err(|e| format!("new account at {}: {e}", self.cfg.directory))?;
        let json = serde_json::to_vec(&creds).map_err(|e| format!("account: {e}"))?;
        write_private(&path, &json)?;
        info!(event = "acme_account", directory = %self.cfg.directory, id = account.id(),
            "ACME account registered");
        Ok(account)
    }

    /// Writes the certificate and its key to the cache before it is served.
    fn store(&self, issued: (Issued, String)) -> Result<Issued, String> {
        let (issued, pem) = issued;
        write_private(&self.cert_path(), pem.as_bytes())?;
        Ok(issued)
    }

    /// `cert-<hash of directory and domains>.pem`: another CA or another set of names is
    /// another certificate.
    fn cert_path(&self) -> PathBuf {
        let mut parts = vec![self.cfg.directory.as_str()];
        parts.extend(self.cfg.domains.iter().map(String::as_str));
        self.cfg
            .cache
            .join(format!("cert-{}.pem", short_hash(&parts)))
    }

    /// `account-<hash of directory and contacts>.json`.
    fn account_path(&self) -> PathBuf {
        let mut parts = vec![self.cfg.directory.as_str()];
        parts.extend(self.cfg.contact.iter().map(String::as_str));
        self.cfg
            .cache
            .join(format!("account-{}.json", short_hash(&parts)))
    }
}

/// Why the CA refused the order: each failed challenge's problem (the CA's words: "connection
/// refused", "incorrect TXT record", a DNS error), as the admin needs them.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut auths = order.authorizations();
    while let Some(auth) = auths.next().await {
        let Ok(mut auth) = auth else { continue };
        let name = auth.identifier().to_string();
        if let Ok(state) = auth.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    let detail = p.detail.as_deref().unwrap_or("no detail");
                    reasons.push(format!("{name}: {detail}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        "the CA refused the order (no reason given)".to_string()
    } else {
        format!("validation failed: {}", reasons.join("; "))
    }
}

/// The CA's answer to a request signed by an account it does not know.
fn is_unknown_account(p: &instant_acme::Problem) -> bool {
    p.r#type
        .as_deref()
        .is_some_and(|t| t.ends_with(":accountDoesNotExist"))
}

/// Sixteen hex digits of the SHA-256 of `parts`, each ended by a NUL.
fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` to `path` through a 0600 temporary file renamed over it.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("http.acme.cache: {}: {e}", path.display()))
}

/// Polling the CA: 250 ms, doubling, for up to two minutes.
fn patience() -> RetryPolicy {
    RetryPolicy::new().timeout(CA_PATIENCE)
}

/// Seconds to milliseconds since the epoch (none before it).
fn ms(secs: i64) -> u64 {
    u64::try_from(secs).unwrap_or(0).saturating_mul(1000)
}

/// Resolves at `due` (seconds since the epoch) by the wall clock, at once when `None` or past.
/// Sleeps an hour at most between looks at the clock, which may jump (suspend, NTP).
async fn until(due: Option<i64>) {
    let Some(due) = due else { return };
    loop {
        let now = crate::clock::now_ms() / 1000;
        let left = due.saturating_sub(i64::try_from(now).unwrap_or(i64::MAX));
        if left <= 0 {
            return;
        }
        let nap = u64::try_from(left).unwrap_or(0).min(3600);
        tokio::time::sleep(Duration::from_secs(nap)).await;
    }
}
