//! The store's record types, one per thing stored, shared by every backend: a message as the
//! relay records it ([`MessageRecord`]) and as the API shows it with its delivery and open
//! statistics ([`Message`]), an open ([`crate::track::OpenEvent`]), the lifetime totals
//! ([`Counters`], [`Stats`]), and what listing and indexing exchange. No storage engine here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net;
use crate::token::MessageId;
use crate::track::event::EventType;
use crate::track::event::{rfc3339_ms, rfc3339_ms_opt};
use crate::track::{Classification, OpenEvent};

/// How far the journal (`ingest`) is indexed: the end of a record, as segment generation then
/// byte offset in it. Ordered. The store keeps the one its writes reached, in the same
/// transaction as what they wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// Segment generation (from 1).
    pub generation: u64,
    /// Bytes into the segment.
    pub offset: u64,
}

impl Position {
    /// 16 bytes, big-endian (byte order is position order).
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.generation.to_be_bytes());
        b[8..].copy_from_slice(&self.offset.to_be_bytes());
        b
    }

    /// The inverse of [`Position::encode`].
    pub fn decode(b: &[u8]) -> Option<Position> {
        let b: [u8; 16] = b.try_into().ok()?;
        let (g, o) = b.split_at(8);
        Some(Position {
            generation: u64::from_be_bytes(g.try_into().ok()?),
            offset: u64::from_be_bytes(o.try_into().ok()?),
        })
    }
}

/// Changes to this node's held hits (valid hits whose message was not yet in a shared store
/// when they were indexed), committed in the same transaction as the opens and the journal
/// mark that passes them: a node killed while it holds hits finds them again on start, and a
/// hit recorded from the hold is never recorded twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldChanges {
    /// Newly held: where each hit ends in this node's journal (its key) and the hit as
    /// journaled.
    pub add: Vec<(Position, Vec<u8>)>,
    /// No longer held (recorded, or out of time), by key.
    pub release: Vec<Position>,
}

impl HoldChanges {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.release.is_empty()
    }
}

/// What the relay knows about a message when it hands it upstream: THE message record. The
/// store keeps it as recorded (with its delivery beside it) and the API shows it inside
/// [`Message`]; nothing copies it field by field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Random id (the token carries it); 32 hex digits in JSON.
    pub id: MessageId,
    /// The relay's queue id for logs.
    pub queue_id: String,
    /// When the relay received the message, ms since the epoch.
    #[serde(rename = "at", with = "rfc3339_ms")]
    pub at_ms: u64,
    /// MAIL FROM.
    pub sender: String,
    /// RCPT TO addresses the upstream accepted.
    pub recipients: Vec<String>,
    /// The Message-ID header, if any.
    pub message_id: Option<String>,
    /// The Subject header; kept only when `store.subjects` is on (the store enforces it).
    pub subject: Option<String>,
    /// Message size in bytes as received.
    pub size: u64,
    /// Whether a pixel was inserted.
    pub tracked: bool,
    /// Why not, when `tracked` is false.
    pub skip_reason: Option<String>,
}

/// The upstream's final answer to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// 2xx after the data.
    pub accepted: bool,
    /// The reply text as received.
    pub reply: String,
    /// When it came, ms since the epoch.
    #[serde(rename = "at", with = "rfc3339_ms")]
    pub at_ms: u64,
}

/// One pixel load, verified and classified, as the listener hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenHit {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Client IP (before anonymisation: the store applies `store.anonymize_ip`).
    pub ip: IpAddr,
    /// User-Agent as sent.
    pub user_agent: String,
    /// The verdict of `track::classify`.
    pub classification: Classification,
    /// The loader's country, with a country database.
    pub country: Option<String>,
    /// A click: the link's position in the HTML part and its URL (`None`: a pixel load).
    pub click: Option<(u16, String)>,
}

/// Per-message click statistics, updated with each click.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickStats {
    /// Every click.
    pub count: u64,
    /// Clicks not marked as machine.
    pub human: u64,
    /// Links clicked at least once (positions, ascending).
    #[serde(default)]
    pub links: Vec<u16>,
    /// Links a person clicked (positions, ascending).
    #[serde(default)]
    pub human_links: Vec<u16>,
    /// First click.
    #[serde(default, with = "rfc3339_ms_opt")]
    pub first_at: Option<u64>,
    /// Latest click.
    #[serde(default, with = "rfc3339_ms_opt")]
    pub last_at: Option<u64>,
    /// First click not marked as machine: when a person first followed a link.
    #[serde(default, with = "rfc3339_ms_opt")]
    pub first_human_at: Option<u64>,
}

