//! Who may talk to the gRPC port, and as what: the members' token or the
//! clients' token carried as a bearer header on every call, and optional
//! mutual TLS with one CA for members and clients.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use super::channel::{Dial, PeerChannel};
use super::proto::cluster_client::ClusterClient;
use super::{ClusterError, Timings};
use crate::config::{HaConfig, PeerTlsConfig};
use crate::metrics::Metrics;

/// A client of one member, adding the token to every call.
pub type PeerClient = ClusterClient<InterceptedService<PeerChannel, AddToken>>;

/// Adds `authorization: Bearer <token>` to outgoing calls.
#[derive(Clone)]
pub struct AddToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// What a caller on the gRPC port is allowed to do, as its credential says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another member: every call.
    Member,
    /// A client (an injected sidecar): pings, reads, and the answers to
    /// its own requests.
    Client,
}

/// Decides each call's [`Role`] from its bearer token and refuses calls
/// that present neither token. The role travels in the request's
/// extensions to the service.
#[derive(Clone)]
pub struct Authenticate {
    member: Option<Arc<[u8]>>,
    client: Option<Arc<[u8]>>,
    metrics: Arc<Metrics>,
}

fn bearer(token: &str) -> Option<Arc<[u8]>> {
    (!token.is_empty()).then(|| format!("Bearer {token}").into_bytes().into())
}

impl Authenticate {
    /// Roles for a member's `settings`. Without the members' token every
    /// caller that got this far (past mutual TLS, or in an `insecure`
    /// cluster) is a member, unless it presents the clients' token.
    pub fn new(settings: &HaConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            member: bearer(&settings.token),
            client: bearer(&settings.client_token),
            metrics,
        }
    }

    fn role(&self, presented: &[u8]) -> Option<Role> {
        let matches = |expected: &Option<Arc<[u8]>>| {
            expected
                .as_ref()
                .is_some_and(|expected| bool::from(presented.ct_eq(expected)))
        };
        if matches(&self.member) {
            Some(Role::Member)
        } else if matches(&self.client) {
            Some(Role::Client)
        } else if self.member.is_none() {
            Some(Role::Member)
        } else {
            None
        }
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        match self.role(presented) {
            Some(role) => {
                request.extensions_mut().insert(role);
                Ok(request)
            }
            None => {
                self.metrics
                    .cluster
                    .count_refusal(crate::metrics::ClusterRefusal::Token);
                Err(Status::unauthenticated(
                    "missing or wrong cluster token; a member presents cache.ha.token, a client cache.ha.client_token",
                ))
            }
        }
    }
}

fn read_pem(path: &str, what: &str) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|err| {
        ClusterError::Tls(format!(
            "cannot read the {what} {path:?}: {err}; check the file exists and is readable"
        ))
    })
}

/// What mutual TLS on the gRPC port is made of, read from the PEM files
/// of `cache.ha.tls`: the CA every member's and client's certificate must
/// be signed by, and this process's own certificate chain and key.
struct TlsMaterial {
    roots: rustls::RootCertStore,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn bad_pem(what: &str, path: &str, err: &dyn std::fmt::Display) -> ClusterError {
    ClusterError::Tls(format!(
        "cannot use the {what} {path:?}: {err}; it must be PEM (cert-manager's tls.crt, tls.key and ca.crt are)"
    ))
}

impl TlsMaterial {
    fn read(tls: &PeerTlsConfig) -> Result<Self, ClusterError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = read_pem(&tls.ca_file, "CA certificate")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            let cert = cert.map_err(|err| bad_pem("CA certificate", &tls.ca_file, &err))?;
            roots
                .add(cert)
                .map_err(|err| bad_pem("CA certificate", &tls.ca_file, &err))?;
        }
        if roots.is_empty() {
            return Err(bad_pem(
                "CA certificate",
                &tls.ca_file,
                &"it holds no certificate",
            ));
        }
        let chain = CertificateDer::pem_slice_iter(&read_pem(&tls.cert_file, "certificate")?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| bad_pem("certificate", &tls.cert_file, &err))?;
        let key = PrivateKeyDer::from_pem_slice(&read_pem(&tls.key_file, "private key")?)
            .map_err(|err| bad_pem("private key", &tls.key_file, &err))?;
        Ok(Self { roots, chain, key })
    }
}

