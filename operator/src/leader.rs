//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator
//! replicas never reconcile at the same time.
//!
//! kube-runtime 5 ships no lease helper, so this is a small one. Every write
//! is a PUT carrying the `resourceVersion` that was read (or a create): when
//! two replicas race, the apiserver accepts one and answers 409 Conflict to
//! the other, which then stays a follower.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
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
}

impl LeaseLock {
    /// A lock on Lease `name` (in `api`'s namespace) for this `identity`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease_duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            lease_duration,
        }
    }

    /// Acquires the Lease if it is free or expired, renews it if held;
    /// `Ok(true)` when this replica leads after the call.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
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
        } else if holder.is_empty() || expired(&spec, now) {
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
    /// of waiting for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
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

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return true;
    };
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    renewed + SignedDuration::from_secs(seconds) < now
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
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        match lock.try_acquire_or_renew(Timestamp::now()).await {
            Ok(true) => {
                if last_renewal.is_none() {
                    info!(lease = %lock.name, identity = %lock.identity, "became leader");
                }
                last_renewal = Some(tokio::time::Instant::now());
            }
            Ok(false) => {
                if last_renewal.take().is_some() {
                    warn!(lease = %lock.name, "another replica holds the lease now");
                }
            }
            Err(err) => {
                warn!(lease = %lock.name, error = %err, "lease request failed");
                if last_renewal.is_some_and(|t| t.elapsed() > timings.renew_deadline) {
                    warn!(lease = %lock.name, "could not renew the lease in time; stepping down");
                    last_renewal = None;
                }
            }
        }
        leading.send_if_modified(|was| {
            let now = last_renewal.is_some();
            std::mem::replace(was, now) != now
        });
        tokio::select! {
            _ = tokio::time::sleep(timings.retry_period) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ApiServer;
    use http::Method;
    use serde_json::json;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn lease(holder: &str, renewed: i64, version: &str) -> serde_json::Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "relaycache-operator", "namespace": "ops", "resourceVersion": version},
            "spec": {
                "holderIdentity": holder, "leaseDurationSeconds": 15,
                "acquireTime": "2027-01-15T08:00:00.000000Z",
                "renewTime": MicroTime(at(renewed)), "leaseTransitions": 4
            }
        })
    }

    fn lock(client: kube::Client) -> LeaseLock {
        LeaseLock::new(
            Api::namespaced(client, "ops"),
            "relaycache-operator",
            "pod-a",
            Duration::from_secs(15),
        )
    }

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

    #[tokio::test]
    async fn a_missing_lease_is_created_with_this_identity() {
        let (client, mut server) = ApiServer::start();
        let attempt = tokio::spawn(async move { lock(client).try_acquire_or_renew(at(0)).await });
        let get = server
            .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
            .await;
        get.not_found().await;
        let create = server.expect(Method::POST, PATH).await;
        assert_eq!(create.body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(create.body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(create.body["spec"]["leaseTransitions"], 0);
        let body = create.body.clone();
        create.respond(body).await;
        assert!(attempt.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_replica_is_left_alone() {
        let (client, mut server) = ApiServer::start();
        let attempt = tokio::spawn(async move { lock(client).try_acquire_or_renew(at(10)).await });
        server
            .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
            .await
            .respond(lease("pod-b", 0, "41"))
            .await;
        assert!(!attempt.await.unwrap().unwrap());
        server.expect_nothing_more().await;
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_guarded_by_resource_version() {
        let (client, mut server) = ApiServer::start();
        let attempt = tokio::spawn(async move { lock(client).try_acquire_or_renew(at(16)).await });
        server
            .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
            .await
            .respond(lease("pod-b", 0, "41"))
            .await;
        let put = server
            .expect(Method::PUT, &format!("{PATH}/relaycache-operator"))
            .await;
        assert_eq!(put.body["metadata"]["resourceVersion"], "41");
        assert_eq!(put.body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(put.body["spec"]["leaseTransitions"], 5);
        let body = put.body.clone();
        put.respond(body).await;
        assert!(attempt.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn losing_the_race_is_a_conflict_not_an_error() {
        let (client, mut server) = ApiServer::start();
        let attempt = tokio::spawn(async move { lock(client).try_acquire_or_renew(at(16)).await });
        server
            .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
            .await
            .respond(lease("pod-b", 0, "41"))
            .await;
        server
            .expect(Method::PUT, &format!("{PATH}/relaycache-operator"))
            .await
            .conflict()
            .await;
        assert!(!attempt.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn the_holder_renews_and_keeps_its_acquire_time() {
        let (client, mut server) = ApiServer::start();
        let attempt = tokio::spawn(async move { lock(client).try_acquire_or_renew(at(5)).await });
        server
            .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
            .await
            .respond(lease("pod-a", 0, "41"))
            .await;
        let put = server
            .expect(Method::PUT, &format!("{PATH}/relaycache-operator"))
            .await;
        assert_eq!(
            put.body["spec"]["acquireTime"],
            "2027-01-15T08:00:00.000000Z"
        );
        assert_eq!(put.body["spec"]["renewTime"], json!(MicroTime(at(5))));
        assert_eq!(put.body["spec"]["leaseTransitions"], 4);
        let body = put.body.clone();
        put.respond(body).await;
        assert!(attempt.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn release_clears_the_holder_only_when_it_is_us() {
        let (client, mut server) = ApiServer::start();
        let c = client.clone();
        let release = tokio::spawn(async move { lock(c).release().await });
        server
            .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
            .await
            .respond(lease("pod-a", 0, "41"))
            .await;
        let put = server
            .expect(Method::PUT, &format!("{PATH}/relaycache-operator"))
            .await;
        assert!(put.body["spec"].get("holderIdentity").is_none());
        assert_eq!(put.body["metadata"]["resourceVersion"], "41");
        let body = put.body.clone();
        put.respond(body).await;
        release.await.unwrap().unwrap();

        let release = tokio::spawn(async move { lock(client).release().await });
        server
            .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
            .await
            .respond(lease("pod-b", 0, "42"))
            .await;
        release.await.unwrap().unwrap();
        server.expect_nothing_more().await;
    }
}
