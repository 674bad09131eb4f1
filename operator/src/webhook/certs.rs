//! The webhook's serving certificate.
//!
//! Mode `self-signed`: the operator issues a CA and a serving certificate
//! (one year each), keeps them in a Secret of its namespace, puts the CA in
//! the MutatingWebhookConfiguration's `caBundle`, and renews both when fewer
//! than 30 days remain. A renewal keeps the previous CA in the bundle, so
//! replicas still serving the old certificate stay trusted until they reload.
//! No CA key is stored: a renewal issues a new CA, which leaves less secret
//! material behind. Mode `files`: cert-manager writes `tls.crt`/`tls.key`
//! and injects the CA itself; the operator reloads the files when they change.
//!
//! Whether a certificate needs renewing is decided by verifying it exactly as
//! a client would, with rustls, at "now + 30 days": expiry, every DNS name and
//! the chain to the bundle are checked in one go.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::resources::MANAGER;

/// Lifetime of the CA and the serving certificate.
pub const LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Renew when less than this remains.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Key of the CA bundle in the Secret (cert-manager writes the same key).
pub const CA_KEY: &str = "ca.crt";
/// Key of the serving certificate in the Secret and in `--webhook-cert-dir`.
pub const CERT_KEY: &str = "tls.crt";
/// Key of the serving key in the Secret and in `--webhook-cert-dir`.
pub const KEY_KEY: &str = "tls.key";

