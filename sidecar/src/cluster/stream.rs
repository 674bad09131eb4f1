//! One HTTP/2 stream's two directions as the cluster's transport uses them,
//! on both sides of a call: what arrives (data frames, then trailers) as
//! an HTTP body, and a body sent within the other side's window: a
//! member's reply, and a caller's live feed.

use std::fmt::Display;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;

/// Stream window of a call, on both sides: the same as tonic's own client,
/// so that a batch of entries is not throttled by flow control on a fast
/// network.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Connection window: room for a few such calls at once.
pub const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// Sends `data` as the other side's window allows, so a side that reads
/// slowly holds back the sender instead of this process buffering it all.
pub async fn send_within_window(
    stream: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), h2::Error> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let mut granted = stream.capacity();
        while granted == 0 {
            granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(granted) => granted?,
                // The other side reset the stream: nothing more can go.
                None => return Err(h2::Reason::CANCEL.into()),
            };
        }
        let chunk = data.split_to(granted.min(data.len()));
        if !chunk.is_empty() {
            stream.send_data(chunk, false)?;
        }
    }
    Ok(())
}

/// Why [`send_body`] stopped before the body's end.
#[derive(Debug, thiserror::Error)]
pub enum BodyCut {
    /// The other side reset the stream.
    #[error("the other side reset the stream")]
    Reset,
    /// The body failed, and the stream was reset.
    #[error("the body failed: {0}")]
    Failed(String),
    /// The stream refused a frame (it was closed under the sender).
    #[error(transparent)]
    Stream(#[from] h2::Error),
}

/// Sends `body` onto `stream` as its frames come: data within the other
/// side's window, then its trailers, or the end of the stream. A body
/// that fails resets the stream with `on_failure`; while it waits for the
/// body, a reset from the other side ends the sending at once and drops
/// the body (a caller that went, or a member that refused the call).
pub async fn send_body<B>(
    stream: &mut h2::SendStream<Bytes>,
    body: B,
    on_failure: h2::Reason,
) -> Result<(), BodyCut>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Display,
{
    let mut body = std::pin::pin!(body);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return Err(BodyCut::Reset),
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                stream.send_reset(on_failure);
                return Err(BodyCut::Failed(err.to_string()));
            }
            None => return Ok(stream.send_data(Bytes::new(), true)?),
        };
        match frame.into_data() {
            Ok(data) => send_within_window(stream, data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return Ok(stream.send_trailers(trailers)?);
                }
            }
        }
    }
}

/// What arrives on a stream: its data frames, then its trailers (where
/// gRPC puts a call's status). A call's body at a member, a reply's body
/// at its caller.
#[derive(Debug)]
pub struct StreamBody {
    body: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl StreamBody {
    /// The body arriving on `body`.
    pub fn new(body: h2::RecvStream) -> Self {
        Self {
            body,
            data_done: false,
            done: false,
        }
    }
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.body.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The data is ours now; let the other side send more.
                    let _ = self.body.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => self.data_done = true,
            }
        }
        if self.done {
            return Poll::Ready(None);
        }
        let trailers = ready!(self.body.poll_trailers(cx));
        self.done = true;
        Poll::Ready(
            trailers
                .transpose()
                .map(|result| result.map(Frame::trailers)),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
