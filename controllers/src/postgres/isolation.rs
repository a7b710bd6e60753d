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
//!
//! Contact is timed conservatively, on this instance's clock only: an API answer counts from when
//! its request was sent, and a replica reply (whose own timestamp is the standby's clock) counts
//! from the previous check, the latest moment it is known not to have arrived yet. Counting a
//! reply seen "within the bound" as contact now would stretch the bound to nearly twice itself.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The standbys' last replies as the primary lists them: (walsender pid, reply time as text).
/// A pair not seen at the previous check is a reply (or a new connection) since then.
pub type Replies = BTreeSet<(i32, String)>;

/// When the primary last heard from each side.
#[derive(Clone, Debug)]
pub struct Contacts {
    pub api_server: Instant,
    pub replica: Instant,
    replies: Replies,
    checked: Instant,
}

impl Contacts {
    /// Starting out (or becoming primary) counts as contact: a primary is given the whole bound.
    pub fn fresh(now: Instant) -> Self {
        Contacts {
            api_server: now,
            replica: now,
            replies: Replies::new(),
            checked: now,
        }
    }

    /// Records one check of the standbys made at `now`.
    pub fn replies_seen(&mut self, replies: Replies, now: Instant) {
        if replies.difference(&self.replies).next().is_some() {
            self.replica = self.replica.max(self.checked);
        }
        self.replies = replies;
        self.checked = now;
    }

    /// Records an API server answer to a request sent at `sent`.
    pub fn api_server_answered(&mut self, sent: Instant) {
        self.api_server = self.api_server.max(sent);
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

    fn replies(list: &[(i32, &str)]) -> Replies {
        list.iter()
            .map(|(pid, at)| (*pid, at.to_string()))
            .collect()
    }

    #[test]
    fn either_contact_keeps_a_primary_serving_and_losing_both_fences_it_after_the_bound() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let bound = Duration::from_secs(5);
        let mut contacts = Contacts::fresh(start);
        assert!(!contacts.isolated(at(4), bound));
        // The API server is gone but a replica keeps replying: not isolated.
        contacts.replies_seen(replies(&[(7, "r1")]), at(7));
        contacts.replies_seen(replies(&[(7, "r2")]), at(8));
        assert!(!contacts.isolated(at(11), bound));
        // Then the replica goes quiet too (its reply time stops changing): isolated once the
        // bound has passed since the last check that saw a new reply began.
        contacts.replies_seen(replies(&[(7, "r2")]), at(9));
        contacts.replies_seen(replies(&[(7, "r2")]), at(10));
        assert!(!contacts.isolated(at(11) + Duration::from_millis(999), bound));
        assert!(contacts.isolated(at(12), bound));
        // The API server alone also keeps it serving, counted from when its request was sent.
        contacts.api_server_answered(at(20));
        assert!(!contacts.isolated(at(24), bound));
        assert!(contacts.isolated(at(25), bound));
    }

    #[test]
    fn a_standby_going_away_is_not_contact_but_a_new_connection_is() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let bound = Duration::from_secs(3);
        let mut contacts = Contacts::fresh(start);
        contacts.replies_seen(replies(&[(7, "r1"), (8, "r1")]), at(1));
        // Reply seen at 1 counts from the check before it (start).
        assert_eq!(contacts.replica, start);
        contacts.replies_seen(replies(&[(8, "r1")]), at(2));
        contacts.replies_seen(replies(&[]), at(3));
        assert!(contacts.isolated(at(3), bound));
        contacts.replies_seen(replies(&[(9, "r5")]), at(4));
        assert_eq!(contacts.replica, at(3));
    }
}
