//! The member's side of the gRPC port: accepts connections, with mutual
//! TLS when configured, speaks HTTP/2 on them, and hands each call to the
//! cluster service ([`super::service`]).
//!
//! A call that reads memory only (`Get`, `Claim`, `Ping`) is first tried
//! on the connection's own task: answered there, its reply is queued
//! before the connection writes again, with no task to start and no hop
//! between tasks, where tonic's server gave every call a task of its own.
//! A call not answered at once, or one that may do much work (a batch of
//! writes, a scan), runs on a task of its own, so it never holds up the
//! other calls on its connection. The connection writes through a
//! [`TurnWriter`], so a reply's headers, message and trailers leave in
//! one write.

use std::convert::Infallible;
use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use h2::server::SendResponse;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tonic::codegen::Service;

use super::stream::{send_body, StreamBody, CONNECTION_WINDOW, STREAM_WINDOW};
use super::turn_io::TurnWriter;

/// Calls one caller may have open on a connection at once: hyper's default
/// under tonic's server, which this one replaces.
const MAX_CALLS_PER_CONNECTION: u32 = 200;
/// Largest header block of a call: the same default.
const MAX_HEADER_BYTES: u32 = 16 * 1024;
/// Reply bytes buffered per call before its sender waits for the caller.
const MAX_SEND_BUFFER_BYTES: usize = 400 * 1024;
/// How long a new connection may take to finish its TLS and HTTP/2
/// handshakes, so a caller that opens a socket and says nothing does not
/// hold it for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before accepting again after the listener failed (out
/// of file descriptors, for one).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Methods that only read this member's memory, or join or lead a flight:
/// tried on the connection's task before they get a task of their own.
const ANSWERED_IN_PLACE: [&str; 3] = [
    "/relaycache.cluster.v1.Cluster/Get",
    "/relaycache.cluster.v1.Cluster/Claim",
    "/relaycache.cluster.v1.Cluster/Ping",
];

/// The gRPC port: where its calls go, and how callers are let in.
pub struct Port<S> {
    service: S,
    tls: Option<TlsAcceptor>,
}

impl<S> Port<S> {
    /// A port that answers calls with `service`, behind mutual TLS when
    /// `tls` is given.
    pub fn new(service: S, tls: Option<TlsAcceptor>) -> Self {
        Self { service, tls }
    }
}

