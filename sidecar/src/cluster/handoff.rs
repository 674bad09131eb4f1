//! Graceful leave: before a member exits it gives every entry it held as a
//! replica to the members that hold the key once it is gone, so that a
//! rolling restart does not empty the cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::proto::{Entry, SetManyRequest};
use super::security::PeerClient;
use super::wire::entry_to_wire;
use super::Cluster;

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
                    cluster.metrics.cluster.count_call("set_many", ok);
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
    pub async fn hand_off(&self) {
        if !self.settings.embedded {
            return;
        }
        let count = self.settings.replica_count as usize;
        let before = self.membership.view_with_self(true);
        let after = self.membership.view_with_self(false);
        let mut outbox = Outbox::default();
        for (key, entry) in self.memory.entries() {
            let old = before.replicas(&key, count);
            if !old.iter().any(|m| m.is_local()) {
                continue;
            }
            for member in after.replicas(&key, count) {
                let Some(client) = &member.client else {
                    continue;
                };
                if old.iter().any(|o| o.id == member.id) {
                    continue;
                }
                outbox.push(&member.id, client, entry_to_wire(&key, &entry));
            }
        }
        let queued = outbox.len();
        if queued == 0 {
            tracing::info!("leave: nothing to hand off");
            return;
        }
        let deadline = self.settings.leave_timeout;
        let call_timeout = deadline.max(Duration::from_millis(100));
        match tokio::time::timeout(deadline, outbox.send(self, call_timeout)).await {
            Ok(stored) => {
                self.metrics.cluster.handed_off.inc_by(stored);
                tracing::info!(queued, stored, "leave: handed entries to their new owners");
            }
            Err(_) => tracing::warn!(
                queued,
                ?deadline,
                "leave: handoff did not finish within cache.ha.leave_timeout; repair on the remaining members restores what is missing"
            ),
        }
    }
}

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
