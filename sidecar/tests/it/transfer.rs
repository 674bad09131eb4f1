//! Export and import: `relaycache cache export | import` between real
//! processes through their admin endpoints, whole, cut off, of another
//! format, and into a cache that holds newer versions.

use std::process::{Command, Output};

use futures::StreamExt;

use crate::common::*;

const TOKEN: &str = "transfer-token";

/// Entries of the round trip.
const ENTRIES: usize = 10_000;

fn relaycache(args: &[&str]) -> Output {
    relaycache_with_token(args, TOKEN)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn process(upstream: &MockUpstream) -> Relay {
    let mut config = config_for(&upstream.url());
    config.server.admin_token = TOKEN.into();
    Relay::start(&config)
}

fn asked(i: usize) -> String {
    serde_json::json!({"model": "claude-test", "max_tokens": 8,
        "messages": [{"role": "user", "content": format!("question {i}")}]})
    .to_string()
}

/// Small answers, so that ten thousand stay quick to make.
const SMALL: (&str, &str) = ("x-mock-answer-bytes", "300");

/// Asks questions `range` through `relay`, 32 at a time; their statuses.
async fn ask_all(
    relay: &Relay,
    range: std::ops::Range<usize>,
    extra: &[(&str, &str)],
) -> Vec<String> {
    futures::stream::iter(range)
        .map(|i| async move {
            let mut headers = vec![SMALL];
            headers.extend_from_slice(extra);
            post_messages(relay, "k", &asked(i), &headers)
                .await
                .cache_status()
                .to_string()
        })
        .buffered(32)
        .collect()
        .await
}

#[tokio::test]
async fn ten_thousand_entries_round_trip_between_two_processes() {
    let upstream = mock().await;
    let from = process(&upstream);
    let to = process(&upstream);
    let made = ask_all(&from, 0..ENTRIES, &[]).await;
    assert!(made.iter().all(|s| s == "miss"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.rcb");
    let file = file.to_str().unwrap();

    let exported = relaycache(&[
        "cache",
        "export",
        "-o",
        file,
        "--admin",
        &from.admin_url(""),
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    assert!(
        stderr(&exported).starts_with(&format!("exported {ENTRIES} entries")),
        "{}",
        stderr(&exported)
    );
    let imported = relaycache(&["cache", "import", file, "--admin", &to.admin_url("")]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    assert!(
        stderr(&imported).starts_with(&format!("imported {ENTRIES} of {ENTRIES} entries (0 kept")),
        "{}",
        stderr(&imported)
    );
    assert_eq!(to.stats().await["key_count"], ENTRIES as u64);
    let calls = upstream.calls();
    let answered = ask_all(&to, 0..ENTRIES, &[]).await;
    assert!(
        answered.iter().all(|s| s == "hit"),
        "every entry answers from the import"
    );
    assert_eq!(upstream.calls(), calls, "the upstream is not asked again");
    // The same answers: the one the first process stored.
    for i in [0, ENTRIES / 2, ENTRIES - 1] {
        let a = post_messages(&from, "k", &asked(i), &[SMALL]).await;
        let b = post_messages(&to, "k", &asked(i), &[SMALL]).await;
        assert_eq!(a.body, b.body, "entry {i}");
    }

    // A bundle cut off part way: whole records are kept and said so.
    let bytes = std::fs::read(file).unwrap();
    let cut = dir.path().join("cut.rcb");
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 5]).unwrap();
    let third = process(&upstream);
    let partial = relaycache(&[
        "cache",
        "import",
        cut.to_str().unwrap(),
        "--admin",
        &third.admin_url(""),
    ]);
    assert_eq!(partial.status.code(), Some(1), "{}", stderr(&partial));
    let said = stderr(&partial);
    assert!(said.contains("cut off at record"), "{said}");
    assert!(said.contains("every entry before it is kept"), "{said}");
    let kept = third.stats().await["key_count"].as_u64().unwrap();
    assert!(kept > 0 && kept < ENTRIES as u64, "{kept}");
    assert!(
        said.starts_with(&format!("imported {kept} of {kept} entries")),
        "{said}"
    );

    // Another format version: refused by name, nothing stored.
    let mut other = bytes.clone();
    other[8] = 9;
    let other_file = dir.path().join("v9.rcb");
    std::fs::write(&other_file, &other).unwrap();
    let fourth = process(&upstream);
    let refused = relaycache(&[
        "cache",
        "import",
        other_file.to_str().unwrap(),
        "--admin",
        &fourth.admin_url(""),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("bundle format 9 is not supported"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(fourth.stats().await["key_count"], 0);
}

#[tokio::test]
async fn an_import_keeps_newer_versions_and_an_export_follows_its_filter() {
    let upstream = mock().await;
    let from = process(&upstream);
    let to = process(&upstream);
    let team = [("x-relaycache-namespace", "team-a")];
    ask_all(&from, 0..20, &team).await;
    ask_all(&from, 20..30, &[]).await;
    // The importing process asks 0..5 itself, after the export's answers
    // were made: its own are newer.
    ask_all(&to, 0..5, &team).await;
    let own: Vec<bytes::Bytes> = futures::future::join_all((0..5).map(|i| {
        let to = &to;
        async move {
            post_messages(to, "k", &asked(i), &[SMALL, team[0]])
                .await
                .body
        }
    }))
    .await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team-a.rcb");
    let file = file.to_str().unwrap();
    let exported = relaycache(&[
        "cache",
        "export",
        "-o",
        file,
        "--namespace",
        "team-a",
        "--admin",
        &from.admin_url(""),
    ]);
    assert!(
        stderr(&exported).starts_with("exported 20 entries"),
        "{}",
        stderr(&exported)
    );
    let imported = relaycache(&["cache", "import", file, "--admin", &to.admin_url("")]);
    assert!(
        stderr(&imported).starts_with("imported 15 of 20 entries (5 kept a newer version"),
        "{}",
        stderr(&imported)
    );
    for (i, body) in own.iter().enumerate() {
        let reply = post_messages(&to, "k", &asked(i), &[SMALL, team[0]]).await;
        assert_eq!(&reply.body, body, "entry {i}: its own newer answer stays");
    }
    assert_eq!(
        to.stats().await["key_count"],
        20,
        "10 not in the namespace stayed out"
    );

    let no_token = Command::new(env!("CARGO_BIN_EXE_relaycache"))
        .args(["cache", "export", "-o", "-", "--admin", &from.admin_url("")])
        .env_remove("RELAYCACHE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(no_token.status.code(), Some(1));
    assert!(stderr(&no_token).contains("401"), "{}", stderr(&no_token));
    assert!(
        no_token.stdout.is_empty(),
        "nothing is exported without the token"
    );
}

/// Three members with the admin token, and a client of theirs.
async fn cluster(upstream: &MockUpstream) -> (Vec<Relay>, Relay) {
    let (members, addresses) = members_with_admin_token(&upstream.url(), 3, TOKEN).await;
    let client = Relay::start(&client_config(&upstream.url(), &addresses, 2));
    client.wait_for_members(3).await;
    (members, client)
}

async fn copies(members: &[Relay]) -> u64 {
    let mut held = 0;
    for member in members {
        held += member.stats().await["key_count"].as_u64().unwrap_or(0);
    }
    held
}

/// One export at one member covers the whole cluster, each entry once,
/// although every member holds only the keys it owns; an import at one
/// member of another cluster lands each entry on its owners there.
#[tokio::test]
async fn ten_thousand_entries_round_trip_between_two_clusters_through_one_member_each() {
    const CLUSTER_ENTRIES: usize = ENTRIES;
    let upstream = mock().await;
    let (from, writer) = cluster(&upstream).await;
    let made = ask_all(&writer, 0..CLUSTER_ENTRIES, &[]).await;
    assert!(made.iter().all(|s| s == "miss"));
    let wanted = 2 * CLUSTER_ENTRIES as u64;
    // The client replicates after it answers; give it up to two minutes.
    for _ in 0..1200 {
        if copies(&from).await >= wanted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(copies(&from).await >= wanted, "two owners hold each entry");
    let own = from[0].stats().await["key_count"].as_u64().unwrap();
    assert!(own < CLUSTER_ENTRIES as u64, "member 0 holds {own}: all?");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.rcb");
    let file = file.to_str().unwrap();
    let exported = relaycache(&[
        "cache",
        "export",
        "-o",
        file,
        "--admin",
        &from[0].admin_url(""),
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    assert!(
        stderr(&exported).starts_with(&format!("exported {CLUSTER_ENTRIES} entries")),
        "{}",
        stderr(&exported)
    );

    let (to, reader) = cluster(&upstream).await;
    let imported = relaycache(&["cache", "import", file, "--admin", &to[1].admin_url("")]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    assert!(
        stderr(&imported).starts_with(&format!(
            "imported {CLUSTER_ENTRIES} of {CLUSTER_ENTRIES} entries (0 kept"
        )),
        "{}",
        stderr(&imported)
    );
    // Replicated to the owners (write_quorum 1 acknowledges before the
    // second copy lands): every replication finished.
    to[1]
        .wait_for_stats("the imported entries replicated", |s| {
            s["cluster"]["writes"].as_u64() >= Some(CLUSTER_ENTRIES as u64)
        })
        .await;
    assert!(copies(&to).await >= wanted, "{} copies", copies(&to).await);
    // A client of the second cluster, with nothing of its own, gets every
    // answer from it.
    let calls = upstream.calls();
    let answered = ask_all(&reader, 0..CLUSTER_ENTRIES, &[]).await;
    assert!(answered.iter().all(|s| s == "hit"));
    assert_eq!(upstream.calls(), calls, "the upstream is not asked again");
}
