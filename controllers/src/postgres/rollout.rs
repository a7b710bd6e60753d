//! Rolling changes and scale-down, pure: which one instance to change next, once the failover
//! decisions ([`super::failover::decide`]) find the cluster steady. A pod template change (image,
//! version, parameters, resources, affinity) replaces the replicas first, one at a time, each
//! coming back on its own volume and streaming from where it stopped; then the primary hands
//! over to an up-to-date replica in a switchover (no acknowledged write lost) and, now a
//! replica, is replaced last. A primary beyond `spec.instances` is switched away from before its
//! pod is removed, so scaling down never removes the primary.

use super::failover::Member;

/// A member and what its pod says.
#[derive(Clone, Debug)]
pub struct Instance<'a> {
    pub member: &'a Member,
    /// Its number (`db-3` is 3): instances above `spec.instances` are to be removed.
    pub ordinal: u32,
    /// Its pod was made from the cluster's current template.
    pub current: bool,
    /// Its pod is Ready and PostgreSQL answers.
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Every instance runs the current template and the primary is one to keep.
    Done,
    /// A change is due but not now (the cluster is not all healthy, or no replica could take
    /// over), and why.
    Wait(String),
    /// Delete this pod: it is recreated on its volume from the current template.
    Replace { name: String, reason: String },
    /// Switch the primary over to this replica first.
    Switchover { to: String, reason: String },
}

