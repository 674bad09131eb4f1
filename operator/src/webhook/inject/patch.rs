//! The JSONPatch an injection answers with: `add` operations only, and
//! the base URLs every app container gets.

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use kube::core::DynamicObject;
use serde_json::{json, Value};

use super::{with_warning, ANTHROPIC_BASE_URL, OPENAI_BASE_URL};
use crate::resources::pod::CONTAINER;

/// Whether an earlier injection put the sidecar among the init containers.
pub(super) fn has_native_sidecar(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|inits| inits.iter().any(|c| c.name == CONTAINER))
}

/// Sets the base URLs in every app container that does not set them itself.
/// Regular init containers get them only with a native sidecar, the one case
/// where the proxy is already running when they start.
pub(super) fn add_base_urls(pod: &Pod, init_too: bool, ops: &mut Ops) {
    let Some(spec) = &pod.spec else { return };
    let mut groups = vec![("containers", &spec.containers)];
    if let (true, Some(inits)) = (init_too, &spec.init_containers) {
        groups.push(("initContainers", inits));
    }
    for (field, containers) in groups {
        for (i, container) in containers.iter().enumerate() {
            if container.name == CONTAINER {
                continue;
            }
            let missing: Vec<Value> = [ANTHROPIC_BASE_URL, OPENAI_BASE_URL]
                .into_iter()
                .filter(|(name, _)| !container.env.iter().flatten().any(|e| e.name == *name))
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let path = format!("/spec/{field}/{i}/env");
            if container.env.is_some() {
                for var in missing {
                    ops.add(&format!("{path}/-"), var);
                }
            } else {
                ops.add(&path, Value::Array(missing));
            }
        }
    }
}

/// JSONPatch operations, all `add`.
#[derive(Debug, Default)]
pub(super) struct Ops(Vec<Value>);

impl Ops {
    /// Adds `value` at `path`.
    pub(super) fn add(&mut self, path: &str, value: Value) {
        self.0
            .push(json!({"op": "add", "path": path, "value": value}));
    }

    /// The answer admitting the pod with these operations as its patch.
    pub(super) fn respond(
        self,
        req: &AdmissionRequest<DynamicObject>,
        warnings: Vec<String>,
    ) -> AdmissionResponse {
        let mut response = AdmissionResponse::from(req);
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        if self.0.is_empty() {
            return response;
        }
        // The operations are built from plain JSON above; a failure here is a
        // bug, reported as a warning rather than a refused pod.
        let patched = serde_json::from_value::<json_patch::Patch>(Value::Array(self.0))
            .map_err(|e| e.to_string())
            .and_then(|patch| {
                response
                    .clone()
                    .with_patch(patch)
                    .map_err(|e| e.to_string())
            });
        patched.unwrap_or_else(|err| {
            with_warning(
                req,
                format!("relaycache: internal error building the patch ({err}); admitted without the sidecar"),
            )
        })
    }
}

/// A JSON Pointer token (RFC 6901).
pub(super) fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `value` as JSON.
pub(super) fn to_value<T: serde::Serialize>(value: &T) -> Value {
    // k8s-openapi types serialize to JSON objects without failing.
    serde_json::to_value(value).unwrap_or(Value::Null)
}
