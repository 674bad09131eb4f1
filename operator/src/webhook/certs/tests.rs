use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn names() -> Vec<String> {
    dns_names(
        Some("op-webhook"),
        "ops",
        &["localhost".into(), "127.0.0.1".into()],
    )
}

#[test]
fn names_cover_every_way_the_service_is_addressed() {
    assert_eq!(
        names(),
        [
            "op-webhook.ops.svc",
            "op-webhook.ops.svc.cluster.local",
            "op-webhook.ops",
            "op-webhook",
            "localhost",
            "127.0.0.1"
        ]
    );
    assert_eq!(
        dns_names(None, "ops", &[" a ".into(), "".into(), "a".into()]),
        ["a"]
    );
}

#[test]
fn the_generated_ca_verifies_the_serving_cert_for_every_name() {
    let now = SystemTime::now();
    let material = issue(&names(), None, now).unwrap();
    verify(&material, &names(), now).unwrap();
    // Names it was not issued for are refused, as the apiserver would.
    let err = verify(&material, &["other.ops.svc".to_string()], now).unwrap_err();
    assert!(err.contains("other.ops.svc"), "{err}");
    // Another CA does not verify it.
    let other = issue(&names(), None, now).unwrap();
    let mixed = TlsMaterial {
        ca_bundle_pem: other.ca_bundle_pem.clone(),
        ..material.clone()
    };
    assert!(verify(&mixed, &names(), now).is_err());
}

#[test]
fn renewal_is_due_within_30_days_of_expiry() {
    let issued = SystemTime::now();
    let material = issue(&names(), None, issued).unwrap();
    assert_eq!(renewal_reason(&material, &names(), issued), None);
    assert_eq!(
        renewal_reason(&material, &names(), issued + LIFETIME - RENEW_BEFORE - DAY),
        None
    );
    let due = renewal_reason(&material, &names(), issued + LIFETIME - RENEW_BEFORE + DAY);
    assert!(due.is_some_and(|r| r.contains("30 days")));
    // A name added later (e.g. --webhook-extra-sans) also triggers renewal.
    let mut more = names();
    more.push("webhook.example".into());
    assert!(renewal_reason(&material, &more, issued).is_some());
}

#[test]
fn renewal_keeps_the_previous_ca_trusted() {
    let now = SystemTime::now();
    let old = issue(&names(), None, now).unwrap();
    let new = issue(&names(), Some(&old), now).unwrap();
    assert_ne!(new.cert_pem, old.cert_pem);
    // A replica still serving the old certificate is trusted by the new bundle.
    let stale_replica = TlsMaterial {
        ca_bundle_pem: new.ca_bundle_pem.clone(),
        ..old.clone()
    };
    verify(&stale_replica, &names(), now).unwrap();
    verify(&new, &names(), now).unwrap();
    // Only one generation back is kept.
    let newer = issue(&names(), Some(&new), now).unwrap();
    assert_eq!(newer.ca_bundle_pem.matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn the_secret_round_trips() {
    let material = issue(&names(), None, SystemTime::now()).unwrap();
    let secret = to_secret("op-webhook-tls", "ops", &material);
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("ops"));
    // Through JSON, as the apiserver stores and returns it.
    let back: Secret = serde_json::from_value(serde_json::to_value(&secret).unwrap()).unwrap();
    assert_eq!(from_secret(&back).unwrap(), material);

    let mut partial = back.clone();
    partial.data.as_mut().unwrap().remove(KEY_KEY);
    assert_eq!(
        from_secret(&partial).unwrap_err(),
        "the Secret has no tls.key"
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let a = issue(&names(), None, SystemTime::now()).unwrap();
    let b = issue(&names(), None, SystemTime::now()).unwrap();
    assert!(certified_key(&a.cert_pem, &a.key_pem).is_ok());
    assert!(certified_key(&a.cert_pem, &b.key_pem).is_err());
    let err = certified_key("nonsense", &a.key_pem)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls.crt"), "{err}");
}

#[test]
fn the_ca_bundle_patch_touches_only_webhooks_lacking_it() {
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "op"},
        "webhooks": [
            {"name": "a.relaycache.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
             "clientConfig": {"caBundle": "b2xk"}},
            {"name": "b.relaycache.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
             "clientConfig": {"caBundle": "bmV3"}}
        ]
    }))
    .unwrap();
    // "bmV3" is base64 of "new".
    let ops = ca_bundle_patch(&config, "new");
    assert_eq!(
        ops,
        [
            json!({"op": "test", "path": "/webhooks/0/name", "value": "a.relaycache.io"}),
            json!({"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "bmV3"}),
        ]
    );
    let mut doc = serde_json::to_value(&config).unwrap();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    let patched: MutatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
    assert!(ca_bundle_patch(&patched, "new").is_empty());
}

#[test]
fn the_store_serves_what_was_set_last() {
    let store = CertStore::default();
    assert!(store.get().is_none());
    let a = issue(&names(), None, SystemTime::now()).unwrap();
    let b = issue(&names(), None, SystemTime::now()).unwrap();
    store.set(certified_key(&a.cert_pem, &a.key_pem).unwrap());
    store.set(certified_key(&b.cert_pem, &b.key_pem).unwrap());
    let served = store.get().unwrap();
    assert_eq!(served.cert, certs(&b.cert_pem, "b").unwrap());
}

#[test]
fn files_mode_reads_both_files_or_names_the_missing_one() {
    let dir = std::env::temp_dir().join(format!("rc-webhook-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = read_files(&dir).unwrap_err().to_string();
    assert!(
        err.contains("tls.crt") && err.contains("--webhook-cert-dir"),
        "{err}"
    );
    let material = issue(&names(), None, SystemTime::now()).unwrap();
    std::fs::write(dir.join(CERT_KEY), &material.cert_pem).unwrap();
    std::fs::write(dir.join(KEY_KEY), &material.key_pem).unwrap();
    let (cert, key) = read_files(&dir).unwrap();
    assert!(certified_key(&cert, &key).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}
