//! The proxy's integration tests, in one binary: each module starts real
//! `relaycache` processes (and the mock upstream, S3-compatible servers,
//! network namespaces) and talks to them over real sockets. One binary
//! links once; `cargo test -p relaycache --test it MODULE::` runs a module.

mod common;
mod netns;

mod admin;
mod caching;
mod cc_relay;
mod chaos;
mod cluster;
mod cluster_flight;
mod cluster_grpc;
mod coalescing;
mod compression;
mod explain;
mod lifecycle;
mod limits;
mod partition;
mod peer_names;
mod purge;
mod replay;
mod reserve;
mod savings;
mod stale;
mod streaming;
mod tls;
mod top;
mod transfer;
mod warmup;