/// Why the certificate could not be issued, stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed (should not happen with valid names).
    #[error("cannot generate the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The names cannot go into a certificate.
    #[error(
        "no DNS name for the webhook certificate; set --webhook-service or --webhook-extra-sans"
    )]
    NoNames,
    /// PEM text that is not a certificate or key.
    #[error("{what} is not valid PEM: {reason}")]
    Pem {
        /// What was read.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// rustls refused the certificate or key.
    #[error("the webhook certificate cannot be used: {0}")]
    Tls(#[from] rustls::Error),
    /// The apiserver refused a request.
    #[error("Kubernetes API: {0}; check the operator's RBAC for Secrets in its namespace and mutatingwebhookconfigurations")]
    Api(#[from] kube::Error),
    /// Other replicas kept changing the Secret.
    #[error("the Secret {0} kept changing while this replica updated it; retrying later")]
    Contended(String),
    /// `--webhook-cert-dir` files cannot be read.
    #[error("cannot read {path}: {source}; in files mode cert-manager must mount tls.crt and tls.key there (see --webhook-cert-dir)")]
    Files {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// A CA bundle with the serving certificate and key, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// CAs that verify the serving certificate: the current one first, then
    /// the previous one while replicas may still serve its certificate.
    pub ca_bundle_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsMaterial")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Names the certificate must hold: the Service's in-cluster DNS names, as
/// the apiserver may address it, then the extra names (`--webhook-extra-sans`).
pub fn dns_names(service: Option<&str>, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(service) = service {
        names.push(format!("{service}.{namespace}.svc"));
        names.push(format!("{service}.{namespace}.svc.cluster.local"));
        names.push(format!("{service}.{namespace}"));
        names.push(service.to_string());
    }
    for name in extra.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// Parameters valid from `now` for `lifetime`; dates are built from rcgen's
/// own epoch so the date crate behind it need not be a dependency here.
fn dated_params(now: SystemTime, lifetime: Duration) -> CertificateParams {
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let mut params = CertificateParams::default();
    // An hour of slack for clocks that lag behind ours.
    params.not_before = epoch + since_epoch.saturating_sub(Duration::from_secs(3600));
    params.not_after = epoch + since_epoch + lifetime;
    params
}

/// Issues a new CA and a serving certificate for `names`. The bundle keeps
/// the current CA of `previous`, so certificates it signed stay trusted.
pub fn issue(
    names: &[String],
    previous: Option<&TlsMaterial>,
    now: SystemTime,
) -> Result<TlsMaterial, CertError> {
    let first = names.first().ok_or(CertError::NoNames)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = dated_params(now, LIFETIME + Duration::from_secs(24 * 3600));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "relaycache-operator webhook CA");
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut leaf = dated_params(now, LIFETIME);
    leaf.subject_alt_names = CertificateParams::new(names.to_vec())?.subject_alt_names;
    leaf.distinguished_name
        .push(DnType::CommonName, first.as_str());
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let cert = leaf.signed_by(&key, &Issuer::from_params(&ca, &ca_key))?;

    let mut bundle = ca_cert.pem();
    if let Some(old) = previous.and_then(|p| first_pem_block(&p.ca_bundle_pem)) {
        bundle.push_str(&old);
    }
    Ok(TlsMaterial {
        ca_bundle_pem: bundle,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn first_pem_block(pem: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &pem[start..end]))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bad = |reason: String| CertError::Pem {
        what: what.to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Verifies the serving certificate against the bundle for every name, as
/// the apiserver would at time `at`. The error says what failed.
pub fn verify(material: &TlsMaterial, names: &[String], at: SystemTime) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for ca in certs(&material.ca_bundle_pem, CA_KEY).map_err(|e| e.to_string())? {
        roots.add(ca).map_err(|e| format!("{CA_KEY}: {e}"))?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let chain = certs(&material.cert_pem, CERT_KEY).map_err(|e| e.to_string())?;
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    for name in names {
        let server_name = ServerName::try_from(name.clone()).map_err(|e| format!("{name}: {e}"))?;
        verifier
            .verify_server_cert(
                leaf,
                intermediates,
                &server_name,
                &[],
                UnixTime::since_unix_epoch(since_epoch),
            )
            .map_err(|e| format!("{name}: {e}"))?;
    }
    certified_key(&material.cert_pem, &material.key_pem).map_err(|e| e.to_string())?;
    Ok(())
}

/// Why the material must be replaced now, or None while it is good for
/// longer than [`RENEW_BEFORE`] and covers every name.
pub fn renewal_reason(material: &TlsMaterial, names: &[String], now: SystemTime) -> Option<String> {
    verify(material, names, now + RENEW_BEFORE)
        .err()
        .map(|reason| {
            format!(
                "not valid for the next {} days: {reason}",
                RENEW_BEFORE.as_secs() / 86400
            )
        })
}

/// A certificate chain and key ready for rustls; the key must match.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = certs(cert_pem, CERT_KEY)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Pem {
        what: KEY_KEY.into(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

/// The Secret holding the material (type `kubernetes.io/tls`, plus `ca.crt`).
pub fn to_secret(name: &str, namespace: &str, material: &TlsMaterial) -> Secret {
    let data = [
        (CA_KEY, &material.ca_bundle_pem),
        (CERT_KEY, &material.cert_pem),
        (KEY_KEY, &material.key_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    MANAGER.to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The material in a Secret, or what is missing.
pub fn from_secret(secret: &Secret) -> Result<TlsMaterial, String> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |key: &str| {
        data.get(key)
            .ok_or_else(|| format!("the Secret has no {key}"))
            .and_then(|v| {
                String::from_utf8(v.0.clone()).map_err(|_| format!("{key} is not PEM text"))
            })
    };
    Ok(TlsMaterial {
        ca_bundle_pem: get(CA_KEY)?,
        cert_pem: get(CERT_KEY)?,
        key_pem: get(KEY_KEY)?,
    })
}

/// The serving certificate rustls hands out; swapped in place on renewal, so
/// connections after a reload get the new one without a restart.
#[derive(Debug, Default)]
pub struct CertStore(RwLock<Option<Arc<CertifiedKey>>>);

impl CertStore {
    /// Replaces the certificate.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        match self.0.write() {
            Ok(mut slot) => *slot = Some(key),
            Err(poisoned) => *poisoned.into_inner() = Some(key),
        }
    }

    /// The current certificate, if one was loaded.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        match self.0.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

/// Where self-signed material lives and whom to tell about its CA.
#[derive(Clone)]
pub struct SelfSigned {
    /// The Secret (in the operator's namespace); None keeps the material in
    /// memory only (a local run without `--webhook-secret`).
    pub secrets: Option<(Api<Secret>, String)>,
    /// The MutatingWebhookConfiguration whose caBundle is patched.
    pub webhooks: Option<(Api<MutatingWebhookConfiguration>, String)>,
    /// Names the certificate must hold.
    pub names: Vec<String>,
    /// Namespace of the Secret.
    pub namespace: String,
}

impl SelfSigned {
    /// Returns material valid for at least [`RENEW_BEFORE`]: the stored one,
    /// or a new one written to the Secret. Replicas race here: the Secret is
    /// created only if absent and replaced only at the version read, and a
    /// replica that loses reads the winner's material.
    pub async fn ensure(
        &self,
        current: Option<&TlsMaterial>,
        now: SystemTime,
    ) -> Result<TlsMaterial, CertError> {
        let Some((api, name)) = &self.secrets else {
            return match current {
                Some(m) if renewal_reason(m, &self.names, now).is_none() => Ok(m.clone()),
                _ => issue(&self.names, current, now),
            };
        };
        for _ in 0..5 {
            let Some(secret) = api.get_opt(name).await? else {
                let fresh = issue(&self.names, None, now)?;
                let secret = to_secret(name, &self.namespace, &fresh);
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        info!(secret = %name, "stored a new webhook CA and certificate");
                        return Ok(fresh);
                    }
                    Err(kube::Error::Api(status)) if status.is_already_exists() => continue,
                    Err(err) => return Err(err.into()),
                }
            };
            let stored = from_secret(&secret);
            let reason = match &stored {
                Ok(material) => renewal_reason(material, &self.names, now),
                Err(missing) => Some(missing.clone()),
            };
            let Some(reason) = reason else {
                return stored.map_err(|reason| CertError::Pem {
                    what: name.clone(),
                    reason,
                });
            };
            info!(secret = %name, %reason, "renewing the webhook certificate");
            let fresh = issue(&self.names, stored.as_ref().ok(), now)?;
            let mut replacement = to_secret(name, &self.namespace, &fresh);
            replacement.metadata.resource_version = secret.metadata.resource_version.clone();
            match api
                .replace(name, &PostParams::default(), &replacement)
                .await
            {
                Ok(_) => return Ok(fresh),
                Err(kube::Error::Api(status)) if status.is_conflict() => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(CertError::Contended(name.clone()))
    }

    /// Puts `bundle` in the caBundle of every webhook of the configuration
    /// that lacks it. Returns whether anything changed.
    pub async fn patch_ca_bundle(&self, bundle: &str) -> Result<bool, CertError> {
        let Some((api, name)) = &self.webhooks else {
            return Ok(false);
        };
        let config = api.get(name).await?;
        let patch = ca_bundle_patch(&config, bundle);
        if patch.is_empty() {
            return Ok(false);
        }
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(patch)).map_err(|e| CertError::Pem {
                what: "caBundle patch".into(),
                reason: e.to_string(),
            })?;
        api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await?;
        info!(configuration = %name, "patched the webhook caBundle");
        Ok(true)
    }
}

/// JSONPatch operations setting `bundle` on each webhook that lacks it; each
/// is guarded by a test of the webhook's name, so a reordered list fails
/// the patch instead of writing into the wrong entry.
pub fn ca_bundle_patch(config: &MutatingWebhookConfiguration, bundle: &str) -> Vec<Value> {
    let wanted = ByteString(bundle.as_bytes().to_vec());
    let encoded = serde_json::to_value(&wanted).unwrap_or(Value::Null);
    let mut ops = Vec::new();
    for (i, hook) in config.webhooks.iter().flatten().enumerate() {
        if hook.client_config.ca_bundle.as_ref() != Some(&wanted) {
            ops.push(
                json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": hook.name}),
            );
            ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
        }
    }
    ops
}

/// Keeps self-signed material fresh: every `every`, re-reads the Secret
/// (another replica may have renewed it), renews when due, reloads the
/// store and re-patches the caBundle (a reinstalled chart drops it).
pub async fn maintain_self_signed(
    issuer: SelfSigned,
    store: Arc<CertStore>,
    mut current: TlsMaterial,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if !pause(every, &mut stop).await {
            return;
        }
        match issuer.ensure(Some(&current), SystemTime::now()).await {
            Ok(material) => {
                if material != current {
                    match certified_key(&material.cert_pem, &material.key_pem) {
                        Ok(key) => {
                            store.set(key);
                            info!("serving the renewed webhook certificate");
                            current = material;
                        }
                        Err(err) => {
                            warn!(error = %err, "renewed webhook certificate unusable; keeping the old one")
                        }
                    }
                }
            }
            Err(err) => {
                // Patching with what may be a stale bundle could drop a CA
                // another replica just added; wait for a good read.
                warn!(error = %err, "cannot check the webhook certificate; retrying later");
                continue;
            }
        }
        if let Err(err) = issuer.patch_ca_bundle(&current.ca_bundle_pem).await {
            warn!(error = %err, "cannot patch the webhook caBundle; retrying later");
        }
    }
}

/// Sleeps `every`; false when `stop` came first.
async fn pause(every: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(every) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Reads `tls.crt` and `tls.key` from `dir`.
pub fn read_files(dir: &Path) -> Result<(String, String), CertError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CertError::Files { path, source })
    };
    Ok((read(CERT_KEY)?, read(KEY_KEY)?))
}

/// Reloads the certificate from `dir` whenever the files' contents change
/// (cert-manager renews them in place through the Secret volume).
pub async fn watch_files(
    dir: PathBuf,
    store: Arc<CertStore>,
    mut loaded: (String, String),
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if !pause(every, &mut stop).await {
            return;
        }
        let files = match read_files(&dir) {
            Ok(files) => files,
            Err(err) => {
                warn!(error = %err, "keeping the current webhook certificate");
                continue;
            }
        };
        if files == loaded {
            continue;
        }
        // Kubelet swaps both files at once (a symlink flip), but a reader
        // may still catch a mismatched pair; the next round fixes that.
        match certified_key(&files.0, &files.1) {
            Ok(key) => {
                store.set(key);
                info!(dir = %dir.display(), "reloaded the webhook certificate");
                loaded = files;
            }
            Err(err) => {
                warn!(error = %err, "new webhook certificate files unusable; keeping the old one")
            }
        }
    }
}

#[cfg(test)]
mod tests;
