//! A start line for client threads that connect first and start together: like
//! `std::sync::Barrier`, but a thread that fails before it gets there says why, and every
//! waiter, the main thread included, hears it at once instead of waiting for good.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Gate {
    parties: usize,
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    arrived: usize,
    failed: Option<String>,
}

impl Gate {
    pub fn new(parties: usize) -> Arc<Gate> {
        Arc::new(Gate { parties, state: Mutex::default(), cv: Condvar::new() })
    }

    /// Waits until every party has arrived. An error if one failed first (its reason), or if
    /// they are not all there within `timeout`.
    pub fn arrive(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.arrived += 1;
        self.cv.notify_all();
        loop {
            if let Some(why) = &state.failed {
                anyhow::bail!("a client thread failed: {why}");
            }
            if state.arrived >= self.parties {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                anyhow::bail!("{} of {} client threads ready after {timeout:?}", state.arrived, self.parties);
            }
            state = self.cv.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The main thread's side: waits for every client thread at the line. If one failed, or
    /// not all came in time, joins them all and returns an error with each one's reason.
    pub fn start<T>(
        &self,
        timeout: Duration,
        threads: Vec<std::thread::JoinHandle<anyhow::Result<T>>>,
    ) -> anyhow::Result<Vec<std::thread::JoinHandle<anyhow::Result<T>>>> {
        match self.arrive(timeout) {
            Ok(()) => Ok(threads),
            Err(e) => {
                // The threads that failed say why; the others were released by the failure.
                let reasons: Vec<String> = threads
                    .into_iter()
                    .filter_map(|h| h.join().ok().and_then(|r| r.err()))
                    .map(|e| format!("{e:#}"))
                    .collect();
                if reasons.is_empty() {
                    Err(e)
                } else {
                    Err(e.context(reasons.join("; ")))
                }
            }
        }
    }

    /// This party will not arrive: everyone waiting hears why.
    pub fn fail(&self, why: &anyhow::Error) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.failed.get_or_insert_with(|| format!("{why:#}"));
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_before_the_line_releases_everyone_with_its_reason() {
        let gate = Gate::new(3);
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.arrive(Duration::from_secs(60)))
        };
        gate.fail(&anyhow::anyhow!("recipient 7: connection refused"));
        let e = waiter.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("recipient 7: connection refused"), "{e}");
        assert!(gate.arrive(Duration::from_secs(60)).is_err());
        // All there: everyone goes; too few: a timeout, not a hang.
        let gate = Gate::new(2);
        let other = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.arrive(Duration::from_secs(60)))
        };
        gate.arrive(Duration::from_secs(60)).unwrap();
        other.join().unwrap().unwrap();
        let e = Gate::new(2).arrive(Duration::from_millis(10)).unwrap_err();
        assert!(e.to_string().contains("1 of 2"), "{e}");
    }
}
