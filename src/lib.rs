//! pixelrelay: an SMTP before-queue relay that inserts an open-tracking pixel into
//! single-recipient HTML mail, serves the pixel over HTTP and records every open.
//!
//! # Layout
//!
//! ```text
//! config.rs    relay.toml -> typed sections, every error with its key
//! secret.rs    0600 secret files, generated on first start
//! net.rs       CIDR ranges, IP anonymisation
//! shutdown.rs  shutdown signal + "all tasks finished" tracker
//! smtp/        inbound ESMTP server: listener (accept, limits), session (protocol state
//!              machine over any byte stream), command (parser), data (DATA reader), reply
//! upstream.rs  SMTP client to the smarthost: TLS, AUTH, timeouts, connection pool
//! relay.rs     where the stages meet: session backend -> rewrite -> store -> upstream
//! rewrite/     pure: pick the HTML part, insert the pixel, splice it back
//! token.rs     pure: mint and verify pixel tokens
//! track/       pure: classify a pixel hit (client, device, proxy, machine), the network
//!              catalogue's longest-prefix lookups, the open event
//! evidence.rs  loads the catalogue files and MaxMind databases, reloads them on SIGHUP
//! ingest/      hits, message records and replies on their way in: the journal, its
//!              encodings, the indexer thread (classifies hits) and its pacing
//! store/       the only code that touches sled (messages, opens, counters, webhook outbox)
//! openlog.rs   the JSON-lines open log (reopened on SIGHUP)
//! capture.rs   try-it mode: deliver into a folder instead of a smarthost
//! tls.rs       inbound certificates (SMTP STARTTLS/implicit, pixel HTTPS), reload on SIGHUP
//! clock.rs     wall clock and the date formats
//! http/        pixel listener (public), admin listener (private: API, follow stream,
//!              dashboard, /metrics) and the accept loop they share
//! metrics.rs   Prometheus registry the relay and the listeners update
//! notify/      webhooks: signed delivery of the store's outbox, retries, dead letters
//! server.rs    wires everything together for `pixelrelay serve`
//! admin_client.rs  `pixelrelay tail` / `stats`: the admin API's client side
//! ```
//!
//! Data flows one way: `smtp -> relay -> {rewrite, token, store, upstream}`;
//! `http -> {token, store, track}`; `notify <- store` (the store writes outbox rows in the
//! open's own transaction; notify delivers them). `rewrite`, `token` and `track` do no IO and
//! know nothing of SMTP or HTTP; `store` knows nothing of either protocol.

#![forbid(unsafe_code)]

pub mod admin_client;
pub mod capture;
pub mod clock;
pub mod config;
pub mod evidence;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod openlog;
pub mod relay;
pub mod rewrite;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod token;
pub mod track;
pub mod upstream;