impl ClickStats {
    /// Whether nothing was clicked.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Counts click `ev` (its `first` and `count` set here) and moves `c`'s click totals.
    pub(crate) fn count(&mut self, ev: &mut OpenEvent, c: &mut Counters) {
        let human = !ev.machine;
        let (first, first_human) = (self.count == 0, human && self.human == 0);
        self.count += 1;
        self.first_at = self.first_at.or(Some(ev.at_ms));
        self.last_at = Some(self.last_at.map_or(ev.at_ms, |l| l.max(ev.at_ms)));
        if human {
            self.human += 1;
            self.first_human_at = self.first_human_at.or(Some(ev.at_ms));
        }
        let link = ev.link.unwrap_or(0);
        let new_link = insert_sorted(&mut self.links, link);
        let new_human_link = human && insert_sorted(&mut self.human_links, link);
        ev.first = first;
        ev.count = self.count;
        c.clicks += 1;
        c.machine_clicks += u64::from(!human);
        c.unique_clicks += u64::from(first);
        c.unique_human_clicks += u64::from(first_human);
        c.link_clicks += u64::from(new_link);
        c.human_link_clicks += u64::from(new_human_link);
        if let Some(r) = ev.machine_reason.as_deref().filter(|_| ev.machine) {
            *c.click_reasons.entry(r.to_string()).or_default() += 1;
        }
    }
}

/// Inserts `v` into ascending `set`; whether it was new.
fn insert_sorted(set: &mut Vec<u16>, v: u16) -> bool {
    match set.binary_search(&v) {
        Ok(_) => false,
        Err(i) => {
            set.insert(i, v);
            true
        }
    }
}

/// Per-message open statistics, updated with each open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenStats {
    /// Every open.
    pub count: u64,
    /// Opens not marked as machine.
    pub human: u64,
    /// First open.
    #[serde(with = "rfc3339_ms_opt")]
    pub first_at: Option<u64>,
    /// Latest open.
    #[serde(with = "rfc3339_ms_opt")]
    pub last_at: Option<u64>,
    /// First open not marked as machine.
    #[serde(with = "rfc3339_ms_opt")]
    pub first_human_at: Option<u64>,
}

/// A message as the admin API shows it: its record, delivery and open statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The record as the relay wrote it (its fields are the message's own in JSON).
    #[serde(flatten)]
    pub record: MessageRecord,
    /// The upstream's final reply, once known.
    pub delivery: Option<Delivery>,
    /// Opens so far.
    #[serde(default)]
    pub opens: OpenStats,
    /// Clicks so far.
    #[serde(default)]
    pub clicks: ClickStats,
}

/// A message with all its opens and clicks, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageWithOpens {
    /// The message.
    #[serde(flatten)]
    pub message: Message,
    /// Its opens.
    pub open_events: Vec<OpenEvent>,
    /// Its clicks.
    pub click_events: Vec<OpenEvent>,
}

impl MessageWithOpens {
    /// The message with its events (opens and clicks, oldest first) sorted into both lists.
    pub fn split(message: Message, events: Vec<OpenEvent>) -> MessageWithOpens {
        let (click_events, open_events) = events.into_iter().partition(OpenEvent::is_click);
        MessageWithOpens {
            message,
            open_events,
            click_events,
        }
    }
}

/// Lifetime totals, kept in the store and in memory; purging old records does not lower them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Messages recorded (before the upstream answered).
    pub recorded: u64,
    /// Messages the upstream accepted.
    pub relayed: u64,
    /// Messages the upstream refused.
    pub rejected: u64,
    /// Accepted messages that carried a pixel.
    pub tracked: u64,
    /// Accepted messages without a pixel, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Every open.
    pub opens: u64,
    /// Opens marked as machine.
    pub machine_opens: u64,
    /// Messages with at least one open.
    pub unique_opens: u64,
    /// Messages with at least one open not marked as machine.
    pub unique_human_opens: u64,
    /// Opens per UTC day (`YYYY-MM-DD`), for the dashboard's chart.
    #[serde(default)]
    pub by_day: BTreeMap<String, OpenCounts>,
    /// Opens per mail client name.
    #[serde(default)]
    pub by_client: BTreeMap<String, OpenCounts>,
    /// Opens per device kind (`desktop`, `mobile`, `webmail`, `proxy`, `unknown`).
    #[serde(default)]
    pub by_device: BTreeMap<String, OpenCounts>,
    /// Opens by people through a mail provider's image proxy (not machine, `proxy` set).
    #[serde(default)]
    pub proxied_opens: u64,
    /// Machine opens per `machine_reason`.
    #[serde(default)]
    pub by_reason: BTreeMap<String, u64>,
    /// Opens per `proxy` (`google`, `yahoo`, `microsoft`, `apple`).
    #[serde(default)]
    pub by_proxy: BTreeMap<String, OpenCounts>,
    /// Every click on a tracked link.
    #[serde(default)]
    pub clicks: u64,
    /// Clicks marked as machine (link scanners).
    #[serde(default)]
    pub machine_clicks: u64,
    /// Messages with at least one click.
    #[serde(default)]
    pub unique_clicks: u64,
    /// Messages with at least one click not marked as machine.
    #[serde(default)]
    pub unique_human_clicks: u64,
    /// Distinct (message, link) pairs clicked.
    #[serde(default)]
    pub link_clicks: u64,
    /// Distinct (message, link) pairs a person clicked.
    #[serde(default)]
    pub human_link_clicks: u64,
    /// Machine clicks per `machine_reason`.
    #[serde(default)]
    pub click_reasons: BTreeMap<String, u64>,
}

