//! Live streams on the wire: the frames of a streamed answer as `Claim`
//! replies and `Feed` messages carry them, and back into a live answer.

use futures::Stream;
use http_body_util::BodyExt;

use crate::cluster::proto::{claim_reply, feed_message, ClaimReply, FeedMessage, StreamEnd};
use crate::live::LiveAnswer;

/// A live stream's parts as they go on the wire.
pub(super) enum LivePart {
    Frame(Vec<u8>),
    End(StreamEnd),
}

/// The frames of `live` so far and as they arrive, then its end.
pub(super) fn live_parts(live: &LiveAnswer) -> impl Stream<Item = LivePart> + Send + 'static {
    futures::stream::unfold(Some(live.follow()), |body| async move {
        let mut body = body?;
        match body.frame().await {
            Some(Ok(frame)) => {
                let data = frame.into_data().map(|d| d.to_vec()).unwrap_or_default();
                Some((LivePart::Frame(data), Some(body)))
            }
            Some(Err(broken)) => {
                let end = StreamEnd {
                    broken: broken.to_string(),
                };
                Some((LivePart::End(end), None))
            }
            None => Some((LivePart::End(StreamEnd::default()), None)),
        }
    })
}

/// Where a live stream's frames come from: the owner's claim replies, or a
/// remote leader's feed.
pub(super) trait LiveSource {
    /// The next part: `Ok(Some(frame))`, `Ok(None)` at a whole end, or why
    /// it broke off.
    async fn next_part(&mut self) -> Result<Option<Vec<u8>>, String>;
}

impl LiveSource for tonic::Streaming<ClaimReply> {
    async fn next_part(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.message().await {
            Ok(Some(ClaimReply { outcome, .. })) => match outcome {
                Some(claim_reply::Outcome::Frame(frame)) => Ok(Some(frame)),
                Some(claim_reply::Outcome::End(end)) => ended(end),
                _ => Err("the owner sent something other than a frame".into()),
            },
            Ok(None) => Err("the owner's stream ended without its end".into()),
            Err(status) => Err(format!("the owner's stream failed: {status}")),
        }
    }
}

impl LiveSource for tonic::Streaming<FeedMessage> {
    async fn next_part(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.message().await {
            Ok(Some(FeedMessage { part })) => match part {
                Some(feed_message::Part::Frame(frame)) => Ok(Some(frame)),
                Some(feed_message::Part::End(end)) => ended(end),
                _ => Err("the leader sent something other than a frame".into()),
            },
            Ok(None) => Err("the leader's feed ended without its end".into()),
            Err(status) => Err(format!("the leader's feed failed: {status}")),
        }
    }
}

pub(super) fn ended(end: StreamEnd) -> Result<Option<Vec<u8>>, String> {
    if end.broken.is_empty() {
        Ok(None)
    } else {
        Err(end.broken)
    }
}

/// Copies a live stream from `source` into `live`, whole or broken; at
/// most `limit` bytes.
pub(super) async fn pipe(mut source: impl LiveSource, live: &LiveAnswer, limit: u64) {
    let mut received = 0u64;
    loop {
        match source.next_part().await {
            Ok(Some(frame)) => {
                received += frame.len() as u64;
                if received > limit {
                    return live.break_off("it is larger than cache.max_entry_bytes");
                }
                live.push(&bytes::Bytes::from(frame));
            }
            Ok(None) => return live.complete(),
            Err(reason) => return live.break_off(&reason),
        }
    }
}
