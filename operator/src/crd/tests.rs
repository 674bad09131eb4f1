use super::*;
use serde_json::{json, Value};

fn sample() -> Value {
    json!({
        "apiVersion": "relaycache.io/v1alpha1",
        "kind": "RelayCache",
        "metadata": {"name": "rc", "namespace": "default"},
        "spec": serde_json::to_value(RelayCacheSpec::default_for_tests()).unwrap(),
    })
}

impl RelayCacheSpec {
    fn default_for_tests() -> Self {
        serde_json::from_value(json!({})).unwrap()
    }
}

/// The CRD's OpenAPI v3 schema as JSON.
fn openapi_schema() -> Value {
    let crd = RelayCache::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Runs the CRD's CEL rules client-side (kube's `cel` feature), the same
/// rules the apiserver enforces, and returns their messages.
fn cel_messages(object: &Value) -> Vec<String> {
    let schema = openapi_schema();
    match kube::core::cel::Validator::new().validate(&schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn with_spec(patch: Value) -> Value {
    let mut object = sample();
    merge(&mut object["spec"], patch);
    object
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

#[test]
fn empty_spec_gets_the_documented_defaults() {
    let spec = RelayCacheSpec::default_for_tests();
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.mode, ClusterMode::Ha);
    assert_eq!(spec.cache.ttl, "1h");
    assert_eq!(spec.cache.memory, Some(Quantity("100Mi".into())));
    assert_eq!(spec.cache.memory(), Quantity("100Mi".into()));
    assert_eq!(spec.cache.isolation, "credential");
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["cache"]["staleIfError"], "0s", "off");
    assert_eq!(spec.replication.replica_count, 2);
    assert_eq!(spec.replication.read_quorum, 1);
    assert_eq!(spec.replication.leave_timeout, "5s");
    assert_eq!(spec.replication.warmup_timeout, "2m");
    assert!(spec.reserve.is_none());
}

#[test]
fn crd_names_scope_and_subresources() {
    let crd = RelayCache::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("relaycaches.relaycache.io")
    );
    assert_eq!(crd.spec.group, GROUP);
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "RelayCache");
    assert_eq!(crd.spec.names.plural, "relaycaches");
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["rc".to_string(), "rcache".to_string()])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, VERSION);
    let sub = version.subresources.as_ref().unwrap();
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Mode", "Replicas", "Ready", "Age"]);
}

#[test]
fn crd_schema_is_structural_where_apiservers_are_strict() {
    // Quantities must be int-or-string, never a bare anyOf without the marker.
    let text = serde_json::to_string(&RelayCache::crd()).unwrap();
    assert!(text.contains("x-kubernetes-int-or-string"));
    assert!(!text.contains("\"$ref\""), "schema must be inlined");
    assert!(!text.contains("\"nullable\":false"));
}

#[test]
fn stale_if_error_is_a_bounded_string_defaulting_to_off() {
    let schema = openapi_schema();
    let cache = &schema["properties"]["spec"]["properties"]["cache"];
    let field = &cache["properties"]["staleIfError"];
    assert_eq!(field["type"], "string", "{cache}");
    assert_eq!(field["default"], "0s");
    assert_eq!(field["maxLength"], 64);
    assert_eq!(cache["default"]["staleIfError"], "0s");
}

#[test]
fn a_valid_spec_passes_every_rule() {
    assert_eq!(cel_messages(&sample()), Vec::<String>::new());
    let full = with_spec(json!({
        "replicas": 3,
        "upstreams": [
            {"name": "anthropic", "url": "https://api.anthropic.com", "paths": ["/v1/messages"]},
            {"name": "openai", "url": "https://api.openai.com"}
        ],
        "cache": {"isolation": "header:x-team", "staleIfError": "10m"},
        "replication": {"replicaCount": 3, "readQuorum": 2, "writeQuorum": 3, "memberCountQuorum": 3},
        "reserve": {"url": "s3://bucket/prefix"}
    }));
    assert_eq!(cel_messages(&full), Vec::<String>::new());
}