/// Opens in one bucket of [`Counters`]' breakdowns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenCounts {
    /// Every open in the bucket.
    pub opens: u64,
    /// Of which marked as machine.
    pub machine: u64,
}

impl OpenCounts {
    /// Counts one open.
    pub(crate) fn add(&mut self, machine: bool) {
        self.opens += 1;
        self.machine += u64::from(machine);
    }
}

/// `pixelrelay stats` / `GET /api/v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// The stored totals.
    #[serde(flatten)]
    pub counters: Counters,
    /// Sum of `skipped`.
    pub skipped_total: u64,
    /// `opens - machine_opens`: opens by people, directly or through a proxy.
    pub human_opens: u64,
    /// Opens by people whose own client fetched the pixel (`human_opens - proxied_opens`).
    pub direct_opens: u64,
    /// Each machine reason's share of all opens (0 to 1).
    pub machine_share_by_reason: BTreeMap<String, f64>,
    /// `unique_opens / tracked` (0 when nothing was tracked).
    pub open_rate: f64,
    /// `unique_human_opens / tracked`.
    pub human_open_rate: f64,
    /// `clicks - machine_clicks`.
    pub human_clicks: u64,
    /// `unique_clicks / tracked`: messages clicked per message tracked.
    pub click_rate: f64,
    /// `unique_human_clicks / tracked`.
    pub human_click_rate: f64,
}

