//! Leadership as seen by singleton controllers: a watch channel carrying the fencing token.
//!
//! The token is the Lease's `leaseTransitions` after this replica's own compare-and-set
//! acquisition, so it grows with every change of leader. Singleton controllers stamp it on the
//! writes they make so a deposed leader's late writes can be refused.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leadership {
    Follower,
    Leader { token: u64 },
}

impl Leadership {
    pub fn token(self) -> Option<u64> {
        match self {
            Leadership::Leader { token } => Some(token),
            Leadership::Follower => None,
        }
    }
}

/// Whether this replica still leads with `token`. Singleton controllers check it right before
/// every write, not once per reconcile: leadership can be lost during a slow call in between.
pub fn still_leading(leadership: &tokio::sync::watch::Receiver<Leadership>, token: u64) -> bool {
    leadership.borrow().token() == Some(token)
}

/// One item each time this replica becomes leader, so it re-plans everything it may have missed.
pub fn became_leader(
    leadership: tokio::sync::watch::Receiver<Leadership>,
) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(leadership, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if rx.borrow_and_update().token().is_some() {
                return Some(((), rx));
            }
        }
    })
}
