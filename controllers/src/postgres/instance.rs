//! The instance manager's decisions, pure: which commands it accepts and what its PostgreSQL
//! must become. The cluster epoch only grows; an instance persists the highest it has accepted
//! and refuses anything older, so a stale operator (or a command delayed in the network) can
//! never promote, fence or redirect an instance behind a newer failover's back. The driver
//! (`manager.rs`) persists the state *before* acting on it.

use serde::{Deserialize, Serialize};

/// What this instance's PostgreSQL is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
pub enum Role {
    /// Accepts writes for its epoch.
    Primary,
    /// Streams from `primary` (`host:port`).
    Replica { primary: String },
    /// Stopped on command: no client is served until a `follow` brings it back as a replica.
    Fenced,
    /// A primary stopped cleanly for a switchover: every write it acknowledged is in WAL up to
    /// its final checkpoint, which the target replays before it is promoted. It can follow the
    /// new primary as it is, or be promoted again if the switchover is called off.
    Demoted,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Primary => write!(f, "the primary"),
            Role::Replica { primary } => write!(f, "a replica of {primary}"),
            Role::Fenced => write!(f, "fenced"),
            Role::Demoted => write!(f, "demoted"),
        }
    }
}

impl Role {
    /// Whether PostgreSQL should be running in this role.
    pub fn serves(&self) -> bool {
        matches!(self, Role::Primary | Role::Replica { .. })
    }
}

/// What the instance persists on its volume.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct State {
    /// The highest cluster epoch this instance has accepted.
    pub epoch: u64,
    #[serde(flatten)]
    pub role: Role,
    /// The standbys a commit waits for while this instance is primary; none: commits are
    /// acknowledged without waiting for any standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<Synchronous>,
}

/// `ANY count (standbys…)`: a commit is acknowledged once `count` of these standbys (by
/// application name) have flushed it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Synchronous {
    pub count: u32,
    pub standbys: Vec<String>,
}

impl Synchronous {
    /// The `synchronous_standby_names` value.
    pub fn standby_names(&self) -> String {
        let names: Vec<String> = self.standbys.iter().map(|n| format!("\"{n}\"")).collect();
        format!("ANY {} ({})", self.count, names.join(", "))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum Command {
    Promote {
        epoch: u64,
    },
    Fence {
        epoch: u64,
    },
    Demote {
        epoch: u64,
    },
    Follow {
        primary: String,
        epoch: u64,
    },
    /// Which standbys commits wait for (`count: 0` or no standbys: none).
    Synchronous {
        epoch: u64,
        count: u32,
        standbys: Vec<String>,
    },
}

impl Command {
    pub fn epoch(&self) -> u64 {
        match self {
            Command::Promote { epoch }
            | Command::Fence { epoch }
            | Command::Demote { epoch }
            | Command::Follow { epoch, .. }
            | Command::Synchronous { epoch, .. } => *epoch,
        }
    }
}

/// What the driver does to PostgreSQL to carry out an accepted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Already so (a retried command): nothing to do.
    Nothing,
    /// End recovery: the replica becomes a primary.
    Promote,
    /// Stop at once (immediate shutdown: sessions are cut, nothing new is accepted).
    StopImmediately,
    /// Re-read the configuration (the synchronous standbys changed).
    Reload,
    /// Stop cleanly (fast shutdown: sessions end, a final checkpoint is written and sent to the
    /// standbys streaming from it).
    StopCleanly,
    /// Restart as a replica of `primary`; `rewind` (pg_rewind, or a new copy if that fails) when
    /// this instance was a primary (or fenced one) whose history may have diverged from the new
    /// primary's.
    Follow { primary: String, rewind: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "epoch {requested} is older than epoch {accepted}, the highest this instance has accepted"
    )]
    StaleEpoch { requested: u64, accepted: u64 },
    #[error(
        "promote needs an epoch newer than {accepted} (got {requested}): this instance already took part in epoch {accepted}, whose primary may still be writing"
    )]
    PromoteNeedsNewEpoch { requested: u64, accepted: u64 },
    #[error("a fenced instance is not promoted; it rejoins with follow first")]
    FencedCannotPromote,
    #[error("only a primary is demoted; this instance is {role}")]
    NotPrimary { role: String },
    #[error("{0}")]
    InvalidSynchronous(String),
    #[error(
        "the primary of epoch {epoch} cannot follow {primary} in the same epoch; a new primary means a new epoch"
    )]
    PrimaryFollowsInItsOwnEpoch { epoch: u64, primary: String },
}

