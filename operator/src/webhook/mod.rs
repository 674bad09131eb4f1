//! The mutating admission webhook: pods labelled `relaycache.io/inject` get
//! the relaycache proxy as a sidecar in client mode (see [`inject`]).
//!
//! Every replica serves it, not only the leader: the webhook Service spreads
//! the apiserver's calls over all ready replicas, and answering needs nothing
//! but a read of the RelayCache.

pub mod certs;
pub mod inject;
pub mod server;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::core::admission::{AdmissionRequest, AdmissionReview};
use kube::core::DynamicObject;
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cli::{CertMode, NativeSidecars, RunArgs};
use crate::crd::RelayCache;
use certs::{CertError, CertStore, SelfSigned};
use inject::{Found, InjectSettings, NamespaceLabels, Plan};
use k8s_openapi::api::core::v1::Namespace;

use crate::resources::clients;

/// How often self-signed material is re-checked (another replica may have
/// renewed it, or the caBundle may have been reset by a reinstall).
pub const SELF_SIGNED_CHECK: Duration = Duration::from_secs(10 * 60);
/// How often `--webhook-cert-dir` is re-read.
pub const FILES_CHECK: Duration = Duration::from_secs(10);

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The webhook address is taken or not ours.
    #[error("cannot listen on {addr} for the webhook: {source}; pick another --webhook-addr")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// No usable serving certificate.
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// A review the handler cannot answer with an AdmissionReview: it has no
/// request (so no uid to answer to) or is not JSON of that shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// A boxed lookup result.
pub type LookupFuture = Pin<Box<dyn Future<Output = Found> + Send>>;

/// A boxed namespace lookup result.
pub type NamespaceFuture = Pin<Box<dyn Future<Output = NamespaceLabels> + Send>>;

/// Finds the RelayCache a pod names, and the labels of a namespace.
pub trait Lookup: Send + Sync {
    /// The RelayCache `namespace/name`.
    fn get(&self, namespace: &str, name: &str) -> LookupFuture;
    /// The labels of namespace `name` (for `spec.clients.namespaceSelector`).
    fn namespace_labels(&self, name: &str) -> NamespaceFuture;
}

/// Reads RelayCaches from the apiserver.
#[derive(Clone)]
pub struct ApiLookup(pub Client);

impl Lookup for ApiLookup {
    fn get(&self, namespace: &str, name: &str) -> LookupFuture {
        let api: Api<RelayCache> = Api::namespaced(self.0.clone(), namespace);
        let name = name.to_string();
        Box::pin(async move {
            match api.get_opt(&name).await {
                Ok(Some(rc)) => Found::Present(Box::new(rc)),
                Ok(None) => Found::Missing,
                Err(err) => Found::Failed(err.to_string()),
            }
        })
    }

    fn namespace_labels(&self, name: &str) -> NamespaceFuture {
        let api: Api<Namespace> = Api::all(self.0.clone());
        let name = name.to_string();
        Box::pin(async move {
            match api.get_metadata(&name).await {
                Ok(namespace) => {
                    NamespaceLabels::Found(namespace.metadata.labels.unwrap_or_default())
                }
                Err(err) => NamespaceLabels::Failed(err.to_string()),
            }
        })
    }
}

/// Answers AdmissionReviews.
pub struct Handler {
    /// Image and sidecar kind.
    pub settings: InjectSettings,
    /// Where RelayCaches come from.
    pub lookup: Arc<dyn Lookup>,
}

impl Handler {
    /// The AdmissionReview answering `body`.
    pub async fn review(&self, body: &[u8]) -> Result<AdmissionReview<DynamicObject>, BadReview> {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_slice(body).map_err(|err| {
                BadReview(format!(
                    "the body is not an admission.k8s.io/v1 AdmissionReview: {err}"
                ))
            })?;
        let request: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| {
            BadReview(
                "the AdmissionReview has no request; send the apiserver's review as is".into(),
            )
        })?;
        let response = match inject::plan(&request) {
            Plan::Answer(response) => *response,
            Plan::Inject { target, pod } => {
                let found = self.lookup.get(&target.namespace, &target.name).await;
                // The namespace's labels only when the selector decides.
                let namespace = match &found {
                    Found::Present(rc)
                        if clients::allowed_by_name(rc, &target.pod_namespace).is_none() =>
                    {
                        self.lookup.namespace_labels(&target.pod_namespace).await
                    }
                    _ => NamespaceLabels::NotRead,
                };
                inject::respond(&request, &target, &pod, found, namespace, &self.settings)
            }
        };
        let pod = request.name.as_str();
        match (&response.patch, &response.warnings) {
            (Some(_), _) => {
                info!(namespace = ?request.namespace, pod, uid = %request.uid, "injected the relaycache sidecar")
            }
            (None, Some(warnings)) => {
                info!(namespace = ?request.namespace, pod, ?warnings, allowed = response.allowed, "admitted without injecting")
            }
            (None, None) if !response.allowed => {
                info!(namespace = ?request.namespace, pod, message = %response.result.message, "refused the pod")
            }
            (None, None) => debug!(namespace = ?request.namespace, pod, "nothing to inject"),
        }
        Ok(response.into_review())
    }
}

