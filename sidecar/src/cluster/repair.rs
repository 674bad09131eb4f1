//! Repair: brings keys back to `replica_count` copies after members join,
//! fail or restart. Each member walks what it holds, asks the key's
//! replicas which versions they have (one batched call per member), and
//! copies what is missing or older, at most `repair_rate` entries a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::handoff::{Outbox, BATCH_ENTRIES};
use super::proto::VersionsRequest;
use super::security::PeerClient;
use super::warmup::Pace;
use super::wire::{entry_to_wire, version_from_wire};
use super::{Cluster, View};
use crate::entry::CachedResponse;
use crate::key::CacheKey;
use crate::metrics::cluster::PeerCall;

/// Runs a pass after every membership change (once views settled) and
/// every `repair_interval`, until the process stops or leaves; first pulls
/// this member's share again if it may have missed writes.
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
        cluster.pull_share_again().await;
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
        let mut pace = Pace::new(self.settings.repair_rate);
        let timeout = self.timings.call_timeout.max(Duration::from_secs(2));
        let started = Instant::now();
        let (mut short, mut repaired) = (0u64, 0u64);
        let entries = self.memory.entries();
        // Chunks no larger than a second's worth, so that even the first
        // one keeps to repair_rate rather than arriving as one burst.
        let chunk_size = (self.settings.repair_rate.max(1) as usize).min(BATCH_ENTRIES);
        for chunk in entries.chunks(chunk_size) {
            if self.is_leaving() {
                return;
            }
            let (outbox, short_here) = self.plan_copies(&view, chunk, count, timeout).await;
            short += short_here;
            let queued = outbox.len() as u64;
            if queued > 0 {
                let stored = outbox.send(self, timeout).await;
                repaired += stored;
                self.metrics.cluster.repaired.inc_by(stored);
                // Keep to repair_rate: wait until the entries sent so far fit.
                pace.add(queued).await;
            }
        }
        // What the pass found, before it copied anything: the figure that
        // tells how often and how far the cluster falls short.
        self.metrics
            .cluster
            .under_replicated_keys
            .set(i64::try_from(short).unwrap_or(i64::MAX));
        self.metrics.cluster.under_replicated_found.inc_by(short);
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

    /// For one chunk of entries, the copies `view` is missing: asks each
    /// key's replicas which versions they hold (one batched call per
    /// member) and queues the entry for every replica that lacks it or
    /// holds an older version. A replica that does not answer is left out
    /// (the next pass tries again). Also returns how many keys had fewer
    /// than `count` current copies.
    pub(super) async fn plan_copies(
        &self,
        view: &View,
        chunk: &[(CacheKey, Arc<CachedResponse>)],
        count: usize,
        timeout: Duration,
    ) -> (Outbox, u64) {
        // Current copies per key; this member's own counts as one.
        let mut holders = vec![0usize; chunk.len()];
        let mut asks: Vec<(Arc<str>, PeerClient, Vec<usize>)> = Vec::new();
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
            self.metrics.cluster.count_call(PeerCall::Versions, ok);
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
        let short = holders.iter().filter(|&&h| h < count).count() as u64;
        (outbox, short)
    }
}
