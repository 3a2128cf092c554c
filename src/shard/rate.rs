//! Token buckets, the one rate-limiting primitive: a listener's share of the connect rate and
//! a client's publish rates are each one. Pure (fed the clock), so the limits that use them and
//! the link that holds a client's buckets both lean on this alone.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            rate,
            burst,
            last: now,
        }
    }

    /// Takes `n` tokens; when there are not enough, says how long until there would be (the
    /// tokens are taken anyway: the debt is paid by waiting).
    pub fn take(&mut self, n: f64, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// A client's publish buckets: packets and payload bytes.
pub struct RateLimiter {
    pub msgs: Option<TokenBucket>,
    pub bytes: Option<TokenBucket>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        assert!(b.take(1.0, t0).is_none());
        assert!(b.take(1.0, t0).is_none());
        assert!(b.take(1.0, t0).is_none());
        let wait = b.take(1.0, t0).expect("over the burst");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(b.take(1.0, t0 + Duration::from_millis(250)).is_none());
    }
}
