//! Per-connection rate limits (sans-IO: time comes in as an argument).
//!
//! A token bucket per kind of request (sends, typing, sync). A request over the rate is refused
//! with `rate_limited` and the connection stays; a client that keeps going after being refused
//! `refusals_max` times in a row is closed with 4008 (PROTOCOL.md §5).

/// The close code for a client that ignores `rate_limited` (PROTOCOL.md §5).
pub const RATE_LIMITED_CLOSE: u16 = 4008;

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer `error` `rate_limited`.
    Refuse,
    /// Close the connection with [`RATE_LIMITED_CLOSE`].
    Close,
}

#[derive(Clone, Debug)]
pub struct Limiter {
    /// Tokens added per second.
    rate_per_s: u32,
    burst: u32,
    refusals_max: u32,
    /// In thousandths of a token, so that slow rates refill smoothly.
    milli_tokens: u64,
    last_ms: u64,
    refusals_in_row: u32,
}

impl Limiter {
    /// A full bucket of `burst` tokens at time `now_ms`.
    pub fn new(rate_per_s: u32, burst: u32, refusals_max: u32, now_ms: u64) -> Limiter {
        Limiter {
            rate_per_s,
            burst,
            refusals_max,
            milli_tokens: burst as u64 * 1000,
            last_ms: now_ms,
            refusals_in_row: 0,
        }
    }

    /// After a refusal: how long until the bucket holds a token again.
    pub fn retry_after_ms(&self) -> u64 {
        let missing = 1000u64.saturating_sub(self.milli_tokens);
        missing.div_ceil(u64::from(self.rate_per_s.max(1))).max(1)
    }

    pub fn check(&mut self, now_ms: u64) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = self.burst as u64 * 1000;
        self.milli_tokens = (self.milli_tokens + elapsed * self.rate_per_s as u64).min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            self.refusals_in_row = 0;
            return Verdict::Allow;
        }
        self.refusals_in_row += 1;
        if self.refusals_in_row > self.refusals_max {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_then_close_on_abuse() {
        let mut l = Limiter::new(10, 3, 5, 0);
        assert_eq!((0..3).map(|_| l.check(0)).collect::<Vec<_>>(), vec![Verdict::Allow; 3]);
        assert_eq!(l.check(0), Verdict::Refuse);
        assert_eq!(l.retry_after_ms(), 100, "10 per second: the next token in 100 ms");
        // 10 per second: one token every 100 ms.
        assert_eq!(l.check(99), Verdict::Refuse);
        assert_eq!(l.retry_after_ms(), 1);
        assert_eq!(l.check(110), Verdict::Allow);
        for _ in 0..5 {
            assert_eq!(l.check(110), Verdict::Refuse);
        }
        assert_eq!(l.check(110), Verdict::Close);
        // The bucket never holds more than its burst, however long the pause.
        let mut l = Limiter::new(10, 2, 5, 0);
        let allowed = (0..5).filter(|_| l.check(1_000_000) == Verdict::Allow).count();
        assert_eq!(allowed, 2);
        // Time going backwards (a clock step) neither adds tokens nor panics.
        assert_eq!(l.check(5), Verdict::Refuse);
    }
}
