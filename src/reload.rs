//! SIGHUP: the config file read again and put in force for what starts next, without a
//! restart. Certificates, the network catalogue and the open log are reloaded on every SIGHUP
//! (logrotate sends one), whatever the config file says.
//!
//! In force from the next transaction (relay: the next `MAIL`; milter: the next message):
//! every `[tracking]` rule (on or off, `base_url`, clicks and `click_exclude`, the skip rules,
//! the opt-out header, `max_rewrite_size`) and the network catalogue files. From the next
//! SMTP connection: `[smtp]` names, limits and timeouts, `allow_networks`, `[smtp.auth]` and
//! `smtp.tls.required`. From the next pixel or click request: the machine windows and
//! `http.trusted_proxies`. At once: `smtp.max_inflight_bytes`, `[[webhooks]]` (the workers
//! restart on the new endpoints) and `log.level`.
//!
//! Everything else (listeners, TLS files' paths, the upstream, the store, the token keys,
//! `[http]` but its proxies, `[admin]`, `[milter]`, `log.format`) is read at start only: a
//! change there is logged with its key and "needs a restart", and the running value stays. A
//! file that does not load keeps the whole running config and logs why.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::config::{Config, TrackingConfig};
use crate::http::pixel::PixelState;
use crate::metrics::Metrics;
use crate::milter::MilterFront;
use crate::notify::{Hooks, Notifier};
use crate::relay::{Relay, Tracking};
use crate::smtp::SessionConfig;
use crate::store::Store;
use crate::tls::TlsSource;
use crate::token::TokenKey;

/// Keys a reload puts in force (a key, or a table whose every key is).
const LIVE: [&str; 16] = [
    "smtp.hostname",
    "smtp.max_message_size",
    "smtp.max_recipients",
    "smtp.one_recipient_per_transaction",
    "smtp.command_timeout",
    "smtp.data_timeout",
    "smtp.max_errors",
    "smtp.bare_newline",
    "smtp.allow_networks",
    "smtp.max_inflight_bytes",
    "smtp.auth",
    "smtp.tls.required",
    "http.trusted_proxies",
    "tracking",
    "webhooks",
    "log.level",
];

/// `[tracking]` keys read at start only: the token keys.
const TRACKING_AT_START: [&str; 2] = ["tracking.secret_file", "tracking.previous_secret_files"];

/// Whether a change of `key` is put in force by a reload.
pub fn is_live(key: &str) -> bool {
    let under = |prefix: &str| key == prefix || key.starts_with(&format!("{prefix}."));
    !TRACKING_AT_START.iter().any(|k| under(k)) && LIVE.iter().any(|k| under(k))
}

/// Every key whose value differs between `old` and `new` (present in one only included), as
/// dotted paths; arrays (and arrays of tables, `[[webhooks]]`) compare whole.
pub fn changed_keys(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten<'a>(prefix: &str, t: &'a toml::Table, out: &mut BTreeMap<String, &'a toml::Value>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(sub) => flatten(&key, sub, out),
            _ => {
                out.insert(key, v);
            }
        }
    }
}

/// What SIGHUP reloads, and what the parts in force are built from.
pub struct Reload {
    /// The config in force (its start-only keys as they were at start).
    pub cfg: Config,
    /// The file as it was at start: a start-only key that differs from it is named at every
    /// reload until the restart.
    pub started: toml::Table,
    /// The token key (start-only).
    pub key: TokenKey,
    /// Certificate files (SMTP, pixel).
    pub certs: Vec<Arc<TlsSource>>,
    /// For the open log.
    pub store: Store,
    /// The pixel listener's state: the network catalogue and the trusted proxies.
    pub pixel: Arc<PixelState>,
    /// The relay sessions take at each `MAIL`.
    pub relay: Arc<ArcSwap<Relay>>,
    /// The settings new SMTP connections take.
    pub session: Arc<ArcSwap<SessionConfig>>,
    /// The rules milter messages take.
    pub milter: Option<Arc<ArcSwap<MilterFront>>>,
    /// The webhook endpoints.
    pub hooks: Arc<Hooks>,
}

