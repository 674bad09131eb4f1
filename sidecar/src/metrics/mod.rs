//! Prometheus metrics and the `/stats` summary.
//!
//! Each metric is declared once, in [`metric_set!`]: its field, its type,
//! its exported name, and its doc comment, which is also its help text.
//! Registration and the `/stats` readings are generated from that one
//! declaration. The sets are split by the part of the proxy that counts
//! them: [`proxy`], [`reserve`] and [`cluster`].

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::config::PriceTable;
use crate::headers::{CacheStatus, TierKind};

pub mod cluster;
pub mod proxy;
pub mod reserve;
pub mod savings;

pub use cluster::{ClusterMetrics, ClusterRefusal, ClusterStats, FlightOutcome};
pub use proxy::{ProxyMetrics, UpstreamLabels};
pub use reserve::{ReserveMetrics, ReserveStats};
pub use savings::{ModelSaved, SavingsMetrics};

/// Declares a set of metrics once. For each field: its doc comment (also
/// the metric's help text), its type, the exported name, optionally a unit
/// and a constructor. The set gets `Default` and `register`. A set named
/// `Set => SetStats` also gives every field the type of its `/stats`
/// reading in brackets, and gets the struct `SetStats` and `readings`.
macro_rules! metric_set {
    (
        $(#[$outer:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                $field:ident: $ty:ty => $metric:literal $(in $unit:ident)? $(= $init:expr)?,
            )*
        }
    ) => {
        $(#[$outer])*
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $crate::metrics::metric_set!(@init $($init)?), )* }
            }
        }

        impl $name {
            /// Registers every metric of the set, its doc comment as help.
            pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
                $(
                    $crate::metrics::metric_set!(
                        @register registry, $metric,
                        concat!($($doc),+).trim(), self.$field.clone() $(, $unit)?
                    );
                )*
            }
        }
    };
    (
        $(#[$outer:meta])*
        pub struct $name:ident => $stats:ident {
            $(
                $(#[doc = $doc:literal])+
                $field:ident: $ty:ty => $metric:literal [$reading:ty],
            )*
        }
    ) => {
        $crate::metrics::metric_set! {
            $(#[$outer])*
            pub struct $name {
                $( $(#[doc = $doc])+ $field: $ty => $metric, )*
            }
        }

        /// The `/stats` readings of the metrics of the same name.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $stats {
            $( $(#[doc = $doc])+ pub $field: $reading, )*
        }

        impl $name {
            /// The readings `/stats` shows.
            pub fn readings(&self) -> $stats {
                $stats {
                    $(
                        $field: <$reading as $crate::metrics::FromReading>::from_reading(
                            $crate::metrics::Reading::reading(&self.$field),
                        ),
                    )*
                }
            }
        }
    };
    (@init) => { Default::default() };
    (@init $init:expr) => { $init };
    (@register $registry:ident, $metric:literal, $help:expr, $value:expr) => {
        $registry.register($metric, $help, $value)
    };
    (@register $registry:ident, $metric:literal, $help:expr, $value:expr, $unit:ident) => {
        $registry.register_with_unit(
            $metric, $help, prometheus_client::registry::Unit::$unit, $value,
        )
    };
}
pub(crate) use metric_set;

/// A gauge of whole numbers.
pub type IntGauge = Gauge<i64, AtomicI64>;

/// The `/stats` reading of a metric: its count, a gauge's value (negative
/// reads as 0), or a labelled counter's sum over its labels.
pub trait Reading {
    /// The current value.
    fn reading(&self) -> u64;
}

impl Reading for Counter {
    fn reading(&self) -> u64 {
        self.get()
    }
}

impl Reading for IntGauge {
    fn reading(&self) -> u64 {
        u64::try_from(self.get()).unwrap_or(0)
    }
}

/// How a `/stats` field reads a metric's value: a number, or a flag that
/// is set when the value is not zero.
pub trait FromReading {
    /// Converts a reading.
    fn from_reading(reading: u64) -> Self;
}

impl FromReading for u64 {
    fn from_reading(reading: u64) -> Self {
        reading
    }
}

impl FromReading for bool {
    fn from_reading(reading: u64) -> Self {
        reading != 0
    }
}

/// A label set whose every value is known up front (a closed enum), so
/// that its counters are resolved once and counting takes no lock.
pub trait ClosedLabels: Clone + Hash + Eq + Debug + Send + Sync + EncodeLabelSet + 'static {
    /// Every label set, in the order of [`ClosedLabels::index`].
    fn all() -> Vec<Self>;
    /// The position of this label set in [`ClosedLabels::all`].
    fn index(&self) -> usize;
}

/// Implements [`ClosedLabels`] for a fieldless enum with `ALL` (in
/// declaration order) and `as_str`, exported as one label named `$name`.
macro_rules! closed_label {
    ($enum:ty, $name:literal) => {
        impl prometheus_client::encoding::EncodeLabelSet for $enum {
            fn encode(
                &self,
                encoder: prometheus_client::encoding::LabelSetEncoder<'_>,
            ) -> Result<(), std::fmt::Error> {
                prometheus_client::encoding::EncodeLabelSet::encode(
                    &[($name, self.as_str())],
                    encoder,
                )
            }
        }

        impl $crate::metrics::ClosedLabels for $enum {
            fn all() -> Vec<Self> {
                <$enum>::ALL.to_vec()
            }

            fn index(&self) -> usize {
                *self as usize
            }
        }
    };
}
pub(crate) use closed_label;

closed_label!(CacheStatus, "cache_status");
closed_label!(TierKind, "tier");
closed_label!(crate::limits::OverloadLimit, "limit");

/// A counter per label set of a closed set, resolved once: exported as
/// one labelled family, counted without the family's lock.
#[derive(Debug, Clone)]
pub struct CounterBy<L: ClosedLabels> {
    family: Family<L, Counter>,
    resolved: std::sync::Arc<[Counter]>,
}

impl<L: ClosedLabels> Default for CounterBy<L> {
    fn default() -> Self {
        let family = Family::<L, Counter>::default();
        let resolved = L::all()
            .iter()
            .map(|labels| family.get_or_create(labels).clone())
            .collect();
        Self { family, resolved }
    }
}

impl<L: ClosedLabels> CounterBy<L> {
    fn counter(&self, labels: &L) -> Option<&Counter> {
        self.resolved.get(labels.index())
    }

    /// Counts one under `labels`.
    pub fn inc(&self, labels: L) {
        self.inc_by(labels, 1);
    }

    /// Counts `n` under `labels`.
    pub fn inc_by(&self, labels: L, n: u64) {
        match self.counter(&labels) {
            Some(counter) => {
                counter.inc_by(n);
            }
            // Unreachable while `all` lists every value (a unit test checks
            // each set); counting through the family keeps the count anyway.
            None => {
                self.family.get_or_create(&labels).inc_by(n);
            }
        }
    }

    /// The count under `labels`.
    pub fn get(&self, labels: L) -> u64 {
        match self.counter(&labels) {
            Some(counter) => counter.get(),
            None => self.family.get(&labels).map_or(0, |counter| counter.get()),
        }
    }
}

impl<L: ClosedLabels> Reading for CounterBy<L> {
    fn reading(&self) -> u64 {
        self.resolved.iter().map(Counter::get).sum()
    }
}

impl<L: ClosedLabels> EncodeMetric for CounterBy<L> {
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Counters a tier can report for `/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TierStats {
    /// Entries held.
    pub entries: u64,
    /// Bytes held (as the tier weighs them).
    pub bytes: u64,
    /// Entries removed to make room.
    pub evictions: u64,
}

/// Sets a gauge to a count, saturating at `i64::MAX`.
pub(crate) fn set_count(gauge: &IntGauge, count: u64) {
    gauge.set(i64::try_from(count).unwrap_or(i64::MAX));
}

/// Every metric the proxy exports, by the part that counts it.
pub struct Metrics {
    registry: Registry,
    /// The request path: requests, hits, the upstream, memory.
    pub proxy: ProxyMetrics,
    /// The reserve tier.
    pub reserve: ReserveMetrics,
    /// The cluster tier.
    pub cluster: ClusterMetrics,
    /// What hits saved, by model.
    pub savings: SavingsMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `relaycache` prefix,
    /// pricing hits with the built-in table.
    pub fn new() -> Self {
        Self::with_prices(PriceTable::new(&Default::default()))
    }

    /// Creates and registers every metric, pricing hits with `prices`.
    pub fn with_prices(prices: PriceTable) -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("relaycache");
        let proxy = ProxyMetrics::default();
        proxy.register(registry);
        let reserve = ReserveMetrics::default();
        reserve.register(registry.sub_registry_with_prefix("reserve"));
        let cluster = ClusterMetrics::default();
        cluster.register(registry.sub_registry_with_prefix("cluster"));
        let savings = SavingsMetrics::new(prices);
        savings.register(registry);
        Self {
            registry: root,
            proxy,
            reserve,
            cluster,
            savings,
        }
    }

    /// Brings the gauges read at scrape time up to date.
    fn refresh(&self, memory: TierStats, reserve: TierStats) {
        self.proxy.refresh(memory);
        set_count(&self.reserve.entries, reserve.entries);
        set_count(&self.reserve.bytes, reserve.bytes);
    }

    /// Prometheus text exposition, after refreshing the tier gauges.
    pub fn encode(&self, memory: TierStats, reserve: TierStats) -> String {
        self.refresh(memory, reserve);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The `/stats` summary.
    pub fn stats(&self, memory: TierStats, reserve: TierStats) -> Stats {
        self.refresh(memory, reserve);
        let proxy = &self.proxy;
        let hits = proxy.requests.get(CacheStatus::Hit);
        let misses =
            proxy.requests.get(CacheStatus::Miss) + proxy.requests.get(CacheStatus::Refresh);
        let lookups = hits + misses;
        let (models, saved_usd) = self.savings.readings();
        Stats {
            hits,
            misses,
            bypasses: proxy.requests.get(CacheStatus::Bypass),
            coalesced_waits: proxy.coalesced_waits.get(),
            key_count: memory.entries,
            bytes_used: memory.bytes,
            evictions: proxy.evictions.get(),
            hit_ratio: if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            },
            input_tokens_saved: proxy.input_tokens_saved.get(),
            output_tokens_saved: proxy.output_tokens_saved.get(),
            cache_read_tokens_saved: models.values().map(|m| m.cache_read_tokens).sum(),
            cache_creation_tokens_saved: models.values().map(|m| m.cache_creation_tokens).sum(),
            saved_usd,
            models,
            reserve: self.reserve.readings(),
            peer_hits: proxy.hits_by_tier.get(TierKind::Peer),
            cluster: self.cluster.readings(),
        }
    }
}

/// The `/stats` JSON body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Answers served from cache.
    pub hits: u64,
    /// Lookups that went to the upstream (misses and refreshes).
    pub misses: u64,
    /// Requests on cache routes that were not cached.
    pub bypasses: u64,
    /// Requests that waited for an identical upstream call.
    pub coalesced_waits: u64,
    /// Entries in memory.
    pub key_count: u64,
    /// Bytes in memory.
    pub bytes_used: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// hits / (hits + misses).
    pub hit_ratio: f64,
    /// Prompt tokens saved by hits.
    pub input_tokens_saved: u64,
    /// Completion tokens saved by hits.
    pub output_tokens_saved: u64,
    /// Input tokens read from the provider's prompt cache, saved by hits.
    #[serde(default)]
    pub cache_read_tokens_saved: u64,
    /// Input tokens written to the provider's prompt cache, saved by hits.
    #[serde(default)]
    pub cache_creation_tokens_saved: u64,
    /// US dollars hits saved, over the models with a price.
    #[serde(default)]
    pub saved_usd: f64,
    /// What hits saved, by model (at most
    /// [`savings::MODEL_LABEL_LIMIT`] models, then `other`).
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, ModelSaved>,
    /// The reserve tier.
    pub reserve: ReserveStats,
    /// Hits answered by another cluster member.
    #[serde(default)]
    pub peer_hits: u64,
    /// The cluster tier (zeros outside mode `ha`).
    #[serde(default)]
    pub cluster: ClusterStats,
}

#[cfg(test)]
mod tests;
