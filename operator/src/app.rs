//! `relaycache-operator run`: health endpoints and the webhook on every
//! replica, leader election, then the controller while this replica leads; a
//! clean stop on SIGTERM.

use std::sync::Arc;

use futures::FutureExt;

use kube::api::ListParams;
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::crd::{RelayCache, CRD_FILE};
use crate::health::{self, Health};
use crate::leader::{self, LeaseLock, Timings};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::resources::BuildSettings;
use crate::webhook::{self, WebhookError};

/// Why the operator stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The health address is taken or not ours.
    #[error(
        "cannot listen on {addr} for health and metrics: {source}; pick another --health-addr"
    )]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// No kubeconfig or in-cluster configuration.
    #[error("cannot configure a Kubernetes client: {0}; run in a pod with a service account or set KUBECONFIG")]
    Client(#[source] kube::Error),
    /// The apiserver does not know RelayCaches.
    #[error("the RelayCache CRD is not installed: {0}; run `kubectl apply -f crds/{CRD_FILE}` (or install the chart)")]
    CrdMissing(#[source] kube::Error),
    /// Another replica took the Lease while this one was leading.
    #[error("lost the leader lease; exiting so that only the new leader reconciles")]
    LostLeadership,
    /// The webhook could not start.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs until SIGTERM/SIGINT (Ok) or until leadership is lost (Err).
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(metrics.clone()));
    let listener = TcpListener::bind(args.health_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: args.health_addr,
            source,
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    spawn_signal_handler(stop_tx.clone())?;
    let health_task = tokio::spawn(health::serve(
        listener,
        health.clone(),
        stopped(stop_rx.clone()),
    ));
    info!(addr = %args.health_addr, "serving /healthz, /readyz and /metrics");

    let (client, namespace) = connect(&args).await?;
    // Every replica serves the webhook, leader or not; ready once it does.
    let webhook = webhook::start(&args, client.clone(), &namespace, stop_rx.clone()).await?;
    health.set_ready(true);

    let identity = identity();
    let timings = Timings::default();
    let lock = Arc::new(LeaseLock::new(
        Api::namespaced(client.clone(), &namespace),
        &args.lease_name,
        &identity,
        timings.lease_duration,
    ));
    let (leading_tx, leading_rx) = watch::channel(false);
    info!(lease = %args.lease_name, %namespace, %identity, "waiting to lead");
    let campaign = {
        let lock = lock.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move { leader::campaign(&lock, timings, leading_tx, stop).await })
    };

    // `leading_rx` stays alive until the campaign has ended, so its sends
    // never fail.
    let lost = lead_when_elected(
        &args,
        client,
        identity,
        &metrics,
        leading_rx.clone(),
        &stop_rx,
    )
    .await;
    let _ = stop_tx.send(true);
    let _ = campaign.await;
    if !lost {
        if let Err(err) = lock.release().await {
            warn!(error = %err, "could not release the lease; a standby takes over when it expires");
        }
    }
    let _ = health_task.await;
    let _ = webhook.await;
    if lost {
        Err(RunError::LostLeadership)
    } else {
        info!("stopped");
        Ok(())
    }
}

/// A client of the apiserver, checked to know RelayCaches, and the
/// operator's namespace (`--namespace`, else the client's default).
async fn connect(args: &RunArgs) -> Result<(Client, String), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    Api::<RelayCache>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(RunError::CrdMissing)?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, namespace))
}

/// This replica's name in the Lease: the pod's name where there is one.
fn identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("relaycache-operator-{}", std::process::id()))
}

/// Waits to be elected, then runs the controller until leadership ends;
/// `true` when the Lease was lost rather than a stop requested.
async fn lead_when_elected(
    args: &RunArgs,
    client: Client,
    identity: String,
    metrics: &Arc<Metrics>,
    mut leading_rx: watch::Receiver<bool>,
    stop_rx: &watch::Receiver<bool>,
) -> bool {
    let mut stop = stop_rx.clone();
    let lead = tokio::select! {
        result = leading_rx.wait_for(|leading| *leading) => result.is_ok(),
        _ = stop.wait_for(|stop| *stop) => false,
    };
    if !lead {
        return false;
    }
    metrics.set_leader(true);
    let ctx = Arc::new(Context::new(
        client,
        BuildSettings {
            default_image: args.default_image.clone(),
        },
        metrics.clone(),
        Some(identity),
    ));
    // The controller wants a Sync future; a oneshot bridges the two watches.
    let (halt_tx, halt_rx) = oneshot::channel::<()>();
    let watcher = tokio::spawn(lost_leadership(leading_rx.clone(), stop_rx.clone()).then(
        |lost| async move {
            let _ = halt_tx.send(());
            lost
        },
    ));
    info!("leading: starting the controller");
    reconcile::run(ctx, async move {
        let _ = halt_rx.await;
    })
    .await;
    let lost = watcher.await.unwrap_or(false);
    metrics.set_leader(false);
    lost
}

/// Resolves when leading ends: `true` if the Lease was lost, `false` on a
/// requested stop. A stop wins a tie, and the campaign ending (it drops its
/// sender when told to stop) is not a loss.
async fn lost_leadership(
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        biased;
        _ = stop.wait_for(|stop| *stop) => false,
        result = leading.wait_for(|leading| !*leading) => result.is_ok(),
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn spawn_signal_handler(stop: watch::Sender<bool>) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: finishing in-flight reconciles"),
            _ = int.recv() => info!("SIGINT: finishing in-flight reconciles"),
        }
        let _ = stop.send(true);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_is_not_a_lost_lease_even_when_the_campaign_has_ended() {
        let (leading_tx, leading_rx) = watch::channel(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        stop_tx.send(true).unwrap();
        // The campaign saw the stop and returned, dropping its sender.
        drop(leading_tx);
        assert!(!lost_leadership(leading_rx, stop_rx).await);
    }

    #[tokio::test]
    async fn losing_the_lease_while_running_is_a_loss() {
        let (leading_tx, leading_rx) = watch::channel(true);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let waiter = tokio::spawn(lost_leadership(leading_rx, stop_rx));
        leading_tx.send(false).unwrap();
        assert!(waiter.await.unwrap());
    }
}
