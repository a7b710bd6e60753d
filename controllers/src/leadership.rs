//! Leadership as seen by singleton controllers: a watch channel carrying the fencing token.
//!
//! The token is the Lease's `leaseTransitions` after this replica's own compare-and-set
//! acquisition, so it grows with every change of leader. Singleton controllers stamp it on the
//! writes they make so a deposed leader's late writes can be refused.

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leadership {
    Follower,
    Leader { token: u64 },
}

/// Receiver side handed to controllers.
pub type LeadershipWatch = watch::Receiver<Leadership>;

impl Leadership {
    pub fn token(self) -> Option<u64> {
        match self {
            Leadership::Leader { token } => Some(token),
            Leadership::Follower => None,
        }
    }
}

/// Waits until this replica leads, returning the token it leads with.
pub async fn until_leader(watch: &mut LeadershipWatch) -> Option<u64> {
    watch
        .wait_for(|l| l.token().is_some())
        .await
        .ok()
        .and_then(|l| l.token())
}
