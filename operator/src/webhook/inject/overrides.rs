//! The pod's own say over its sidecar: image, CPU and memory annotations,
//! each checked so that a bad value refuses the pod with a message that
//! shows what to write instead.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{CPU_ANNOTATION, IMAGE_ANNOTATION, MEMORY_ANNOTATION};
use crate::resources::quantity;

/// Overrides read from the pod's annotations.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Overrides {
    /// `relaycache.io/sidecar-image`.
    pub(super) image: Option<String>,
    /// `relaycache.io/sidecar-cpu`.
    pub(super) cpu: Option<Quantity>,
    /// `relaycache.io/sidecar-memory`.
    pub(super) memory: Option<Quantity>,
}

impl Overrides {
    /// The overrides, or the refusal message: it names the annotation, the
    /// value found and a value that works, because it reaches the user only
    /// as a ReplicaSet event ("Error creating: admission webhook ... denied
    /// the request: ...").
    pub(super) fn of(pod: &Pod) -> Result<Self, String> {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let get = |key: &str| annotations.get(key).map(|v| v.trim().to_string());
        let mut overrides = Overrides::default();
        if let Some(image) = get(IMAGE_ANNOTATION) {
            if image.is_empty() || image.len() > 512 || image.contains(char::is_whitespace) {
                return Err(refusal(
                    IMAGE_ANNOTATION,
                    &image,
                    "an image reference",
                    "relaycache/relaycache:0.1.0",
                ));
            }
            overrides.image = Some(image);
        }
        if let Some(cpu) = get(CPU_ANNOTATION) {
            if !is_cpu_quantity(&cpu) {
                return Err(refusal(CPU_ANNOTATION, &cpu, "a CPU quantity", "100m"));
            }
            overrides.cpu = Some(Quantity(cpu));
        }
        if let Some(memory) = get(MEMORY_ANNOTATION) {
            match quantity::bytes(&memory, MEMORY_ANNOTATION) {
                Ok(bytes) if bytes > 0 => overrides.memory = Some(Quantity(memory)),
                _ => {
                    return Err(refusal(
                        MEMORY_ANNOTATION,
                        &memory,
                        "a memory quantity",
                        "128Mi",
                    ))
                }
            }
        }
        Ok(overrides)
    }
}

/// Longest part of a bad annotation value quoted back: enough to recognise
/// it, short enough for an event.
const SHOWN_VALUE_CHARS: usize = 64;

fn refusal(annotation: &str, value: &str, what: &str, example: &str) -> String {
    let mut shown: String = value.chars().take(SHOWN_VALUE_CHARS).collect();
    if shown.len() < value.len() {
        shown.push_str("...");
    }
    format!(
        "relaycache: annotation {annotation}={shown:?} is not {what}; write e.g. {annotation}: \"{example}\" in the pod template, or remove it for the RelayCache's default"
    )
}

/// `250m`, `0.5`, `2`: a positive decimal, or whole millicores.
pub(super) fn is_cpu_quantity(value: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let shape = match value.strip_suffix('m') {
        Some(milli) => digits(milli),
        None => match value.split_once('.') {
            Some((whole, fraction)) => digits(whole) && digits(fraction),
            None => digits(value),
        },
    };
    shape && value.chars().any(|c| ('1'..='9').contains(&c))
}
