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

/// A reserve in a new temporary directory, with its metrics.
fn file_reserve() -> (tempfile::TempDir, Arc<Metrics>, ReserveTier) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let reserve = ReserveTier::open(
        &settings(&format!("file://{}", dir.path().display())),
        Arc::clone(&metrics),
    )
    .unwrap();
    (dir, metrics, reserve)
}

#[tokio::test]
async fn a_compressed_entry_is_one_smaller_object_and_comes_back_as_stored() {
    let (dir, metrics, reserve) = file_reserve();
    let prose = "an answer in words, repeated as answers are. ".repeat(100);
    let body = serde_json::to_vec(&serde_json::json!({"content": [{"text": prose}]})).unwrap();
    let compression = crate::compression::Compression::from_config(&Default::default()).unwrap();
    let stored = Arc::new(
        CachedResponse::new(&HeaderMap::new(), &body, Duration::from_secs(60))
            .compressed(Some(&compression)),
    );
    let key = CacheKey([5; 32]);
    reserve.admit(key, &stored);
    written(&reserve, &metrics, 1).await;
    let objects: Vec<_> = walkdir(dir.path());
    assert_eq!(objects.len(), 1, "{objects:?}");
    let size = std::fs::metadata(&objects[0]).unwrap().len() as usize;
    assert!(
        size < body.len() / 4,
        "object of {size} bytes for a {}-byte answer",
        body.len()
    );
    let found = reserve.lookup(&key).await.expect("reserve hit");
    assert_eq!(found.stored_body(), stored.stored_body(), "kept as stored");
    assert_eq!(found.body(), body);
    let received = reserve.lookup_received(&key).await.expect("reserve hit");
    assert_eq!(received.entry.stored_body(), stored.stored_body());
    assert_eq!(
        received.decoded.as_deref(),
        Some(&body[..]),
        "the body decoded to check the frame comes along"
    );
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walkdir(&path));
        } else {
            files.push(path);
        }
    }
    files
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
    let (entry_path, _) = reserve.inner.paths(&key);
    let mut damaged = 9u32.to_le_bytes().to_vec();
    damaged.extend_from_slice(b"{not json and a body");
    reserve
        .inner
        .store
        .put(&entry_path, PutPayload::from(damaged))
        .await
        .unwrap();
    assert!(reserve.lookup(&key).await.is_none());
    reserve.flush(Duration::from_secs(2)).await;
    assert!(matches!(
        reserve.inner.store.head(&entry_path).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

/// One object per entry: an answer costs one store write, and a read one
/// store read, whatever the store.
#[tokio::test]
async fn an_entry_is_one_object() {
    let (dir, metrics, reserve) = file_reserve();
    for i in 0..5u8 {
        reserve.admit(CacheKey([40 + i; 32]), &answer(u64::from(i)));
    }
    written(&reserve, &metrics, 5).await;
    let under = object_store::path::Path::from(dir.path().to_str().unwrap());
    let listed: Vec<_> = reserve
        .inner
        .store
        .list(Some(&under))
        .map(|o| o.unwrap().location.to_string())
        .collect()
        .await;
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|p| p.contains("/v2/") && p.ends_with(".entry")),
        "{listed:?}"
    );
    for i in 0..5u8 {
        let found = reserve
            .lookup(&CacheKey([40 + i; 32]))
            .await
            .expect("a hit");
        assert_eq!(found.body(), answer(u64::from(i)).body());
    }
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
    let (entry_path, _) = reserve.inner.paths(&key);
    let object = reserve
        .inner
        .get_if_present(&entry_path)
        .await
        .unwrap()
        .unwrap();
    let mut swapped = object.to_vec();
    let body = answer(2).body();
    let at = swapped.len() - body.len();
    swapped[at..].copy_from_slice(&body);
    reserve
        .inner
        .store
        .put(&entry_path, PutPayload::from(swapped))
        .await
        .unwrap();
    assert!(
        reserve.lookup(&key).await.is_none(),
        "a body that is not the one its metadata describes was served"
    );
    assert_eq!(metrics.reserve.mismatches.get(), 1);
    reserve.flush(Duration::from_secs(2)).await;
    assert!(matches!(
        reserve.inner.store.head(&entry_path).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

/// A read in the second half of the retention extends it with a marker:
/// the entry object is not written again, and the entry outlives its own
/// retention. A late marker over a refresh changes nothing in it.
async fn extension_writes_a_marker_not_the_body(url: &str) {
    let metrics = Arc::new(Metrics::new());
    let mut config = settings(url);
    config.retention = Duration::from_millis(1500);
    let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
    let key = CacheKey([9; 32]);
    reserve.admit(key, &answer(1));
    written(&reserve, &metrics, 1).await;
    let (entry_path, keep_path) = reserve.inner.paths(&key);
    let before = reserve.inner.store.head(&entry_path).await.unwrap();
    // Past half of the retention: the read extends.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(reserve.lookup(&key).await.is_some(), "{url}");
    reserve.flush(Duration::from_secs(2)).await;
    assert_eq!(metrics.reserve.extensions.get(), 1, "{url}");
    let after = reserve.inner.store.head(&entry_path).await.unwrap();
    assert_eq!(
        (before.size, before.last_modified),
        (after.size, after.last_modified),
        "{url}: the entry object was written again"
    );
    assert!(reserve.inner.extended_until(&keep_path).await > 0, "{url}");
    // Past the entry's own retention, the marker keeps it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let found = reserve.lookup(&key).await.expect("kept by its marker");
    assert_eq!(found.body(), answer(1).body(), "{url}");
    // A refresh, then a late marker: the refresh is what is served.
    reserve.admit(key, &answer(2));
    written(&reserve, &metrics, 2).await;
    reserve
        .inner
        .run_job(Job::Extend {
            key,
            until: metadata::Keep {
                retention_until_ms: 1,
            },
        })
        .await;
    let found = reserve.lookup(&key).await.expect("the refresh is kept");
    assert_eq!(found.body(), answer(2).body(), "{url}");
    assert!(consistent(&found), "{url}: metadata of another body");
}

#[tokio::test]
async fn an_extension_writes_a_marker_not_the_body() {
    extension_writes_a_marker_not_the_body("memory://").await;
    let dir = tempfile::tempdir().unwrap();
    extension_writes_a_marker_not_the_body(&format!("file://{}", dir.path().display())).await;
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
    // 5 objects, 3 per run: the census lands when a run reaches the end.
    for _ in 0..4 {
        cursor = reserve.inner.sweep(cursor, &mut census).await;
    }
    assert!(cursor.is_none());
    assert_eq!(reserve.census().entries, 4);
    assert_eq!(metrics.reserve.expired.get(), 1);
}

#[tokio::test]
async fn sweep_removes_markers_without_entries_and_expired_legacy_objects() {
    let metrics = Arc::new(Metrics::new());
    let mut config = settings("memory://");
    config.write_timeout = Duration::from_millis(10);
    config.retention = Duration::from_millis(50);
    let reserve = ReserveTier::open(&config, Arc::clone(&metrics)).unwrap();
    let key = CacheKey([30; 32]);
    let (_, keep_path) = reserve.inner.paths(&key);
    reserve
        .inner
        .store
        .put(
            &keep_path,
            PutPayload::from_static(b"{\"retention_until_ms\":1}"),
        )
        .await
        .unwrap();
    let legacy = reserve.inner.legacy_root.child("1e").child("1e.meta");
    reserve
        .inner
        .store
        .put(&legacy, PutPayload::from_static(b"{}"))
        .await
        .unwrap();
    let kept = CacheKey([31; 32]);
    reserve.admit(kept, &entry(Duration::from_secs(60)));
    // retention 50 ms: this entry goes too, by its own metadata.
    written(&reserve, &metrics, 1).await;
    let (expired_entry, _) = reserve.inner.paths(&kept);
    tokio::time::sleep(Duration::from_millis(60)).await;
    reserve.inner.sweep(None, &mut (0, 0)).await;
    for gone in [&keep_path, &legacy, &expired_entry] {
        assert!(
            matches!(
                reserve.inner.store.head(gone).await,
                Err(object_store::Error::NotFound { .. })
            ),
            "{gone} is still there"
        );
    }
    assert_eq!(metrics.reserve.expired.get(), 1, "past its retention");
}

/// Runs `test` on a runtime whose only blocking thread is taken by
/// something else for as long as `test` runs.
fn with_the_blocking_pool_taken<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (release, held) = std::sync::mpsc::channel::<()>();
    runtime.block_on(async move {
        let (taken, is_taken) = tokio::sync::oneshot::channel();
        let busy = tokio::task::spawn_blocking(move || {
            let _ = taken.send(());
            let _ = held.recv();
        });
        is_taken.await.unwrap();
        test().await;
        release.send(()).unwrap();
        busy.await.unwrap();
    });
}

/// A local reserve's writes do their file work on the reserve's own
/// thread: with the runtime's only blocking thread taken by something
/// else, entries still reach their files. (Handing each write to the
/// blocking pool cost as much CPU as the file system's own work on a
/// miss, and here it would wait forever.)
#[test]
fn a_local_reserve_writes_without_the_blocking_pool() {
    with_the_blocking_pool_taken(|| async {
        let (dir, metrics, reserve) = file_reserve();
        for n in 0..3u8 {
            reserve.admit(CacheKey([n; 32]), &entry(Duration::from_secs(60)));
        }
        let flushed = reserve.flush(Duration::from_secs(5)).await;
        let in_flight = metrics.reserve.writes_in_flight.get();
        assert!(flushed, "{in_flight} writes still waiting after 5 s");
        assert_eq!(metrics.reserve.writes.get(), 3);
        let objects = walkdir(dir.path());
        assert_eq!(objects.len(), 3, "{objects:?}");
    });
}

/// A key a local reserve does not hold is a miss at once, without a
/// blocking-pool handoff (every miss of the proxy asks the reserve), and
/// is not counted as a failure; a key it holds is still found.
#[test]
fn a_local_reserve_answers_a_miss_without_the_blocking_pool() {
    let mut opened = None;
    with_the_blocking_pool_taken(|| async {
        let (dir, metrics, reserve) = file_reserve();
        reserve.admit(CacheKey([1; 32]), &entry(Duration::from_secs(60)));
        written(&reserve, &metrics, 1).await;
        let absent =
            tokio::time::timeout(Duration::from_secs(5), reserve.lookup(&CacheKey([2; 32])))
                .await
                .expect("a miss must not wait for the blocking pool");
        assert!(absent.is_none());
        assert_eq!(metrics.reserve.failures.get(), 0);
        opened = Some((dir, reserve));
    });
    let (dir, reserve) = opened.unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let found = runtime.block_on(reserve.lookup(&CacheKey([1; 32])));
    assert!(found.is_some(), "the entry in {:?} is found", dir.path());
}