/// The next change, for a cluster of `wanted` instances whose primary is `primary`.
pub fn next(instances: &[Instance<'_>], primary: &str, wanted: u32) -> Next {
    let Some(serving) = instances.iter().find(|i| i.member.name == primary) else {
        return Next::Wait(format!("the primary {primary} has no pod"));
    };
    if instances.iter().all(|i| i.current) && serving.ordinal <= wanted {
        return Next::Done;
    }
    let replicas = || {
        instances
            .iter()
            .filter(|i| i.member.name != primary && i.ordinal <= wanted)
    };
    // Replacing a replica that is down already costs nothing, and may be what brings it back
    // (a fixed image or parameter).
    if let Some(broken) = replicas()
        .filter(|i| !i.current && !i.ready)
        .max_by_key(|i| i.ordinal)
    {
        return Next::Replace {
            name: broken.member.name.clone(),
            reason: format!(
                "{} is not ready and runs an old template",
                broken.member.name
            ),
        };
    }
    let streaming =
        |i: &Instance<'_>| i.ready && i.member.streams_from(serving.member.address.as_deref());
    if let Some(unhealthy) = replicas().find(|i| !streaming(i)) {
        return Next::Wait(format!(
            "{} is not streaming from the primary",
            unhealthy.member.name
        ));
    }
    let present = replicas().count() as u32 + u32::from(serving.ordinal <= wanted);
    if present < wanted {
        return Next::Wait(format!("{present} of {wanted} instances exist"));
    }
    if let Some(old) = replicas().filter(|i| !i.current).max_by_key(|i| i.ordinal) {
        return Next::Replace {
            name: old.member.name.clone(),
            reason: format!("{} runs an old template", old.member.name),
        };
    }
    let why = if serving.ordinal > wanted {
        format!("scale-down to {wanted}: {primary} is to be removed")
    } else if !serving.current {
        format!("rolling update: {primary} runs an old template")
    } else {
        return Next::Done;
    };
    let position = |i: &&Instance<'_>| {
        i.member
            .report
            .as_ref()
            .and_then(|r| r.wal_position)
            .unwrap_or(0)
    };
    let best = replicas().filter(|i| i.current).max_by(|a, b| {
        position(a)
            .cmp(&position(b))
            .then(b.ordinal.cmp(&a.ordinal))
    });
    match best {
        Some(target) => Next::Switchover {
            to: target.member.name.clone(),
            reason: why,
        },
        // A single instance has no one to hand over to: it restarts in place.
        None if serving.ordinal <= wanted && serving.ready => Next::Replace {
            name: primary.to_string(),
            reason: format!("{why}; a single instance restarts in place"),
        },
        None => Next::Wait(format!("{why}, and no up-to-date replica can take over")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::failover::Report;
    use crate::postgres::instance::{Role, State};

    fn member(name: &str, primary: bool, position: u64) -> Member {
        let role = if primary {
            Role::Primary
        } else {
            Role::Replica {
                primary: "10.0.0.1:5432".into(),
            }
        };
        Member {
            name: name.into(),
            address: Some(if primary {
                "10.0.0.1:5432".into()
            } else {
                format!("10.0.0.{}:5432", name.len())
            }),
            report: Some(Report {
                state: State {
                    epoch: 1,
                    role: role.clone(),
                    synchronous: None,
                },
                running: true,
                writable: primary,
                wal_position: Some(position),
                streaming_from: (!primary).then(|| "10.0.0.1:5432".to_string()),
            }),
        }
    }

    fn instance(member: &Member, current: bool) -> Instance<'_> {
        Instance {
            member,
            ordinal: member.name.rsplit('-').next().unwrap().parse().unwrap(),
            current,
            ready: true,
        }
    }

    fn replace(name: &str) -> impl Fn(&Next) -> bool + '_ {
        move |next| matches!(next, Next::Replace { name: n, .. } if n == name)
    }

    #[test]
    fn replicas_go_first_the_highest_first_then_the_primary_hands_over_to_the_most_advanced() {
        let (a, b, c) = (
            member("db-1", true, 100),
            member("db-2", false, 90),
            member("db-3", false, 80),
        );
        let all_old = [
            instance(&a, false),
            instance(&b, false),
            instance(&c, false),
        ];
        assert!(replace("db-3")(&next(&all_old, "db-1", 3)));
        let c_done = [instance(&a, false), instance(&b, false), instance(&c, true)];
        assert!(replace("db-2")(&next(&c_done, "db-1", 3)));
        let (b2, c2) = (member("db-2", false, 70), member("db-3", false, 95));
        let replicas_done = [
            instance(&a, false),
            instance(&b2, true),
            instance(&c2, true),
        ];
        assert_eq!(
            next(&replicas_done, "db-1", 3),
            Next::Switchover {
                to: "db-3".into(),
                reason: "rolling update: db-1 runs an old template".into()
            }
        );
        let all_current = [instance(&a, true), instance(&b, true), instance(&c, true)];
        assert_eq!(next(&all_current, "db-1", 3), Next::Done);
    }

    #[test]
    fn nothing_healthy_is_touched_while_an_instance_is_down_but_a_broken_old_one_is_replaced() {
        let (a, b, c) = (
            member("db-1", true, 100),
            member("db-2", false, 90),
            member("db-3", false, 80),
        );
        let mut healthy_but_down = [instance(&a, true), instance(&b, true), instance(&c, true)];
        healthy_but_down[2].ready = false;
        assert_eq!(next(&healthy_but_down, "db-1", 3), Next::Done);
        let mut down = [instance(&a, false), instance(&b, false), instance(&c, true)];
        down[2].ready = false;
        assert!(matches!(next(&down, "db-1", 3), Next::Wait(why) if why.contains("db-3")));
        let mut broken = [instance(&a, true), instance(&b, true), instance(&c, false)];
        broken[2].ready = false;
        assert!(replace("db-3")(&next(&broken, "db-1", 3)));
        let missing = [instance(&a, false), instance(&b, false)];
        assert!(matches!(next(&missing, "db-1", 3), Next::Wait(why) if why.contains("2 of 3")));
    }

    #[test]
    fn scaling_down_switches_away_from_a_primary_beyond_the_count_and_never_removes_it() {
        let (a, b, c) = (
            member("db-3", true, 100),
            member("db-1", false, 90),
            member("db-2", false, 95),
        );
        let cluster = [instance(&a, true), instance(&b, true), instance(&c, true)];
        assert_eq!(
            next(&cluster, "db-3", 2),
            Next::Switchover {
                to: "db-2".into(),
                reason: "scale-down to 2: db-3 is to be removed".into()
            }
        );
        let alone = [instance(&a, true)];
        assert!(matches!(next(&alone, "db-3", 1), Next::Wait(_)));
    }

    #[test]
    fn a_single_instance_restarts_in_place() {
        let a = member("db-1", true, 100);
        assert!(replace("db-1")(&next(&[instance(&a, false)], "db-1", 1)));
        assert_eq!(next(&[instance(&a, true)], "db-1", 1), Next::Done);
    }
}
