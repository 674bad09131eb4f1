//! The PodDisruptionBudget: drains and voluntary evictions take one member
//! at a time, so each can hand its entries off before the next leaves.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Names;

/// `maxUnavailable: 1` rather than a `minAvailable`: it keeps working at any
/// replica count, including 1 (a drain may then take the only member, which
/// a `minAvailable` would block forever).
pub fn pod_disruption_budget(names: &Names, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: names.child_meta(names.name.clone(), owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::*;
    use serde_json::json;

    #[test]
    fn one_member_at_a_time_selected_by_instance() {
        let rc = rc("web", json!({"replicas": 5}));
        let names = Names::of(&rc).unwrap();
        let pdb = pod_disruption_budget(&names, &owner(&rc));
        assert_eq!(pdb.metadata.name.as_deref(), Some("web"));
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.unwrap().match_labels,
            Some(names.selector_labels())
        );
        assert_eq!(
            spec.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
    }
}
