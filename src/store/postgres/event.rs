//! An open as the `opens` table keeps it: the event's JSON without what the row's own columns
//! (`id`, `message`) and its message's row (recipient, sender, Message-ID, subject) hold. Every
//! commit of opens copies thousands of these, so half an event's bytes less is half the heap,
//! index-page and WAL traffic less; reads join the message back (rows written whole by an older
//! pixelrelay read the same).

use serde::Serialize;
use tokio_postgres::Row;

use crate::store::StoreError;
use crate::store::shared::format_id;
use crate::token::MessageId;
use crate::track::event::{EventType, rfc3339_ms};
use crate::track::{Device, OpenEvent, Proxy};

/// The columns [`events`] reads, for `SELECT {OPEN_COLUMNS} FROM opens o JOIN messages m …`.
pub(super) const OPEN_COLUMNS: &str =
    "o.id, o.message, o.event, m.recipients[1], m.sender, m.message_id, m.subject";

/// The stored part of an open event (same names and formats as [`OpenEvent`]'s JSON).
#[derive(Serialize)]
struct Stored<'a> {
    /// Written for clicks only (an open is the default).
    #[serde(rename = "type", skip_serializing_if = "is_open")]
    event_type: EventType,
    #[serde(rename = "at", with = "rfc3339_ms")]
    at_ms: u64,
    ip: &'a str,
    user_agent: &'a str,
    client: &'a str,
    device: Device,
    machine: bool,
    machine_reason: &'a Option<String>,
    proxy: Option<Proxy>,
    country: &'a Option<String>,
    first: bool,
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
}

fn is_open(t: &EventType) -> bool {
    *t == EventType::Open
}

/// What the `event` column of `e` holds.
pub(super) fn stored(e: &OpenEvent) -> Result<String, StoreError> {
    Ok(serde_json::to_string(&Stored {
        event_type: e.event_type,
        at_ms: e.at_ms,
        ip: &e.ip,
        user_agent: &e.user_agent,
        client: &e.client,
        device: e.device,
        machine: e.machine,
        machine_reason: &e.machine_reason,
        proxy: e.proxy,
        country: &e.country,
        first: e.first,
        count: e.count,
        link: e.link,
        url: e.url.as_deref(),
    })?)
}

/// The events of rows selected as [`OPEN_COLUMNS`].
pub(super) fn events(rows: &[Row]) -> Result<Vec<OpenEvent>, StoreError> {
    rows.iter().map(event).collect()
}

fn event(r: &Row) -> Result<OpenEvent, StoreError> {
    let mut e: OpenEvent = serde_json::from_str(r.try_get::<_, &str>(2)?)?;
    e.id = format_id(super::unbig(r.try_get(0)?));
    let message: &[u8] = r.try_get(1)?;
    e.message = MessageId::from_slice(message)
        .map(|m| m.to_string())
        .unwrap_or_default();
    e.recipient = r.try_get::<_, Option<String>>(3)?.unwrap_or_default();
    e.sender = r.try_get(4)?;
    e.message_id = r.try_get(5)?;
    e.subject = r.try_get(6)?;
    Ok(e)
}
