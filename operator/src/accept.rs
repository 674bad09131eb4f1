//! The accept loop of the operator's two listeners (health and metrics,
//! the webhook): each connection is served on its own task until shutdown.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Accepts connections on `listener` and hands each to `serve` on a task of
/// its own, until `shutdown` resolves; connections already accepted finish
/// on their own. A failed accept is logged under `name` and skipped.
pub(crate) async fn accept_until<F, Fut>(
    listener: TcpListener,
    name: &str,
    shutdown: impl Future<Output = ()>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    warn!(error = %err, "{name} listener: accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        tokio::spawn(serve(stream, peer));
    }
}
