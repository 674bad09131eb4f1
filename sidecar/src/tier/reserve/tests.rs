#[test]
fn credentials_come_from_the_environment_and_configured_options_win() {
    let s3 = url::Url::parse("s3://bucket/prefix").unwrap();
    let configured = [("aws_region".to_string(), "eu-west-1".to_string())]
        .into_iter()
        .collect();
    let environment = [
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_PAGER", ""),
        ("GOOGLE_SERVICE_ACCOUNT", "not for s3"),
        ("HOME", "/root"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let options = store_options(&s3, &configured, environment.clone().into_iter());
    assert_eq!(
        options,
        [
            ("aws_access_key_id", "id"),
            ("aws_region", "us-east-1"),
            ("aws_region", "eu-west-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
        "the provider's options from the environment, then the configured ones (applied last, so they win)"
    );
    let file = url::Url::parse("file:///var/cache/llm").unwrap();
    assert!(store_options(&file, &Default::default(), environment.into_iter()).is_empty());
}

use http::{HeaderMap, HeaderValue};
use object_store::PutPayload;

use super::*;

fn entry(ttl: Duration) -> Arc<CachedResponse> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    Arc::new(CachedResponse::new(
        &headers,
        br#"{"usage":{"input_tokens":7,"output_tokens":9}}"#,
        ttl,
    ))
}

fn settings(url: &str) -> ReserveConfig {
    ReserveConfig {
        url: url.into(),
        min_ttl: Duration::from_secs(1),
        ..ReserveConfig::default()
    }
}

async fn written(reserve: &ReserveTier, metrics: &Metrics, n: u64) {
    for _ in 0..200 {
        if metrics.reserve.writes.get() >= n && reserve.flush(Duration::from_secs(1)).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("reserve write did not complete");
}

#[tokio::test]
async fn round_trip_in_memory_store() {
    let metrics = Arc::new(Metrics::new());
    let reserve = ReserveTier::open(&settings("memory://"), Arc::clone(&metrics)).unwrap();
    let key = CacheKey([3; 32]);
    let stored = entry(Duration::from_secs(60));
    reserve.admit(key, &stored);
    written(&reserve, &metrics, 1).await;
    let found = reserve.lookup(&key).await.expect("reserve hit");
    assert_eq!(found.body(), stored.body());
    assert_eq!(found.headers(), stored.headers());
    assert_eq!(found.usage, stored.usage);
    // The TTL still runs from the original creation.
    assert!(found.ttl.abs_diff(Duration::from_secs(60)) < Duration::from_millis(50));
    let drift = stored
        .created
        .duration_since(found.created)
        .unwrap_or_default();
    assert!(
        drift < Duration::from_millis(1),
        "created is kept (to the millisecond)"
    );
    assert_eq!(metrics.reserve.reads.get(), 1);
    assert_eq!(metrics.reserve.input_tokens_saved.get(), 7);
    assert!(reserve.lookup(&CacheKey([4; 32])).await.is_none());
}

#[tokio::test]
async fn admission_and_expiry() {
    let metrics = Arc::new(Metrics::new());
    let reserve = ReserveTier::open(&settings("memory://"), Arc::clone(&metrics)).unwrap();
    reserve.admit(CacheKey([5; 32]), &entry(Duration::from_millis(500)));
    assert_eq!(
        metrics.reserve.not_admitted.get(),
        1,
        "TTL below min_ttl stays out"
    );

    let key = CacheKey([6; 32]);
    reserve.admit(key, &entry(Duration::from_millis(1100)));
    written(&reserve, &metrics, 1).await;
    assert!(reserve.lookup(&key).await.is_some());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        reserve.lookup(&key).await.is_none(),
        "expired entries are never served"
    );
}

#[tokio::test]
async fn corrupt_metadata_is_a_miss_and_is_removed() {
    let metrics = Arc::new(Metrics::new());
    let reserve = ReserveTier::open(&settings("memory://"), Arc::clone(&metrics)).unwrap();
    let key = CacheKey([7; 32]);
    reserve.admit(key, &entry(Duration::from_secs(60)));
    written(&reserve, &metrics, 1).await;
    let (meta_path, _) = reserve.inner.paths(&key);
    reserve
        .inner
        .store
        .put(&meta_path, PutPayload::from_static(b"{not json"))
        .await
        .unwrap();
    assert!(reserve.lookup(&key).await.is_none());
    reserve.flush(Duration::from_secs(2)).await;
    assert!(matches!(
        reserve.inner.store.head(&meta_path).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

/// An answer whose body reports `tokens` in its usage, padded so that
/// every such body has the same length.
fn answer(tokens: u64) -> Arc<CachedResponse> {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let digits = tokens.to_string();
    let pad = "x".repeat(12 - digits.len());
    let body =
        format!(r#"{{"usage":{{"input_tokens":{digits},"output_tokens":1}},"pad":"{pad}"}}"#);
    Arc::new(CachedResponse::new(
        &headers,
        body.as_bytes(),
        Duration::from_secs(60),
    ))
}

#[test]
fn answers_report_their_tokens_and_have_one_length() {
    assert_eq!(answer(7).usage.input, 7);
    assert_eq!(answer(40).usage.input, 40);
    assert_eq!(answer(7).body_len(), answer(40).body_len());
}

/// Whether a restored entry's metadata (usage) belongs to its body.
fn consistent(found: &CachedResponse) -> bool {
    let reported = crate::entry::CachedResponse::new(&HeaderMap::new(), &found.body(), found.ttl);
    reported.usage == found.usage
}

#[tokio::test]
async fn a_body_that_does_not_match_its_metadata_is_a_counted_miss() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut config = settings(&format!("file://{}", dir.path().display()));
    config.write_timeout = Duration::from_millis(100);
    let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
    let key = CacheKey([8; 32]);
    reserve.admit(key, &answer(1));
    written(&reserve, &metrics, 1).await;
    // Same length, other content: only a digest tells them apart.
    let (meta_path, body_path) = reserve.inner.paths(&key);
    reserve
        .inner
        .store
        .put(&body_path, PutPayload::from(answer(2).body()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        reserve.lookup(&key).await.is_none(),
        "a body that is not the one its metadata describes was served"
    );
    assert_eq!(metrics.reserve.mismatches.get(), 1);
    reserve.flush(Duration::from_secs(2)).await;
    assert!(matches!(
        reserve.inner.store.head(&meta_path).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

/// A read computes an extension, a refresh lands, then the extension
/// is written: it must not put the old metadata over the new body.
async fn stale_extension_never_overwrites_a_refresh(url: &str) {
    let metrics = Arc::new(Metrics::new());
    let reserve = ReserveTier::open(&settings(url), Arc::clone(&metrics)).unwrap();
    let key = CacheKey([9; 32]);
    reserve.admit(key, &answer(1));
    written(&reserve, &metrics, 1).await;
    let (meta_path, _) = reserve.inner.paths(&key);
    let read = reserve.inner.store.get(&meta_path).await.unwrap();
    let version = object_store::UpdateVersion {
        e_tag: read.meta.e_tag.clone(),
        version: read.meta.version.clone(),
    };
    let mut old = Metadata::decode(&read.bytes().await.unwrap(), &key).unwrap();
    old.retention_until_ms += 1000;
    // Local files carry their modification time in the ETag; let it move.
    tokio::time::sleep(Duration::from_millis(20)).await;
    reserve.admit(key, &answer(2));
    written(&reserve, &metrics, 2).await;
    reserve
        .inner
        .run_job(Job::Extend {
            key,
            meta: Box::new(old),
            read: version,
        })
        .await;
    let found = reserve.lookup(&key).await.expect("the refresh is kept");
    assert_eq!(found.body(), answer(2).body(), "{url}");
    assert!(consistent(&found), "{url}: metadata of another body");
    assert_eq!(metrics.reserve.extensions.get(), 0, "{url}");
}

#[tokio::test]
async fn a_stale_extension_never_overwrites_a_refresh() {
    stale_extension_never_overwrites_a_refresh("memory://").await;
    let dir = tempfile::tempdir().unwrap();
    stale_extension_never_overwrites_a_refresh(&format!("file://{}", dir.path().display())).await;
}

#[tokio::test]
async fn concurrent_refreshes_and_extensions_never_serve_mixed_entries() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut config = settings(&format!("file://{}", dir.path().display()));
    // Reads of an entry older than half its retention extend it.
    config.retention = Duration::from_secs(2);
    let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
    let key = CacheKey([10; 32]);
    reserve.admit(key, &answer(0));
    written(&reserve, &metrics, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let writer = {
        let reserve = reserve.clone();
        tokio::spawn(async move {
            for n in 1..=40 {
                reserve.admit(key, &answer(n));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut served = 0;
    for _ in 0..300 {
        if let Some(found) = reserve.lookup(&key).await {
            assert!(consistent(&found), "served a body with another's metadata");
            served += 1;
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    reserve.flush(Duration::from_secs(5)).await;
    let last = reserve
        .lookup(&key)
        .await
        .expect("the last refresh is kept");
    assert!(consistent(&last));
    assert!(served > 0);
}

#[tokio::test]
async fn sweep_removes_expired_and_counts_live() {
    let metrics = Arc::new(Metrics::new());
    let mut config = settings("memory://");
    config.sweep_batch = 3;
    let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
    for i in 0..4u8 {
        reserve.admit(CacheKey([10 + i; 32]), &entry(Duration::from_secs(60)));
    }
    reserve.admit(CacheKey([20; 32]), &entry(Duration::from_millis(1050)));
    written(&reserve, &metrics, 5).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut cursor = None;
    let mut census = (0, 0);
    // 10 objects, 3 per run: the census lands when a run reaches the end.
    for _ in 0..4 {
        cursor = reserve.inner.sweep(cursor, &mut census).await;
    }
    assert!(cursor.is_none());
    assert_eq!(reserve.census().entries, 4);
    assert_eq!(metrics.reserve.expired.get(), 1);
}

#[tokio::test]
async fn sweep_removes_bodies_whose_metadata_never_arrived() {
    let metrics = Arc::new(Metrics::new());
    let mut config = settings("memory://");
    config.write_timeout = Duration::from_millis(10);
    let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
    let key = CacheKey([30; 32]);
    let (_, body_path) = reserve.inner.paths(&key);
    reserve
        .inner
        .store
        .put(&body_path, PutPayload::from_static(b"{}"))
        .await
        .unwrap();
    let kept = CacheKey([31; 32]);
    reserve.admit(kept, &entry(Duration::from_secs(60)));
    written(&reserve, &metrics, 1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    reserve.inner.sweep(None, &mut (0, 0)).await;
    assert!(matches!(
        reserve.inner.store.head(&body_path).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(
        reserve.lookup(&kept).await.is_some(),
        "complete entries stay"
    );
}