#[test]
fn the_example_passes_the_rules_and_renders() {
    let text = include_str!("../../../examples/relaycache.yaml");
    let object: Value = serde_yaml_ng::from_str(text).unwrap();
    assert_eq!(cel_messages(&object), Vec::<String>::new());
    let mut rc: RelayCache = serde_json::from_value(object).unwrap();
    rc.metadata.namespace = Some("default".into());
    let names = crate::resources::Names::of(&rc).unwrap();
    let rendered = crate::resources::configmap::render(&rc, &names).unwrap();
    assert_eq!(
        rendered.config.cache.stale_if_error,
        std::time::Duration::from_secs(600)
    );
}

#[test]
fn quorum_rules_reject_with_a_readable_message() {
    let cases = [
        (
            json!({"replication": {"replicaCount": 2, "readQuorum": 3}}),
            "replication.readQuorum must not exceed replication.replicaCount",
        ),
        (
            json!({"replication": {"replicaCount": 1, "writeQuorum": 2}}),
            "replication.writeQuorum must not exceed replication.replicaCount",
        ),
        (
            json!({"replicas": 2, "replication": {"memberCountQuorum": 3}}),
            "replication.memberCountQuorum must not exceed replicas",
        ),
    ];
    for (patch, expected) in cases {
        let messages = cel_messages(&with_spec(patch.clone()));
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "{patch}: expected {expected:?} in {messages:?}"
        );
    }
    // Scaling to zero stays possible whatever the quorum.
    let zero = with_spec(json!({"replicas": 0, "replication": {"memberCountQuorum": 3}}));
    assert_eq!(cel_messages(&zero), Vec::<String>::new());
}

#[test]
fn field_rules_reject_with_a_readable_message() {
    let cases = [
        (
            json!({"upstreams": [{"name": "a", "url": "ftp://x"}]}),
            "upstreams[].url must be an http:// or https:// URL",
        ),
        (
            json!({"upstreams": [{"name": "a", "url": "https://x", "paths": ["v1"]}]}),
            "upstreams[].paths must start with '/'",
        ),
        (
            json!({"upstreams": [{"name": "a", "url": "https://x"}, {"name": "a", "url": "https://y"}]}),
            "upstreams[].name must be unique",
        ),
        (
            json!({"cache": {"isolation": "everyone"}}),
            "cache.isolation must be credential, shared or header:<header-name>",
        ),
        (
            json!({"reserve": {"url": "ftp://bucket"}}),
            "reserve.url must start with file://",
        ),
    ];
    for (patch, expected) in cases {
        let messages = cel_messages(&with_spec(patch.clone()));
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "{patch}: expected {expected:?} in {messages:?}"
        );
    }
}

fn with_name(name: &str) -> Value {
    let mut object = sample();
    object["metadata"]["name"] = json!(name);
    object
}

#[test]
fn names_that_cannot_name_the_children_are_rejected() {
    let longest = "a".repeat(52);
    for good in ["rc", "web-1", longest.as_str()] {
        assert_eq!(
            cel_messages(&with_name(good)),
            Vec::<String>::new(),
            "{good}"
        );
    }
    for bad in ["1web", "web.cache", "web-"] {
        let messages = cel_messages(&with_name(bad));
        assert!(
            messages
                .iter()
                .any(|m| m.contains("metadata.name must be a DNS-1035 label")),
            "{bad}: {messages:?}"
        );
    }
    let too_long = "a".repeat(53);
    let messages = cel_messages(&with_name(&too_long));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("metadata.name must be at most 52 characters")),
        "{messages:?}"
    );
    // The operator's own check agrees with the CEL rules.
    for name in [
        "rc",
        "1web",
        "web.cache",
        "web-",
        longest.as_str(),
        too_long.as_str(),
    ] {
        assert_eq!(
            cel_messages(&with_name(name)).is_empty(),
            crate::resources::validate::check_name(name).is_none(),
            "{name}"
        );
    }
}

