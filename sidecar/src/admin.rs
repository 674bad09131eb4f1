//! The admin listener: health, readiness, metrics, stats and purge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use crate::body::{full, ProxyBody};
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::tier::{MemoryTier, Tier};

/// State the admin endpoints read.
pub struct Admin {
    memory: MemoryTier,
    metrics: Arc<Metrics>,
    token: Option<String>,
    ready: Arc<AtomicBool>,
}

impl Admin {
    /// `token` protects purge; `None` disables purge. `ready` turns false
    /// when shutdown starts, so load balancers stop sending traffic.
    pub fn new(
        memory: MemoryTier,
        metrics: Arc<Metrics>,
        token: Option<String>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            memory,
            metrics,
            token,
            ready,
        }
    }

    /// Handles one admin request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        let path = request.uri().path();
        match (request.method(), path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                }
            }
            (&Method::GET, "/metrics") => {
                let stats = self.memory.current_stats();
                let mut response = text(StatusCode::OK, &self.metrics.encode(stats));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/stats") => {
                let stats = self.metrics.stats(self.memory.current_stats());
                json(StatusCode::OK, &serde_json::to_value(stats).unwrap_or_default())
            }
            (&Method::DELETE, "/cache") => match self.refusal(&request) {
                Some(refusal) => refusal,
                None => match self.memory.clear().await {
                    Ok(()) => {
                        tracing::info!("purged every entry");
                        json(StatusCode::OK, &serde_json::json!({"purged": "all"}))
                    }
                    Err(err) => message(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
                },
            },
            (&Method::DELETE, p) if p.starts_with("/cache/") => match self.refusal(&request) {
                Some(refusal) => refusal,
                None => {
                    let Some(key) = CacheKey::from_hex(&p["/cache/".len()..]) else {
                        return message(
                            StatusCode::BAD_REQUEST,
                            "the key must be the 64 hex characters of an x-relaycache-key header",
                        );
                    };
                    match self.memory.delete(&key).await {
                        Ok(removed) => {
                            tracing::info!(%key, removed, "purged one entry");
                            json(StatusCode::OK, &serde_json::json!({"purged": key.to_string(), "removed": removed}))
                        }
                        Err(err) => message(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
                    }
                }
            },
            _ => message(
                StatusCode::NOT_FOUND,
                "unknown admin endpoint; use GET /healthz, /readyz, /metrics, /stats or DELETE /cache[/KEY]",
            ),
        }
    }

    /// The response refusing a purge, or `None` when the caller may purge.
    fn refusal(&self, request: &Request<Incoming>) -> Option<Response<ProxyBody>> {
        let Some(expected) = &self.token else {
            return Some(message(
                StatusCode::FORBIDDEN,
                "purge is disabled; set server.admin_token to enable it",
            ));
        };
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            None
        } else {
            let mut response = message(
                StatusCode::UNAUTHORIZED,
                "purge needs the header Authorization: Bearer <server.admin_token>",
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            Some(response)
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn message(status: StatusCode, text: &str) -> Response<ProxyBody> {
    json(status, &serde_json::json!({"error": text}))
}
