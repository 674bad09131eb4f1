//! The transport under every call to another member: one HTTP/2
//! connection, driven by its own task, that a call writes to directly.
//!
//! tonic's own channel hands each call to a buffer task first, and its
//! HTTP/2 client sends a request's headers and its message in two writes;
//! the member it calls then wakes twice. A call here builds its message,
//! queues headers and message together, and the connection task writes
//! both at once: one task hop and one wake less per call, on the path of
//! every peer hit, claim and replica read.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use h2::client::SendRequest;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tonic::Status;

use super::stream::{send_body, StreamBody, CONNECTION_WINDOW, STREAM_WINDOW};
use super::turn_io::TurnWriter;

/// How to reach one member.
#[derive(Clone)]
pub struct Dial {
    /// `host:port`, resolved again on every connect, so a pod that comes
    /// back under its name with a new IP is found.
    pub address: String,
    /// Mutual TLS towards the member, with the name its certificate must
    /// carry; `None` in an `insecure` cluster.
    pub tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    /// How long a connect (TCP and TLS) may take.
    pub connect_timeout: Duration,
    /// How often an open connection is pinged.
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped,
    /// so the next call dials afresh instead of waiting on TCP's backed-off
    /// retransmissions after a partition heals.
    pub keep_alive_timeout: Duration,
}

/// One member's connection, opened on the first call and again after it
/// breaks. Clones share it; dropping the last one closes it.
#[derive(Clone)]
pub struct PeerChannel {
    shared: Arc<Shared>,
}

struct Shared {
    dial: Dial,
    /// The open connection, if any: what nearly every call reads.
    current: std::sync::Mutex<Option<Open>>,
    /// Held across a connect, so that calls made meanwhile wait for it
    /// instead of dialling their own.
    dialling: Mutex<Dialling>,
    /// Connects begun so far; a call that sees this change while it waited
    /// for [`Shared::dialling`] takes that connect's result.
    attempts: AtomicU64,
}

#[derive(Default)]
struct Dialling {
    /// Why the last connect failed, until one succeeds.
    last_failure: Option<Status>,
}

#[derive(Clone)]
struct Open {
    sender: SendRequest<Bytes>,
    /// Set by the connection's task when the connection ended, and by a
    /// call that found it gone.
    closed: Arc<AtomicBool>,
}

impl Open {
    fn is_usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }
}

impl PeerChannel {
    /// A channel to `dial.address`; nothing is dialled until the first call.
    pub fn new(dial: Dial) -> Self {
        Self {
            shared: Arc::new(Shared {
                dial,
                current: std::sync::Mutex::new(None),
                dialling: Mutex::new(Dialling::default()),
                attempts: AtomicU64::new(0),
            }),
        }
    }
}

