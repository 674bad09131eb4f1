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

/// A hybrid logical clock.
#[derive(Debug)]
pub struct Clock {
    origin: u64,
    last: Mutex<(u64, u32)>,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Clock {
    /// A clock whose versions carry `origin`.
    pub fn new(origin: u64) -> Self {
        Self {
            origin,
            last: Mutex::new((0, 0)),
        }
    }

    /// The id stamped on this clock's versions.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// A version later than every version this clock made or observed.
    pub fn tick(&self) -> Version {
        self.advance(None)
    }

    /// Takes note of a version seen elsewhere, so later ticks order after it.
    pub fn observe(&self, seen: Version) {
        self.advance(Some(seen));
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
            (wall, counter) = (seen.0, seen.1.saturating_add(1));
        } else if seen.0 == wall {
            counter = counter.max(seen.1).saturating_add(1);
        } else {
            counter = counter.saturating_add(1);
        }
        *last = (wall, counter);
        Version {
            wall_ms: wall,
            counter,
            origin: self.origin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_only_move_forward() {
        let clock = Clock::new(7);
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
        let clock = Clock::new(1);
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
