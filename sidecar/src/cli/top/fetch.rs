//! Reading a process's admin endpoints: `/stats`, `/metrics` and
//! `/members`, each within a timeout, with the admin token when given.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::reading::{MetricFigures, Rates, Reading};
use super::report::{Process, Report, Status};
use crate::cluster::Roster;
use crate::metrics::Stats;
use crate::upstream::error_chain;

/// Why an admin endpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not one hyper can call.
    #[error("{url} is not a usable URL: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No connection, or the exchange broke off.
    #[error("{0}")]
    Unreachable(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer other than 200.
    #[error("{path} answered {status}")]
    Status {
        /// The endpoint.
        path: &'static str,
        /// What it answered.
        status: StatusCode,
    },
    /// A body that is not what the endpoint should send.
    #[error("{path} is not what relaycache sends: {reason}")]
    Body {
        /// The endpoint.
        path: &'static str,
        /// Why.
        reason: String,
    },
}

/// Calls admin endpoints.
pub struct Fetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    token: Option<String>,
    timeout: Duration,
}

impl Fetcher {
    /// A fetcher sending `Authorization: Bearer TOKEN` when `token` is
    /// set, giving up on a call after `timeout`.
    pub fn new(token: Option<String>, timeout: Duration) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            token: token.filter(|t| !t.is_empty()),
            timeout,
        }
    }

    /// The body of `GET base + path` as text.
    async fn get(&self, base: &str, path: &'static str) -> Result<String, FetchError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut request = Request::get(&url);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).map_err(|err| FetchError::Url {
            url: url.clone(),
            reason: err.to_string(),
        })?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| FetchError::Unreachable(error_chain(&err)))?;
            let status = response.status();
            if status != StatusCode::OK {
                return Err(FetchError::Status { path, status });
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| FetchError::Unreachable(error_chain(&err)))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|err| FetchError::Body {
                path,
                reason: err.to_string(),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    /// A reading of the process at `base` and its roster (`None` when it
    /// has no `/members`).
    pub async fn read(&self, base: &str) -> Result<(Reading, Option<Roster>), FetchError> {
        let (stats, metrics, members) = tokio::join!(
            self.get(base, "/stats"),
            self.get(base, "/metrics"),
            self.get(base, "/members"),
        );
        let stats: Stats = serde_json::from_str(&stats?).map_err(|err| FetchError::Body {
            path: "/stats",
            reason: err.to_string(),
        })?;
        let metrics = MetricFigures::parse(&metrics?);
        let roster = members
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        Ok((Reading { stats, metrics }, roster))
    }
}

/// The processes watched and their previous readings.
pub struct Watch {
    fetcher: Fetcher,
    processes: Vec<(String, Option<(Instant, Reading)>)>,
}

impl Watch {
    /// Watches the admin URLs `urls` (`host:port` means `http://host:port`).
    pub fn new(urls: &[String], fetcher: Fetcher) -> Self {
        let processes = urls
            .iter()
            .map(|url| {
                let url = if url.contains("://") {
                    url.clone()
                } else {
                    format!("http://{url}")
                };
                (url, None)
            })
            .collect();
        Self { fetcher, processes }
    }

    /// Reads every process at once; rates against each one's previous
    /// reading. A process that does not answer is down and loses its
    /// previous reading.
    pub async fn refresh(&mut self) -> Report {
        let reads =
            futures::future::join_all(self.processes.iter().map(|(url, _)| self.fetcher.read(url)))
                .await;
        let now = Instant::now();
        let processes = self
            .processes
            .iter_mut()
            .zip(reads)
            .map(|((url, previous), read)| {
                let status = match read {
                    Ok((reading, roster)) => {
                        let rates = previous
                            .as_ref()
                            .map(|(at, before)| Rates::between(before, &reading, now - *at));
                        *previous = Some((now, reading.clone()));
                        Status::Up {
                            reading: Box::new(reading),
                            rates,
                            roster,
                        }
                    }
                    Err(err) => {
                        *previous = None;
                        Status::Down {
                            error: err.to_string(),
                        }
                    }
                };
                Process {
                    url: url.clone(),
                    status,
                }
            })
            .collect();
        Report { processes }
    }
}
