//! HTTP listeners. `pixel` is the public one (the tracking image, `/healthz`); the private
//! admin listener (API, live tail, dashboard, metrics) lives beside it in `admin/`, with its
//! shared state (`state`), answers (`respond`), live stream (`follow`) and page (`dashboard`
//! + `dashboard.{html,css,js}`).
//!
//! `serve` is the accept loop both share (limits, timeouts, graceful shutdown). `client_ip`
//! decides which address a request came from, honouring proxy headers only from
//! trusted peers.

pub mod admin;
pub mod client_ip;
pub mod pixel;
pub mod serve;
