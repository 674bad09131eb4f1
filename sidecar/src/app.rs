//! The process: builds the tiers, the cluster, the proxy and the admin
//! listener from a validated configuration, starts them in order, and on
//! shutdown drains requests, leaves the cluster and flushes the tiers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::admin::Admin;
use crate::cluster::{self, Cluster, EntryChecks, PeerTier};
use crate::compression::Compression;
use crate::config::{Config, Mode};
use crate::key::KeyBuilder;
use crate::limits;
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy};
use crate::server::{self, ListenerSettings};
use crate::tier::reserve::{ReserveError, ReserveTier};
use crate::tier::MemoryTier;
use crate::tiers::Tiers;

/// Why the proxy stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    /// The proxy could not be built.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    /// The reserve store could not be opened.
    #[error(transparent)]
    Reserve(#[from] ReserveError),
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
    let metrics = Arc::new(Metrics::with_prices(crate::config::PriceTable::new(
        &config.cache.prices,
    )));
    let tiers = build_tiers(&config, &metrics)?;
    let proxy = Arc::new(Proxy::new(&config, tiers.clone(), Arc::clone(&metrics))?);
    let refusals = Arc::clone(&metrics);
    let ready = Arc::new(AtomicBool::new(false));
    let token = Some(config.server.admin_token.clone()).filter(|t| !t.is_empty());
    let cluster = tiers.cluster().cloned();
    let admin = Arc::new(Admin::new(
        tiers.clone(),
        metrics,
        token,
        Arc::clone(&ready),
        crate::transfer::ImportLimits {
            max_ttl: config.cache.max_ttl,
            max_entry_bytes: config.cache.max_entry_bytes,
        },
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
        move || {
            refusals
                .proxy
                .count_overload(limits::OverloadLimit::Connections)
        },
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
    tiers.close().await;
    tracing::info!("relaycache stopped");
    Ok(())
}

/// Memory always; the reserve when configured and caching; the cluster in
/// mode `ha`, over this process's memory and reserve.
fn build_tiers(config: &Config, metrics: &Arc<Metrics>) -> Result<Tiers, RunError> {
    let cache = &config.cache;
    let memory = MemoryTier::new(
        cache.memory.max_cost,
        cache.stale_if_error,
        metrics.proxy.evictions.clone(),
    );
    let caching = cache.mode != Mode::Disabled;
    let reserve = match &cache.reserve {
        r if caching && !r.url.is_empty() => Some(ReserveTier::open(r, Arc::clone(metrics))?),
        _ => None,
    };
    if let Some(reserve) = &reserve {
        reserve.keep_stale_for(cache.stale_if_error);
    }
    let peers = if cache.mode == Mode::Ha {
        let checks = EntryChecks {
            keys: KeyBuilder::new(&cache.key, cache.isolation.clone()),
            max_ttl: cache.max_ttl,
            max_entry_bytes: cache.max_entry_bytes,
        };
        let cluster = Cluster::new(
            &cache.ha,
            checks,
            memory.clone(),
            reserve.clone(),
            &cache.coalesce,
            Arc::clone(metrics),
        )?;
        Some(PeerTier::new(cluster))
    } else {
        None
    };
    Ok(Tiers::new(
        memory,
        peers,
        reserve,
        Compression::from_config(&cache.compression),
    ))
}
