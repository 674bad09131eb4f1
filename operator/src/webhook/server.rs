//! HTTPS for the webhook: rustls with a certificate that can be swapped while
//! serving, HTTP/1.1 and HTTP/2 (the apiserver uses either), `POST
//! /mutate-pods` only, bodies bounded.
//!
//! A body that is not an AdmissionReview with a request gets `400` and a
//! plain-text reason rather than an AdmissionReview: a response must echo the
//! request's uid, which such a body does not have. The apiserver treats the
//! 400 as a failed call, so `failurePolicy` decides (the chart's `Ignore`
//! admits the pod; `Fail` refuses it with our reason in the message), and the
//! reason lands in the apiserver's log. A review whose pod cannot be read
//! still has a uid and is answered "allowed" with a warning instead.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::certs::CertStore;
use super::Handler;
use crate::accept::accept_until;

/// Path the MutatingWebhookConfiguration calls.
pub const PATH: &str = "/mutate-pods";
/// Largest review accepted. The apiserver caps objects near 1.5 MiB (etcd);
/// a review carries the pod once (no oldObject on CREATE), so this is ample.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings serving whatever `store` holds at handshake time.
pub fn tls_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves until `shutdown` resolves; in-flight reviews finish on their own.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    accept_until(listener, "webhook", shutdown, move |stream, peer| {
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    // The apiserver trusting another CA shows up here.
                    warn!(%peer, error = %err, "webhook TLS handshake failed; is the caBundle current?");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "webhook TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |request: Request<Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(answer(&handler, request).await) }
            });
            if let Err(err) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %err, "webhook connection ended with an error");
            }
        }
    })
    .await;
}

async fn answer(handler: &Handler, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("not found; the webhook answers POST {PATH}"),
        );
    }
    if request.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use POST {PATH} with an AdmissionReview"),
        );
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the review is larger than {MAX_BODY_BYTES} bytes"),
            )
        }
        Err(err) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {err}"),
            )
        }
    };
    match handler.review(&body).await {
        Ok(review) => match serde_json::to_vec(&review) {
            Ok(json) => {
                let mut response = Response::new(Full::new(Bytes::from(json)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the answer: {err}"),
            ),
        },
        Err(bad) => {
            warn!(reason = %bad, "refused a malformed admission review");
            text(StatusCode::BAD_REQUEST, bad.to_string())
        }
    }
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
