//! Which namespaces' pods may use a RelayCache (`spec.clients`): its own
//! always, others only by name or by a label selector on the namespace. The
//! webhook injects a sidecar only into pods of an allowed namespace, and the
//! operator copies the clients' token Secret only into allowed namespaces,
//! both with these functions so they cannot disagree.

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;

use super::SpecIssue;
use crate::crd::RelayCache;

/// Path of the field a namespace is added to, as warnings name it.
pub const NAMESPACES_FIELD: &str = "spec.clients.namespaces";
/// Path of the selector field, as warnings name it.
pub const SELECTOR_FIELD: &str = "spec.clients.namespaceSelector";

/// Whether pods of `namespace` may use `rc` without looking at the
/// namespace's labels: `Some(true)` for its own namespace or one it names,
/// `None` when only the selector can tell, `Some(false)` otherwise.
pub fn allowed_by_name(rc: &RelayCache, namespace: &str) -> Option<bool> {
    let clients = &rc.spec.clients;
    if rc.namespace().as_deref() == Some(namespace)
        || clients.namespaces.iter().any(|n| n == namespace)
    {
        Some(true)
    } else if clients.namespace_selector.is_some() {
        None
    } else {
        Some(false)
    }
}

/// Whether pods of `namespace`, whose labels are `labels`, may use `rc`. A
/// selector that does not parse allows nothing (and is reported by
/// [`check`]).
pub fn allows(rc: &RelayCache, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
    allowed_by_name(rc, namespace).unwrap_or_else(|| {
        selector(rc)
            .and_then(Result::ok)
            .is_some_and(|selector| selector.matches(labels))
    })
}

fn selector(rc: &RelayCache) -> Option<Result<Selector, String>> {
    let selector = rc.spec.clients.namespace_selector.clone()?;
    Some(Selector::try_from(selector).map_err(|err| err.to_string()))
}

/// Problems of `spec.clients`: a selector the apiserver accepts but that
/// names an unknown operator, or values an operator does not take.
pub fn check(rc: &RelayCache) -> Vec<SpecIssue> {
    let mut issues = Vec::new();
    if let Some(Err(err)) = selector(rc) {
        issues.push(SpecIssue::new(
            SELECTOR_FIELD,
            format!("{err}; use matchLabels, or matchExpressions with In, NotIn, Exists or DoesNotExist"),
        ));
    }
    for name in &rc.spec.clients.namespaces {
        if !is_namespace_name(name) {
            issues.push(SpecIssue::new(
                NAMESPACES_FIELD,
                format!("{name:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"),
            ));
        }
    }
    issues
}

fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The admission warning for a pod of `namespace` that `rc` does not serve:
/// it names the field that would allow it.
pub fn refusal(rc: &RelayCache, namespace: &str) -> String {
    let rc_namespace = rc.namespace().unwrap_or_default();
    let name = rc.name_any();
    format!(
        "relaycache: RelayCache {rc_namespace}/{name} does not serve namespace {namespace}; admitted without the sidecar. \
         To allow it, add {namespace:?} to {NAMESPACES_FIELD} of RelayCache {rc_namespace}/{name} \
         (or label the namespace to match {SELECTOR_FIELD})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::rc;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn its_own_namespace_only_unless_the_spec_allows_others() {
        let alone = rc("web", json!({}));
        assert!(allows(&alone, "cache", &labels(&[])));
        assert!(!allows(&alone, "apps", &labels(&[("team", "a")])));

        let named = rc("web", json!({"clients": {"namespaces": ["apps"]}}));
        assert_eq!(allowed_by_name(&named, "apps"), Some(true));
        assert_eq!(allowed_by_name(&named, "other"), Some(false));

        let selected = rc(
            "web",
            json!({"clients": {"namespaceSelector": {"matchLabels": {"relaycache.io/client": "true"}}}}),
        );
        assert_eq!(
            allowed_by_name(&selected, "apps"),
            None,
            "the labels decide"
        );
        assert!(allows(
            &selected,
            "apps",
            &labels(&[("relaycache.io/client", "true")])
        ));
        assert!(!allows(
            &selected,
            "apps",
            &labels(&[("relaycache.io/client", "no")])
        ));
        assert!(allows(&selected, "cache", &labels(&[])), "its own always");

        let everyone = rc("web", json!({"clients": {"namespaceSelector": {}}}));
        assert!(allows(&everyone, "any", &labels(&[])));
    }

    #[test]
    fn bad_selectors_and_names_are_reported_and_allow_nothing() {
        let bad = rc(
            "web",
            json!({"clients": {"namespaces": ["Apps"], "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}}),
        );
        let issues = check(&bad);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, [SELECTOR_FIELD, NAMESPACES_FIELD]);
        assert!(!allows(&bad, "apps", &labels(&[("a", "b")])));
        assert!(check(&rc("web", json!({"clients": {"namespaces": ["apps"]}}))).is_empty());
    }

    #[test]
    fn the_refusal_names_the_field_to_set() {
        let message = refusal(&rc("web", json!({})), "apps");
        for part in [
            "RelayCache cache/web",
            "namespace apps",
            "spec.clients.namespaces",
            "\"apps\"",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }
}