impl Shared {
    fn current(&self) -> Option<Open> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        current.as_ref().filter(|open| open.is_usable()).cloned()
    }

    /// The open connection, dialling it first if there is none (or the last
    /// one ended). Calls that queued behind a failed connect fail with it
    /// rather than each waiting out a connect of its own to a member that
    /// is down.
    async fn open(&self) -> Result<Open, Status> {
        if let Some(open) = self.current() {
            return Ok(open);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let mut dialling = self.dialling.lock().await;
        if let Some(open) = self.current() {
            return Ok(open);
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            if let Some(failure) = &dialling.last_failure {
                return Err(failure.clone());
            }
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let connected = tokio::time::timeout(self.dial.connect_timeout, self.connect())
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(
                    &self.dial.address,
                    format!("connect timed out after {:?}", self.dial.connect_timeout),
                ))
            });
        match connected {
            Ok(open) => {
                dialling.last_failure = None;
                *self
                    .current
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = Some(open.clone());
                Ok(open)
            }
            Err(failure) => {
                dialling.last_failure = Some(failure.clone());
                Err(failure)
            }
        }
    }

    /// Sends a call's headers on the open connection, once it can take
    /// another call; `end_of_stream` when the call sends nothing more.
    async fn start(
        &self,
        parts: http::request::Parts,
        end_of_stream: bool,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), Status> {
        let open = self.open().await?;
        let mut sender = open.sender.ready().await.map_err(|err| {
            // The connection is gone: the next call dials again.
            open.closed.store(true, Ordering::Release);
            broken(&self.dial.address, err)
        })?;
        sender
            .send_request(http::Request::from_parts(parts, ()), end_of_stream)
            .map_err(|err| broken(&self.dial.address, err))
    }

    async fn connect(&self) -> Result<Open, Status> {
        let address = &self.dial.address;
        let tcp = TcpStream::connect(address.as_str())
            .await
            .map_err(|err| unavailable(address, format!("cannot connect: {err}")))?;
        // Calls are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        match &self.dial.tls {
            None => self.handshake(tcp).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|err| unavailable(address, format!("TLS handshake failed: {err}")))?;
                self.handshake(tls).await
            }
        }
    }

    async fn handshake<Io>(&self, io: Io) -> Result<Open, Status>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(TurnWriter::new(io))
            .await
            .map_err(|err| {
                unavailable(
                    &self.dial.address,
                    format!("HTTP/2 handshake failed: {err}"),
                )
            })?;
        let closed = Arc::new(AtomicBool::new(false));
        let pinger = connection.ping_pong();
        let interval = self.dial.keep_alive_interval;
        let patience = self.dial.keep_alive_timeout;
        let address = self.dial.address.clone();
        let ended = closed.clone();
        tokio::spawn(async move {
            let keep_alive = async move {
                let Some(mut pinger) = pinger else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(interval).await;
                    match tokio::time::timeout(patience, pinger.ping(h2::Ping::opaque())).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return format!("keep-alive ping failed: {err}"),
                        Err(_) => {
                            return format!("no answer to a keep-alive ping within {patience:?}")
                        }
                    }
                }
            };
            tokio::select! {
                result = &mut connection => {
                    if let Err(err) = result {
                        tracing::debug!(%address, %err, "connection to member ended");
                    }
                }
                why = keep_alive => {
                    tracing::debug!(%address, %why, "connection to member dropped");
                }
            }
            ended.store(true, Ordering::Release);
        });
        Ok(Open { sender, closed })
    }
}

fn unavailable(address: &str, reason: String) -> Status {
    Status::unavailable(format!("member {address}: {reason}"))
}

/// A call's failure on the connection itself: gRPC's own mapping of
/// HTTP/2 errors, with the member named.
fn broken(address: &str, err: h2::Error) -> Status {
    let status = Status::from_error(Box::new(err));
    Status::new(
        status.code(),
        format!("member {address}: {}", status.message()),
    )
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for PeerChannel {
    type Response = http::Response<StreamBody>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Each call waits for the connection itself; there is no buffer
        // to be full.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, mut body) = request.into_parts();
            match outgoing(&mut body)? {
                Outgoing::Whole(message) => {
                    let address = &shared.dial.address;
                    let (reply, mut stream) = shared.start(parts, message.is_empty()).await?;
                    if !message.is_empty() {
                        // Queued with the headers: the connection task
                        // writes both.
                        stream
                            .send_data(message, true)
                            .map_err(|err| broken(address, err))?;
                    }
                    reply_of(address, reply).await
                }
                Outgoing::Feed(already) => streamed(&shared, parts, body, already).await,
            }
        })
    }
}

/// What a call sends.
enum Outgoing {
    /// Its one message, encoded and followed by the end: every call but a
    /// flight's live feed.
    Whole(Bytes),
    /// Messages still being made, after the frames already taken.
    Feed(Vec<Frame<Bytes>>),
}