#[test]
fn file_reserves_need_an_absolute_path_in_cel_as_in_the_operator() {
    use crate::resources::validate::reserve_url_cases::{
        ACCEPTED, NOT_ABSOLUTE, TAKEN, UNKNOWN_SCHEME,
    };
    let every = ACCEPTED
        .into_iter()
        .chain(NOT_ABSOLUTE)
        .chain(TAKEN)
        .chain([UNKNOWN_SCHEME]);
    for url in every {
        let messages = cel_messages(&with_spec(json!({"reserve": {"url": url}})));
        let operator = crate::resources::validate::check_reserve_url(url);
        assert_eq!(
            messages.is_empty(),
            operator.is_none(),
            "{url}: {messages:?} / {operator:?}"
        );
    }
    let messages = cel_messages(&with_spec(json!({"reserve": {"url": "file://data"}})));
    assert!(
        messages
            .iter()
            .any(|m| m.contains("a file:// reserve.url needs an absolute path")),
        "{messages:?}"
    );
}

/// A value for `schema` that the apiserver would accept: its default, or
/// the first enum value, or a value of its type with every required
/// property.
fn example(schema: &Value) -> Value {
    if let Some(default) = schema.get("default") {
        return default.clone();
    }
    if let Some(first) = schema.get("enum").and_then(|e| e.get(0)) {
        return first.clone();
    }
    if schema.get("x-kubernetes-int-or-string").is_some() {
        return json!("1");
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => json!("x"),
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(false),
        Some("array") => json!([]),
        _ => {
            let mut object = serde_json::Map::new();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                object.insert(name.into(), example(&schema["properties"][name]));
            }
            Value::Object(object)
        }
    }
}

/// Every `nullable: true` field, as the path of property names (and
/// `[]` for an array item) from the root, with the schema at each step.
fn nullable_paths(schema: &Value, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            path.push(name.clone());
            if property.get("nullable") == Some(&json!(true)) {
                found.push(path.clone());
            }
            nullable_paths(property, path, found);
            path.pop();
        }
    }
    if let Some(items) = schema.get("items") {
        path.push("[]".into());
        nullable_paths(items, path, found);
        path.pop();
    }
}

/// A stored object whose field at `path` is `null`, every object on the
/// way filled with its required properties.
fn object_with_null_at(root: &Value, path: &[String]) -> Value {
    fn set(value: &mut Value, schema: &Value, path: &[String]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        if first == "[]" {
            let item_schema = &schema["items"];
            let mut item = example(item_schema);
            set(&mut item, item_schema, rest);
            *value = json!([item]);
            return;
        }
        let child_schema = &schema["properties"][first.as_str()];
        let object = value.as_object_mut().unwrap();
        if rest.is_empty() {
            object.insert(first.clone(), Value::Null);
        } else {
            let child = object
                .entry(first.clone())
                .or_insert_with(|| example(child_schema));
            if !child.is_object() && !child.is_array() {
                *child = example(child_schema);
            }
            set(child, child_schema, rest);
        }
    }
    let mut object = example(root);
    object["apiVersion"] = json!("relaycache.io/v1alpha1");
    object["kind"] = json!("RelayCache");
    object["metadata"] = json!({"name": "rc", "namespace": "default", "uid": "u"});
    set(&mut object, root, path);
    object
}

#[test]
fn every_nullable_field_reads_back_when_stored_as_null() {
    // The apiserver stores `null` as it is for a `nullable: true` field;
    // the operator must still read the object (a field that is not an
    // Option would fail the whole watch).
    let root = openapi_schema();
    let mut found = Vec::new();
    nullable_paths(&root, &mut Vec::new(), &mut found);
    let joined: Vec<String> = found.iter().map(|p| p.join(".")).collect();
    assert!(
        joined.contains(&"spec.cache.memory".to_string()),
        "{joined:?}"
    );
    assert!(joined.len() >= 15, "{joined:?}");
    for path in &found {
        let object = object_with_null_at(&root, path);
        if let Err(err) = serde_json::from_value::<RelayCache>(object.clone()) {
            panic!(
                "{}: null does not deserialize ({err}): {object}",
                path.join(".")
            );
        }
    }
    let null_memory = object_with_null_at(&root, &["spec".into(), "cache".into(), "memory".into()]);
    let rc: RelayCache = serde_json::from_value(null_memory).unwrap();
    assert_eq!(rc.spec.cache.memory(), Quantity("100Mi".into()));
}

#[test]
fn crd_yaml_starts_with_the_regenerate_hint_and_parses_back() {
    let text = crd_yaml().unwrap();
    assert!(text.starts_with("# Generated by `relaycache-operator crdgen`"));
    let parsed: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(parsed, RelayCache::crd());
}
