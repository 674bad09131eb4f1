//! RelayCache: a caching reverse proxy for LLM APIs.
//!
//! A request flows through [`proxy`]: routed to an [`upstream`], keyed by
//! [`key`] under the per-request [`policy`], looked up in the [`tier`]s,
//! coalesced with identical misses by [`coalesce`], and answered from cache
//! or from the upstream while being recorded as an [`entry`]. [`server`]
//! accepts connections, [`admin`] serves health, metrics and purge.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod canonical;
pub mod cluster;
pub mod coalesce;
pub use relaycache_config as config;
pub mod entry;
pub mod headers;
pub mod key;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod recording;
pub mod reply;
pub mod server;
pub mod telemetry;
pub mod tier;
pub mod upstream;
pub mod version;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::server::ListenerSettings;
use crate::tier::Tier;

/// Why the proxy stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    /// The proxy could not be built.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    /// The cluster tier could not start.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
}

/// Runs the proxy until `shutdown` resolves, then drains. Returns once both
/// listeners have stopped.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let proxy = Arc::new(Proxy::new(&config, Arc::clone(&metrics))?);
    let refusals = Arc::clone(&metrics);
    let ready = Arc::new(AtomicBool::new(false));
    let token = Some(config.server.admin_token.clone()).filter(|t| !t.is_empty());
    let cluster = proxy.peers().map(|peers| Arc::clone(peers.cluster()));
    let admin = Arc::new(Admin::new(
        proxy.memory().clone(),
        proxy.peers().cloned(),
        proxy.reserve().cloned(),
        metrics,
        token,
        Arc::clone(&ready),
    ));
    if let Some(cluster) = &cluster {
        cluster.start().await?;
    }

    let traffic = server::bind(&config.server.listen, "server.listen").await?;
    let admin_listener = server::bind(&config.server.admin_listen, "server.admin_listen").await?;
    tracing::info!(
        traffic = %traffic.local_addr()?,
        admin = %admin_listener.local_addr()?,
        mode = ?config.cache.mode,
        upstreams = config.upstreams.len(),
        "relaycache listening"
    );

    let settings = ListenerSettings {
        header_read_timeout: config.server.header_read_timeout,
        shutdown_timeout: config.server.shutdown_timeout,
        max_connections: Some(config.server.max_connections),
    };
    let admin_settings = ListenerSettings {
        max_connections: None,
        ..settings
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let proxy_handler = {
        let proxy = Arc::clone(&proxy);
        move |request| Arc::clone(&proxy).handle(request)
    };
    let admin_handler = move |request| Arc::clone(&admin).handle(request);
    let traffic_task = tokio::spawn(server::serve(
        traffic,
        proxy_handler,
        settings,
        stop_rx.clone(),
        move || refusals.count_overload(limits::OverloadLimit::Connections),
    ));
    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        admin_handler,
        admin_settings,
        stop_rx,
        || {},
    ));
    ready.store(true, Ordering::Release);

    shutdown.await;
    ready.store(false, Ordering::Release);
    if let Some(cluster) = &cluster {
        cluster.begin_leave();
    }
    tracing::info!(deadline = ?config.server.shutdown_timeout, "shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    let drained = traffic_task.await.unwrap_or(false);
    let _ = admin_task.await;
    if !drained {
        tracing::warn!(
            "some requests were still running at the shutdown deadline and were cut off"
        );
    }
    if let Some(cluster) = &cluster {
        cluster.hand_off().await;
        cluster.stop();
    }
    let _ = proxy.memory().close().await;
    if let Some(reserve) = proxy.reserve() {
        let _ = reserve.close().await;
    }
    tracing::info!("relaycache stopped");
    Ok(())
}