/// The tracking rules of `cfg`, with the token key of the running process.
pub fn tracking(cfg: &Config, key: &TokenKey) -> Option<Tracking> {
    cfg.tracking.enabled.then(|| Tracking {
        policy: crate::server::policy(cfg),
        key: key.clone(),
        base_url: cfg.tracking.base_url.clone(),
        click_exclude: cfg
            .tracking
            .clicks
            .then(|| cfg.tracking.click_exclude.clone()),
    })
}

/// The session settings of `cfg`; whether STARTTLS is offered stays as at start (`started`),
/// since the certificate is loaded at start.
pub fn session(
    cfg: &Config,
    started_with_tls: bool,
    metrics: &Arc<Metrics>,
    budget: &Arc<crate::budget::Budget>,
) -> SessionConfig {
    let mut s = SessionConfig::from_config(&cfg.smtp);
    s.tls = started_with_tls;
    s.tls_required = started_with_tls && s.tls_required;
    s.metrics = Some(Arc::clone(metrics));
    s.budget = Arc::clone(budget);
    s
}

impl Reload {
    /// Waits for SIGHUP and reloads, until the process ends.
    pub async fn run(mut self) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            self.hangup().await;
        }
    }

    /// One SIGHUP.
    pub async fn hangup(&mut self) {
        let applied = match Config::load(&self.cfg.source) {
            Ok(new) => self.apply(new).await,
            Err(e) => {
                warn!(event = "config_reload", file = %self.cfg.source.display(),
                    error = %e, "config reload failed; keeping the running config");
                false
            }
        };
        self.relay.load().metrics.ops.reload(applied);
        let tracking: &TrackingConfig = &self.cfg.tracking;
        if let Err(e) = self.pixel.evidence.reload(tracking) {
            warn!(error = %e, event = "evidence_reload", "network catalogue reload failed; keeping the old one");
        }
        for tls in &self.certs {
            match tls.reload() {
                Ok(()) => info!(
                    event = "tls_reload",
                    section = tls.section(),
                    "certificate reloaded"
                ),
                Err(e) => {
                    warn!(error = %e, event = "tls_reload", "certificate reload failed; keeping the old one")
                }
            }
        }
        match self.store.reopen_open_log() {
            Ok(()) => info!(event = "reopen", "open log reopened"),
            Err(e) => warn!(error = %e, event = "reopen", "cannot reopen the open log"),
        }
    }

    /// Puts what `new` changes in force; names what needs a restart. `false`: nothing changed
    /// (a part of it could not be built).
    async fn apply(&mut self, mut new: Config) -> bool {
        let live: Vec<String> = changed_keys(&self.cfg.raw, &new.raw)
            .into_iter()
            .filter(|k| is_live(k))
            .collect();
        let restart: Vec<String> = changed_keys(&self.started, &new.raw)
            .into_iter()
            .filter(|k| !is_live(k))
            .collect();
        // Built first: a webhook secret that cannot be read keeps the running config.
        let hooks = if live.iter().any(|k| k == "webhooks") {
            match Notifier::from_config(&new.webhooks, self.store.clone()) {
                Ok(n) => Some(n),
                Err(e) => {
                    warn!(event = "config_reload", error = %e, "config reload failed; keeping the running config");
                    return false;
                }
            }
        } else {
            None
        };
        for key in &restart {
            warn!(event = "config_reload", key = %key, "changed in the file; needs a restart to take effect");
        }
        // Start-only parts stay as they were.
        keep_start_only(&self.cfg, &mut new);
        if live.iter().any(|k| k == "log.level") {
            match crate::log_level::set(&new.log.level) {
                Ok(true) => {}
                Ok(false) => {
                    warn!(
                        event = "config_reload",
                        key = "log.level",
                        "RUST_LOG is set and stays in force"
                    )
                }
                Err(e) => warn!(event = "config_reload", error = %e, "log level unchanged"),
            }
        }
        let old_relay = self.relay.load_full();
        let tracking = tracking(&new, &self.key);
        self.relay.store(Arc::new(Relay {
            target: Arc::clone(&old_relay.target),
            tracking: tracking.clone(),
            recorder: old_relay.recorder.clone(),
            opt_out_header: new.tracking.opt_out_header.clone(),
            metrics: Arc::clone(&old_relay.metrics),
        }));
        let old_session = self.session.load_full();
        let budget = Arc::clone(&old_session.budget);
        budget.set_limit(usize::try_from(new.smtp.max_inflight_bytes).unwrap_or(usize::MAX));
        let metrics = Arc::clone(&old_relay.metrics);
        self.session
            .store(Arc::new(session(&new, old_session.tls, &metrics, &budget)));
        if let Some(m) = &self.milter {
            let old = m.load_full();
            m.store(Arc::new(MilterFront {
                tracking,
                recorder: old.recorder.clone(),
                opt_out_header: new.tracking.opt_out_header.clone(),
                max_size: usize::try_from(new.tracking.max_rewrite_size).unwrap_or(usize::MAX),
                metrics: old.metrics.clone(),
                budget: old.budget.clone(),
            }));
        }
        if let Some(h) = &new.http {
            self.pixel
                .trusted_proxies
                .store(Arc::new(h.trusted_proxies.clone()));
        }
        self.pixel.windows.store(Arc::new(crate::track::Windows {
            machine: new.tracking.machine_window,
            probable: new.tracking.probable_window,
        }));
        if let Some(n) = hooks {
            self.hooks.replace(n).await;
        }
        info!(event = "config_reload", file = %new.source.display(), changed = ?live,
            needs_restart = ?restart, "config reloaded");
        self.cfg = new;
        true
    }
}

