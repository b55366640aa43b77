//! HTTP listeners. `pixel` is the public one (the tracking image, `/healthz`); the private
//! admin listener (API, live tail, dashboard, metrics) lives beside it in `admin`.
//!
//! `client_ip` decides which address a request came from, honouring proxy headers only from
//! trusted peers.

pub mod client_ip;
pub mod pixel;
