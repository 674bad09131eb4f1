//! The webhook over real HTTPS: a self-signed CA and serving certificate from
//! `certs`, the server on 127.0.0.1:0, and a rustls client that trusts only
//! that CA (as the apiserver trusts only the caBundle). The RelayCache lookup
//! is an in-memory stand-in for the apiserver.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use relaycache_operator::crd::RelayCache;
use relaycache_operator::webhook::certs::{self, CertStore, TlsMaterial};
use relaycache_operator::webhook::inject::{Found, InjectSettings, NamespaceLabels};
use relaycache_operator::webhook::{server, Handler, Lookup, LookupFuture, NamespaceFuture};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

struct OneRelayCache(RelayCache);

impl Lookup for OneRelayCache {
    fn get(&self, namespace: &str, name: &str) -> LookupFuture {
        let found = if self.0.metadata.namespace.as_deref() == Some(namespace)
            && self.0.metadata.name.as_deref() == Some(name)
        {
            Found::Present(Box::new(self.0.clone()))
        } else {
            Found::Missing
        };
        Box::pin(async move { found })
    }

    fn namespace_labels(&self, _name: &str) -> NamespaceFuture {
        // Only a RelayCache with a namespace selector asks; this one has none.
        Box::pin(async { NamespaceLabels::Failed("not served by this test".into()) })
    }
}

struct Running {
    addr: std::net::SocketAddr,
    ca: TlsMaterial,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(names: &[&str]) -> Running {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let material = certs::issue(&names, None, SystemTime::now()).unwrap();
    let store = Arc::new(CertStore::default());
    store.set(certs::certified_key(&material.cert_pem, &material.key_pem).unwrap());
    let rc: RelayCache = serde_json::from_value(json!({
        "apiVersion": "relaycache.io/v1alpha1", "kind": "RelayCache",
        "metadata": {"name": "web", "namespace": "apps", "uid": "u1"},
        "spec": {}
    }))
    .unwrap();
    let handler = Arc::new(Handler {
        settings: InjectSettings {
            default_image: "relaycache/relaycache:0.1.0".into(),
            native_sidecars: true,
        },
        lookup: Arc::new(OneRelayCache(rc)),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tls = server::tls_config(store).unwrap();
    let task = tokio::spawn(server::serve(listener, tls, handler, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        ca: material,
        stop,
        task,
    }
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn call(
    running: &Running,
    ca_pem: &str,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String> {
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let tls = connector(ca_pem)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    Ok((
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    ))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/admission/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[tokio::test]
async fn a_review_over_https_gets_a_patch() {
    let running = start(&["localhost"]).await;
    let (status, body) = call(
        &running,
        &running.ca.ca_bundle_pem,
        Method::POST,
        "/mutate-pods",
        fixture("inject-deployment-pod.json"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let review: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"],
        "9b1c1f0e-0001-4d6a-8d36-5a4a0c1e0001"
    );
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    running.stop.send(()).unwrap();
    running.task.await.unwrap();
}

#[tokio::test]
async fn malformed_bodies_wrong_paths_and_methods_get_clear_errors() {
    let running = start(&["localhost"]).await;
    let ca = running.ca.ca_bundle_pem.clone();
    let (status, body) = call(
        &running,
        &ca,
        Method::POST,
        "/mutate-pods",
        fixture("malformed-review.json"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not an admission.k8s.io/v1 AdmissionReview"));

    let (status, _) = call(&running, &ca, Method::GET, "/mutate-pods", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = call(&running, &ca, Method::POST, "/validate", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("/mutate-pods"));

    let (status, _) = call(
        &running,
        &ca,
        Method::POST,
        "/mutate-pods",
        vec![b' '; server::MAX_BODY_BYTES + 1],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    running.stop.send(()).unwrap();
    running.task.await.unwrap();
}

#[tokio::test]
async fn a_client_trusting_another_ca_refuses_the_server() {
    let running = start(&["localhost"]).await;
    let other = certs::issue(&["localhost".to_string()], None, SystemTime::now()).unwrap();
    let err = call(
        &running,
        &other.ca_bundle_pem,
        Method::POST,
        "/mutate-pods",
        Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    running.stop.send(()).unwrap();
    running.task.await.unwrap();
}
