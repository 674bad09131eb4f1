//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator
//! replicas never reconcile at the same time.
//!
//! kube-runtime 5 ships no lease helper, so this is a small one. Every write
//! is a PUT carrying the `resourceVersion` that was read (or a create): when
//! two replicas race, the apiserver accepts one and answers 409 Conflict to
//! the other, which then stays a follower.
//!
//! A follower does not trust the holder's `renewTime` (the holder's clock
//! may be ahead of its own): it takes over only after it has itself seen
//! the Lease unchanged for a whole `leaseDurationSeconds`, measured on its
//! own monotonic clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;
use tracing::{info, warn};

/// Timings of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down (shorter than
    /// `lease_duration`, so it stops before anyone else may start).
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's claim on a Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    /// The Lease version last seen held by another replica, and when.
    observed: Mutex<Option<(String, Instant)>>,
}

impl LeaseLock {
    /// A lock on Lease `name` (in `api`'s namespace) for this `identity`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease_duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            observed: Mutex::new(None),
        }
    }

    /// Acquires the Lease if it is free or expired, renews it if held;
    /// `Ok(true)` when this replica leads after the call. `now` is written
    /// into the Lease; `tick` (monotonic) decides expiry.
    pub async fn try_acquire_or_renew(
        &self,
        now: Timestamp,
        tick: Instant,
    ) -> Result<bool, kube::Error> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.claim(now, now, 0)),
            };
            return conflict_means_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let next = if holder == self.identity {
            let acquired = spec.acquire_time.map(|t| t.0).unwrap_or(now);
            self.claim(now, acquired, spec.lease_transitions.unwrap_or(0))
        } else if holder.is_empty() || self.expired(&current, &spec, tick) {
            self.claim(now, now, spec.lease_transitions.unwrap_or(0) + 1)
        } else {
            return Ok(false);
        };
        let lease = Lease {
            // Keeps metadata.resourceVersion: the write fails if anyone wrote since.
            metadata: current.metadata,
            spec: Some(next),
        };
        conflict_means_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Gives the Lease up on shutdown so a standby takes over at once instead
    /// of waiting for it to expire. Bounded by the lease duration: after that
    /// the Lease has expired anyway, and a hung request must not hold up the
    /// shutdown for the client's own timeout (minutes).
    pub async fn release(&self) -> Result<(), kube::Error> {
        bounded(self.lease_duration, self.release_now()).await
    }

    async fn release_now(&self) -> Result<(), kube::Error> {
        let Some(mut current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = current.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        conflict_means_false(
            self.api
                .replace(&self.name, &PostParams::default(), &current)
                .await,
        )
        .map(|_| ())
    }

    fn claim(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

impl LeaseLock {
    /// Whether another replica's Lease has gone unrenewed for its whole
    /// duration, as observed from here.
    fn expired(&self, lease: &Lease, spec: &LeaseSpec, tick: Instant) -> bool {
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        // A poisoned lock only means another call panicked; the data is a
        // plain observation and still usable.
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match observed.as_ref() {
            Some((seen, since)) if *seen == version => {
                tick.saturating_duration_since(*since) > duration
            }
            _ => {
                *observed = Some((version, tick));
                false
            }
        }
    }
}

/// Runs `request` for at most `limit`; running out of time is an error like
/// any other failed request (the shape kube gives its own timeouts).
async fn bounded<T>(
    limit: Duration,
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result,
        Err(elapsed) => Err(kube::Error::Service(Box::new(elapsed))),
    }
}

fn conflict_means_false<T>(result: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Campaigns for the Lease until `stop` is set, publishing on `leading`
/// whether this replica leads. A leader that loses the Lease, or cannot renew
/// it within `renew_deadline`, publishes `false`.
pub async fn campaign(
    lock: &LeaseLock,
    timings: Timings,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    // When the last successful renewal was *sent*: the apiserver accepted it
    // no earlier, so a standby (which counts a whole lease duration from
    // when it sees the renewal) cannot take over before this plus
    // `lease_duration`, while this replica steps down at this plus
    // `renew_deadline`.
    let mut last_renewal: Option<tokio::time::Instant> = None;
    let step_down_if_late = |last_renewal: &mut Option<tokio::time::Instant>| {
        if last_renewal.is_some_and(|t| t.elapsed() >= timings.renew_deadline) {
            warn!(lease = %lock.name, "could not renew the lease in time; stepping down");
            *last_renewal = None;
        }
    };
    let publish = |last_renewal: &Option<tokio::time::Instant>| {
        leading.send_if_modified(|was| {
            let now = last_renewal.is_some();
            std::mem::replace(was, now) != now
        });
    };
    loop {
        // Failed renewals may have run the clock out while waiting to retry:
        // step down before anything else (the attempt below is then a
        // follower's).
        step_down_if_late(&mut last_renewal);
        publish(&last_renewal);
        let started = tokio::time::Instant::now();
        // Every attempt is bounded so that a leader steps down by the renew
        // deadline even when a request hangs (the client's own read timeout
        // is minutes, long after a standby has taken over). A follower gets
        // the same bound, so a hung request does not stall its campaign.
        let limit = match last_renewal {
            Some(renewed) => timings
                .renew_deadline
                .saturating_sub(started.duration_since(renewed)),
            None => timings.renew_deadline,
        };
        let attempt = bounded(
            limit,
            lock.try_acquire_or_renew(Timestamp::now(), Instant::now()),
        );
        let result = tokio::select! {
            result = attempt => result,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        match result {
            Ok(true) => {
                if last_renewal.is_none() {
                    info!(lease = %lock.name, identity = %lock.identity, "became leader");
                }
                last_renewal = Some(started);
            }
            Ok(false) => {
                if last_renewal.take().is_some() {
                    warn!(lease = %lock.name, "another replica holds the lease now");
                }
            }
            Err(err) => {
                warn!(lease = %lock.name, error = %err, "lease request failed");
                step_down_if_late(&mut last_renewal);
            }
        }
        publish(&last_renewal);
        tokio::select! {
            _ = tokio::time::sleep(timings.retry_period) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests;
