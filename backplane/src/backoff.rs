//! Redial delays: exponential with full jitter (each delay drawn uniformly from zero to the
//! current ceiling), so that nodes that lost a peer at the same moment do not redial it in
//! step.

use rand::Rng;

#[derive(Clone, Debug)]
pub struct Backoff {
    base_ms: u64,
    cap_ms: u64,
    attempts: u32,
}

impl Backoff {
    pub fn new(base_ms: u64, cap_ms: u64) -> Backoff {
        Backoff { base_ms, cap_ms, attempts: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_ms(&mut self, rng: &mut impl Rng) -> u64 {
        let ceiling = self.base_ms.saturating_mul(1u64 << self.attempts.min(32)).min(self.cap_ms);
        self.attempts = self.attempts.saturating_add(1);
        rng.gen_range(0..=ceiling)
    }

    /// A connection worked: start again from the base.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_under_a_doubling_ceiling_up_to_the_cap() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut backoff = Backoff::new(100, 2_000);
        let ceilings = [100, 200, 400, 800, 1_600, 2_000, 2_000];
        for ceiling in ceilings {
            assert!(backoff.next_ms(&mut rng) <= ceiling);
        }
        backoff.reset();
        let delays: Vec<u64> = (0..1000)
            .map(|_| {
                backoff.reset();
                backoff.next_ms(&mut rng)
            })
            .collect();
        assert!(delays.iter().all(|d| *d <= 100));
        // Full jitter: the draws spread over the whole range, not bunched at the ceiling.
        assert!(delays.iter().any(|d| *d < 20) && delays.iter().any(|d| *d > 80));
    }
}
