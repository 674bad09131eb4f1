use super::*;
use crate::testing::{ApiServer, Call};
use http::Method;
use serde_json::json;
use std::sync::Arc;

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
    let attempt = tokio::spawn(async move {
        lock(client)
            .try_acquire_or_renew(at(0), Instant::now())
            .await
    });
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
    let attempt = tokio::spawn(async move {
        lock(client)
            .try_acquire_or_renew(at(10), Instant::now())
            .await
    });
    server
        .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
        .await
        .respond(lease("pod-b", 0, "41"))
        .await;
    assert!(!attempt.await.unwrap().unwrap());
    server.expect_nothing_more().await;
}

/// One attempt of a shared lock at `tick`, answered by the next GET.
async fn attempt_seeing(
    lock: &Arc<LeaseLock>,
    server: &mut ApiServer,
    tick: Instant,
    seen: serde_json::Value,
) -> tokio::task::JoinHandle<Result<bool, kube::Error>> {
    let lock = lock.clone();
    let attempt = tokio::spawn(async move { lock.try_acquire_or_renew(at(100), tick).await });
    server
        .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
        .await
        .respond(seen)
        .await;
    attempt
}

/// pod-b's Lease seen at version 41, then again 16 s later (monotonic,
/// as observed here): the second attempt is the one that may take it.
async fn attempt_after_expiry(
    client: kube::Client,
    server: &mut ApiServer,
) -> tokio::task::JoinHandle<Result<bool, kube::Error>> {
    let lock = Arc::new(lock(client));
    let t0 = Instant::now();
    let first = attempt_seeing(&lock, server, t0, lease("pod-b", 0, "41")).await;
    assert!(
        !first.await.unwrap().unwrap(),
        "first sight only starts the count"
    );
    let later = t0 + Duration::from_secs(16);
    attempt_seeing(&lock, server, later, lease("pod-b", 0, "41")).await
}

