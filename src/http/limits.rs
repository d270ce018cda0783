//! Per-user request rate limit: a token bucket per user on this node, touched once per request
//! (never per frame). Buckets that have refilled are forgotten, so idle users cost nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::UserId;

/// Buckets kept before full ones are swept out.
const SWEEP_ABOVE: usize = 10_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<UserId, Bucket>>,
}

impl RateLimiter {
    /// `per_sec` requests a second on average, `burst` at once; `per_sec == 0` disables it.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `user`, or says how long until one is available.
    pub fn check(&self, user: &UserId, now: Instant) -> Result<(), Duration> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > SWEEP_ABOVE {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let bucket = buckets.entry(user.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.per_sec;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_sec,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_requests_are_paced() {
        let limiter = RateLimiter::new(2, 3);
        let ana = UserId::parse("ana").unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(&ana, t0).is_ok());
        }
        let wait = limiter.check(&ana, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limiter.check(&ana, t0 + Duration::from_millis(500)).is_ok());
        assert!(
            limiter.check(&UserId::parse("bob").unwrap(), t0).is_ok(),
            "per user"
        );
    }

    #[test]
    fn zero_disables_the_limit() {
        let limiter = RateLimiter::new(0, 1);
        let ana = UserId::parse("ana").unwrap();
        for _ in 0..100 {
            assert!(limiter.check(&ana, Instant::now()).is_ok());
        }
    }
}
