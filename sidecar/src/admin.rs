//! The admin listener: health, readiness, metrics, stats, members and
//! purge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use crate::body::{full, ProxyBody};
use crate::cluster::Roster;
use crate::entry::filter::EntryFilter;
use crate::key::CacheKey;
use crate::metrics::Metrics;
use crate::metrics::TierStats;
use crate::tier::reserve::ReserveTier;
use crate::tier::TierError;
use crate::tiers::Tiers;
use crate::transfer::{self, ImportLimits};

/// State the admin endpoints read.
pub struct Admin {
    tiers: Tiers,
    metrics: Arc<Metrics>,
    token: Option<String>,
    ready: Arc<AtomicBool>,
    import_limits: ImportLimits,
}

impl Admin {
    /// `token` protects purge; `None` disables purge. `ready` turns false
    /// when shutdown starts, so load balancers stop sending traffic.
    pub fn new(
        tiers: Tiers,
        metrics: Arc<Metrics>,
        token: Option<String>,
        ready: Arc<AtomicBool>,
        import_limits: ImportLimits,
    ) -> Self {
        Self {
            tiers,
            metrics,
            token,
            ready,
            import_limits,
        }
    }

    /// Handles one admin request.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                // Below the cluster's quorum the proxy still answers (from
                // memory, reserve and upstream), so it stays ready and says
                // why. A member pulling what it owns answers too, but is
                // not ready: a rolling update waits for it before it stops
                // the next member.
                let cluster = self.tiers.cluster();
                let detail = cluster
                    .map(|cluster| cluster.readiness_detail())
                    .unwrap_or_default();
                let warming = cluster.is_some_and(|cluster| cluster.is_warming());
                if warming && self.ready.load(Ordering::Acquire) {
                    text(StatusCode::SERVICE_UNAVAILABLE, &format!("warming up\n{detail}"))
                } else if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, &format!("ready\n{detail}"))
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                }
            }
            (&Method::GET, "/metrics") => {
                let (memory, reserve) = self.census();
                let mut response = text(StatusCode::OK, &self.metrics.encode(memory, reserve));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/stats") => {
                let (memory, reserve) = self.census();
                let stats = self.metrics.stats(memory, reserve);
                json(StatusCode::OK, &serde_json::to_value(stats).unwrap_or_default())
            }
            (&Method::GET, "/members") => {
                let roster = self
                    .tiers
                    .cluster()
                    .map_or_else(Roster::single, |cluster| cluster.roster());
                json(StatusCode::OK, &serde_json::to_value(roster).unwrap_or_default())
            }
            (&Method::GET, "/cache/export") => match self.refusal(&request) {
                Some(refusal) => refusal,
                None => match EntryFilter::from_query(request.uri().query().unwrap_or_default()) {
                    Ok(filter) => transfer::export(self.tiers.clone(), filter),
                    Err(err) => message(StatusCode::BAD_REQUEST, &err.to_string()),
                },
            },
            (&Method::POST, "/cache/import") => match self.refusal(&request) {
                Some(refusal) => refusal,
                None => {
                    let summary =
                        transfer::import(&self.tiers, request.into_body(), self.import_limits).await;
                    tracing::info!(?summary, "imported a bundle");
                    json(
                        transfer::import_status(&summary),
                        &serde_json::to_value(&summary).unwrap_or_default(),
                    )
                }
            },
            (&Method::DELETE, "/cache") if request.uri().query().is_some_and(|q| !q.is_empty()) => {
                match self.refusal(&request) {
                    Some(refusal) => refusal,
                    None => self.purge_matching(request.uri().query().unwrap_or_default()).await,
                }
            }
            (&Method::DELETE, "/cache") => match self.refusal(&request) {
                Some(refusal) => refusal,
                None => {
                    if let Err(err) = self.tiers.purge_all().await {
                        return purge_failed(&err);
                    }
                    tracing::info!("purged every entry");
                    json(StatusCode::OK, &serde_json::json!({"purged": "all"}))
                }
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
                    let removed = match self.tiers.purge(&key).await {
                        Ok(removed) => removed,
                        Err(err) => return purge_failed(&err),
                    };
                    tracing::info!(%key, removed, "purged one entry");
                    json(StatusCode::OK, &serde_json::json!({"purged": key.to_string(), "removed": removed}))
                }
            },
            _ => message(
                StatusCode::NOT_FOUND,
                "unknown admin endpoint; use GET /healthz, /readyz, /metrics, /stats, /members, /cache/export, POST /cache/import or DELETE /cache[/KEY | ?FILTER]",
            ),
        }
    }

    /// A scoped purge: the entries the query selects, from every tier and
    /// (at a member) every member.
    async fn purge_matching(&self, query: &str) -> Response<ProxyBody> {
        let filter = match EntryFilter::from_query(query) {
            Ok(filter) => filter,
            Err(err) => return message(StatusCode::BAD_REQUEST, &err.to_string()),
        };
        let removed = match self.tiers.purge_matching(&filter).await {
            Ok(removed) => removed,
            Err(err) => return purge_failed(&err),
        };
        let total: u64 = removed.iter().map(|(_, n)| n).sum();
        tracing::info!(%filter, removed = total, "purged the entries a filter selects");
        let by_tier: serde_json::Map<String, serde_json::Value> = removed
            .into_iter()
            .map(|(tier, n)| (tier.as_str().to_string(), n.into()))
            .collect();
        json(
            StatusCode::OK,
            &serde_json::json!({"purged": filter.to_string(), "removed": total, "by_tier": by_tier}),
        )
    }

    fn census(&self) -> (TierStats, TierStats) {
        let reserve = self
            .tiers
            .reserve()
            .map(ReserveTier::census)
            .unwrap_or_default();
        (self.tiers.memory().current_stats(), reserve)
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

/// A purge a tier could not finish: retry when its backend failed; a
/// client purging the cluster is told where to purge instead.
fn purge_failed(err: &TierError) -> Response<ProxyBody> {
    match err {
        TierError::NotAllowed(_) => message(StatusCode::FORBIDDEN, &err.to_string()),
        TierError::Unavailable { .. } => {
            message(StatusCode::BAD_GATEWAY, &format!("{err}; retry the purge"))
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