#[tokio::test]
async fn a_lease_unchanged_for_its_duration_is_taken_over_guarded_by_resource_version() {
    let (client, mut server) = ApiServer::start();
    let second = attempt_after_expiry(client, &mut server).await;
    let put = server
        .expect(Method::PUT, &format!("{PATH}/relaycache-operator"))
        .await;
    assert_eq!(put.body["metadata"]["resourceVersion"], "41");
    assert_eq!(put.body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(put.body["spec"]["leaseTransitions"], 5);
    let body = put.body.clone();
    put.respond(body).await;
    assert!(second.await.unwrap().unwrap());
}

#[tokio::test]
async fn a_renewing_holder_is_kept_whatever_its_clock_says() {
    // pod-b's renewTime is long past (its clock lags), but the Lease keeps
    // changing: it is alive, so pod-a never takes over.
    let (client, mut server) = ApiServer::start();
    let lock = Arc::new(lock(client));
    let t0 = Instant::now();
    for (seconds, version) in [(0, "41"), (16, "42"), (30, "43")] {
        let attempt = attempt_seeing(
            &lock,
            &mut server,
            t0 + Duration::from_secs(seconds),
            lease("pod-b", -3600, version),
        )
        .await;
        assert!(!attempt.await.unwrap().unwrap(), "at {seconds}s");
    }
    drop(lock);
    server.expect_nothing_more().await;
}

#[tokio::test]
async fn losing_the_race_is_a_conflict_not_an_error() {
    let (client, mut server) = ApiServer::start();
    let second = attempt_after_expiry(client, &mut server).await;
    server
        .expect(Method::PUT, &format!("{PATH}/relaycache-operator"))
        .await
        .conflict()
        .await;
    assert!(!second.await.unwrap().unwrap());
}

#[tokio::test]
async fn the_holder_renews_and_keeps_its_acquire_time() {
    let (client, mut server) = ApiServer::start();
    let attempt = tokio::spawn(async move {
        lock(client)
            .try_acquire_or_renew(at(5), Instant::now())
            .await
    });
    let put = expect_update_of_own_lease(&mut server).await;
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

/// The two requests of `pod-a` touching the Lease it holds: the GET,
/// answered with its Lease at resourceVersion 41, then the PUT, returned
/// unanswered for the test to inspect.
async fn expect_update_of_own_lease(server: &mut ApiServer) -> Call {
    server
        .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
        .await
        .respond(lease("pod-a", 0, "41"))
        .await;
    server
        .expect(Method::PUT, &format!("{PATH}/relaycache-operator"))
        .await
}

/// A campaign of `pod-a` whose first round renews its Lease; returns
/// the campaign, its `leading` watch and its stop switch.
async fn leading_campaign(
    client: kube::Client,
    server: &mut ApiServer,
    timings: Timings,
) -> (
    tokio::task::JoinHandle<()>,
    watch::Receiver<bool>,
    watch::Sender<bool>,
) {
    let (leading_tx, mut leading_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let lock = lock(client);
    let task = tokio::spawn(async move { campaign(&lock, timings, leading_tx, stop_rx).await });
    let put = expect_update_of_own_lease(server).await;
    let mut renewed = put.body.clone();
    renewed["metadata"]["resourceVersion"] = json!("42");
    put.respond(renewed).await;
    leading_rx.wait_for(|leading| *leading).await.unwrap();
    (task, leading_rx, stop_tx)
}

// Paused time: the runtime jumps the clock to the next timer whenever
// every task waits, so the deadlines below cost no real time and the
// elapsed times are exact.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewal_hangs_steps_down_by_the_renew_deadline() {
    let (client, mut server) = ApiServer::start();
    let timings = Timings::default();
    let renewed = tokio::time::Instant::now();
    let (task, mut leading_rx, stop_tx) = leading_campaign(client, &mut server, timings).await;

    // The next renewal's GET is received and never answered.
    let hung = server
        .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
        .await;
    assert_eq!(renewed.elapsed(), timings.retry_period);
    let stepped_down = tokio::time::timeout(
        timings.lease_duration,
        leading_rx.wait_for(|leading| !*leading),
    )
    .await;
    assert!(
        stepped_down.is_ok(),
        "still leading a whole lease duration after the last renewal: a standby may lead too"
    );
    // Stepped down exactly at the deadline, before the Lease could expire
    // for anyone else.
    assert_eq!(renewed.elapsed(), timings.renew_deadline);
    assert!(timings.renew_deadline < timings.lease_duration);

    stop_tx.send(true).unwrap();
    task.await.unwrap();
    drop(hung);
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_fail_steps_down_by_the_renew_deadline() {
    let (client, mut server) = ApiServer::start();
    let timings = Timings::default();
    let renewed = tokio::time::Instant::now();
    let (task, leading_rx, stop_tx) = leading_campaign(client, &mut server, timings).await;
    // Every retry fails at once; the leader keeps leading until the
    // deadline, then steps down before its next attempt.
    let mut failures = 0;
    let follower_call = loop {
        let call = server
            .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
            .await;
        if !*leading_rx.borrow() {
            break call;
        }
        assert!(renewed.elapsed() < timings.renew_deadline, "still leading");
        call.status(http::StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
        failures += 1;
    };
    assert_eq!(renewed.elapsed(), timings.renew_deadline);
    assert_eq!(failures, 4, "a retry every {:?}", timings.retry_period);
    drop(follower_call);
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stopping_does_not_wait_for_a_hung_request() {
    let (client, mut server) = ApiServer::start();
    let (leading_tx, _leading_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let lock = lock(client);
    let task =
        tokio::spawn(async move { campaign(&lock, Timings::default(), leading_tx, stop_rx).await });
    let hung = server
        .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
        .await;
    let started = tokio::time::Instant::now();
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    drop(hung);
}

#[tokio::test(start_paused = true)]
async fn a_hung_release_gives_up_after_the_lease_duration() {
    let (client, mut server) = ApiServer::start();
    let started = tokio::time::Instant::now();
    let release = tokio::spawn(async move { lock(client).release().await });
    let hung = server
        .expect(Method::GET, &format!("{PATH}/relaycache-operator"))
        .await;
    let result = release.await.unwrap();
    assert!(matches!(result, Err(kube::Error::Service(_))), "{result:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(15));
    drop(hung);
}

#[tokio::test]
async fn release_clears_the_holder_only_when_it_is_us() {
    let (client, mut server) = ApiServer::start();
    let c = client.clone();
    let release = tokio::spawn(async move { lock(c).release().await });
    let put = expect_update_of_own_lease(&mut server).await;
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
