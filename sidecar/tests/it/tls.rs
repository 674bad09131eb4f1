//! TLS to the upstream: a private CA given in `ca_file` is trusted (and h2
//! is negotiated by ALPN); without it the certificate is refused with a 502
//! that says why.

use crate::common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA certificate (PEM) and a `localhost` server certificate and key it signed.
fn private_pki() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    (ca_cert.pem(), server_cert.pem(), server_key.serialize_pem())
}

#[tokio::test]
async fn private_ca_upstream_over_tls_with_h2() {
    let (ca, cert, key) = private_pki();
    let upstream = MockUpstream::start_tls("127.0.0.1:0", MockOptions::default(), &cert, &key)
        .await
        .unwrap();
    let url = format!("https://localhost:{}", upstream.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();

    let mut trusting = config_for(&url);
    trusting.upstreams[0].ca_file = ca_file.display().to_string();
    let relay = Relay::start(&trusting);
    let first = post_messages(&relay, "k", &question("tls"), &[]).await;
    assert_eq!((first.status, first.cache_status()), (200, "miss"));
    assert_eq!(first.header("x-mock-saw-version"), "h2", "ALPN picked h2");
    assert_eq!(
        post_messages(&relay, "k", &question("tls"), &[])
            .await
            .cache_status(),
        "hit"
    );

    let untrusting = Relay::start(&config_for(&url));
    let refused = post_messages(&untrusting, "k", &question("tls"), &[]).await;
    assert_eq!(refused.status, 502);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert_eq!(
        upstream.calls(),
        1,
        "nothing was sent over the untrusted connection"
    );
}
