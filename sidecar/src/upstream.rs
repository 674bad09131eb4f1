//! The upstream APIs: routing by path prefix, and one pooled HTTP client
//! (HTTP/1.1 and h2 over rustls) per upstream with its timeouts.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::config::UpstreamConfig;

/// Why the upstream gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TLS setup failed at startup.
    #[error("cannot set up TLS for upstream {name}: {reason}")]
    Tls {
        /// Upstream name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The URL in the config is not usable.
    #[error("upstream {name}: bad url {url:?}: {reason}")]
    BadUrl {
        /// Upstream name.
        name: String,
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot connect to upstream {name} ({authority}): {reason}; check that it is up and that upstreams[].url is right")]
    Unreachable {
        /// Upstream name.
        name: String,
        /// Host and port.
        authority: String,
        /// The underlying error.
        reason: String,
    },
    /// No response headers within the first-byte timeout.
    #[error("upstream {name} sent no answer within {timeout:?}; retry, or raise upstreams[].first_byte_timeout")]
    Timeout {
        /// Upstream name.
        name: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The exchange failed after connecting.
    #[error("upstream {name} failed: {reason}; retry the request")]
    Failed {
        /// Upstream name.
        name: String,
        /// The underlying error.
        reason: String,
    },
}

impl UpstreamError {
    /// The status the client gets: 504 for timeouts, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// One upstream API.
pub struct Upstream {
    /// Name from the config, for logs and metrics.
    pub name: Arc<str>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    paths: Vec<String>,
    /// Time to response headers.
    pub first_byte_timeout: Duration,
    /// Time for the whole exchange.
    pub total_timeout: Duration,
    client: HttpClient,
}

impl Upstream {
    /// Builds the upstream and its connection pool.
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let bad_url = |reason: &str| UpstreamError::BadUrl {
            name: config.name.clone(),
            url: config.url.clone(),
            reason: reason.to_string(),
        };
        let uri: Uri = config.url.parse().map_err(|_| bad_url("not a URI"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad_url("no scheme"))?;
        let authority = uri.authority().cloned().ok_or_else(|| bad_url("no host"))?;
        let base_path = uri.path().trim_end_matches('/').to_string();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(config)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(512)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Ok(Self {
            name: config.name.as_str().into(),
            scheme,
            authority,
            base_path,
            paths: config.paths.clone(),
            first_byte_timeout: config.first_byte_timeout,
            total_timeout: config.total_timeout,
            client,
        })
    }

    fn serves(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p.as_str()))
    }

    /// The upstream URI for a client's path and query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let joined = format!("{}{}", self.base_path, path_and_query);
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(joined)
            .build()
            .map_err(|e| UpstreamError::Failed {
                name: self.name.to_string(),
                reason: format!("cannot form request URI: {e}"),
            })
    }

    /// Sends `request`, waiting at most the first-byte timeout for headers.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.first_byte_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if err.is_connect() => Err(UpstreamError::Unreachable {
                name: self.name.to_string(),
                authority: self.authority.to_string(),
                reason: error_chain(&err),
            }),
            Ok(Err(err)) => Err(UpstreamError::Failed {
                name: self.name.to_string(),
                reason: error_chain(&err),
            }),
            Err(_) => Err(UpstreamError::Timeout {
                name: self.name.to_string(),
                timeout: self.first_byte_timeout,
            }),
        }
    }
}

/// TLS settings of an upstream: the public web roots plus its `ca_file`.
fn tls_config(config: &UpstreamConfig) -> Result<rustls::ClientConfig, UpstreamError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let tls_error = |reason: String| UpstreamError::Tls {
        name: config.name.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !config.ca_file.is_empty() {
        let certs = CertificateDer::pem_file_iter(&config.ca_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls_error(format!("cannot read ca_file {:?}: {e}", config.ca_file)))?;
        if certs.is_empty() {
            return Err(tls_error(format!(
                "ca_file {:?} holds no certificate",
                config.ca_file
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| tls_error(format!("ca_file {:?}: {e}", config.ca_file)))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// An error and its causes on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The configured upstreams, in order.
pub struct Upstreams(Vec<Arc<Upstream>>);

impl Upstreams {
    /// Builds every upstream.
    pub fn new(configs: &[UpstreamConfig]) -> Result<Self, UpstreamError> {
        configs
            .iter()
            .map(|c| Upstream::new(c).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// The first upstream whose path prefixes match `path`.
    pub fn route(&self, path: &str) -> Option<&Arc<Upstream>> {
        self.0.iter().find(|u| u.serves(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, url: &str, paths: &[&str]) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            url: url.into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            ..UpstreamConfig::default()
        }
    }

    #[test]
    fn first_matching_prefix_wins() {
        let ups = Upstreams::new(&[
            upstream("anthropic", "https://a.example", &["/v1/messages"]),
            upstream("openai", "http://o.example:8080/base/", &[]),
        ])
        .unwrap();
        assert_eq!(
            &*ups.route("/v1/messages/count_tokens").unwrap().name,
            "anthropic"
        );
        let openai = ups.route("/v1/chat/completions").unwrap();
        assert_eq!(&*openai.name, "openai");
        assert_eq!(
            openai.uri_for("/v1/models?limit=2").unwrap().to_string(),
            "http://o.example:8080/base/v1/models?limit=2"
        );
    }

    #[test]
    fn no_catch_all_means_no_route() {
        let ups = Upstreams::new(&[upstream("a", "https://a.example", &["/v1/messages"])]).unwrap();
        assert!(ups.route("/v1/models").is_none());
    }
}