impl<S, B> Port<S>
where
    S: Service<http::Request<StreamBody>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Display + Send,
{
    /// Accepts connections on `listener` and answers their calls until
    /// `stopping` turns true; then every open connection is told to go away
    /// once its calls are done.
    pub async fn serve(self, listener: TcpListener, mut stopping: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            let (tcp, caller) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "cannot accept a connection on the cluster port; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Calls are small and latency-bound.
            let _ = tcp.set_nodelay(true);
            let tls = self.tls.clone();
            let service = self.service.clone();
            let stopping = stopping.clone();
            tokio::spawn(async move {
                match tls {
                    None => Self::connection(tcp, caller, service, stopping).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(io)) => Self::connection(io, caller, service, stopping).await,
                            Ok(Err(err)) => {
                                tracing::debug!(%caller, %err, "TLS handshake on the cluster port failed");
                            }
                            Err(_) => {
                                tracing::debug!(%caller, "no TLS handshake on the cluster port within {HANDSHAKE_TIMEOUT:?}");
                            }
                        }
                    }
                }
            });
        }
    }

    /// Drives one connection until the caller closes it or, after `stopping`,
    /// until its open calls are done.
    async fn connection<Io: AsyncRead + AsyncWrite + Unpin>(
        io: Io,
        caller: SocketAddr,
        service: S,
        mut stopping: watch::Receiver<bool>,
    ) {
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_CALLS_PER_CONNECTION)
            .max_header_list_size(MAX_HEADER_BYTES)
            .max_send_buffer_size(MAX_SEND_BUFFER_BYTES)
            .handshake::<_, Bytes>(TurnWriter::new(io));
        let mut connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                tracing::debug!(%caller, %err, "HTTP/2 handshake on the cluster port failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%caller, "no HTTP/2 handshake on the cluster port within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        let mut going_away = false;
        loop {
            let next = tokio::select! {
                next = connection.accept() => next,
                _ = stopping.wait_for(|stop| *stop), if !going_away => {
                    connection.graceful_shutdown();
                    going_away = true;
                    continue;
                }
            };
            let (request, respond) = match next {
                Some(Ok(call)) => call,
                Some(Err(err)) => {
                    tracing::debug!(%caller, %err, "a connection on the cluster port ended");
                    return;
                }
                None => return,
            };
            let in_place = ANSWERED_IN_PLACE.contains(&request.uri().path());
            let mut call = Box::pin(Self::answer(service.clone(), request, respond));
            // Polled here once: a call answered from memory queues its whole
            // reply now, and the next turn of `accept` writes it.
            if !in_place || (&mut call).now_or_never().is_none() {
                tokio::spawn(call);
            }
        }
    }

    /// Answers one call: the service's reply, then its body as it comes.
    async fn answer(
        mut service: S,
        request: http::Request<h2::RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) {
        let request = request.map(StreamBody::new);
        let Ok(()) = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
        let Ok(reply) = tokio::select! {
            biased;
            reply = service.call(request) => reply,
            // The caller gave up waiting (a claim that joined a flight,
            // for one): the call is dropped with it.
            _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => return,
        };
        let (head, body) = reply.into_parts();
        // A refusal is all headers (gRPC's trailers-only reply).
        let ends = body.is_end_stream();
        let mut stream = match respond.send_response(http::Response::from_parts(head, ()), ends) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(%err, "a call on the cluster port went before its reply");
                return;
            }
        };
        if ends {
            return;
        }
        if let Err(cut) = send_body(&mut stream, body, h2::Reason::INTERNAL_ERROR).await {
            tracing::debug!(%cut, "a reply on the cluster port was cut");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use http_body_util::combinators::BoxBody;
    use http_body_util::BodyExt;
    use http_body_util::StreamBody as FramesBody;

    /// A service for the tests: a `Get` is answered at once, any other
    /// call after `delay`; each reply is one message (the path) and trailers.
    #[derive(Clone)]
    struct Echo {
        delay: Duration,
        /// Calls whose future ended, answered or dropped.
        ended: Arc<AtomicUsize>,
    }

    impl Echo {
        fn after(delay: Duration) -> Self {
            Self {
                delay,
                ended: Arc::default(),
            }
        }
    }

    /// Counts a call's future out when it ends, however it ends.
    struct Ends(Arc<AtomicUsize>);

    impl Drop for Ends {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    type Reply = http::Response<BoxBody<Bytes, Infallible>>;

    impl Service<http::Request<StreamBody>> for Echo {
        type Response = Reply;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<StreamBody>) -> Self::Future {
            let path = request.uri().path().to_string();
            let delay = if ANSWERED_IN_PLACE.contains(&path.as_str()) {
                Duration::ZERO
            } else {
                self.delay
            };
            let ends = Ends(Arc::clone(&self.ended));
            Box::pin(async move {
                let _ends = ends;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames = futures::stream::iter([
                    Ok(http_body::Frame::data(Bytes::from(path))),
                    Ok(http_body::Frame::trailers(trailers)),
                ]);
                Ok(http::Response::new(BoxBody::new(FramesBody::new(frames))))
            })
        }
    }

    async fn start(echo: Echo) -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopping) = watch::channel(false);
        tokio::spawn(Port::new(echo, None).serve(listener, stopping));
        (address, stop)
    }

    async fn connect(address: SocketAddr) -> h2::client::SendRequest<Bytes> {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        sender
    }

    /// Opens a call to `path` and sends its one message.
    async fn open(
        sender: &h2::client::SendRequest<Bytes>,
        path: &str,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let request = http::Request::post(format!("http://member{path}"))
            .body(())
            .unwrap();
        let (reply, mut send) = sender
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request, false)
            .unwrap();
        send.send_data(Bytes::from_static(b"call"), true).unwrap();
        (reply, send)
    }

    /// Sends a call to `path` and returns its reply's message and status.
    async fn call(sender: &mut h2::client::SendRequest<Bytes>, path: &str) -> (String, String) {
        let (reply, _send) = open(sender, path).await;
        let collected = reply.await.unwrap().into_body();
        let collected = StreamBody::new(collected).collect().await.unwrap();
        let status = collected.trailers().unwrap()["grpc-status"]
            .to_str()
            .unwrap()
            .to_string();
        (
            String::from_utf8(collected.to_bytes().to_vec()).unwrap(),
            status,
        )
    }

    #[tokio::test]
    async fn calls_answered_in_place_and_on_their_own_task_both_arrive_whole() {
        let (address, _stop) = start(Echo::after(Duration::from_secs(2))).await;
        let mut sender = connect(address).await;
        let mut second = sender.clone();
        let slow = tokio::spawn(async move {
            call(&mut second, "/relaycache.cluster.v1.Cluster/SetBatch").await
        });
        // The slow call runs on a task of its own, so the quick one on the
        // same connection is not held up behind it.
        let quick = call(&mut sender, "/relaycache.cluster.v1.Cluster/Get").await;
        assert_eq!(quick.0, "/relaycache.cluster.v1.Cluster/Get");
        assert_eq!(quick.1, "0");
        assert!(
            !slow.is_finished(),
            "the quick call waited for the slow one"
        );
        let slow = slow.await.unwrap();
        assert_eq!(
            slow,
            (
                "/relaycache.cluster.v1.Cluster/SetBatch".to_string(),
                "0".to_string()
            )
        );
    }

    #[tokio::test]
    async fn stopping_lets_open_calls_finish_and_accepts_no_more_connections() {
        let (address, stop) = start(Echo::after(Duration::from_millis(300))).await;
        let mut sender = connect(address).await;
        let open =
            tokio::spawn(
                async move { call(&mut sender, "/relaycache.cluster.v1.Cluster/Scan").await },
            );
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(true).unwrap();
        let (message, status) = open.await.unwrap();
        assert_eq!(status, "0", "the call open at the stop was answered");
        assert_eq!(message, "/relaycache.cluster.v1.Cluster/Scan");
        let refused = tokio::net::TcpStream::connect(address).await;
        assert!(refused.is_err(), "a connection was accepted after the stop");
    }

    #[tokio::test]
    async fn a_call_whose_caller_gives_up_is_dropped() {
        let echo = Echo::after(Duration::from_secs(3600));
        let ended = Arc::clone(&echo.ended);
        let (address, _stop) = start(echo).await;
        let sender = connect(address).await;
        let (reply, send) = open(&sender, "/relaycache.cluster.v1.Cluster/SetBatch").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            ended.load(Ordering::SeqCst),
            0,
            "an hour's call ended early"
        );
        // Dropping both halves resets the stream.
        drop((reply, send));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ended.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            ended.load(Ordering::SeqCst),
            1,
            "the call went on after its caller reset it"
        );
    }
}
