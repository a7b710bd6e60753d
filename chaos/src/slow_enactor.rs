//! The slow enactor of the October 2025 outage: an enactor that stalls between reading a plan
//! (and the server's fence) and writing it, long enough for newer plans to go live meanwhile.

use std::time::Duration;

use tracing::warn;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowEnactor {
    /// Stall before every write; zero disables the fault.
    pub delay: Duration,
}

impl SlowEnactor {
    pub fn new(delay: Duration) -> Self {
        SlowEnactor { delay }
    }

    pub fn is_active(&self) -> bool {
        !self.delay.is_zero()
    }

    /// Called by the enactor after it decided to write plan `generation` and before it writes.
    pub async fn stall_before_write(&self, fqdn: &str, generation: u64) {
        if self.is_active() {
            warn!(fqdn, generation, delay = ?self.delay, "chaos: slow enactor stalls before writing");
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stalls_for_exactly_the_configured_delay() {
        let slow = SlowEnactor::new(Duration::from_millis(1500));
        let started = tokio::time::Instant::now();
        slow.stall_before_write("api.example.com", 3).await;
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        let off = SlowEnactor::default();
        assert!(!off.is_active());
        let started = tokio::time::Instant::now();
        off.stall_before_write("api.example.com", 3).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
