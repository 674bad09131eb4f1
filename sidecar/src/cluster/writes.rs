//! A member's replica writes, gathered.
//!
//! Writes to one member leave one call at a time. While a call is on its
//! way, the writes queued behind it wait, and leave together as the next
//! `SetBatch`: a busy member sends a few large calls instead of one per
//! answer, and an idle one sends each write at once, a batch of one, so
//! gathering adds no wait of its own. A member from before `SetBatch`
//! answers UNIMPLEMENTED; from then on its writes go one `Set` each.
//!
//! The queue is bounded: writes beyond [`MAX_QUEUED_WRITES`] (a member far
//! slower than the answers, or not answering until membership drops it)
//! fail at once, counted as failed replica writes, rather than piling up
//! in memory.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prost::Message;
use tokio::sync::oneshot;
use tonic::{Code, Status};

use super::proto::{SetBatchRequest, SetOutcome, SetReply, SetRequest};
use super::security::PeerClient;
use crate::metrics::cluster::PeerCall;
use crate::metrics::Metrics;

/// Writes in one `SetBatch` at most.
pub const MAX_BATCH_WRITES: usize = 128;

/// Encoded bytes in one `SetBatch` at most (a single larger write still
/// goes, alone): well under the 64 MiB a cluster message may carry.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Writes waiting for one member at most.
pub const MAX_QUEUED_WRITES: usize = 4096;

/// How the writes reach the member: a cluster client, or a stand-in in
/// tests of the gathering itself.
pub trait WriteTransport: Clone + Send + Sync + 'static {
    /// One `SetBatch` call.
    fn send_batch(
        &self,
        writes: Vec<SetRequest>,
    ) -> impl Future<Output = Result<Vec<SetOutcome>, Status>> + Send;

    /// One `Set` call.
    fn send_one(&self, write: SetRequest) -> impl Future<Output = Result<SetReply, Status>> + Send;
}

impl WriteTransport for PeerClient {
    fn send_batch(
        &self,
        writes: Vec<SetRequest>,
    ) -> impl Future<Output = Result<Vec<SetOutcome>, Status>> + Send {
        let mut client = self.clone();
        async move {
            let reply = client.set_batch(SetBatchRequest { writes }).await?;
            Ok(reply.into_inner().outcomes)
        }
    }

    fn send_one(&self, write: SetRequest) -> impl Future<Output = Result<SetReply, Status>> + Send {
        let mut client = self.clone();
        async move { Ok(client.set(write).await?.into_inner()) }
    }
}

/// Whether the member takes `SetBatch` is not known yet: a batch keeps a
/// copy of its writes, to send them one by one if it does not.
const UNKNOWN: u8 = 0;
/// The member took a `SetBatch`.
const BATCHES: u8 = 1;
/// The member answered `SetBatch` with UNIMPLEMENTED: one `Set` per write.
const ONE_AT_A_TIME: u8 = 2;

/// One write waiting for its call.
struct Queued {
    write: SetRequest,
    bytes: usize,
    acknowledged: oneshot::Sender<bool>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Queued>,
    /// A task is sending: it takes what is waiting when its call returns.
    sending: bool,
}

/// The writes on their way to one member.
pub struct ReplicaWrites<T: WriteTransport = PeerClient> {
    transport: T,
    queue: Mutex<Queue>,
    /// What the member is known to take: [`UNKNOWN`], [`BATCHES`] or
    /// [`ONE_AT_A_TIME`] (it answered `SetBatch` with UNIMPLEMENTED).
    takes: AtomicU8,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

fn locked(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    match queue.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Held by the sending task: if it ends early (its runtime shutting down),
/// the writes it leaves behind fail rather than wait forever, and the next
/// write starts a new task.
struct Sending<'a>(&'a Mutex<Queue>);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let mut queue = locked(self.0);
        queue.sending = false;
        // Dropping each sender tells its writer "not acknowledged".
        queue.waiting.clear();
    }
}

