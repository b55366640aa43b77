//! Pure helpers for pixel hits: who loaded the pixel ([`classify`]) and the open event that is
//! stored, streamed and sent to webhooks ([`event`]).
//!
//! No IO and no clock here: the HTTP listener passes in the request's user agent, a few header
//! hints and the time since the relay handed the message upstream; the store persists the result.

pub mod classify;
pub mod event;

pub use classify::{Classification, Device, Hints, classify};
pub use event::{OpenEvent, format_rfc3339_ms, parse_rfc3339_ms};
