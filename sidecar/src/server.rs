//! Accepting connections: HTTP/1.1 and h2c on one port, header-read
//! timeouts, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::body::ProxyBody;

/// Largest read buffer of one HTTP/1 connection.
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Connection settings of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    /// Time a client has to send request headers.
    pub header_read_timeout: Duration,
    /// Longest wait for in-flight requests once shutdown begins.
    pub shutdown_timeout: Duration,
    /// Most connections served at once; `None`: no limit (admin listener).
    pub max_connections: Option<usize>,
}

/// Binds `addr`, saying what to change when it cannot.
pub async fn bind(addr: &str, key: &str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await.map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("cannot listen on {addr} ({err}); free the port or change {key}"),
        )
    })
}

/// Serves `listener` with `handler` until `shutdown` turns true, then lets
/// in-flight requests finish for up to `shutdown_timeout`. Returns whether
/// every connection closed in time.
/// A connection over `max_connections` is answered with one 503 and
/// closed, and `on_refused` is called.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    settings: ListenerSettings,
    mut shutdown: watch::Receiver<bool>,
    on_refused: impl Fn() + Send + Sync + 'static,
) -> bool
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let connections = settings
        .max_connections
        .map(|n| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS))));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // Bodies are copied out of this buffer as they arrive; a small one
        // keeps many concurrent uploads from holding memory the body budget
        // (server.max_buffered_bytes) does not see.
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let permit = match connections.as_ref().map(|c| Arc::clone(c).try_acquire_owned()) {
                    Some(Err(_)) => {
                        on_refused();
                        tokio::spawn(refuse(stream));
                        continue;
                    }
                    Some(Ok(permit)) => Some(permit),
                    None => None,
                };
                let handler = handler.clone();
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        log_connection_error(peer, err.as_ref());
                    }
                    drop(permit);
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    tokio::time::timeout(settings.shutdown_timeout, graceful.shutdown())
        .await
        .is_ok()
}

/// Answers a connection over the limit without reading its request, then
/// drains what the client already sent (closing with unread bytes would
/// reset the connection before the client reads the answer). Bounded in
/// time and bytes.
async fn refuse(mut stream: TcpStream) {
    let answer = crate::limits::connection_refusal();
    let exchange = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), exchange).await;
}

fn log_connection_error(peer: SocketAddr, err: &(dyn std::error::Error + 'static)) {
    // Clients closing early and header-read timeouts are routine.
    tracing::debug!(%peer, error = %err, "connection ended with an error");
}
