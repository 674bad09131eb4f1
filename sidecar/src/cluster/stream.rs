//! One HTTP/2 stream's two directions as the cluster's transport uses them,
//! on both sides of a call: what arrives (data frames, then trailers) as
//! an HTTP body, and data sent within the other side's window.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::Frame;

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