/// The next state and what to do, or why the command is refused (state unchanged).
pub fn decide(state: &State, command: &Command) -> Result<(State, Action), Refusal> {
    let requested = command.epoch();
    if requested < state.epoch {
        return Err(Refusal::StaleEpoch {
            requested,
            accepted: state.epoch,
        });
    }
    let next = |role: Role| State {
        epoch: requested,
        role,
        synchronous: state.synchronous.clone(),
    };
    if let Command::Synchronous {
        count, standbys, ..
    } = command
    {
        let wanted = synchronous(*count, standbys)?;
        let action = if wanted == state.synchronous {
            Action::Nothing
        } else {
            Action::Reload
        };
        let mut next = next(state.role.clone());
        next.synchronous = wanted;
        return Ok((next, action));
    }
    match (command, &state.role) {
        (Command::Promote { .. }, Role::Primary) if requested == state.epoch => {
            Ok((state.clone(), Action::Nothing))
        }
        (Command::Promote { .. }, Role::Fenced) => Err(Refusal::FencedCannotPromote),
        // At most one primary per epoch: an instance that already accepted this epoch as a
        // replica (or as the old primary) must not become a second writer in it.
        (Command::Promote { .. }, _) if requested == state.epoch => {
            Err(Refusal::PromoteNeedsNewEpoch {
                requested,
                accepted: state.epoch,
            })
        }
        (Command::Promote { .. }, _) => Ok((next(Role::Primary), Action::Promote)),
        (Command::Demote { .. }, Role::Primary) => Ok((next(Role::Demoted), Action::StopCleanly)),
        (Command::Demote { .. }, Role::Demoted) => Ok((next(Role::Demoted), Action::Nothing)),
        (Command::Demote { .. }, role) => Err(Refusal::NotPrimary {
            role: role.to_string(),
        }),
        (Command::Fence { .. }, Role::Fenced) => Ok((next(Role::Fenced), Action::Nothing)),
        (Command::Fence { .. }, _) => Ok((next(Role::Fenced), Action::StopImmediately)),
        (Command::Follow { primary, .. }, Role::Primary) if requested == state.epoch => {
            Err(Refusal::PrimaryFollowsInItsOwnEpoch {
                epoch: state.epoch,
                primary: primary.clone(),
            })
        }
        (Command::Follow { primary, .. }, Role::Replica { primary: current })
            if current == primary =>
        {
            Ok((next(state.role.clone()), Action::Nothing))
        }
        (Command::Synchronous { .. }, _) => unreachable!("decided above"),
        (Command::Follow { primary, .. }, role) => {
            // A replica's and a cleanly demoted primary's history is a prefix of the new
            // primary's; a primary or fenced one's may not be.
            let rewind = !matches!(role, Role::Replica { .. } | Role::Demoted);
            let action = Action::Follow {
                primary: primary.clone(),
                rewind,
            };
            Ok((
                next(Role::Replica {
                    primary: primary.clone(),
                }),
                action,
            ))
        }
    }
}

