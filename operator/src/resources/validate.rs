//! The operator's own copy of the CRD's rules (CEL and OpenAPI bounds).
//!
//! The apiserver enforces them on every write, but an object stored before a
//! rule existed (or written while the CRD was older) still reaches the
//! operator. Such an object must end in `Degraded`/`InvalidSpec` with the
//! same message, before any child is touched, rather than in an apply that
//! the apiserver refuses again on every retry.

use kube::ResourceExt;

use super::{SpecIssue, CONFIG_DIR};
use crate::crd::{RelayCache, RelayCacheSpec, ReplicationSpec};

/// Longest RelayCache name. The StatefulSet controller labels each member
/// with `controller-revision-hash: NAME-<hash>`, the hash being at most 10
/// characters, and a label value is at most 63: 63 - 1 - 10 = 52 (see the
/// CEL rule on `metadata.name` in `crd.rs`).
pub const MAX_NAME_LEN: usize = 52;
/// Largest `spec.replicas` (the CRD's bound).
pub const MAX_REPLICAS: i32 = 1000;
/// Largest `replicaCount`, `readQuorum` and `writeQuorum` (the CRD's bound).
pub const MAX_COPIES: i32 = 16;
/// Where members mount their scratch space (`readOnlyRootFilesystem`).
pub const TMP_DIR: &str = "/tmp";
/// Schemes of `reserve.url`, as the CRD's CEL rule lists them.
const RESERVE_SCHEMES: [&str; 9] = [
    "file", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "memory",
];

/// Every rule of the CRD the spec breaks, each at its path.
pub fn check(rc: &RelayCache) -> Vec<SpecIssue> {
    let mut issues = Vec::new();
    if let Some(issue) = check_name(&rc.name_any()) {
        issues.push(issue);
    }
    let spec = &rc.spec;
    check_bounds(spec, &mut issues);
    check_quorums(spec, &mut issues);
    if let Some(reserve) = &spec.reserve {
        issues.extend(check_reserve_url(&reserve.url));
    }
    issues.extend(check_single_lines(rc));
    check_token_secrets(&spec.replication, &mut issues);
    issues.extend(super::clients::check(rc));
    issues
}

/// The OpenAPI bounds of the counts.
fn check_bounds(spec: &RelayCacheSpec, issues: &mut Vec<SpecIssue>) {
    let r = &spec.replication;
    let mut range = |path: &str, value: i32, min: i32, max: i32| {
        if !(min..=max).contains(&value) {
            issues.push(SpecIssue::new(
                path,
                format!("{value} is outside {min}..={max}"),
            ));
        }
    };
    range("spec.replicas", spec.replicas, 0, MAX_REPLICAS);
    range(
        "spec.replication.replicaCount",
        r.replica_count,
        1,
        MAX_COPIES,
    );
    range("spec.replication.readQuorum", r.read_quorum, 1, MAX_COPIES);
    range(
        "spec.replication.writeQuorum",
        r.write_quorum,
        1,
        MAX_COPIES,
    );
    range(
        "spec.replication.memberCountQuorum",
        r.member_count_quorum,
        1,
        MAX_REPLICAS,
    );
}

/// The CEL rules between the counts: quorums within the copies, and the
/// member quorum within the replicas.
fn check_quorums(spec: &RelayCacheSpec, issues: &mut Vec<SpecIssue>) {
    let r = &spec.replication;
    // The CEL rules on `replication` and the spec hold whatever the mode, so
    // these do too: the apiserver refuses any update until they are fixed.
    for (field, quorum, why) in [
        (
            "readQuorum",
            r.read_quorum,
            "a read cannot wait for more copies than exist",
        ),
        (
            "writeQuorum",
            r.write_quorum,
            "a write cannot be acknowledged by more copies than exist",
        ),
    ] {
        if quorum > r.replica_count {
            issues.push(SpecIssue::new(
                format!("spec.replication.{field}"),
                format!(
                    "{quorum} must not exceed replication.replicaCount ({}): {why}",
                    r.replica_count
                ),
            ));
        }
    }
    // Zero replicas (stopped) allows any quorum, as in CEL; a negative count
    // is reported above already.
    if spec.replicas > 0 && r.member_count_quorum > spec.replicas {
        issues.push(SpecIssue::new(
            "spec.replication.memberCountQuorum",
            format!(
                "{} must not exceed replicas ({}): the cluster could never gather that many live members (scale to 0 to stop it entirely)",
                r.member_count_quorum, spec.replicas
            ),
        ));
    }
}

