//! Prometheus metrics of the operator, served on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How a reconcile ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Children applied and status written.
    applied,
    /// The spec was invalid; Degraded set, no child touched.
    invalid,
    /// An object not owned by the RelayCache holds a child's name; Degraded
    /// set, nothing written.
    conflict,
    /// The RelayCache is being deleted; garbage collection does the rest.
    deleting,
    /// An API call failed; retried with backoff.
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: Outcome,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<OutcomeLabel, Counter>,
    errors: Counter,
    duration: Histogram,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("relaycache_operator");
        let reconciles = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of RelayCache resources, by outcome",
            reconciles.clone(),
        );
        let errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed on an API call and will be retried",
            errors.clone(),
        );
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controller",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            leader,
        }
    }
}

impl Metrics {
    /// Counts one reconcile.
    pub fn reconciled(&self, outcome: Outcome, took: Duration) {
        self.reconciles
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        if outcome == Outcome::error {
            self.errors.inc();
        }
        self.duration.observe(took.as_secs_f64());
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_errors_duration_and_leadership_are_exposed() {
        let m = Metrics::default();
        m.reconciled(Outcome::applied, Duration::from_millis(20));
        m.reconciled(Outcome::applied, Duration::from_millis(20));
        m.reconciled(Outcome::error, Duration::from_millis(3));
        m.set_leader(true);
        let text = m.encode();
        for line in [
            "relaycache_operator_reconciles_total{outcome=\"applied\"} 2",
            "relaycache_operator_reconciles_total{outcome=\"error\"} 1",
            "relaycache_operator_reconcile_errors_total 1",
            "relaycache_operator_reconcile_duration_seconds_count 3",
            "relaycache_operator_leader 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
