//! Repair: brings keys back to `replica_count` copies after members join,
//! fail or restart. Each member walks what it holds, asks the key's
//! replicas which versions they have (one batched call per member), and
//! copies what is missing or older, at most `repair_rate` entries a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::handoff::{Outbox, BATCH_ENTRIES};
use super::proto::VersionsRequest;
use super::wire::{entry_to_wire, version_from_wire};
use super::Cluster;

/// Runs a pass after every membership change (once views settled) and
/// every `repair_interval`, until the process stops or leaves.
pub async fn repair_loop(cluster: Arc<Cluster>) {
    let mut stopping = cluster.stopping();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cluster.timings.repair_interval) => {}
            _ = cluster.changed.notified() => {
                tokio::time::sleep(cluster.timings.settle).await;
            }
            _ = stopping.changed() => return,
        }
        if cluster.is_leaving() {
            return;
        }
        cluster.repair_pass().await;
    }
}

impl Cluster {
    /// One repair pass over this member's entries.
    pub async fn repair_pass(&self) {
        let view = self.view();
        if !self.has_quorum(&view) || view.members.len() < 2 {
            return;
        }
        let count = (self.settings.replica_count as usize).min(view.members.len());
        let rate = f64::from(self.settings.repair_rate.max(1));
        let timeout = self.timings.call_timeout.max(Duration::from_secs(2));
        let started = Instant::now();
        let (mut short, mut repaired, mut sent) = (0u64, 0u64, 0u64);
        let entries = self.memory.entries();
        for chunk in entries.chunks(BATCH_ENTRIES) {
            if self.is_leaving() {
                return;
            }
            // Which replica should hold which of these keys.
            let mut holders = vec![0usize; chunk.len()];
            let mut asks: Vec<(Arc<str>, super::security::PeerClient, Vec<usize>)> = Vec::new();
            for (i, (key, _)) in chunk.iter().enumerate() {
                for member in view.replicas(key, count) {
                    let Some(client) = &member.client else {
                        holders[i] += 1;
                        continue;
                    };
                    match asks.iter_mut().find(|(id, _, _)| *id == member.id) {
                        Some((_, _, wanted)) => wanted.push(i),
                        None => asks.push((Arc::clone(&member.id), client.clone(), vec![i])),
                    }
                }
            }
            let answers = join_all(asks.into_iter().map(|(id, mut client, wanted)| async move {
                let keys = wanted.iter().map(|&i| chunk[i].0 .0.to_vec()).collect();
                let reply =
                    tokio::time::timeout(timeout, client.versions(VersionsRequest { keys })).await;
                (id, client, wanted, reply)
            }))
            .await;
            let mut outbox = Outbox::default();
            for (id, client, wanted, reply) in answers {
                let ok = matches!(reply, Ok(Ok(_)));
                self.metrics.cluster.count_call("versions", ok);
                let Ok(Ok(reply)) = reply else { continue };
                let held = reply.into_inner().versions;
                for (&i, theirs) in wanted
                    .iter()
                    .zip(held.iter().map(Some).chain(std::iter::repeat(None)))
                {
                    let (key, entry) = &chunk[i];
                    let current = theirs
                        .and_then(|kv| kv.version.as_ref())
                        .is_some_and(|v| version_from_wire(Some(v)) >= entry.version);
                    if current {
                        holders[i] += 1;
                    } else {
                        outbox.push(&id, &client, entry_to_wire(key, entry));
                    }
                }
            }
            short += holders.iter().filter(|&&h| h < count).count() as u64;
            let queued = outbox.len() as u64;
            if queued > 0 {
                let stored = outbox.send(self, timeout).await;
                repaired += stored;
                sent += queued;
                self.metrics.cluster.repaired.inc_by(stored);
                // Keep to repair_rate: wait until the entries sent so far fit.
                let due = Duration::from_secs_f64(sent as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        // What the pass found, before it copied anything: the figure that
        // tells how often and how far the cluster falls short.
        self.metrics
            .cluster
            .under_replicated_keys
            .set(i64::try_from(short).unwrap_or(i64::MAX));
        if short > 0 {
            tracing::info!(
                checked = entries.len(),
                under_replicated = short,
                repaired,
                took = ?started.elapsed(),
                "repair pass"
            );
        }
    }
}