/// The clients' token Secret must not be the members'.
fn check_token_secrets(r: &ReplicationSpec, issues: &mut Vec<SpecIssue>) {
    if let (Some(members), Some(clients)) = (&r.token_secret, &r.client_token_secret) {
        if members.name == clients.name {
            issues.push(SpecIssue::new(
                "spec.replication.clientTokenSecret",
                format!(
                    "names the same Secret as tokenSecret ({:?}): the clients' token must differ from the members' token, or every client could act as a member; name another Secret, or omit clientTokenSecret to have one generated",
                    members.name
                ),
            ));
        }
    }
}

/// `metadata.name` names Services (DNS-1035 labels) and the StatefulSet.
pub fn check_name(name: &str) -> Option<SpecIssue> {
    let dns_1035 = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !dns_1035 {
        return Some(SpecIssue::new(
            "metadata.name",
            format!(
                "{name:?} must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter and ending with a letter or digit (it names the RelayCache's Services and StatefulSet); recreate the RelayCache under such a name"
            ),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Some(SpecIssue::new(
            "metadata.name",
            format!(
                "{name:?} has {} characters, more than {MAX_NAME_LEN}: the StatefulSet controller labels each member with NAME-<10-character revision hash>, and a label value is at most 63 characters; recreate the RelayCache under a shorter name",
                name.len()
            ),
        ));
    }
    None
}

/// The scheme rule, and for `file://` a path that can be a mountPath.
pub fn check_reserve_url(url: &str) -> Option<SpecIssue> {
    const PATH: &str = "spec.reserve.url";
    let scheme_ok = RESERVE_SCHEMES.iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| rest.starts_with("://"))
    });
    if !scheme_ok {
        return Some(SpecIssue::new(
            PATH,
            format!("{url:?} must start with file://, s3://, gs://, az:// or memory://"),
        ));
    }
    let path = url.strip_prefix("file://")?;
    let absolute = path.starts_with('/')
        && !path.starts_with("//")
        && path.len() > 1
        && !path.contains(['?', '#', '%'])
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if !absolute {
        return Some(SpecIssue::new(
            PATH,
            format!(
                "{url:?}: a file:// reserve.url needs an absolute path, such as file:///var/lib/relaycache/reserve (three slashes; no '.' or '..' segments, '?', '#' or '%'); its path is where each member mounts the reserve's volume"
            ),
        ));
    }
    let trimmed = path.trim_end_matches('/');
    let config_dir = CONFIG_DIR.trim_end_matches('/');
    let taken = trimmed == TMP_DIR
        || trimmed == config_dir
        || trimmed.starts_with(&format!("{config_dir}/"));
    taken.then(|| {
        SpecIssue::new(
            PATH,
            format!(
                "{url:?}: {TMP_DIR} and {CONFIG_DIR} are the member's own volumes; put a file:// reserve elsewhere, such as file:///var/lib/relaycache/reserve"
            ),
        )
    })
}

/// Strings copied into the proxy's YAML must be one line each: the proxy
/// leaves lines that start with `#` unexpanded, so a multi-line value could
/// not be written so that it reads back exactly.
fn check_single_lines(rc: &RelayCache) -> Vec<SpecIssue> {
    let spec = &rc.spec;
    let mut fields: Vec<(String, &str)> = Vec::new();
    for (i, u) in spec.upstreams.iter().enumerate() {
        fields.push((format!("spec.upstreams[{i}].name"), &u.name));
        fields.push((format!("spec.upstreams[{i}].url"), &u.url));
        for (j, p) in u.paths.iter().enumerate() {
            fields.push((format!("spec.upstreams[{i}].paths[{j}]"), p));
        }
    }
    fields.push(("spec.cache.isolation".into(), &spec.cache.isolation));
    if let Some(reserve) = &spec.reserve {
        fields.push(("spec.reserve.url".into(), &reserve.url));
        for (key, value) in &reserve.options {
            fields.push((format!("spec.reserve.options.{key}"), key));
            fields.push((format!("spec.reserve.options.{key}"), value));
        }
    }
    let mut issues: Vec<SpecIssue> = Vec::new();
    for (path, value) in fields {
        if value.contains(['\n', '\r']) && !issues.iter().any(|i| i.path == path) {
            issues.push(SpecIssue::new(
                path,
                "must be a single line (no line breaks)",
            ));
        }
    }
    issues
}

