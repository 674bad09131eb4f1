//! What one refresh of `relaycache top` found, for every process watched,
//! and its plain-text form (`--once`). Drawing is in [`super::view`];
//! both format numbers with the helpers here.

use std::fmt::Write;

use super::reading::{ratio, ByTier, Latency, Rates, Reading};
use crate::cluster::{MemberState, Roster};
use crate::headers::TierKind;

/// One watched process at one refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    /// Its admin URL, as given.
    pub url: String,
    /// What it answered.
    pub status: Status,
}

/// Whether a process answered, and what.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// It answered `/stats` and `/metrics`.
    Up {
        /// Its counters now.
        reading: Box<Reading>,
        /// The change since the previous refresh; `None` on the first.
        rates: Option<Rates>,
        /// Its `/members`; `None` when it did not answer that (an older
        /// relaycache).
        roster: Option<Roster>,
    },
    /// It could not be read.
    Down {
        /// Why.
        error: String,
    },
}

/// Every watched process at one refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The processes, in the order of `--admin`.
    pub processes: Vec<Process>,
}

impl Report {
    /// The membership to show: the roster of the first process that is in
    /// a cluster, with its URL.
    pub fn membership(&self) -> Option<(&str, &Roster)> {
        self.processes.iter().find_map(|p| match &p.status {
            Status::Up {
                roster: Some(roster),
                ..
            } if !roster.members.is_empty() => Some((p.url.as_str(), roster)),
            _ => None,
        })
    }

    /// Whether every process answered.
    pub fn all_up(&self) -> bool {
        self.processes
            .iter()
            .all(|p| matches!(p.status, Status::Up { .. }))
    }

    /// The plain-text snapshot `--once` prints: no colours, no escape
    /// codes, one `label  figures` line each.
    pub fn snapshot(&self) -> String {
        let mut out = String::new();
        let up = self
            .processes
            .iter()
            .filter(|p| matches!(p.status, Status::Up { .. }))
            .count();
        let _ = writeln!(
            out,
            "relaycache top: {up} of {} processes up",
            self.processes.len()
        );
        for process in &self.processes {
            out.push('\n');
            process.write_snapshot(&mut out);
        }
        if let Some((url, roster)) = self.membership() {
            out.push('\n');
            let _ = writeln!(out, "members as {url} sees them");
            for line in member_lines(roster) {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

impl Process {
    fn write_snapshot(&self, out: &mut String) {
        let Status::Up {
            reading,
            rates,
            roster,
        } = &self.status
        else {
            if let Status::Down { error } = &self.status {
                let _ = writeln!(out, "{}  down: {error}", self.url);
            }
            return;
        };
        let role = roster.as_ref().map_or("", |r| r.role.as_str());
        let _ = writeln!(out, "{}  up  {role}", self.url);
        for (label, figures) in lines(reading, rates.as_ref()) {
            let _ = writeln!(out, "  {label:<13} {figures}");
        }
    }
}

/// The figures of one process as (label, text) lines, shared by the
/// snapshot and the live view.
pub fn lines(reading: &Reading, rates: Option<&Rates>) -> Vec<(&'static str, String)> {
    let s = &reading.stats;
    let mut lines = vec![
        (
            "requests",
            format!(
                "{}  hits {}  misses {}  bypasses {}",
                reading.requests(),
                s.hits,
                s.misses,
                s.bypasses
            ),
        ),
        (
            "hit ratio",
            format!(
                "{}  {}",
                percent(ratio(s.hits, reading.lookups())),
                by_tier(reading.tier_ratios(), percent)
            ),
        ),
        (
            "hits by tier",
            by_tier(reading.metrics.hits_by_tier, |h| h.to_string()),
        ),
        (
            "tokens saved",
            format!(
                "{}  input {}  output {}  cache_read {}  cache_creation {}",
                reading.tokens_saved(),
                s.input_tokens_saved,
                s.output_tokens_saved,
                s.cache_read_tokens_saved,
                s.cache_creation_tokens_saved
            ),
        ),
        ("saved", dollars(s.saved_usd)),
        (
            "upstream",
            format!(
                "{}  errors {}",
                latency(&reading.metrics.upstream.latency()),
                reading.metrics.upstream_errors
            ),
        ),
        (
            "memory",
            format!("{} entries  {}", s.key_count, bytes(s.bytes_used)),
        ),
    ];
    match rates {
        None => lines.push(("rates", "follow from the next reading".into())),
        Some(rates) => {
            lines.push((
                "per second",
                format!(
                    "{:.1} requests  hits {}  {} saved",
                    rates.requests_per_s,
                    by_tier(rates.hits_per_s, |h| format!("{h:.1}")),
                    dollars(rates.saved_usd_per_s)
                ),
            ));
            lines.push((
                "last interval",
                format!(
                    "hit ratio {}  {}  upstream {}",
                    if rates.lookups == 0 {
                        "-".to_string()
                    } else {
                        percent(rates.hit_ratio)
                    },
                    by_tier(rates.tier_ratios, percent),
                    latency(&rates.upstream)
                ),
            ));
        }
    }
    lines
}

/// One line per member: id, state, and what else is known.
pub fn member_lines(roster: &Roster) -> Vec<String> {
    let mut lines = vec![format!(
        "{} live, quorum {}",
        roster.live,
        if roster.quorum { "yes" } else { "no" }
    )];
    for member in &roster.members {
        let mut line = format!("{:<24} {:<8}", member.id, member.state.as_str());
        if member.this_process {
            line.push_str(" this process");
        } else if let (Some(ms), true) = (member.last_answer_ms, member.state != MemberState::Alive)
        {
            let _ = write!(line, " last answer {:.1}s ago", ms as f64 / 1000.0);
        }
        lines.push(line.trim_end().to_string());
    }
    lines
}

/// `memory X  peer Y  reserve Z`.
pub fn by_tier<T: Copy>(values: ByTier<T>, show: impl Fn(T) -> String) -> String {
    TierKind::ALL
        .iter()
        .zip(values)
        .map(|(tier, value)| format!("{} {}", tier.as_str(), show(value)))
        .collect::<Vec<_>>()
        .join("  ")
}

/// `p50 1.2 ms  p99 40 ms  (N calls)`, or `no calls`.
pub fn latency(latency: &Latency) -> String {
    match (latency.p50, latency.p99) {
        (Some(p50), Some(p99)) => format!(
            "p50 {}  p99 {}  ({} calls)",
            seconds(p50),
            seconds(p99),
            latency.calls
        ),
        _ => "no calls".into(),
    }
}

/// A share as a percentage with one decimal.
pub fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// Dollars with six decimals (a hit is often a fraction of a cent).
pub fn dollars(usd: f64) -> String {
    format!("${usd:.6}")
}

/// Seconds as ms below 1 s.
pub fn seconds(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1000.0)
    } else {
        format!("{secs:.2} s")
    }
}

/// Bytes in B, KiB, MiB or GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
pub(crate) mod tests;
