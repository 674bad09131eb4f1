//! Entry versions from a hybrid logical clock, so that when replicas
//! disagree the freshest copy wins without trusting wall clocks alone: a
//! member whose clock runs behind still orders its writes after every
//! version it has seen.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A version: wall-clock milliseconds, a counter within one millisecond
/// (or while the wall clock lags what was seen), and the writer's id as
/// the final tiebreak. Ordered field by field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Milliseconds since the Unix epoch, as far as the clock knows.
    pub wall_ms: u64,
    /// Orders versions that share `wall_ms`.
    pub counter: u32,
    /// Which member (or client) made it.
    pub origin: u64,
}

/// A hybrid logical clock that refuses to be pulled far into the future.
#[derive(Debug)]
pub struct Clock {
    origin: u64,
    last: Mutex<(u64, u32)>,
    /// How far ahead of the wall clock an observed version may be.
    max_skew_ms: u64,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Clock {
    /// A clock whose versions carry `origin`, taking note of versions at
    /// most `max_skew` ahead of its wall clock.
    pub fn new(origin: u64, max_skew: std::time::Duration) -> Self {
        Self {
            origin,
            last: Mutex::new((0, 0)),
            max_skew_ms: u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Whether `version` lies more than the allowed skew ahead of now.
    pub fn is_from_the_future(&self, version: Version) -> bool {
        self.is_too_far_ahead(version.wall_ms)
    }

    /// Whether `wall_ms` lies more than the allowed skew ahead of now.
    pub fn is_too_far_ahead(&self, wall_ms_seen: u64) -> bool {
        wall_ms_seen > wall_ms().saturating_add(self.max_skew_ms)
    }

    /// The id stamped on this clock's versions.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// A version later than every version this clock made or observed.
    pub fn tick(&self) -> Version {
        self.advance(None)
    }

    /// Takes note of a version seen elsewhere, so later ticks order after
    /// it; false (and nothing noted) when it lies more than the allowed
    /// skew ahead of the wall clock, as a forged or broken clock would.
    pub fn observe(&self, seen: Version) -> bool {
        if self.is_from_the_future(seen) {
            return false;
        }
        self.advance(Some(seen));
        true
    }

    fn advance(&self, seen: Option<Version>) -> Version {
        let now = wall_ms();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (mut wall, mut counter) = *last;
        let seen = seen.map_or((0, 0), |v| (v.wall_ms, v.counter));
        if now > wall && now > seen.0 {
            (wall, counter) = (now, 0);
        } else if seen.0 > wall {
            (wall, counter) = (seen.0, seen.1);
            bump(&mut wall, &mut counter);
        } else if seen.0 == wall {
            counter = counter.max(seen.1);
            bump(&mut wall, &mut counter);
        } else {
            bump(&mut wall, &mut counter);
        }
        *last = (wall, counter);
        Version {
            wall_ms: wall,
            counter,
            origin: self.origin,
        }
    }
}

/// The next instant after (`wall`, `counter`): the counter, or when it is
/// spent the wall part, so that a version is never repeated.
fn bump(wall: &mut u64, counter: &mut u32) {
    match counter.checked_add(1) {
        Some(next) => *counter = next,
        None => {
            *wall = wall.saturating_add(1);
            *counter = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SKEW: Duration = Duration::from_secs(2);

    #[test]
    fn a_version_beyond_the_skew_is_not_observed() {
        let clock = Clock::new(1, SKEW);
        let pinned = Version {
            wall_ms: u64::MAX,
            counter: u32::MAX,
            origin: 666,
        };
        assert!(!clock.observe(pinned));
        let next = clock.tick();
        assert!(next.wall_ms <= wall_ms() + 10, "{next:?}");
        let near = Version {
            wall_ms: wall_ms() + 1000,
            counter: 3,
            origin: 2,
        };
        assert!(clock.observe(near), "within the skew is noted");
        assert!(clock.tick() > near);
    }

    #[test]
    fn a_spent_counter_advances_the_wall_part() {
        let clock = Clock::new(1, SKEW);
        let edge = Version {
            wall_ms: wall_ms() + 1000,
            counter: u32::MAX,
            origin: 2,
        };
        assert!(clock.observe(edge));
        let next = clock.tick();
        assert!(next > edge, "{next:?} after {edge:?}");
        assert_eq!(next.wall_ms, edge.wall_ms + 1, "{next:?}");
    }

    #[test]
    fn ticks_only_move_forward() {
        let clock = Clock::new(7, SKEW);
        let mut previous = clock.tick();
        for _ in 0..10_000 {
            let next = clock.tick();
            assert!(next > previous, "{next:?} after {previous:?}");
            previous = next;
        }
        assert_eq!(previous.origin, 7);
    }

    #[test]
    fn a_clock_behind_orders_after_what_it_saw() {
        // Within the allowed skew (here two hours).
        let clock = Clock::new(1, Duration::from_secs(7200));
        let from_the_future = Version {
            wall_ms: wall_ms() + 3_600_000,
            counter: 5,
            origin: 2,
        };
        clock.observe(from_the_future);
        let next = clock.tick();
        assert!(
            next > from_the_future,
            "{next:?} must order after {from_the_future:?}"
        );
        assert_eq!(next.wall_ms, from_the_future.wall_ms);
    }

    #[test]
    fn origin_breaks_ties() {
        let a = Version {
            wall_ms: 10,
            counter: 0,
            origin: 1,
        };
        let b = Version {
            wall_ms: 10,
            counter: 0,
            origin: 2,
        };
        assert!(b > a);
    }
}