/// Copies into `new` what only a restart changes, so that the config in force says what runs.
fn keep_start_only(running: &Config, new: &mut Config) {
    new.upstream = running.upstream.clone();
    let proxies = new.http.as_ref().map(|h| h.trusted_proxies.clone());
    new.http = running.http.clone();
    if let (Some(h), Some(p)) = (new.http.as_mut(), proxies) {
        h.trusted_proxies = p;
    }
    new.admin = running.admin.clone();
    new.store = running.store.clone();
    new.milter = running.milter.clone();
    new.log.format = running.log.format;
    new.smtp.listen = running.smtp.listen.clone();
    new.smtp.tls = running.smtp.tls.clone().map(|mut t| {
        t.required = new.smtp.tls.as_ref().is_some_and(|n| n.required);
        t
    });
    let t = &running.tracking;
    new.tracking.secret_file = t.secret_file.clone();
    new.tracking.previous_secret_files = t.previous_secret_files.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn changed_keys_are_named_as_dotted_paths() {
        let old = table(
            "[smtp]\nlisten = [\"127.0.0.1:25\"]\nmax_recipients = 5\n[smtp.auth]\nallow_plaintext = false\n[tracking]\nbase_url = \"http://a\"\n",
        );
        let new = table(
            "[smtp]\nlisten = [\"127.0.0.1:26\"]\nmax_recipients = 5\n[smtp.auth]\nallow_plaintext = true\n[tracking]\nbase_url = \"http://a\"\nclicks = true\n[[webhooks]]\nurl = \"https://h\"\n",
        );
        assert_eq!(
            changed_keys(&old, &new),
            [
                "smtp.auth.allow_plaintext",
                "smtp.listen",
                "tracking.clicks",
                "webhooks"
            ]
        );
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn live_keys_and_keys_that_need_a_restart() {
        for live in [
            "smtp.allow_networks",
            "smtp.auth.users",
            "smtp.tls.required",
            "tracking.base_url",
            "tracking.click_exclude",
            "tracking.networks",
            "webhooks",
            "log.level",
            "smtp.max_inflight_bytes",
            "http.trusted_proxies",
        ] {
            assert!(is_live(live), "{live}");
        }
        for restart in [
            "smtp.listen",
            "smtp.tls.cert",
            "smtp.max_connections",
            "smtp.hostnamex",
            "upstream.address",
            "tracking.secret_file",
            "tracking.previous_secret_files",
            "http.listen",
            "store.path",
            "log.format",
            "milter.listen",
            "admin.listen",
        ] {
            assert!(!is_live(restart), "{restart}");
        }
    }
}