/// Which messages `list_messages` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFilter {
    /// Case-insensitive substring of a recipient.
    pub rcpt: Option<String>,
    /// Case-insensitive substring of the envelope sender.
    pub sender: Option<String>,
    /// `Some(true)`: only opened; `Some(false)`: only never opened.
    pub opened: Option<bool>,
    /// `opened` counts only opens by people (a message only machines opened is unopened).
    pub people: bool,
    /// Only messages received at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Only messages received before this time (ms since the epoch).
    pub until_ms: Option<u64>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// The items, in listing order.
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// Why a store operation failed.
#[derive(Debug)]
pub enum StoreError {
    /// The storage engine failed (IO, corruption, the database locked by another process);
    /// its own message.
    Engine(String),
    /// A stored value did not decode (or a value did not encode).
    Codec(serde_json::Error),
    /// The open log could not be written or opened.
    Io(std::io::Error),
    /// A cursor that this store did not hand out.
    BadCursor(String),
    /// No message with this id.
    NotFound(MessageId),
    /// A stored record has the wrong shape.
    Corrupt(&'static str),
    /// A background task failed to run.
    Task(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Engine(e) => write!(f, "store: {e}"),
            StoreError::Codec(e) => write!(f, "store: bad record: {e}"),
            StoreError::Io(e) => write!(f, "store: open log: {e}"),
            StoreError::BadCursor(c) => write!(f, "invalid cursor {c:?}"),
            StoreError::NotFound(id) => write!(f, "store: no message {id}"),
            StoreError::Corrupt(what) => write!(f, "store: corrupt {what}"),
            StoreError::Task(e) => write!(f, "store: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// What an open needs from its message record (see `Backend::open_context`): the hand-off
/// time, for the timing rules, and the message fields an open event repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenContext {
    /// The message.
    pub id: MessageId,
    /// When the relay handed it upstream (the upstream's final reply if known, else the time
    /// it was recorded), ms since the epoch.
    pub sent_at: u64,
    /// Its (first) recipient.
    pub recipient: String,
    /// Its envelope sender.
    pub sender: String,
    /// Its Message-ID header.
    pub message_id: Option<String>,
    /// Its subject, when subjects are kept.
    pub subject: Option<String>,
    /// Its queue id (pixelrelay's, or the MTA's in milter mode), for the open's log line;
    /// `None` for a record written before the store kept it here.
    pub queue_id: Option<String>,
}

impl OpenContext {
    /// When the relay handed the message upstream.
    pub fn sent_at(&self) -> u64 {
        self.sent_at
    }
}

/// An open ready to commit (see `Backend::commit_opens`): the event without its id, `first`
/// and `count`, which the store sets when it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedOpen {
    /// The message opened.
    pub id: MessageId,
    /// The event.
    pub event: OpenEvent,
    /// The message's queue id, for the log line (not part of the event).
    pub queue_id: Option<String>,
}

impl PreparedOpen {
    /// The event for `hit` on the message of `ctx`; the address anonymised when
    /// `anonymize_ip` (`store.anonymize_ip`).
    pub fn new(ctx: OpenContext, hit: &OpenHit, anonymize_ip: bool) -> PreparedOpen {
        let ip = if anonymize_ip {
            net::anonymize(hit.ip)
        } else {
            net::canonical(hit.ip)
        };
        let c = &hit.classification;
        let (event_type, link, url) = match &hit.click {
            Some((link, url)) => (EventType::Click, Some(*link), Some(url.clone())),
            None => (EventType::Open, None, None),
        };
        PreparedOpen {
            id: ctx.id,
            queue_id: ctx.queue_id,
            event: OpenEvent {
                id: String::new(),
                message: ctx.id.to_string(),
                at_ms: hit.at_ms,
                ip: ip.to_string(),
                user_agent: hit.user_agent.clone(),
                client: c.client.clone(),
                device: c.device,
                machine: c.machine,
                machine_reason: c.machine_reason.map(str::to_string),
                proxy: c.proxy,
                country: hit.country.clone(),
                event_type,
                first: false,
                count: 0,
                link,
                url,
                recipient: ctx.recipient,
                sender: ctx.sender,
                message_id: ctx.message_id,
                subject: ctx.subject,
            },
        }
    }

    /// The message opened.
    pub fn message(&self) -> &MessageId {
        &self.id
    }
}

// --- The webhook outbox -----------------------------------------------------------------

/// Which events one endpoint subscribed to: what the store needs to write outbox rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Stable endpoint id (see the module docs).
    pub endpoint: u64,
    /// Gets `open` events.
    pub open: bool,
    /// Gets `message` events.
    pub message: bool,
    /// Gets `click` events.
    pub click: bool,
}

impl Subscription {
    /// Whether the endpoint gets events of `kind` (`open`, `click`, `message`).
    pub fn wants(&self, kind: &str) -> bool {
        match kind {
            "open" => self.open,
            "click" => self.click,
            _ => self.message,
        }
    }
}

/// One delivery as stored: the body to POST and its retry state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    /// The event's id (16 hex digits), also inside `body`.
    pub event_id: String,
    /// `open`, `click` or `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the event happened (the age limit counts from here).
    #[serde(rename = "created", with = "rfc3339_ms")]
    pub created_ms: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before this time (ms since the epoch) is the next attempt due.
    #[serde(rename = "next_attempt", with = "rfc3339_ms")]
    pub next_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The exact JSON body to POST.
    pub body: String,
}

/// A row with its key, as listed for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxItem {
    /// `endpoint ‖ seq` as 32 hex digits: what `Backend::retry_dead_letter` takes.
    pub id: String,
    /// The endpoint id (16 hex digits).
    pub endpoint: String,
    /// The row.
    #[serde(flatten)]
    pub row: OutboxRow,
}

/// Parses a 32-hex-digit delivery id.
pub fn parse_delivery_id(id: &str) -> Option<(u64, u64)> {
    if id.len() != 32 || !id.is_ascii() {
        return None;
    }
    let e = u64::from_str_radix(&id[..16], 16).ok()?;
    let s = u64::from_str_radix(&id[16..], 16).ok()?;
    Some((e, s))
}

/// What the delivery workers watch: the last sequence committed and a counter bumped when a
/// dead letter goes back into the outbox (rows behind the sequence: rescan).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxVersion {
    /// Sequence of the newest row written.
    pub last_seq: u64,
    /// Bumped by `Backend::retry_dead_letter`.
    pub retries: u64,
}

/// What one purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Messages deleted.
    pub messages: u64,
    /// Opens deleted.
    pub opens: u64,
}
