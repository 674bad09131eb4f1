//! The RelayCache operator: reconciles `RelayCache` resources into running
//! relaycache clusters (Services, ConfigMap, StatefulSet, PodDisruptionBudget),
//! with leader election, metrics and health endpoints, and injects the proxy
//! as a sidecar into labelled pods (the mutating webhook).

mod accept;
pub mod app;
pub mod cli;
pub mod crd;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod resources;
pub mod status;
#[cfg(test)]
pub(crate) mod testing;
pub mod webhook;