/// Starts the webhook: loads (or issues) the serving certificate, keeps it
/// fresh, and serves `/mutate-pods` on `--webhook-addr` until `stop`.
/// Returns once it is serving, so readiness can follow.
pub async fn start(
    args: &RunArgs,
    client: Client,
    namespace: &str,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, WebhookError> {
    let store = Arc::new(CertStore::default());
    match args.webhook_cert_mode {
        CertMode::Files => certificate_from_files(args, &store, stop.clone())?,
        CertMode::SelfSigned => {
            self_signed_certificate(args, &client, namespace, &store, stop.clone()).await?
        }
    }
    let native_sidecars = native_sidecars(args, &client).await;
    let handler = Arc::new(Handler {
        settings: InjectSettings {
            default_image: args.default_image.clone(),
            native_sidecars,
        },
        lookup: Arc::new(ApiLookup(client)),
    });
    let listener = TcpListener::bind(args.webhook_addr)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: args.webhook_addr,
            source,
        })?;
    info!(addr = %args.webhook_addr, native_sidecars, "serving the webhook on {}", server::PATH);
    let tls = server::tls_config(store).map_err(CertError::Tls)?;
    let mut stop = stop;
    Ok(tokio::spawn(server::serve(
        listener,
        tls,
        handler,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )))
}

/// `--webhook-cert-mode=files`: the certificate in `--webhook-cert-dir`,
/// read again whenever the files change.
fn certificate_from_files(
    args: &RunArgs,
    store: &Arc<CertStore>,
    stop: watch::Receiver<bool>,
) -> Result<(), WebhookError> {
    let files = certs::read_files(&args.webhook_cert_dir)?;
    store.set(certs::certified_key(&files.0, &files.1)?);
    info!(dir = %args.webhook_cert_dir.display(), "webhook certificate from files");
    tokio::spawn(certs::watch_files(
        args.webhook_cert_dir.clone(),
        store.clone(),
        files,
        FILES_CHECK,
        stop,
    ));
    Ok(())
}

/// `--webhook-cert-mode=self-signed`: a certificate shared through the
/// Secret (or issued here), the caBundle patched to match, and both
/// renewed before they expire.
async fn self_signed_certificate(
    args: &RunArgs,
    client: &Client,
    namespace: &str,
    store: &Arc<CertStore>,
    stop: watch::Receiver<bool>,
) -> Result<(), WebhookError> {
    let names = certs::dns_names(
        args.webhook_service.as_deref(),
        namespace,
        &args.webhook_extra_sans,
    );
    let issuer = SelfSigned {
        secrets: args
            .webhook_secret
            .clone()
            .map(|name| (Api::namespaced(client.clone(), namespace), name)),
        webhooks: args
            .webhook_configuration
            .clone()
            .map(|name| (Api::all(client.clone()), name)),
        names,
        namespace: namespace.to_string(),
    };
    if issuer.secrets.is_none() {
        warn!("no --webhook-secret: the self-signed certificate lives in memory and each replica has its own");
    }
    let material = issuer.ensure(None, SystemTime::now()).await?;
    store.set(certs::certified_key(&material.cert_pem, &material.key_pem)?);
    if let Err(err) = issuer.patch_ca_bundle(&material.ca_bundle_pem).await {
        warn!(error = %err, "cannot patch the webhook caBundle yet; retrying every few minutes");
    }
    info!(names = ?issuer.names, "self-signed webhook certificate loaded");
    tokio::spawn(certs::maintain_self_signed(
        issuer,
        store.clone(),
        material,
        SELF_SIGNED_CHECK,
        stop,
    ));
    Ok(())
}

/// Whether to inject native sidecars: `--native-sidecars`, or with `auto`
/// the apiserver's version (a regular container when it cannot be read).
async fn native_sidecars(args: &RunArgs, client: &Client) -> bool {
    let version = match args.native_sidecars {
        NativeSidecars::Auto => match client.apiserver_version().await {
            Ok(info) => Some(info),
            Err(err) => {
                warn!(error = %err, "cannot read the apiserver version; injecting regular sidecar containers (set --native-sidecars to choose)");
                None
            }
        },
        NativeSidecars::Always | NativeSidecars::Never => None,
    };
    inject::native_sidecars_for(args.native_sidecars, version.as_ref())
}
