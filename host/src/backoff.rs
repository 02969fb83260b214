//! Retry delays: exponential backoff with a cap and symmetric jitter.
//!
//! The delay before retry `n` (after failed attempt `n`, counting from 1) is
//! `min(cap, base * 2^(n-1))`, then scaled by a uniform factor in
//! `[1 - jitter, 1 + jitter]` so that jobs that failed together do not retry
//! together. The jittered delay may exceed `cap` by at most the jitter.

use std::time::Duration;

use rand::RngExt;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// Fraction in `[0, 1]`: 0.2 means ±20%.
    pub jitter: f64,
}

impl Default for Backoff {
    /// The seed's values: 1 s doubling to 60 s, ±20%.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before the retry that follows failed attempt `attempt`,
    /// before jitter.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(62);
        let factor = 1u64 << doublings;
        let base = u64::try_from(self.base.as_micros()).unwrap_or(u64::MAX);
        let cap = u64::try_from(self.cap.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(base.saturating_mul(factor).min(cap))
    }

    /// The jittered delay, drawing from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl rand::Rng) -> Duration {
        let nominal = self.nominal(attempt).as_secs_f64();
        let factor = if self.jitter > 0.0 {
            rng.random_range((1.0 - self.jitter)..=(1.0 + self.jitter))
        } else {
            1.0
        };
        Duration::from_secs_f64((nominal * factor).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn nominal_doubles_from_base_up_to_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=8).map(|n| b.nominal(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        // Attempt 0 is treated like attempt 1, and huge attempts saturate at the cap.
        assert_eq!(b.nominal(0), Duration::from_secs(1));
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jittered_delays_stay_within_bounds() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=10 {
            let nominal = b.nominal(attempt).as_secs_f64();
            for _ in 0..1_000 {
                let d = b.delay(attempt, &mut rng).as_secs_f64();
                assert!(d >= nominal * 0.8 - 1e-9, "{d} below -20% of {nominal}");
                assert!(d <= nominal * 1.2 + 1e-9, "{d} above +20% of {nominal}");
            }
        }
    }

    #[test]
    fn jitter_spreads_delays_across_the_band() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(42);
        // 2,000 draws around a 4 s nominal delay: split the ±20% band into
        // ten buckets; every bucket must be hit, none may hold most draws.
        let mut buckets = [0u32; 10];
        for _ in 0..2_000 {
            let d = b.delay(3, &mut rng).as_secs_f64();
            let pos = ((d - 3.2) / 1.6 * 10.0).floor().clamp(0.0, 9.0) as usize;
            buckets[pos] += 1;
        }
        assert!(
            buckets.iter().all(|&n| n > 100),
            "uneven spread: {buckets:?}"
        );
        assert!(
            buckets.iter().all(|&n| n < 400),
            "uneven spread: {buckets:?}"
        );
    }

    #[test]
    fn zero_jitter_is_exact() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(b.delay(2, &mut rng), Duration::from_secs(2));
    }
}