/// The synchronous setting a command asks for, checked: the names go into the configuration.
fn synchronous(count: u32, standbys: &[String]) -> Result<Option<Synchronous>, Refusal> {
    if count == 0 || standbys.is_empty() {
        return Ok(None);
    }
    if count as usize > standbys.len() {
        return Err(Refusal::InvalidSynchronous(format!(
            "ANY {count} of {} standbys can never be satisfied",
            standbys.len()
        )));
    }
    if let Some(bad) = standbys.iter().find(|n| {
        n.is_empty()
            || n.len() > 63
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        return Err(Refusal::InvalidSynchronous(format!(
            "standby name {bad:?}: use letters, digits, '-' and '_' (at most 63)"
        )));
    }
    Ok(Some(Synchronous {
        count,
        standbys: standbys.to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(epoch: u64, role: Role) -> State {
        State {
            epoch,
            role,
            synchronous: None,
        }
    }

    fn follow(primary: &str, epoch: u64) -> Command {
        Command::Follow {
            primary: primary.into(),
            epoch,
        }
    }

    fn replica_of(primary: &str) -> Role {
        Role::Replica {
            primary: primary.into(),
        }
    }

    #[test]
    fn an_older_epoch_is_refused_naming_both() {
        let primary = state(5, Role::Primary);
        let refusal = decide(&primary, &Command::Fence { epoch: 4 }).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "epoch 4 is older than epoch 5, the highest this instance has accepted"
        );
    }

    #[test]
    fn a_replica_is_promoted_only_into_a_newer_epoch() {
        let replica = state(3, replica_of("db-0:5432"));
        assert_eq!(
            decide(&replica, &Command::Promote { epoch: 4 }),
            Ok((state(4, Role::Primary), Action::Promote))
        );
        assert_eq!(
            decide(&replica, &Command::Promote { epoch: 3 }),
            Err(Refusal::PromoteNeedsNewEpoch {
                requested: 3,
                accepted: 3
            })
        );
        // A retry of a promote that already happened changes nothing.
        let promoted = state(4, Role::Primary);
        assert_eq!(
            decide(&promoted, &Command::Promote { epoch: 4 }),
            Ok((promoted.clone(), Action::Nothing))
        );
    }

    #[test]
    fn fencing_stops_at_once_and_a_fenced_instance_rejoins_by_following_with_a_rewind() {
        let primary = state(3, Role::Primary);
        let (fenced, action) = decide(&primary, &Command::Fence { epoch: 4 }).unwrap();
        assert_eq!(
            (fenced.clone(), action),
            (state(4, Role::Fenced), Action::StopImmediately)
        );
        assert_eq!(
            decide(&fenced, &Command::Promote { epoch: 5 }),
            Err(Refusal::FencedCannotPromote)
        );
        assert_eq!(
            decide(&fenced, &follow("db-1:5432", 4)),
            Ok((
                state(4, replica_of("db-1:5432")),
                Action::Follow {
                    primary: "db-1:5432".into(),
                    rewind: true
                }
            ))
        );
    }

    #[test]
    fn a_primary_follows_only_into_a_newer_epoch() {
        let primary = state(3, Role::Primary);
        assert!(matches!(
            decide(&primary, &follow("db-1:5432", 3)),
            Err(Refusal::PrimaryFollowsInItsOwnEpoch { epoch: 3, .. })
        ));
        assert_eq!(
            decide(&primary, &follow("db-1:5432", 4)).unwrap().1,
            Action::Follow {
                primary: "db-1:5432".into(),
                rewind: true
            }
        );
        // A replica switching to a new primary needs no rewind; the same primary is a no-op.
        let replica = state(3, replica_of("db-0:5432"));
        assert_eq!(
            decide(&replica, &follow("db-1:5432", 4)).unwrap().1,
            Action::Follow {
                primary: "db-1:5432".into(),
                rewind: false
            }
        );
        assert_eq!(
            decide(&replica, &follow("db-0:5432", 3)).unwrap().1,
            Action::Nothing
        );
    }

    #[test]
    fn a_switchover_demotes_cleanly_and_the_old_primary_follows_without_a_rewind() {
        let primary = state(3, Role::Primary);
        let (demoted, action) = decide(&primary, &Command::Demote { epoch: 4 }).unwrap();
        assert_eq!(
            (demoted.clone(), action),
            (state(4, Role::Demoted), Action::StopCleanly)
        );
        assert_eq!(
            decide(&demoted, &follow("db-1:5432", 4)).unwrap().1,
            Action::Follow {
                primary: "db-1:5432".into(),
                rewind: false
            }
        );
        // Called off: the demoted primary, which has every write, may be promoted again.
        assert_eq!(
            decide(&demoted, &Command::Promote { epoch: 5 }),
            Ok((state(5, Role::Primary), Action::Promote))
        );
        let replica = state(3, replica_of("db-0:5432"));
        assert_eq!(
            decide(&replica, &Command::Demote { epoch: 4 })
                .unwrap_err()
                .to_string(),
            "only a primary is demoted; this instance is a replica of db-0:5432"
        );
    }

    #[test]
    fn synchronous_standbys_are_checked_and_kept_across_role_changes() {
        let primary = state(2, Role::Primary);
        let (next, action) = decide(
            &primary,
            &Command::Synchronous {
                epoch: 2,
                count: 1,
                standbys: vec!["db-1".into(), "db-2".into()],
            },
        )
        .unwrap();
        assert_eq!(action, Action::Reload);
        let wanted = next.synchronous.clone().unwrap();
        assert_eq!(wanted.standby_names(), "ANY 1 (\"db-1\", \"db-2\")");
        // The same again changes nothing; a demotion keeps it for a later promotion.
        let again = Command::Synchronous {
            epoch: 2,
            count: 1,
            standbys: vec!["db-1".into(), "db-2".into()],
        };
        assert_eq!(decide(&next, &again).unwrap().1, Action::Nothing);
        let (demoted, _) = decide(&next, &Command::Demote { epoch: 3 }).unwrap();
        assert_eq!(demoted.synchronous, Some(wanted));
        for (count, standbys, error) in [
            (
                3,
                vec!["db-1".to_string()],
                "ANY 3 of 1 standbys can never be satisfied",
            ),
            (
                1,
                vec!["db\"1".to_string()],
                "standby name \"db\\\"1\": use letters, digits, '-' and '_' (at most 63)",
            ),
        ] {
            let refused = decide(
                &primary,
                &Command::Synchronous {
                    epoch: 2,
                    count,
                    standbys,
                },
            )
            .unwrap_err();
            assert_eq!(refused.to_string(), error);
        }
        let (none, _) = decide(
            &next,
            &Command::Synchronous {
                epoch: 2,
                count: 0,
                standbys: vec![],
            },
        )
        .unwrap();
        assert_eq!(none.synchronous, None);
    }

    fn any_role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Primary),
            Just(Role::Fenced),
            Just(Role::Demoted),
            (0..3u8).prop_map(|i| replica_of(&format!("db-{i}:5432"))),
        ]
    }

    fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (0..6u64).prop_map(|epoch| Command::Promote { epoch }),
            (0..6u64).prop_map(|epoch| Command::Fence { epoch }),
            (0..6u64).prop_map(|epoch| Command::Demote { epoch }),
            (0..3u8, 0..6u64).prop_map(|(i, epoch)| Command::Follow {
                primary: format!("db-{i}:5432"),
                epoch
            }),
        ]
    }

    proptest! {
        /// Over any sequence of commands: the epoch never decreases, and an instance is promoted
        /// only into an epoch it had never accepted before (so, with the operator handing each
        /// new epoch to one candidate, no epoch gets a second writer).
        #[test]
        fn epochs_never_go_back_and_promotion_happens_once_per_epoch(
            role in any_role(),
            epoch in 0..3u64,
            commands in proptest::collection::vec(any_command(), 0..20),
        ) {
            let mut current = state(epoch, role);
            let mut promoted_in = std::collections::BTreeSet::new();
            for command in &commands {
                if let Ok((next, action)) = decide(&current, command) {
                    prop_assert!(next.epoch >= current.epoch);
                    prop_assert_eq!(next.epoch, command.epoch());
                    if action == Action::Promote {
                        prop_assert!(promoted_in.insert(next.epoch), "promoted twice in epoch {}", next.epoch);
                        prop_assert!(next.epoch > current.epoch);
                    }
                    current = next;
                }
            }
        }
    }
}
