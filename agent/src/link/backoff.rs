//! Reconnection delays: exponential with full jitter, so a coordinator restart is not met by
//! every agent at the same instant.

use std::time::Duration;

use rand::Rng;

/// The ceiling of the first delay; each failure doubles it up to the configured cap.
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(500);

/// A session that lasted longer than this was healthy: the next failure starts over from
/// [`INITIAL_BACKOFF`].
pub(crate) const HEALTHY_SESSION: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay: `initial × 2^attempt`, capped.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A delay drawn uniformly from zero to the current ceiling; raises the ceiling.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rng.random_range(0.0..=1.0))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn ceilings_double_from_half_a_second_up_to_the_cap() {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, Duration::from_secs(60));
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_secs_f64());
            backoff.next_delay(&mut rng);
        }
        assert_eq!(
            ceilings,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
        );
    }

    #[test]
    fn delays_stay_within_zero_and_the_ceiling() {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, Duration::from_secs(5));
        let mut rng = StdRng::seed_from_u64(7);
        let mut total = Duration::ZERO;
        for _ in 0..1000 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay(&mut rng);
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
            assert!(delay <= Duration::from_secs(5));
            total += delay;
        }
        // Full jitter averages half the cap: far from always zero or always the cap.
        let mean = total.as_secs_f64() / 1000.0;
        assert!((1.5..3.5).contains(&mean), "mean delay {mean}");
    }

    #[test]
    fn reset_starts_over_and_huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, Duration::from_secs(60));
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            backoff.next_delay(&mut rng);
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(60));
        backoff.reset();
        assert_eq!(backoff.ceiling(), INITIAL_BACKOFF);
    }
}
