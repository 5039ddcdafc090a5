//! How many spare contexts a shared browser keeps: `context_spares` at rest, more while
//! creates come faster than Chrome makes contexts.
//!
//! Each spare is a context with its first tab open (a renderer: about 16 MiB of the
//! browser's memory on the headless shell), so a few are kept at rest. A create that finds
//! none waits for Chrome to make a context and its tab; past the first such miss the target
//! doubles, up to `context_spares_burst`, so that the rest of a burst finds spares made
//! while its first creates ran. After `quiet` (`context_spares_burst_seconds`) without a
//! miss it is back at rest, and the spares above it are closed.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct SpareTarget {
    at_rest: usize,
    burst: usize,
    /// How long without a miss before the target is back at rest.
    quiet: Duration,
    /// The target since the last miss, and when that was.
    raised: Option<(usize, Instant)>,
}

impl SpareTarget {
    /// `burst` below `at_rest` is taken as `at_rest` (no growth); none at rest is none
    /// ever (spares off).
    pub(crate) fn new(at_rest: usize, burst: usize, quiet: Duration) -> Self {
        SpareTarget {
            at_rest,
            burst: if at_rest == 0 { 0 } else { burst.max(at_rest) },
            quiet,
            raised: None,
        }
    }

    /// A create found no spare at `now`: the target doubles (from at least one), up to the
    /// burst ceiling.
    pub(crate) fn missed(&mut self, now: Instant) {
        let current = self.target(now);
        let raised = (current.max(1) * 2).min(self.burst);
        if raised > self.at_rest {
            self.raised = Some((raised, now));
        }
    }

    /// The spares to keep at `now`.
    pub(crate) fn target(&self, now: Instant) -> usize {
        match self.raised {
            Some((raised, since)) if now.saturating_duration_since(since) < self.quiet => raised,
            _ => self.at_rest,
        }
    }

    /// When the target is back at rest if no create misses before (`now` if it is).
    pub(crate) fn rest_at(&self, now: Instant) -> Instant {
        match self.raised {
            Some((_, since)) => (since + self.quiet).max(now),
            None => now,
        }
    }

    /// The most it can be: how many gateway ports spares may hold at once.
    pub(crate) fn ceiling(&self) -> usize {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_secs(30);

    #[test]
    fn a_burst_doubles_the_target_up_to_the_ceiling_and_quiet_brings_it_back() {
        let start = Instant::now();
        let mut target = SpareTarget::new(2, 8, QUIET);
        assert_eq!(target.target(start), 2);
        target.missed(start);
        assert_eq!(target.target(start), 4);
        target.missed(start + Duration::from_secs(1));
        assert_eq!(target.target(start + Duration::from_secs(1)), 8);
        target.missed(start + Duration::from_secs(2));
        assert_eq!(target.target(start + Duration::from_secs(2)), 8, "held at the ceiling");
        // The quiet counts from the last miss.
        assert_eq!(target.target(start + Duration::from_secs(31)), 8);
        assert_eq!(target.target(start + Duration::from_secs(32)), 2);
        // A miss after the quiet starts from rest again.
        target.missed(start + Duration::from_secs(40));
        assert_eq!(target.target(start + Duration::from_secs(40)), 4);
        assert_eq!(
            target.rest_at(start + Duration::from_secs(41)),
            start + Duration::from_secs(70),
            "at rest a quiet after the last miss"
        );
        assert_eq!(
            target.rest_at(start + Duration::from_secs(80)),
            start + Duration::from_secs(80)
        );
    }

    #[test]
    fn no_growth_without_room_above_rest() {
        let now = Instant::now();
        let mut fixed = SpareTarget::new(2, 2, QUIET);
        fixed.missed(now);
        assert_eq!(fixed.target(now), 2);
        let mut lower = SpareTarget::new(3, 1, QUIET);
        lower.missed(now);
        assert_eq!((lower.target(now), lower.ceiling()), (3, 3));
        // None at rest: spares are off, bursts or not.
        let mut none = SpareTarget::new(0, 4, QUIET);
        none.missed(now);
        assert_eq!((none.target(now), none.ceiling()), (0, 0));
        assert_eq!(none.rest_at(now), now);
    }
}
