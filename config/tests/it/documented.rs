//! Every key of the default configuration (what `relaycache config init`
//! prints) is documented in docs/configuration.md.

use std::collections::BTreeSet;
use std::path::Path;

use relaycache_config::DEFAULT_CONFIG_YAML;
use serde_yaml_ng::Value;

/// Collects the key path of every leaf under `value`: `server.listen`,
/// `cache.ha.tls.cert_file`, `upstreams[].name`. A list of mappings is
/// walked item by item under `[]`; a list of plain values, an empty list and
/// an empty mapping are leaves of their own (`cache.routes`,
/// `cache.reserve.options`).
fn key_paths(prefix: &str, value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Mapping(map) if !map.is_empty() => {
            for (key, child) in map {
                let key = key
                    .as_str()
                    .unwrap_or_else(|| panic!("non-string key {key:?} under {prefix:?}"));
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                key_paths(&path, child, out);
            }
        }
        Value::Sequence(items) if items.iter().any(Value::is_mapping) => {
            for item in items {
                key_paths(&format!("{prefix}[]"), item, out);
            }
        }
        Value::Tagged(tagged) => key_paths(prefix, &tagged.value, out),
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

fn default_key_paths() -> BTreeSet<String> {
    let document: Value =
        serde_yaml_ng::from_str(DEFAULT_CONFIG_YAML).expect("the embedded default is YAML");
    let mut paths = BTreeSet::new();
    key_paths("", &document, &mut paths);
    paths
}

#[test]
fn the_walk_finds_nested_list_and_map_keys() {
    let paths = default_key_paths();
    for expected in [
        "server.listen",
        "upstreams[].name",
        "upstreams[].paths",
        "cache.routes",
        "cache.ha.replica_count",
        "cache.ha.tls.cert_file",
        "cache.reserve.options",
        "log.format",
    ] {
        assert!(
            paths.contains(expected),
            "the walk of the default config missed {expected}; it found {paths:?}"
        );
    }
    assert!(
        !paths.contains("cache") && !paths.contains("cache.ha") && !paths.contains("upstreams"),
        "sections are not leaves: {paths:?}"
    );
}

#[test]
fn every_default_key_is_in_docs_configuration_md() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", doc_path.display()));
    let missing: Vec<String> = default_key_paths()
        .into_iter()
        .filter(|path| !doc.contains(&format!("`{path}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} key(s) that `relaycache config init` prints are not documented: {}.\n\
         Document each in docs/configuration.md as a table row with the dotted \
         key path in backticks (e.g. `cache.ha.replica_count`), its default and \
         its meaning.",
        missing.len(),
        missing.join(", ")
    );
}