impl<T: WriteTransport> ReplicaWrites<T> {
    /// Writes to the member `transport` reaches; each call gets `timeout`.
    pub fn new(transport: T, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            transport,
            queue: Mutex::default(),
            takes: AtomicU8::new(UNKNOWN),
            timeout,
            metrics,
        }
    }

    /// Queues `write`; resolves to whether the member acknowledged it
    /// (stored it, or kept a newer copy).
    pub fn write(self: &Arc<Self>, write: SetRequest) -> impl Future<Output = bool> + Send {
        let (acknowledged, answer) = oneshot::channel();
        let start_sending = {
            let mut queue = locked(&self.queue);
            if queue.waiting.len() >= MAX_QUEUED_WRITES {
                drop(queue);
                tracing::debug!(
                    limit = MAX_QUEUED_WRITES,
                    "a member's write queue is full; the write fails"
                );
                let _ = acknowledged.send(false);
                None
            } else {
                let bytes = write.encoded_len();
                queue.waiting.push_back(Queued {
                    write,
                    bytes,
                    acknowledged,
                });
                Some(!std::mem::replace(&mut queue.sending, true))
            }
        };
        if start_sending == Some(true) {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.send_all().await });
        }
        async move { answer.await.unwrap_or(false) }
    }

    /// Sends what is queued, a batch at a time, until nothing is.
    async fn send_all(&self) {
        let _sending = Sending(&self.queue);
        loop {
            let batch = {
                let mut queue = locked(&self.queue);
                let mut bytes = 0;
                let mut count = 0;
                for queued in &queue.waiting {
                    if count == MAX_BATCH_WRITES
                        || (count > 0 && bytes + queued.bytes > MAX_BATCH_BYTES)
                    {
                        break;
                    }
                    bytes += queued.bytes;
                    count += 1;
                }
                if count == 0 {
                    queue.sending = false;
                    return;
                }
                queue.waiting.drain(..count).collect::<Vec<_>>()
            };
            self.send(batch).await;
        }
    }

    async fn send(&self, batch: Vec<Queued>) {
        let (writes, acknowledged): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|queued| (queued.write, queued.acknowledged))
            .unzip();
        let takes = self.takes.load(Ordering::Relaxed);
        let writes = if takes == ONE_AT_A_TIME {
            writes
        } else {
            let count = writes.len();
            let (sent, kept) = if takes == UNKNOWN {
                (writes.clone(), Some(writes))
            } else {
                (writes, None)
            };
            let result = tokio::time::timeout(self.timeout, self.transport.send_batch(sent)).await;
            match result {
                Ok(Ok(outcomes)) if outcomes.len() == count => {
                    self.takes.store(BATCHES, Ordering::Relaxed);
                    self.metrics.cluster.count_call(PeerCall::SetBatch, true);
                    for (outcome, acknowledged) in outcomes.iter().zip(acknowledged) {
                        if !outcome.refused.is_empty() {
                            tracing::debug!(refused = %outcome.refused, "a member refused a replica write");
                        }
                        let _ = acknowledged.send(outcome.refused.is_empty());
                    }
                    return;
                }
                Ok(Err(status)) if status.code() == Code::Unimplemented => {
                    tracing::info!("a member without SetBatch (an older release): its replica writes go one Set each");
                    self.takes.store(ONE_AT_A_TIME, Ordering::Relaxed);
                    // A member that took batches before was replaced by an
                    // older release: this batch's copy is gone, it failed.
                    let Some(kept) = kept else {
                        self.metrics.cluster.count_call(PeerCall::SetBatch, false);
                        return;
                    };
                    kept
                }
                Ok(Ok(outcomes)) => {
                    self.metrics.cluster.count_call(PeerCall::SetBatch, false);
                    tracing::warn!(
                        writes = count,
                        outcomes = outcomes.len(),
                        "a member answered a batch of replica writes with the wrong number of outcomes; counted as failed"
                    );
                    return;
                }
                Ok(Err(status)) => {
                    self.metrics.cluster.count_call(PeerCall::SetBatch, false);
                    tracing::debug!(%status, writes = count, "a batch of replica writes failed");
                    return;
                }
                Err(_) => {
                    self.metrics.cluster.count_call(PeerCall::SetBatch, false);
                    tracing::debug!(timeout = ?self.timeout, writes = count, "a batch of replica writes timed out");
                    return;
                }
            }
        };
        let calls = writes.into_iter().map(|write| async move {
            let ok = matches!(
                tokio::time::timeout(self.timeout, self.transport.send_one(write)).await,
                Ok(Ok(_))
            );
            self.metrics.cluster.count_call(PeerCall::Set, ok);
            ok
        });
        let results = futures::future::join_all(calls).await;
        for (ok, acknowledged) in results.into_iter().zip(acknowledged) {
            let _ = acknowledged.send(ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;
    use crate::cluster::proto::Entry;
    use crate::metrics::cluster::PeerCallLabels;

    /// Stands in for a member, so that the test decides when each call
    /// returns (a real member answers too fast to see writes queue up).
    /// It answers as the cluster service does: a write without an entry
    /// is refused, every other one stored.
    #[derive(Clone)]
    struct Member(Arc<MemberState>);

    struct MemberState {
        /// Sizes of the SetBatch calls received, in order.
        batches: Mutex<Vec<usize>>,
        sets: AtomicUsize,
        /// Each call waits for a permit.
        gate: tokio::sync::Semaphore,
        without_set_batch: bool,
        failing: AtomicBool,
    }

    impl Member {
        fn new(without_set_batch: bool) -> Self {
            Self(Arc::new(MemberState {
                batches: Mutex::default(),
                sets: AtomicUsize::new(0),
                gate: tokio::sync::Semaphore::new(0),
                without_set_batch,
                failing: AtomicBool::new(false),
            }))
        }

        fn batches(&self) -> Vec<usize> {
            self.0.batches.lock().map(|b| b.clone()).unwrap_or_default()
        }

        fn outcome(write: &SetRequest) -> SetOutcome {
            SetOutcome {
                stored: write.entry.is_some(),
                refused: if write.entry.is_some() {
                    String::new()
                } else {
                    "set needs an entry".to_string()
                },
            }
        }
    }

    impl WriteTransport for Member {
        fn send_batch(
            &self,
            writes: Vec<SetRequest>,
        ) -> impl Future<Output = Result<Vec<SetOutcome>, Status>> + Send {
            let member = self.clone();
            async move {
                if let Ok(mut batches) = member.0.batches.lock() {
                    batches.push(writes.len());
                }
                let _permit = member.0.gate.acquire().await;
                if member.0.without_set_batch {
                    return Err(Status::unimplemented("unknown method SetBatch"));
                }
                if member.0.failing.load(Ordering::Relaxed) {
                    return Err(Status::unavailable("connection refused"));
                }
                Ok(writes.iter().map(Member::outcome).collect())
            }
        }

        fn send_one(
            &self,
            write: SetRequest,
        ) -> impl Future<Output = Result<SetReply, Status>> + Send {
            let member = self.clone();
            async move {
                member.0.sets.fetch_add(1, Ordering::Relaxed);
                let _permit = member.0.gate.acquire().await;
                let outcome = Member::outcome(&write);
                if outcome.refused.is_empty() {
                    Ok(SetReply {
                        stored: outcome.stored,
                    })
                } else {
                    Err(Status::invalid_argument(outcome.refused))
                }
            }
        }
    }

    fn write_of(bytes: usize) -> SetRequest {
        SetRequest {
            entry: Some(Entry {
                body: vec![b'a'; bytes],
                ..Entry::default()
            }),
            admit_to_reserve: false,
            origin: None,
        }
    }

    fn writes_to(member: &Member) -> (Arc<ReplicaWrites<Member>>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let writes = ReplicaWrites::new(
            member.clone(),
            Duration::from_secs(30),
            Arc::clone(&metrics),
        );
        (Arc::new(writes), metrics)
    }

    fn calls(metrics: &Metrics, op: PeerCall, ok: bool) -> u64 {
        metrics.cluster.calls.get(PeerCallLabels { op, ok })
    }

    /// Lets the calls made so far through, once each has arrived.
    async fn until_calls(member: &Member, batches: usize) {
        for _ in 0..500 {
            if member.batches().len() >= batches {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{batches} calls never arrived: {:?}", member.batches());
    }

    #[tokio::test]
    async fn writes_queued_behind_a_call_leave_together_each_with_its_own_outcome() {
        let member = Member::new(false);
        let (writes, metrics) = writes_to(&member);
        // The first write leaves alone, at once.
        let first = tokio::spawn(writes.write(write_of(10)));
        until_calls(&member, 1).await;
        // Nine more queue up while it is on its way; one of them is
        // refused by the member.
        let mut queued = Vec::new();
        for i in 0..9 {
            let write = if i == 4 {
                SetRequest {
                    entry: None,
                    ..write_of(0)
                }
            } else {
                write_of(10)
            };
            queued.push(tokio::spawn(writes.write(write)));
        }
        member.0.gate.add_permits(2);
        assert!(first.await.expect("first write"));
        let mut acknowledged = Vec::new();
        for write in queued {
            acknowledged.push(write.await.expect("queued write"));
        }
        assert_eq!(member.batches(), vec![1, 9]);
        let expected: Vec<bool> = (0..9).map(|i| i != 4).collect();
        assert_eq!(acknowledged, expected);
        assert_eq!(calls(&metrics, PeerCall::SetBatch, true), 2);
        // Idle again: the next write leaves at once, alone.
        member.0.gate.add_permits(1);
        assert!(writes.write(write_of(10)).await);
        assert_eq!(member.batches(), vec![1, 9, 1]);
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_byte_limit_and_a_larger_write_goes_alone() {
        let member = Member::new(false);
        let (writes, _) = writes_to(&member);
        let first = tokio::spawn(writes.write(write_of(10)));
        until_calls(&member, 1).await;
        let third = MAX_BATCH_BYTES / 3;
        let mut queued: Vec<_> = (0..4)
            .map(|_| tokio::spawn(writes.write(write_of(third))))
            .collect();
        queued.push(tokio::spawn(writes.write(write_of(MAX_BATCH_BYTES + 1))));
        member.0.gate.add_permits(10);
        assert!(first.await.expect("first write"));
        for write in queued {
            assert!(write.await.expect("queued write"));
        }
        // Each of the four writes is a little over a third of the limit
        // once encoded: two fit in a batch.
        assert_eq!(member.batches(), vec![1, 2, 2, 1]);
    }

    #[tokio::test]
    async fn a_member_without_set_batch_gets_one_set_per_write_from_then_on() {
        let member = Member::new(true);
        let (writes, metrics) = writes_to(&member);
        member.0.gate.add_permits(100);
        let first = [
            tokio::spawn(writes.write(write_of(10))),
            tokio::spawn(writes.write(write_of(10))),
        ];
        for write in first {
            assert!(write.await.expect("write"), "an older member stores it");
        }
        let sets_after_first = member.0.sets.load(Ordering::Relaxed);
        assert!(writes.write(write_of(10)).await);
        // SetBatch was tried once; every write went as a Set.
        assert_eq!(member.batches().len(), 1);
        assert_eq!(member.0.sets.load(Ordering::Relaxed), sets_after_first + 1);
        assert_eq!(calls(&metrics, PeerCall::Set, true), 3);
    }

    #[tokio::test]
    async fn a_failed_call_fails_its_writes_and_the_next_write_still_goes() {
        let member = Member::new(false);
        let (writes, metrics) = writes_to(&member);
        member.0.failing.store(true, Ordering::Relaxed);
        member.0.gate.add_permits(100);
        assert!(!writes.write(write_of(10)).await);
        member.0.failing.store(false, Ordering::Relaxed);
        assert!(writes.write(write_of(10)).await);
        assert_eq!(calls(&metrics, PeerCall::SetBatch, false), 1);
        assert_eq!(calls(&metrics, PeerCall::SetBatch, true), 1);
    }

    #[tokio::test]
    async fn writes_beyond_the_queues_bound_fail_at_once() {
        let member = Member::new(false);
        let (writes, _) = writes_to(&member);
        let first = tokio::spawn(writes.write(write_of(1)));
        until_calls(&member, 1).await;
        let queued: Vec<_> = (0..MAX_QUEUED_WRITES)
            .map(|_| tokio::spawn(writes.write(write_of(1))))
            .collect();
        // The queue is full: this one is not acknowledged, without a call.
        assert!(!writes.write(write_of(1)).await);
        member.0.gate.add_permits(1000);
        assert!(first.await.expect("first write"));
        for write in queued {
            assert!(write.await.expect("queued write"));
        }
        let batches = member.batches();
        assert_eq!(batches.iter().sum::<usize>(), MAX_QUEUED_WRITES + 1);
        assert!(
            batches.iter().all(|&n| n <= MAX_BATCH_WRITES),
            "{batches:?}"
        );
    }
}
