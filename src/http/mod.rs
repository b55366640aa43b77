//! HTTP listeners. `pixel` is the public one (the tracking image, `/healthz`); the private
//! admin listener (API, live tail, dashboard, metrics) lives beside it in `admin`, with its
//! live stream in `follow` and its page in `dashboard` (+ `dashboard.{html,css,js}`).
//!
//! `serve` is the accept loop both share (limits, timeouts, graceful shutdown). `client_ip`
//! decides which address a request came from, honouring proxy headers only from
//! trusted peers.

pub mod admin;
pub mod client_ip;
mod dashboard;
mod follow;
pub mod pixel;
pub mod serve;
