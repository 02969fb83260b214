//! A plugin's rate limit (`rate_per_second` in its manifest): attempts of
//! its type started per second on this host, as a token bucket holding up
//! to one second's worth. The producer asks how many attempts it may start
//! now ([`RateLimit::available`]), and takes tokens for the jobs it leased.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// Starts full: a second's worth may start at once.
    pub fn new(per_second: f64, now: Instant) -> RateLimit {
        RateLimit {
            per_second,
            bucket: Mutex::new(Bucket {
                tokens: per_second.max(1.0),
                at: now,
            }),
        }
    }

    fn refill(&self, now: Instant) -> std::sync::MutexGuard<'_, Bucket> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.per_second.max(1.0));
        b.at = now;
        b
    }

    /// How many attempts may start now; if none, how long until one may.
    pub fn available(&self, now: Instant) -> (usize, Option<Duration>) {
        let b = self.refill(now);
        if b.tokens >= 1.0 {
            return (b.tokens.floor() as usize, None);
        }
        let wait = (1.0 - b.tokens) / self.per_second;
        (0, Some(Duration::from_secs_f64(wait)))
    }

    /// `n` attempts were leased.
    pub fn take(&self, n: usize, now: Instant) {
        let mut b = self.refill(now);
        b.tokens -= n as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_one_seconds_worth_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let limit = RateLimit::new(10.0, t0);
        assert_eq!(limit.available(t0), (10, None));
        limit.take(10, t0);
        let (n, wait) = limit.available(t0);
        assert_eq!(n, 0);
        assert!((wait.unwrap().as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(limit.available(t0 + Duration::from_millis(350)).0, 3);
        // Never more than a second's worth, however long it rested.
        assert_eq!(limit.available(t0 + Duration::from_secs(60)).0, 10);
    }

    #[test]
    fn a_slow_rate_lets_one_through_then_waits() {
        let t0 = Instant::now();
        let limit = RateLimit::new(0.5, t0);
        assert_eq!(limit.available(t0), (1, None));
        limit.take(1, t0);
        let (n, wait) = limit.available(t0 + Duration::from_secs(1));
        assert_eq!(n, 0);
        assert!((wait.unwrap().as_secs_f64() - 1.0).abs() < 1e-9, "{wait:?}");
        assert_eq!(limit.available(t0 + Duration::from_secs(2)).0, 1);
    }
}
