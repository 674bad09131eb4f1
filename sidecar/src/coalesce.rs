//! Coalescing of concurrent identical misses: the first request for a key
//! leads and calls the upstream; the others follow and wait for its answer.
//!
//! A leader whose upstream call failed (429, 5xx, a timeout, a refused
//! connection) hands that same failure to its followers: during a
//! rate-limit storm or an outage, one question makes one upstream call, not
//! one per waiting request. A leader whose answer may not be stored
//! (`no-store`, too large) releases its followers with nothing; each then
//! tries again on its own (one of them becomes the next leader).
//!
//! In mode `ha` the same registry also holds the flights other processes
//! lead or wait on through this member (see `cluster::flight`), so one
//! question makes one upstream call cluster-wide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

use crate::entry::CachedResponse;
use crate::key::CacheKey;
use crate::live::LiveAnswer;

/// Largest upstream error body recorded to hand to followers; error bodies
/// are a few hundred bytes.
pub const MAX_SHARED_FAILURE_BYTES: usize = 64 * 1024;

/// Response headers of a failed upstream answer that followers get too:
/// what the SDKs read to decide when to retry, nothing naming the caller.
pub const SHARED_FAILURE_HEADERS: [&str; 3] = ["content-type", "retry-after", "x-should-retry"];

/// Upstream answers whose failure is handed to followers: rate limits and
/// server errors (529 overload included). Other 4xx answers depend on the
/// request; they are not shared.
pub fn is_shared_failure(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// A failed upstream answer, as the leader's client got it; never stored.
#[derive(Debug)]
pub struct UpstreamFailure {
    /// The upstream's status, or the proxy's for a call that never got one.
    pub status: StatusCode,
    /// `content-type`, `retry-after` and the like; nothing naming a caller.
    pub headers: HeaderMap,
    /// The error body.
    pub body: Bytes,
}

/// State of one upstream call, as followers see it.
#[derive(Debug, Clone)]
enum Flight {
    InProgress,
    /// A streamed answer is arriving: followers read it as it comes.
    Live(Arc<LiveAnswer>),
    /// `Some`: the stored answer. `None`: nothing to share; try again.
    Landed(Option<Arc<CachedResponse>>),
    /// The upstream failed; followers answer with the same failure.
    Failed(Arc<UpstreamFailure>),
}

type Registry = Mutex<HashMap<CacheKey, Arc<watch::Sender<Flight>>>>;

/// The upstream calls in progress, by key.
#[derive(Default)]
pub struct Flights {
    in_progress: Arc<Registry>,
}

/// What a request does about a miss.
pub enum Join {
    /// Call the upstream, then [`Leader::land`].
    Lead(Leader),
    /// Wait for the leader with [`Follower::wait`].
    Follow(Follower),
    /// Too many are waiting on this key already: call the upstream alone.
    Alone,
}

/// Told how a flight ended when it ended without an answer: with the
/// upstream's failure, or `None` when the answer may not be stored.
pub type OnRelease = Box<dyn FnOnce(Option<Arc<UpstreamFailure>>) + Send + Sync>;

/// The right and duty to call the upstream for a key. Dropping it without
/// landing releases the followers empty-handed.
pub struct Leader {
    key: CacheKey,
    sender: Arc<watch::Sender<Flight>>,
    registry: Arc<Registry>,
    on_release: Option<OnRelease>,
}

/// A request waiting for a leader.
pub struct Follower {
    receiver: watch::Receiver<Flight>,
}

/// How a follower's wait ended.
#[derive(Debug)]
pub enum Landing {
    /// The leader stored this answer.
    Answer(Arc<CachedResponse>),
    /// The leader's upstream call failed: answer with the same failure.
    Failed(Arc<UpstreamFailure>),
    /// The leader's streamed answer is arriving: follow it live.
    Live(Arc<LiveAnswer>),
    /// The leader got nothing shareable; try again.
    Nothing,
    /// Waited `wait_timeout` in vain.
    TimedOut,
}

impl Flights {
    /// Joins the flight for `key`, leading it if there is none.
    pub fn join(&self, key: CacheKey, max_followers: usize) -> Join {
        let mut map = match self.in_progress.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(sender) = map.get(&key) {
            if sender.receiver_count() >= max_followers {
                return Join::Alone;
            }
            return Join::Follow(Follower {
                receiver: sender.subscribe(),
            });
        }
        let (sender, _) = watch::channel(Flight::InProgress);
        let sender = Arc::new(sender);
        map.insert(key, Arc::clone(&sender));
        Join::Lead(Leader {
            key,
            sender,
            registry: Arc::clone(&self.in_progress),
            on_release: None,
        })
    }

    /// Number of keys with an upstream call in progress.
    pub fn in_progress(&self) -> usize {
        self.in_progress.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Leader {
    /// The key this flight is for.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Runs `hook` if the flight ends without an answer: how a lead taken
    /// at another member is given back there.
    pub fn on_release(&mut self, hook: OnRelease) {
        self.on_release = Some(hook);
    }

    /// Shares a streamed answer while it arrives: followers waiting now
    /// and joining later read it live, until the flight lands.
    pub fn go_live(&self, live: Arc<LiveAnswer>) {
        self.sender.send_replace(Flight::Live(live));
    }

    /// Hands the stored answer (or `None`) to every follower.
    pub fn land(mut self, answer: Option<Arc<CachedResponse>>) {
        self.finish(Flight::Landed(answer));
    }

    /// Hands the upstream's failure to every follower.
    pub fn fail(mut self, failure: Arc<UpstreamFailure>) {
        self.finish(Flight::Failed(failure));
    }

    fn finish(&mut self, outcome: Flight) {
        if let Some(hook) = self.on_release.take() {
            match &outcome {
                Flight::Landed(Some(_)) | Flight::InProgress | Flight::Live(_) => {}
                Flight::Landed(None) => hook(None),
                Flight::Failed(failure) => hook(Some(Arc::clone(failure))),
            }
        }
        // Unregister first: a request arriving after this point finds the
        // answer in the cache, or leads a new flight.
        if let Ok(mut map) = self.registry.lock() {
            if map
                .get(&self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.sender))
            {
                map.remove(&self.key);
            }
        }
        self.sender.send_replace(outcome);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if matches!(*self.sender.borrow(), Flight::InProgress | Flight::Live(_)) {
            self.finish(Flight::Landed(None));
        }
    }
}

impl Follower {
    /// Waits for the leader for at most `timeout`; a streamed answer is
    /// followed live from its first frame.
    pub async fn wait(self, timeout: Duration) -> Landing {
        self.wait_until(timeout, |flight| !matches!(flight, Flight::InProgress))
            .await
    }

    /// Waits for the leader's stored answer (or failure) for at most
    /// `timeout`, past a live stream: for a follower that can only take a
    /// whole entry (a claim from another process).
    pub async fn wait_for_entry(self, timeout: Duration) -> Landing {
        self.wait_until(timeout, |flight| {
            !matches!(flight, Flight::InProgress | Flight::Live(_))
        })
        .await
    }

    async fn wait_until(mut self, timeout: Duration, done: impl FnMut(&Flight) -> bool) -> Landing {
        let landed = self.receiver.wait_for(done);
        match tokio::time::timeout(timeout, landed).await {
            Ok(Ok(flight)) => match &*flight {
                Flight::Landed(Some(answer)) => Landing::Answer(Arc::clone(answer)),
                Flight::Failed(failure) => Landing::Failed(Arc::clone(failure)),
                Flight::Live(live) => Landing::Live(Arc::clone(live)),
                _ => Landing::Nothing,
            },
            // The leader vanished without a word: treat it as nothing.
            Ok(Err(_)) => Landing::Nothing,
            Err(_) => Landing::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn answer() -> Arc<CachedResponse> {
        Arc::new(CachedResponse::new(
            &HeaderMap::new(),
            b"{}",
            Duration::from_secs(5),
        ))
    }

    #[tokio::test]
    async fn followers_get_the_leaders_answer() {
        let flights = Flights::default();
        let key = CacheKey([7; 32]);
        let Join::Lead(leader) = flights.join(key, 10) else {
            panic!("first must lead")
        };
        let waits: Vec<_> = (0..5)
            .map(|_| match flights.join(key, 10) {
                Join::Follow(f) => tokio::spawn(f.wait(Duration::from_secs(5))),
                _ => panic!("later requests must follow"),
            })
            .collect();
        leader.land(Some(answer()));
        for wait in waits {
            assert!(matches!(wait.await.unwrap(), Landing::Answer(_)));
        }
        assert_eq!(flights.in_progress(), 0);
        assert!(
            matches!(flights.join(key, 10), Join::Lead(_)),
            "a landed flight is gone"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers_empty_handed() {
        let flights = Flights::default();
        let key = CacheKey([8; 32]);
        let leader = flights.join(key, 10);
        let Join::Follow(follower) = flights.join(key, 10) else {
            panic!()
        };
        drop(leader);
        assert!(matches!(
            follower.wait(Duration::from_secs(5)).await,
            Landing::Nothing
        ));
        assert_eq!(flights.in_progress(), 0);
    }

    #[tokio::test]
    async fn followers_get_the_leaders_failure() {
        let flights = Flights::default();
        let key = CacheKey([6; 32]);
        let Join::Lead(leader) = flights.join(key, 10) else {
            panic!("first must lead")
        };
        let Join::Follow(follower) = flights.join(key, 10) else {
            panic!("second must follow")
        };
        leader.fail(Arc::new(UpstreamFailure {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
        }));
        match follower.wait(Duration::from_secs(5)).await {
            Landing::Failed(failure) => assert_eq!(failure.status, 429),
            other => panic!("expected the failure, got {other:?}"),
        }
        assert_eq!(flights.in_progress(), 0);
    }

    #[tokio::test]
    async fn waiting_is_bounded_in_time_and_count() {
        let flights = Flights::default();
        let key = CacheKey([9; 32]);
        let _leader = flights.join(key, 1);
        let Join::Follow(follower) = flights.join(key, 1) else {
            panic!()
        };
        assert!(matches!(flights.join(key, 1), Join::Alone));
        assert!(matches!(
            follower.wait(Duration::from_millis(20)).await,
            Landing::TimedOut
        ));
    }

    #[tokio::test]
    async fn the_release_hook_hears_of_every_end_without_an_answer() {
        let flights = Flights::default();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let lead = |n: u8| {
            let Join::Lead(mut leader) = flights.join(CacheKey([n; 32]), 10) else {
                panic!("first must lead")
            };
            let heard = Arc::clone(&heard);
            leader.on_release(Box::new(move |failure| {
                heard
                    .lock()
                    .unwrap()
                    .push((n, failure.map(|f| f.status.as_u16())));
            }));
            leader
        };
        lead(1).land(Some(answer()));
        lead(2).land(None);
        lead(3).fail(Arc::new(UpstreamFailure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }));
        drop(lead(4));
        assert_eq!(
            *heard.lock().unwrap(),
            vec![(2, None), (3, Some(503)), (4, None)],
            "a landed answer is no release; nothing, a failure and a drop are"
        );
    }
}
