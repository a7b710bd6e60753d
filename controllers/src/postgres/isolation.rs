//! Self-fencing: a primary that has heard neither from the API server nor from any replica for
//! the isolation bound stops acknowledging writes at once. Either contact alone keeps it
//! serving: with the API server it would learn of a failover (and be fenced by the operator);
//! with a replica streaming, the replicas still see it, so the operator does not fail over
//! (a cut between the operator and the primary alone is not a failover). Only when both are
//! gone could the rest of the cluster have elected a new primary without it knowing.
//!
//! The bound: a failover needs the primary unreachable for the failover delay, so with the
//! isolation bound (plus one check period) below the failover delay, the old primary has
//! stopped before a new one is promoted: no two instances acknowledge writes at once.

use std::time::{Duration, Instant};

/// When the primary last heard from each side.
#[derive(Clone, Copy, Debug)]
pub struct Contacts {
    pub api_server: Instant,
    pub replica: Instant,
}

impl Contacts {
    /// Starting out (or becoming primary) counts as contact: a primary is given the whole bound.
    pub fn fresh(now: Instant) -> Self {
        Contacts {
            api_server: now,
            replica: now,
        }
    }

    /// How long the primary has heard from no one.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.api_server.max(self.replica))
    }

    pub fn isolated(&self, now: Instant, bound: Duration) -> bool {
        self.silent_for(now) >= bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_contact_keeps_a_primary_serving_and_losing_both_fences_it_after_the_bound() {
        let start = Instant::now();
        let bound = Duration::from_secs(5);
        let mut contacts = Contacts::fresh(start);
        assert!(!contacts.isolated(start + Duration::from_secs(4), bound));
        // The API server is gone but a replica keeps replying: not isolated.
        contacts.replica = start + Duration::from_secs(8);
        assert!(!contacts.isolated(start + Duration::from_secs(12), bound));
        // Then the replica goes quiet too: isolated once the bound has passed since the last.
        assert!(!contacts.isolated(start + Duration::from_millis(12_999), bound));
        assert!(contacts.isolated(start + Duration::from_secs(13), bound));
        // The API server alone also keeps it serving.
        contacts.api_server = start + Duration::from_secs(20);
        assert!(!contacts.isolated(start + Duration::from_secs(24), bound));
    }
}
