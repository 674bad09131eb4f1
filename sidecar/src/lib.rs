//! RelayCache: a caching reverse proxy for LLM APIs.
//!
//! [`app`] wires the process: the [`tiers`], the [`cluster`], the
//! [`proxy`] and the [`admin`] listener. A request flows through [`proxy`]:
//! routed to an [`upstream`], keyed by [`key`] under the per-request
//! [`policy`], looked up in the [`tiers`], coalesced with identical misses
//! by [`coalesce`], and answered from cache or from the upstream while
//! being recorded as an [`entry`]. [`server`] accepts connections.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod bundle;
pub mod canonical;
pub mod cli;
pub mod cluster;
pub mod coalesce;
pub mod compression;
pub use relaycache_config as config;
pub mod entry;
pub mod headers;
pub mod key;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod recording;
pub mod reply;
pub mod server;
pub mod telemetry;
pub mod tier;
pub mod tiers;
pub mod transfer;
pub mod upstream;
pub mod version;

pub use app::{run, RunError};
