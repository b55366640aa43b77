//! pixelrelay: an SMTP before-queue relay that inserts an open-tracking pixel into
//! single-recipient HTML mail, serves the pixel over HTTP and records every open.
//!
//! # Layout
//!
//! ```text
//! main.rs         CLI only: parse args, load config, call into the library
//! config/         relay.toml -> typed sections, every error with its key (reader: the
//!                 key-tracking TOML walk; sections: one reader per section)
//! secret.rs       0600 secret files, generated on first start
//! net.rs          CIDR ranges, IP anonymisation
//! clock.rs        wall clock and the date formats
//! shutdown.rs     shutdown signal + "all tasks finished" tracker
//! tls.rs          inbound certificates (SMTP STARTTLS/implicit, pixel HTTPS), reload on SIGHUP
//! acme/           the pixel listener's certificate from an ACME CA: order and renewal (mod),
//!                 TLS-ALPN-01 answers and the served certificate (cert), HTTPS to the CA (client)
//! budget.rs       the memory budget for messages in flight (`smtp.max_inflight_bytes`)
//! smtp/           inbound ESMTP server: listener (accept, limits), session/ (protocol state
//!                 machine over any byte stream; envelope: MAIL/RCPT/DATA and the groups the
//!                 backend answers; exchange: STARTTLS and AUTH; message: DATA and the
//!                 Received header), command (parser), data (DATA reader),
//!                 auth (AUTH PLAIN/LOGIN, password hashes), reply (every reply in one place)
//! upstream/       SMTP client to the smarthost: AUTH, timeouts, connection pool, pipelined
//!                 exchanges; extensions (what its EHLO offers); tls (its rustls client
//!                 configuration); xforward (Postfix's XFORWARD commands)
//! capture.rs      try-it mode: deliver into a folder instead of a smarthost
//! relay/          where the stages meet: session backend -> rewrite (pixel, links) -> record
//!                 -> upstream; wire (the group's command lines, opening with XFORWARD)
//! rewrite/        pure: pick the HTML part (scan, else mime; part: what both report), insert
//!                 the pixel (html), find the trackable links (links) and edit them (edit),
//!                 re-encode (qp, b64, raw), headers; splice it back
//! token/          pure: mint and verify pixel tokens, and click tokens (click); their HMAC (mac)
//! track/          pure: classify a pixel hit (classify: client, device, proxy, machine),
//!                 the network catalogue's longest-prefix lookups (networks), the open event
//! evidence.rs     loads the catalogue files and MaxMind databases, reloads them on SIGHUP
//! ingest/         on the way in: the journal (journal), what it carries (hit, entry), the
//!                 indexer thread that classifies hits and commits to the store (indexer,
//!                 hits; clicks: the link-scanner rule), held hits (hold) and its pacing (pace)
//! store/          the store interface (Backend, Store, types) and its contract suite;
//!                 sled_store/ is the sled backend (messages, opens, outbox, retention,
//!                 migrate: earlier on-disk layouts); postgres/ the shared store's schema
//!                 and its versioned migrations, and the backend over it
//! openlog.rs      the JSON-lines open log (reopened on SIGHUP)
//! log_level.rs    `log.level` changed by a config reload (the subscriber's filter setter)
//! reload.rs       SIGHUP: the config read again and applied to new transactions; keys that
//!                 need a restart named; certificates, catalogue and open log reloaded
//! http/           the accept loop both listeners share (serve), the pixel listener (pixel,
//!                 client_ip: the address behind trusted proxies), the admin listener (admin/:
//!                 routes, state, respond, follow stream, dashboard)
//! metrics.rs      a leaf: the Prometheus registry, rendered from snapshots handed to it
//! notify/         webhooks: signed delivery of the store's outbox, retries, dead letters
//! server.rs       wires everything together for `pixelrelay serve`
//! sd_notify.rs    systemd readiness (`Type=notify`): READY=1 once bound, STOPPING=1
//! admin_client.rs `pixelrelay tail` / `stats`: the admin API's client side
//! ```
//!
//! Data flows one way: `smtp -> relay -> {rewrite, token, ingest, upstream}`;
//! `http -> {token, evidence, ingest, store}`; `ingest -> {track, store}`; `notify <- store`
//! (the store writes outbox rows in the open's own transaction; notify delivers them).
//! `rewrite`, `token` and `track` do no IO and know nothing of SMTP or HTTP; `store` and
//! `ingest` know nothing of either protocol; `metrics` imports nothing of pixelrelay.

#![forbid(unsafe_code)]

pub mod acme;
pub mod admin_client;
pub mod budget;
pub mod capture;
pub mod clock;
pub mod config;
pub mod evidence;
pub mod http;
pub mod ingest;
pub mod log_level;
pub mod metrics;
pub mod milter;
pub mod net;
pub mod notify;
pub mod openlog;
pub mod relay;
pub mod reload;
pub mod rewrite;
pub mod sd_notify;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod token;
pub mod track;
pub mod upstream;
