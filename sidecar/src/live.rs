//! A streamed answer while it is still arriving, for the requests that
//! wait on its flight: each follower gets the events already sent, then
//! the live tail, frame by frame as the leader's client does. Frames are
//! shared (`Bytes` clones), not copied. A stream that breaks off breaks
//! every follower's body too, so clients raise the error they would have
//! raised on the upstream's own break.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

use crate::body::BoxError;

/// Why a follower's stream ended early.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the upstream's streamed answer, shared with this request, broke off ({0}); send the request again")]
pub struct LiveBroken(pub String);

type Frames = mpsc::UnboundedSender<Result<Bytes, LiveBroken>>;

/// Where a stream in progress stands.
#[derive(Default)]
struct Progress {
    frames: Vec<Bytes>,
    followers: Vec<Frames>,
    /// `None` while open; the final outcome once ended.
    ended: Option<Result<(), LiveBroken>>,
}

/// One streamed answer in progress, shared by its flight's followers.
pub struct LiveAnswer {
    headers: HeaderMap,
    progress: Mutex<Progress>,
}

impl LiveAnswer {
    /// A stream whose followers are answered with `headers` (the stored
    /// kind: nothing naming the leader's caller).
    pub fn new(headers: HeaderMap) -> Arc<Self> {
        Arc::new(Self {
            headers,
            progress: Mutex::default(),
        })
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        match self.progress.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The headers followers are answered with.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// A frame the upstream sent, for every follower.
    pub fn push(&self, frame: &Bytes) {
        let mut progress = self.progress();
        if progress.ended.is_some() {
            return;
        }
        progress.frames.push(frame.clone());
        // A follower that went away is forgotten.
        progress
            .followers
            .retain(|follower| follower.send(Ok(frame.clone())).is_ok());
    }

    /// The stream ended whole: followers' bodies end.
    pub fn complete(&self) {
        self.end(Ok(()));
    }

    /// The stream broke off: followers' bodies fail with `reason`.
    pub fn break_off(&self, reason: &str) {
        self.end(Err(LiveBroken(reason.to_string())));
    }

    fn end(&self, outcome: Result<(), LiveBroken>) {
        let mut progress = self.progress();
        if progress.ended.is_some() {
            return;
        }
        if let Err(broken) = &outcome {
            for follower in &progress.followers {
                let _ = follower.send(Err(broken.clone()));
            }
        }
        progress.followers.clear();
        if outcome.is_err() {
            progress.frames.clear();
        }
        // A whole stream keeps its frames for followers that join between
        // its end and the flight's landing; they go with the last of them.
        progress.ended = Some(outcome);
    }

    /// A follower's body: every frame so far, then the live tail.
    pub fn follow(&self) -> LiveBody {
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut progress = self.progress();
        if let Some(Err(broken)) = &progress.ended {
            let _ = sender.send(Err(broken.clone()));
            return LiveBody { frames: receiver };
        }
        for frame in &progress.frames {
            let _ = sender.send(Ok(frame.clone()));
        }
        // Still open: the tail follows. Ended whole: the channel closes
        // with the last frame.
        if progress.ended.is_none() {
            progress.followers.push(sender);
        }
        LiveBody { frames: receiver }
    }
}

impl std::fmt::Debug for LiveAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let progress = self.progress();
        f.debug_struct("LiveAnswer")
            .field("frames", &progress.frames.len())
            .field("followers", &progress.followers.len())
            .field("ended", &progress.ended)
            .finish()
    }
}

/// A follower's view of a [`LiveAnswer`].
pub struct LiveBody {
    frames: mpsc::UnboundedReceiver<Result<Bytes, LiveBroken>>,
}

impl Body for LiveBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(broken))) => Poll::Ready(Some(Err(Box::new(broken)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn frame(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[tokio::test]
    async fn a_late_follower_gets_the_frames_so_far_then_the_tail() {
        let live = LiveAnswer::new(HeaderMap::new());
        let early = live.follow();
        live.push(&frame("a"));
        live.push(&frame("b"));
        let late = live.follow();
        live.push(&frame("c"));
        live.complete();
        let after_the_end = live.follow();
        for body in [early, late, after_the_end] {
            let got = body.collect().await.expect("a whole stream").to_bytes();
            assert_eq!(got, "abc");
        }
    }

    #[tokio::test]
    async fn a_break_reaches_every_follower_and_every_late_one() {
        let live = LiveAnswer::new(HeaderMap::new());
        let early = live.follow();
        live.push(&frame("a"));
        live.break_off("connection reset");
        let late = live.follow();
        for body in [early, late] {
            let err = body.collect().await.expect_err("the break is seen");
            assert!(err.to_string().contains("connection reset"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_follower_that_left_is_forgotten() {
        let live = LiveAnswer::new(HeaderMap::new());
        drop(live.follow());
        live.push(&frame("a"));
        assert!(live.progress().followers.is_empty());
    }
}
