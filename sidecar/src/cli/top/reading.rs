//! One reading of a process's counters (`/stats` and `/metrics`), and
//! what two readings say: rates over the interval between them and
//! upstream latency percentiles from the histogram's buckets.

use std::time::Duration;

use crate::headers::TierKind;
use crate::metrics::Stats;

/// Hits by tier, in the order of [`TierKind::ALL`] (memory, peer,
/// reserve).
pub type ByTier<T> = [T; 3];

/// The cumulative buckets of a histogram: (upper bound in seconds, count
/// of observations at or below it), by rising bound, `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// The buckets.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |&(_, count)| count)
    }

    /// The observations made after `earlier` (same buckets; a bucket that
    /// went down, after a restart, counts from zero).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(bound, count)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == bound)
                    .map_or(0, |&(_, c)| c);
                (bound, count.checked_sub(before).unwrap_or(count))
            })
            .collect();
        Histogram { buckets }
    }

    /// The `q` quantile (0..=1) in seconds, interpolated linearly inside
    /// its bucket (from 0 for the first); in the `+Inf` bucket, the
    /// highest finite bound. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut lower = (0.0, 0u64);
        for &(bound, count) in &self.buckets {
            if count as f64 >= rank && count > lower.1 {
                if bound.is_infinite() {
                    return Some(lower.0);
                }
                let inside = (rank - lower.1 as f64) / (count - lower.1) as f64;
                return Some(lower.0 + (bound - lower.0) * inside.clamp(0.0, 1.0));
            }
            lower = (bound, count);
        }
        Some(lower.0)
    }

    /// p50 and p99 with the number of observations.
    pub fn latency(&self) -> Latency {
        Latency {
            calls: self.count(),
            p50: self.quantile(0.5),
            p99: self.quantile(0.99),
        }
    }

    /// Adds a bucket's count (buckets of several label sets are summed).
    fn add(&mut self, bound: f64, count: u64) {
        match self.buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, c)) => *c += count,
            None => {
                self.buckets.push((bound, count));
                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }
}

/// Upstream time to first byte: calls and percentiles in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Upstream calls observed.
    pub calls: u64,
    /// Median, seconds.
    pub p50: Option<f64>,
    /// 99th percentile, seconds.
    pub p99: Option<f64>,
}

/// The figures `/metrics` adds to `/stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricFigures {
    /// `relaycache_hits_total` by tier.
    pub hits_by_tier: ByTier<u64>,
    /// `relaycache_upstream_first_byte_seconds`, summed over upstreams.
    pub upstream: Histogram,
    /// `relaycache_upstream_errors_total`, summed over upstreams.
    pub upstream_errors: u64,
}

impl MetricFigures {
    /// Reads the series top shows from Prometheus / OpenMetrics text;
    /// every other line is skipped.
    pub fn parse(text: &str) -> Self {
        let mut figures = Self::default();
        for (name, labels, value) in text.lines().filter_map(sample) {
            let label = |wanted: &str| {
                labels
                    .iter()
                    .find(|(name, _)| *name == wanted)
                    .map(|(_, v)| v.as_str())
            };
            match name {
                "relaycache_hits_total" => {
                    if let Some(i) = TierKind::ALL
                        .iter()
                        .position(|t| Some(t.as_str()) == label("tier"))
                    {
                        figures.hits_by_tier[i] += value as u64;
                    }
                }
                "relaycache_upstream_first_byte_seconds_bucket" => {
                    let bound = match label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(bound) => bound,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    figures.upstream.add(bound, value as u64);
                }
                "relaycache_upstream_errors_total" => figures.upstream_errors += value as u64,
                _ => {}
            }
        }
        figures
    }
}

/// A sample's labels: (name, unescaped value).
type Labels<'a> = Vec<(&'a str, String)>;

/// One sample line: its name, labels and value; `None` for comments,
/// blank lines and lines that do not parse.
fn sample(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.trim(), value));
            rest = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// A process's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// `/stats`.
    pub stats: Stats,
    /// What `/metrics` adds.
    pub metrics: MetricFigures,
}

impl Reading {
    /// Requests on cache routes: hits, misses (refreshes included) and
    /// bypasses.
    pub fn requests(&self) -> u64 {
        self.stats.hits + self.stats.misses + self.stats.bypasses
    }

    /// Hits and misses: what hit ratios divide by.
    pub fn lookups(&self) -> u64 {
        self.stats.hits + self.stats.misses
    }

    /// Each tier's share of lookups since start.
    pub fn tier_ratios(&self) -> ByTier<f64> {
        self.metrics
            .hits_by_tier
            .map(|hits| ratio(hits, self.lookups()))
    }

    /// Tokens saved, every class.
    pub fn tokens_saved(&self) -> u64 {
        let s = &self.stats;
        s.input_tokens_saved
            + s.output_tokens_saved
            + s.cache_read_tokens_saved
            + s.cache_creation_tokens_saved
    }
}

/// `part / whole`, 0 when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// What changed between two readings of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    /// Seconds between the readings.
    pub seconds: f64,
    /// Requests per second on cache routes.
    pub requests_per_s: f64,
    /// Hits per second by tier.
    pub hits_per_s: ByTier<f64>,
    /// Lookups in the interval (hits and misses).
    pub lookups: u64,
    /// Hit ratio over the interval.
    pub hit_ratio: f64,
    /// Each tier's share of the interval's lookups.
    pub tier_ratios: ByTier<f64>,
    /// Dollars saved per second.
    pub saved_usd_per_s: f64,
    /// Tokens saved per second.
    pub tokens_per_s: f64,
    /// Upstream latency over the interval.
    pub upstream: Latency,
}

impl Rates {
    /// The rates from `earlier` to `later`, `elapsed` apart. A counter
    /// that went down (the process restarted) counts from zero.
    pub fn between(earlier: &Reading, later: &Reading, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        let delta = |a: u64, b: u64| b.checked_sub(a).unwrap_or(b);
        let hits = delta(earlier.stats.hits, later.stats.hits);
        let lookups = hits + delta(earlier.stats.misses, later.stats.misses);
        let tier_hits: ByTier<u64> = std::array::from_fn(|i| {
            delta(
                earlier.metrics.hits_by_tier[i],
                later.metrics.hits_by_tier[i],
            )
        });
        let saved = later.stats.saved_usd - earlier.stats.saved_usd;
        Self {
            seconds,
            requests_per_s: delta(earlier.requests(), later.requests()) as f64 / seconds,
            hits_per_s: tier_hits.map(|h| h as f64 / seconds),
            lookups,
            hit_ratio: ratio(hits, lookups),
            tier_ratios: tier_hits.map(|h| ratio(h, lookups)),
            saved_usd_per_s: if saved < 0.0 {
                later.stats.saved_usd
            } else {
                saved
            } / seconds,
            tokens_per_s: delta(earlier.tokens_saved(), later.tokens_saved()) as f64 / seconds,
            upstream: later
                .metrics
                .upstream
                .since(&earlier.metrics.upstream)
                .latency(),
        }
    }
}

#[cfg(test)]
#[path = "reading_tests.rs"]
pub(crate) mod tests;