/// The server side of mutual TLS, when configured: a caller must present
/// a certificate signed by `ca_file`.
pub fn server_tls(tls: &PeerTlsConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, ClusterError> {
    if !tls.enabled() {
        return Ok(None);
    }
    let material = TlsMaterial::read(tls)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(material.roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|err| bad_pem("CA certificate", &tls.ca_file, &err))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ClusterError::Tls(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain, material.key)
        .map_err(|err| bad_pem("certificate and key", &tls.cert_file, &err))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Builds clients for member addresses with the token, TLS and timings.
#[derive(Clone)]
pub struct Connector {
    token: AddToken,
    tls: Option<tokio_rustls::TlsConnector>,
    timings: Timings,
    max_message_bytes: usize,
}

/// The client side of mutual TLS: this member's certificate, and the CA
/// every member's certificate must be signed by.
fn client_tls(tls: &PeerTlsConfig) -> Result<tokio_rustls::TlsConnector, ClusterError> {
    let material = TlsMaterial::read(tls)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ClusterError::Tls(err.to_string()))?
        .with_root_certificates(material.roots)
        .with_client_auth_cert(material.chain, material.key)
        .map_err(|err| bad_pem("certificate and key", &tls.cert_file, &err))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl Connector {
    /// A connector for `settings`.
    pub fn new(settings: &HaConfig, timings: Timings) -> Result<Self, ClusterError> {
        // A member presents the members' token, a client the clients'.
        let (own, key) = if settings.embedded {
            (&settings.token, "token")
        } else {
            (&settings.client_token, "client_token")
        };
        let token = if own.is_empty() {
            None
        } else {
            let value = format!("Bearer {own}")
                .parse()
                .map_err(|_| ClusterError::Token { key })?;
            Some(value)
        };
        let tls = if settings.tls.enabled() {
            Some(client_tls(&settings.tls)?)
        } else {
            None
        };
        Ok(Self {
            token: AddToken(token),
            tls,
            timings,
            max_message_bytes: MAX_MESSAGE_BYTES,
        })
    }

    /// A client for `address` (`host:port`). Connects lazily, and resolves
    /// the name again on every reconnect, so a pod that comes back under
    /// the same name with a new IP is found.
    pub fn client(&self, address: &str) -> Result<PeerClient, ClusterError> {
        let bad = |reason: String| ClusterError::Address {
            address: address.to_string(),
            reason,
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let origin: http::Uri = format!("{scheme}://{address}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        let host = origin
            .host()
            .ok_or_else(|| bad("no host name".to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if origin.port_u16().is_none() {
            return Err(bad("no port; write it as host:port".to_string()));
        }
        let tls = match &self.tls {
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| bad(format!("not a name a certificate can carry: {e}")))?;
                Some((connector.clone(), name))
            }
            None => None,
        };
        let channel = PeerChannel::new(Dial {
            address: address.to_string(),
            tls,
            connect_timeout: self.timings.probe_timeout,
            keep_alive_interval: self
                .timings
                .probe_interval
                .max(std::time::Duration::from_secs(1)),
            // Drop a dead connection about when its member is marked down, so
            // the next probe dials afresh instead of waiting on TCP's
            // backed-off retransmissions after a partition heals.
            keep_alive_timeout: self.timings.probe_timeout * self.timings.failures_to_down,
        });
        Ok(
            ClusterClient::with_origin(
                InterceptedService::new(channel, self.token.clone()),
                origin,
            )
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes),
        )
    }
}

/// Largest gRPC message: a batch of entries, or one entry of up to
/// `cache.max_entry_bytes` (8 MiB by default) with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
