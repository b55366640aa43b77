//! The inbound ESMTP server.
//!
//! - `listener`: accepts connections, enforces the global and per-IP connection limits,
//!   spawns a session per connection and drains them on shutdown.
//! - `session`: the protocol state machine over any byte stream, calling a `Backend`.
//! - `command`: command-line parsing.  `data`: the DATA reader (dot-unstuffing, smuggling
//!   defence, size limit).  `reply`: every reply text and code.
//!
//! This module knows nothing about upstreams, rewriting or storage: that is `relay`'s job.

pub mod auth;
pub mod command;
pub mod data;
pub mod listener;
pub mod reply;
pub mod session;

pub use listener::{BackendFactory, Limits, serve};
pub use reply::Reply;
pub use session::{Backend, Envelope, SessionConfig, Transaction, new_queue_id};