/// `reserve.url` examples by how the rules judge them, shared by the tests
/// here and the CRD's, which check that CEL judges each the same way.
#[cfg(test)]
pub(crate) mod reserve_url_cases {
    /// Accepted.
    pub(crate) const ACCEPTED: [&str; 6] = [
        "file:///var/lib/relaycache/reserve",
        "file:///data/",
        "file:///tmp/reserve",
        "file:///.cache",
        "s3://bucket/prefix",
        "memory://",
    ];
    /// `file://` without a usable absolute path.
    pub(crate) const NOT_ABSOLUTE: [&str; 10] = [
        "file://",
        "file://data",
        "file://localhost/data",
        "file:///",
        "file:////data",
        "file:///data/../etc",
        "file:///./data",
        "file:///data/.",
        "file:///data?x=1",
        "file:///da%20ta",
    ];
    /// The member's own volumes.
    pub(crate) const TAKEN: [&str; 4] = [
        "file:///tmp",
        "file:///tmp/",
        "file:///etc/relaycache",
        "file:///etc/relaycache/x",
    ];
    /// A scheme the reserve does not know.
    pub(crate) const UNKNOWN_SCHEME: &str = "ftp://bucket";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::rc;
    use serde_json::json;

    fn paths(spec: serde_json::Value) -> Vec<String> {
        check(&rc("web", spec))
            .into_iter()
            .map(|i| i.path)
            .collect()
    }

    #[test]
    fn a_default_spec_breaks_no_rule() {
        assert_eq!(paths(json!({})), Vec::<String>::new());
    }

    #[test]
    fn names_must_make_valid_child_names() {
        for good in ["web", "a", "cache-1", &"a".repeat(MAX_NAME_LEN)] {
            assert_eq!(check_name(good), None, "{good}");
        }
        for bad in ["1web", "web.cache", "Web", "web-", "-web", "we_b", ""] {
            let issue = check_name(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(issue.path, "metadata.name");
            assert!(issue.message.contains("DNS-1035 label"), "{issue:?}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let issue = check_name(&long).unwrap();
        assert!(issue.message.contains("more than 52"), "{issue:?}");
        // The bound is the revision label: NAME-<10 characters> fits in 63.
        assert_eq!(MAX_NAME_LEN + 1 + 10, 63);
        assert_eq!(check(&rc(&long, json!({})))[0].path, "metadata.name");
    }

    #[test]
    fn quorums_mirror_the_cel_rules_in_every_mode() {
        for mode in ["ha", "single", "disabled"] {
            let found = paths(json!({
                "mode": mode, "replicas": 2,
                "replication": {"replicaCount": 2, "readQuorum": 3, "writeQuorum": 3, "memberCountQuorum": 3}
            }));
            assert_eq!(
                found,
                [
                    "spec.replication.readQuorum",
                    "spec.replication.writeQuorum",
                    "spec.replication.memberCountQuorum"
                ],
                "{mode}"
            );
        }
        let issues = check(&rc(
            "web",
            json!({"replicas": 2, "replication": {"memberCountQuorum": 3}}),
        ));
        assert!(
            issues[0].message.contains("must not exceed replicas (2)"),
            "{issues:?}"
        );
        // Scaling to zero stays possible whatever the quorum, as in CEL.
        assert_eq!(
            paths(json!({"replicas": 0, "replication": {"memberCountQuorum": 3}})),
            Vec::<String>::new()
        );
        assert_eq!(
            paths(json!({"replicas": 3, "replication": {"memberCountQuorum": 3}})),
            Vec::<String>::new()
        );
    }

    #[test]
    fn bounds_of_the_schema_are_checked() {
        assert_eq!(
            paths(json!({"replicas": -1, "replication": {"replicaCount": 17, "readQuorum": 0}})),
            [
                "spec.replicas",
                "spec.replication.replicaCount",
                "spec.replication.readQuorum"
            ]
        );
    }

    #[test]
    fn file_reserves_need_an_absolute_path_of_their_own() {
        use super::reserve_url_cases::{ACCEPTED, NOT_ABSOLUTE, TAKEN, UNKNOWN_SCHEME};
        for good in ACCEPTED {
            assert_eq!(check_reserve_url(good), None, "{good}");
        }
        for bad in NOT_ABSOLUTE {
            let issue = check_reserve_url(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(issue.path, "spec.reserve.url");
            assert!(issue.message.contains("absolute path"), "{issue:?}");
        }
        for taken in TAKEN {
            let issue = check_reserve_url(taken).unwrap_or_else(|| panic!("{taken:?} accepted"));
            assert!(issue.message.contains("own volumes"), "{issue:?}");
        }
        let issue = check_reserve_url(UNKNOWN_SCHEME).unwrap();
        assert!(
            issue.message.contains("must start with file://"),
            "{issue:?}"
        );
        assert_eq!(
            paths(json!({"reserve": {"url": "file://data"}})),
            ["spec.reserve.url"]
        );
    }

    #[test]
    fn copied_strings_must_be_single_lines() {
        assert_eq!(
            paths(json!({
                "upstreams": [{"name": "a", "url": "https://x/\n# ${X}"}],
                "reserve": {"url": "s3://b", "options": {"k": "v\nw", "ok": "${KEEP}"}}
            })),
            ["spec.upstreams[0].url", "spec.reserve.options.k"]
        );
    }
}
