//! Pure helpers for pixel hits: who loaded the pixel ([`classify`]), the network catalogue it
//! consults ([`networks`]) and the open event that is stored, streamed and sent to webhooks
//! ([`event`]).
//!
//! No IO and no clock here: the HTTP listener passes in the request's user agent, a few header
//! hints, what the address is (looked up by `evidence`) and the time since the relay handed the
//! message upstream; the store persists the result.

pub mod classify;
pub mod event;
pub mod networks;

pub use classify::{Classification, Device, Hints, OpenKind, REASONS, Seen, Windows, classify};
pub use event::{OpenEvent, format_rfc3339_ms, parse_rfc3339_ms};
pub use networks::{Catalogue, Certainty, NetKind, Network, Proxy};
