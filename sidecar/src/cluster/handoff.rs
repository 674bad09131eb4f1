//! Graceful leave: before a member exits it makes sure that every entry it
//! held as a replica is held by each member that owns the key once it is
//! gone, so that a rolling restart does not empty the cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::proto::{Entry, SetManyRequest};
use super::security::PeerClient;
use super::Cluster;
use crate::metrics::cluster::PeerCall;

/// Entries per handoff or repair call, and their byte budget.
pub(super) const BATCH_ENTRIES: usize = 256;
pub(super) const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Entries to send, grouped by the member that should receive them.
#[derive(Default)]
pub(super) struct Outbox {
    by_member: HashMap<Arc<str>, (PeerClient, Vec<Entry>)>,
}

impl Outbox {
    /// Queues `entry` for member `id`.
    pub(super) fn push(&mut self, id: &Arc<str>, client: &PeerClient, entry: Entry) {
        self.by_member
            .entry(Arc::clone(id))
            .or_insert_with(|| (client.clone(), Vec::new()))
            .1
            .push(entry);
    }

    /// Entries queued.
    pub(super) fn len(&self) -> usize {
        self.by_member.values().map(|(_, e)| e.len()).sum()
    }

    /// Sends every batch, members in parallel and each member's batches in
    /// turn; returns the entries the receivers stored.
    pub(super) async fn send(self, cluster: &Cluster, call_timeout: Duration) -> u64 {
        let sends = self
            .by_member
            .into_values()
            .map(|(mut client, entries)| async move {
                let mut stored = 0u64;
                for batch in batches(entries) {
                    let request = SetManyRequest { entries: batch };
                    let result = tokio::time::timeout(call_timeout, client.set_many(request)).await;
                    let ok = matches!(result, Ok(Ok(_)));
                    cluster.metrics.cluster.count_call(PeerCall::SetMany, ok);
                    match result {
                        Ok(Ok(reply)) => stored += u64::from(reply.get_ref().stored),
                        _ => break,
                    }
                }
                stored
            });
        futures::future::join_all(sends).await.into_iter().sum()
    }
}

/// Splits entries into calls of at most [`BATCH_ENTRIES`] and about
/// [`BATCH_BYTES`].
fn batches(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut out = vec![Vec::new()];
    let mut bytes = 0;
    for entry in entries {
        let size = entry.body.len() + entry.header_block.len();
        let current = out.last().map_or(0, Vec::len);
        if current >= BATCH_ENTRIES || (current > 0 && bytes + size > BATCH_BYTES) {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(last) = out.last_mut() {
            last.push(entry);
        }
    }
    out.retain(|b| !b.is_empty());
    out
}

impl Cluster {
    /// Hands this member's replicas to their next owners, within
    /// `leave_timeout`. Call after [`Cluster::begin_leave`].
    ///
    /// Every member of a key's new replica set is asked which version it
    /// holds, not only the member that newly becomes a replica: an owner
    /// that stays an owner may itself have restarted a moment ago and not
    /// been repaired yet (the very case of a rolling restart), and this
    /// member's copy may be the last one.
    pub async fn hand_off(&self) {
        if !self.settings.embedded {
            return;
        }
        let count = self.settings.replica_count as usize;
        let before = self.membership.view_with_self(true);
        let after = self.membership.view_with_self(false);
        let owned: Vec<_> = self
            .memory
            .entries()
            .into_iter()
            .filter(|(key, _)| before.replicas(key, count).iter().any(|m| m.is_local()))
            .collect();
        if owned.is_empty() || after.members.is_empty() {
            tracing::info!("leave: nothing to hand off");
            return;
        }
        let deadline = self.settings.leave_timeout;
        let call_timeout = deadline.max(Duration::from_millis(100));
        let count = count.min(after.members.len());
        let (queued, stored) = (AtomicU64::new(0), AtomicU64::new(0));
        // A few chunks at once: each is a Versions round trip, then the
        // copies; one at a time would leave the links idle in between.
        let work = futures::stream::iter(owned.chunks(BATCH_ENTRIES)).for_each_concurrent(
            HANDOFF_CHUNKS_IN_FLIGHT,
            |chunk| {
                let (after, queued, stored) = (&after, &queued, &stored);
                async move {
                    let (outbox, _) = self.plan_copies(after, chunk, count, call_timeout).await;
                    queued.fetch_add(outbox.len() as u64, Ordering::Relaxed);
                    let sent = outbox.send(self, call_timeout).await;
                    stored.fetch_add(sent, Ordering::Relaxed);
                    self.metrics.cluster.handed_off.inc_by(sent);
                }
            },
        );
        let finished = tokio::time::timeout(deadline, work).await.is_ok();
        let (queued, stored) = (queued.into_inner(), stored.into_inner());
        if finished {
            tracing::info!(
                checked = owned.len(),
                queued,
                stored,
                "leave: handed entries to their new owners"
            );
        } else {
            tracing::warn!(
                checked = owned.len(),
                queued,
                stored,
                ?deadline,
                "leave: handoff did not finish within cache.ha.leave_timeout; repair on the remaining members restores what is missing"
            );
        }
    }
}

/// Chunks of [`BATCH_ENTRIES`] a handoff works on at once.
const HANDOFF_CHUNKS_IN_FLIGHT: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: usize) -> Entry {
        Entry {
            body: vec![0; size],
            ..Entry::default()
        }
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        let many: Vec<Entry> = (0..600).map(|_| entry(10)).collect();
        let sizes: Vec<usize> = batches(many).iter().map(Vec::len).collect();
        assert_eq!(sizes, [256, 256, 88]);
        let big: Vec<Entry> = (0..3).map(|_| entry(5 * 1024 * 1024)).collect();
        assert_eq!(batches(big).len(), 3);
        assert!(batches(Vec::new()).is_empty());
    }
}
