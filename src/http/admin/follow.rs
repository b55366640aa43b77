//! The live follow stream of the admin listener.
//!
//! `GET /api/v1/opens?follow=1&since=CURSOR` answers `200`, `Content-Type:
//! application/x-ndjson`, and writes one JSON object per line:
//!
//! - an open or click event (the SPEC's event, `type` telling them apart; its `id` is the cursor to resume from), first every
//!   stored open after `since` in id order, then each new open as the store commits it. Without
//!   `since` the stream starts at the newest stored open (only new opens follow).
//! - `{"heartbeat":"<RFC 3339 time>","cursor":"<last id sent>"}` after 15 s without a line, so
//!   proxies and clients see a live connection.
//! - `{"end":"shutdown","cursor":"<last id sent>"}` as the last line when the relay stops;
//!   reconnect with `since=<cursor>` to continue without gap or duplicate.
//!
//! No gap, no duplicate: the stream subscribes to the store's live feed *before* reading the
//! backlog, then drops live events whose id is not above the last one it sent. A slow reader
//! is never buffered without bound: the stream writes into a small bounded channel and, when the
//! reader falls so far behind that the store's bounded feed drops events for it (`Lagged`), it
//! re-reads the missed opens from the store by cursor and carries on. A slow reader therefore
//! costs one task and a few KiB, never memory proportional to its lag, and it never blocks the
//! store's writers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Response;
use hyper::header::{self, HeaderValue};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use super::respond::{AdminBody, ApiResult, bad};
use super::state::AdminState;
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::track::{OpenEvent, format_rfc3339_ms};

/// Opens read from the store per batch when a follower catches up.
const BACKLOG_BATCH: usize = 500;
/// Lines buffered between a follower's task and its connection.
const STREAM_BUFFER: usize = 64;
/// How long the end line may wait for a slow client at shutdown.
const END_LINE_WAIT: Duration = Duration::from_secs(1);

/// Starts a follow stream (see the module docs).
pub(super) fn start(state: &Arc<AdminState>, since: Option<&str>) -> ApiResult {
    // Subscribe first: anything committed from here on is either in the backlog read below or
    // arrives live (or both: then the id check drops the copy).
    let live = state.store.subscribe();
    let cursor = match since.filter(|s| !s.is_empty()) {
        Some(c) => parse_cursor(c).ok_or_else(|| bad(format!("invalid cursor {c:?}")))?,
        None => parse_cursor(&state.store.last_open_cursor()).unwrap_or(0),
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(run_follow(state.clone(), cursor, live, tx));
    let mut r = Response::new(AdminBody::Stream(rx));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tell nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// An open id cursor (16 hex digits).
fn parse_cursor(c: &str) -> Option<u64> {
    (c.len() == 16)
        .then(|| u64::from_str_radix(c, 16).ok())
        .flatten()
}

fn format_cursor(id: u64) -> String {
    format!("{id:016x}")
}

/// Where a follower is and where its lines go.
struct Follower {
    /// The connection's side of the stream.
    tx: mpsc::Sender<Bytes>,
    /// The id of the last open sent.
    last: u64,
    /// Ends the stream when the relay stops.
    shutdown: Shutdown,
}

/// Why a follower stops.
enum Stop {
    /// The client went away.
    Gone,
    /// The relay is stopping.
    Shutdown,
    /// The store failed.
    Store,
}

impl Follower {
    /// Sends one line; waits while the client is slow, but not past shutdown.
    async fn line(&mut self, mut bytes: Vec<u8>) -> Result<(), Stop> {
        bytes.push(b'\n');
        tokio::select! {
            r = self.tx.send(Bytes::from(bytes)) => r.map_err(|_| Stop::Gone),
            () = self.shutdown.wait() => Err(Stop::Shutdown),
        }
    }

    /// Sends one open, unless it was already sent.
    async fn open(&mut self, e: &OpenEvent) -> Result<(), Stop> {
        let Some(id) = parse_cursor(&e.id) else {
            return Ok(());
        };
        if id <= self.last {
            return Ok(());
        }
        let line = serde_json::to_vec(e).map_err(|_| Stop::Store)?;
        self.line(line).await?;
        self.last = id;
        Ok(())
    }

    /// Sends every stored open after the cursor.
    async fn backlog(&mut self, store: &Store) -> Result<(), Stop> {
        loop {
            let batch = store
                .opens_after(Some(&format_cursor(self.last)), BACKLOG_BATCH)
                .map_err(|e| {
                    tracing::error!(error = %e, "follow stream: cannot read the backlog");
                    Stop::Store
                })?;
            for e in &batch {
                self.open(e).await?;
            }
            if batch.len() < BACKLOG_BATCH {
                return Ok(());
            }
        }
    }

    /// A control line (`heartbeat`, `end`) carrying the cursor.
    async fn control(&mut self, key: &str, value: &str) -> Result<(), Stop> {
        /// `{"<key>":"<value>","cursor":"<last id>"}`.
        #[derive(Serialize)]
        struct Control<'a> {
            /// The one control key and its value.
            #[serde(flatten)]
            kv: HashMap<&'a str, &'a str>,
            /// Where to resume.
            cursor: String,
        }
        let c = Control {
            kv: HashMap::from([(key, value)]),
            cursor: format_cursor(self.last),
        };
        let line = serde_json::to_vec(&c).map_err(|_| Stop::Store)?;
        self.line(line).await
    }
}

/// The follower's task: backlog, then live events, heartbeats, catch-up after a lag.
async fn run_follow(
    state: Arc<AdminState>,
    cursor: u64,
    mut live: broadcast::Receiver<OpenEvent>,
    tx: mpsc::Sender<Bytes>,
) {
    let mut f = Follower {
        tx,
        last: cursor,
        shutdown: state.shutdown.clone(),
    };
    state.metrics.follow_streams(1);
    let result = async {
        f.backlog(&state.store).await?;
        loop {
            let mut stop = f.shutdown.clone();
            tokio::select! {
                r = live.recv() => match r {
                    Ok(e) => f.open(&e).await?,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "follow stream lagged; re-reading the store");
                        state.metrics.follow_lagged();
                        f.backlog(&state.store).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Shutdown),
                },
                () = tokio::time::sleep(state.heartbeat) => {
                    let now = format_rfc3339_ms(crate::clock::now_ms());
                    f.control("heartbeat", &now).await?;
                }
                () = f.tx.closed() => return Err(Stop::Gone),
                () = stop.wait() => return Err(Stop::Shutdown),
            }
        }
    }
    .await;
    state.metrics.follow_streams(-1);
    match result {
        Ok(()) | Err(Stop::Gone) => {}
        Err(Stop::Shutdown) => {
            // The relay is stopping: give a slow client a moment for the last line, no more.
            let mut line = Vec::new();
            let _ = serde_json::to_writer(
                &mut line,
                &serde_json::json!({"end": "shutdown", "cursor": format_cursor(f.last)}),
            );
            line.push(b'\n');
            let _ = tokio::time::timeout(END_LINE_WAIT, f.tx.send(Bytes::from(line))).await;
        }
        Err(Stop::Store) => {
            let _ = f.control("end", "store_error").await;
        }
    }
}