/// Takes what the call's body holds without waiting: a call of one message
/// has it encoded already, and ends right after it.
fn outgoing(body: &mut tonic::body::Body) -> Result<Outgoing, Status> {
    let unencodable =
        |status: Status| Status::internal(format!("cannot encode the call: {status}"));
    let first = match body.frame().now_or_never() {
        None => return Ok(Outgoing::Feed(Vec::new())),
        Some(None) => return Ok(Outgoing::Whole(Bytes::new())),
        Some(Some(first)) => first.map_err(unencodable)?,
    };
    Ok(match body.frame().now_or_never() {
        Some(None) => Outgoing::Whole(first.into_data().unwrap_or_default()),
        Some(Some(second)) => Outgoing::Feed(vec![first, second.map_err(unencodable)?]),
        None => Outgoing::Feed(vec![first]),
    })
}

async fn reply_of(
    address: &str,
    reply: h2::client::ResponseFuture,
) -> Result<http::Response<StreamBody>, Status> {
    let reply = reply.await.map_err(|err| broken(address, err))?;
    Ok(reply.map(StreamBody::new))
}

/// A call whose messages are still being made (a flight's live feed): the
/// headers go now, and a task sends each message as it comes, within the
/// member's flow-control window.
async fn streamed(
    shared: &Shared,
    parts: http::request::Parts,
    body: tonic::body::Body,
    already: Vec<Frame<Bytes>>,
) -> Result<http::Response<StreamBody>, Status> {
    let (reply, mut stream) = shared.start(parts, false).await?;
    let feed_address = shared.dial.address.clone();
    // The frames already taken off the body go first.
    let feed = http_body_util::StreamBody::new(futures::StreamExt::chain(
        futures::stream::iter(already.into_iter().map(Ok::<_, Status>)),
        http_body_util::BodyStream::new(body),
    ));
    tokio::spawn(async move {
        if let Err(cut) = send_body(&mut stream, feed, h2::Reason::CANCEL).await {
            tracing::debug!(address = %feed_address, %cut, "a call's stream of messages was cut");
        }
    });
    reply_of(&shared.dial.address, reply).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::net::TcpListener;
    use tonic::codegen::Service;

    fn dial(address: String, keep_alive: Duration) -> Dial {
        Dial {
            address,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            keep_alive_interval: keep_alive,
            keep_alive_timeout: keep_alive,
        }
    }

    fn call(message: &'static [u8]) -> http::Request<tonic::body::Body> {
        http::Request::post("http://member.test/relaycache.cluster.v1.Cluster/Get")
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(Full::new(Bytes::from_static(
                message,
            ))))
            .unwrap()
    }

    /// Replies `message` with a gRPC status of 0, as a member does.
    fn reply_ok(respond: &mut h2::server::SendResponse<Bytes>, message: Bytes) {
        let mut send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        send.send_data(message, false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        send.send_trailers(trailers).unwrap();
    }

    /// Answers every call on one connection with `reply` and a gRPC status
    /// of 0, after checking the call carried `expected`; returns when the
    /// caller closed the connection.
    async fn answer_calls(listener: &TcpListener, expected: &'static [u8], reply: &'static [u8]) {
        let (socket, _) = listener.accept().await.unwrap();
        let mut connection = h2::server::handshake(socket).await.unwrap();
        while let Some(request) = connection.accept().await {
            let (request, mut respond) = request.unwrap();
            tokio::spawn(async move {
                let mut body = request.into_body();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    got.extend_from_slice(&chunk.unwrap());
                }
                assert_eq!(got, expected);
                reply_ok(&mut respond, Bytes::from_static(reply));
            });
        }
    }

    #[tokio::test]
    async fn a_call_carries_its_message_and_reads_the_reply_and_its_trailers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let member = tokio::spawn(async move {
            answer_calls(&listener, b"question", b"answer").await;
        });
        let mut channel = PeerChannel::new(dial(address, Duration::from_secs(30)));
        for _ in 0..3 {
            let reply = channel.call(call(b"question")).await.unwrap();
            let collected = reply.into_body().collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
            assert_eq!(collected.to_bytes(), Bytes::from_static(b"answer"));
        }
        // Every call went over the one connection, which closes when the
        // last handle on it goes.
        drop(channel);
        tokio::time::timeout(Duration::from_secs(30), member)
            .await
            .expect("the connection stayed open after its last handle was dropped")
            .unwrap();
    }

    #[tokio::test]
    async fn a_member_not_listening_is_named_and_dialled_again_on_the_next_call() {
        // A port that was free a moment ago: nothing listens there.
        let address = {
            let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
            probe.local_addr().unwrap().to_string()
        };
        let mut channel = PeerChannel::new(dial(address.clone(), Duration::from_secs(30)));
        let refused = channel.call(call(b"question")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(
            refused.message().contains(&address) && refused.message().contains("cannot connect"),
            "{refused:?}"
        );
        let listener = TcpListener::bind(&address).await.unwrap();
        tokio::spawn(async move { answer_calls(&listener, b"question", b"answer").await });
        let reply = channel.call(call(b"question")).await.unwrap();
        let body = reply.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from_static(b"answer"));
    }

    #[tokio::test]
    async fn a_connection_whose_member_stopped_answering_pings_is_dropped_and_dialled_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut channel = PeerChannel::new(dial(address, Duration::from_millis(100)));
        let first = async {
            // Completes the handshake and answers nothing after it: a member
            // frozen mid-connection (SIGSTOP, a partition that drops
            // packets).
            let (socket, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(socket).await.unwrap();
            let request = connection.accept().await.unwrap().unwrap();
            // Held, never polled again.
            (connection, request)
        };
        let calling = tokio::time::timeout(Duration::from_secs(30), async {
            channel.call(call(b"question")).await
        });
        let (frozen, call_result) = tokio::join!(first, calling);
        // The call never got a reply; its connection was dropped under it.
        let failed = call_result.expect("the call to a frozen member never ended");
        assert!(failed.is_err(), "a frozen member answered");
        // The next call dials a new connection, which the listener sees.
        let member = tokio::spawn(async move {
            answer_calls(&listener, b"question", b"answer").await;
        });
        let reply = channel.call(call(b"question")).await.unwrap();
        let body = reply.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from_static(b"answer"));
        drop((frozen, channel));
        member.abort();
    }

    #[tokio::test]
    async fn a_call_whose_messages_are_still_coming_sends_each_as_it_comes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (first_arrived, first_seen) = tokio::sync::oneshot::channel();
        let member = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(socket).await.unwrap();
            let (request, mut respond) = connection.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while connection.accept().await.is_some() {} });
            let mut body = request.into_body();
            let first = body.data().await.unwrap().unwrap();
            first_arrived.send(first.clone()).unwrap();
            let mut got = first.to_vec();
            while let Some(chunk) = body.data().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            reply_ok(&mut respond, Bytes::from(got));
        });
        let (mut feed, body) = http_body_util::channel::Channel::<Bytes, Status>::new(4);
        let request = http::Request::post("http://member.test/relaycache.cluster.v1.Cluster/Feed")
            .body(tonic::body::Body::new(body))
            .unwrap();
        let mut channel = PeerChannel::new(dial(address, Duration::from_secs(30)));
        let reply = tokio::spawn(async move { channel.call(request).await });
        feed.send_data(Bytes::from_static(b"first ")).await.unwrap();
        // The member reads the first message while the second is not made.
        let first = tokio::time::timeout(Duration::from_secs(30), first_seen)
            .await
            .expect("the first message waited for the rest of the call")
            .unwrap();
        assert_eq!(first, Bytes::from_static(b"first "));
        feed.send_data(Bytes::from_static(b"second")).await.unwrap();
        drop(feed);
        let reply = reply.await.unwrap().unwrap();
        let body = reply.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from_static(b"first second"));
        member.await.unwrap();
    }
}
