//! The fencing protocol's decisions, shared by the production enactor and cleanup and by the
//! model checker (`controllers/model-check/tests/dns_model_check.rs`), so the checker proves what
//! ships.
//!
//! The token is the plan generation. It lives at the DNS server in a TXT record next to the
//! managed name (`_bulwark.<fqdn>` = `"gen=N owner=<endpoint UID> content=<hash prefix>"`), and
//! every enactment is one RFC 2136 UPDATE whose prerequisite is the exact fence value the enactor
//! last read: the server, not the enactor, decides whether a write is stale, and whose name it
//! is. The owner part is the record registry (as external-dns's TXT registry): a name with
//! records but no fence was not written by Bulwark, and a name fenced by another endpoint is that
//! endpoint's. The content part tells which plan of the generation the records are.

/// How enactors and cleanup protect the live plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The generation is checked at the server in the same UPDATE as the write, and cleanup keeps
    /// everything from the generation the server serves.
    #[default]
    Fenced,
    /// The October 2025 design, kept only so tests can show what fencing prevents: check the
    /// generation in memory then write unconditionally, and clean up by age, removing the records
    /// a collected plan wrote. Reachable only through a hidden test flag, never from the CRDs or
    /// the chart.
    Unfenced,
}

/// Owner name of the fence TXT record for a managed name.
pub fn fence_name(fqdn: &str) -> String {
    format!("_bulwark.{}", fqdn.trim_end_matches('.'))
}

/// The fence TXT record: the generation live at the server, the DnsEndpoint (UID) that owns the
/// name, which records of that generation it serves, and whether that owner removed the name. A
/// removed fence is a tombstone: it stays, so a lagging replica's UPDATE (whose prerequisite is the
/// old value) cannot bring the records back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub generation: u64,
    /// `None` only for fences written before owners were recorded (`gen=N`): Bulwark wrote them,
    /// so any endpoint of that name takes them as its own.
    pub owner: Option<String>,
    /// The start of the live plan's content hash. A plan deleted before its endpoint recorded it
    /// live is minted again under the same generation, with the records of the spec then: the
    /// generation alone cannot tell the two apart, and an enactor still holding the deleted one
    /// "repaired" the name back to its records. `None` in tombstones and in fences written before
    /// the content was recorded.
    pub content: Option<String>,
    pub removed: bool,
}

/// Hex digits of a plan's content hash a fence carries: 64 bits, for telling apart two plans of
/// one endpoint and generation.
const FENCE_CONTENT_DIGITS: usize = 16;

impl Fence {
    /// The fence of plan `generation` with content hash `content_hash`, owned by `owner`.
    pub fn live(generation: u64, owner: &str, content_hash: &str) -> Self {
        let digits = content_hash
            .get(..FENCE_CONTENT_DIGITS)
            .unwrap_or(content_hash);
        Fence {
            generation,
            owner: Some(owner.to_owned()),
            content: Some(digits.to_owned()),
            removed: false,
        }
    }

    /// The tombstone this fence's owner leaves when it removes the name.
    pub fn tombstone(&self, owner: &str) -> Self {
        Fence {
            generation: self.generation,
            owner: Some(owner.to_owned()),
            content: None,
            removed: true,
        }
    }

    /// Whether the server serves the plan with content hash `content_hash` under this fence, as
    /// far as the fence says: one written before contents were recorded says nothing against it.
    pub fn holds_content(&self, content_hash: &str) -> bool {
        self.content
            .as_deref()
            .is_none_or(|digits| content_hash.starts_with(digits))
    }

    pub fn owned_by(&self, owner: &str) -> bool {
        self.owner.as_deref().is_none_or(|o| o == owner)
    }

    /// The TXT value, for example `gen=4 owner=2f0c… content=9a1e…` or `gen=4 owner=2f0c… removed`.
    pub fn value(&self) -> String {
        let mut value = format!("gen={}", self.generation);
        if let Some(owner) = &self.owner {
            value.push_str(" owner=");
            value.push_str(owner);
        }
        if let Some(content) = &self.content {
            value.push_str(" content=");
            value.push_str(content);
        }
        if self.removed {
            value.push_str(" removed");
        }
        value
    }

    /// The fence a TXT value holds, or `None` for anything Bulwark did not write.
    pub fn parse(value: &str) -> Option<Fence> {
        let mut parts = value.split(' ');
        let generation = parts.next()?.strip_prefix("gen=")?.parse().ok()?;
        if generation == 0 {
            return None;
        }
        let owner = match parts.next() {
            None => {
                return Some(Fence {
                    generation,
                    owner: None,
                    content: None,
                    removed: false,
                });
            }
            Some(part) => part.strip_prefix("owner=").filter(|o| !o.is_empty())?,
        };
        let mut next = parts.next();
        let content = match next.and_then(|part| part.strip_prefix("content=")) {
            Some("") => return None,
            Some(digits) => {
                next = parts.next();
                Some(digits.to_owned())
            }
            None => None,
        };
        let removed = match next {
            None => false,
            Some("removed") => true,
            Some(_) => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Fence {
            generation,
            owner: Some(owner.to_owned()),
            content,
            removed,
        })
    }
}

/// Why an endpoint may not write its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Conflict {
    /// The name has records and no fence: Bulwark did not write them.
    ForeignRecords,
    /// Another DnsEndpoint (this UID) owns the name.
    OwnedBy(String),
}

/// What an enactor does with the newest plan once it has read the server's fence.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Enactment {
    /// Write the plan over this exact fence (`None`: there is none).
    Apply {
        expect: Option<Fence>,
    },
    /// Nobody owns the name (no fence, or another endpoint's tombstone): take it, but only if it
    /// has no records Bulwark did not write, unless the endpoint adopts them.
    Claim {
        expect: Option<Fence>,
    },
    /// The server already serves this generation; only verification is left.
    AlreadyLive,
    /// The server serves another plan of this generation (this one's object was deleted and the
    /// planner minted the generation again, or the reverse): only the generation's current
    /// object may be written, over exactly this fence.
    OtherContentLive {
        expect: Fence,
    },
    /// The server serves a newer generation: the plan is marked Superseded and never retried.
    Superseded {
        live: u64,
    },
    /// This endpoint removed the name (it is being deleted): nothing may be written again.
    Removed,
    Conflict(Conflict),
}

/// Decide from the plan's generation and content hash and the fence just read from the server. A
/// missing fence or an older one (server restored from backup, manual edit) is repaired by
/// applying the plan. Called again with a fresh read after the server rejects a prerequisite.
pub fn decide_enactment(
    plan_generation: u64,
    plan_content_hash: &str,
    fence: Option<&Fence>,
    owner: &str,
) -> Enactment {
    match fence {
        None => Enactment::Claim { expect: None },
        Some(f) if !f.owned_by(owner) && f.removed => Enactment::Claim {
            expect: Some(f.clone()),
        },
        Some(f) if !f.owned_by(owner) => {
            Enactment::Conflict(Conflict::OwnedBy(f.owner.clone().unwrap_or_default()))
        }
        Some(f) if f.removed => Enactment::Removed,
        Some(f) if f.generation > plan_generation => Enactment::Superseded { live: f.generation },
        Some(f) if f.generation == plan_generation && f.holds_content(plan_content_hash) => {
            Enactment::AlreadyLive
        }
        Some(f) if f.generation == plan_generation => {
            Enactment::OtherContentLive { expect: f.clone() }
        }
        Some(f) => Enactment::Apply {
            expect: Some(f.clone()),
        },
    }
}

/// RFC 2136 prerequisites of an UPDATE: the fence holds exactly `expect` (`None`: does not
/// exist), and with `name_unclaimed` the name has no A or AAAA records at all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FenceGuard {
    pub expect: Option<Fence>,
    pub name_unclaimed: bool,
}

/// The guard an UPDATE carries; `None` writes unconditionally (the unfenced strategy only).
pub fn write_guard(strategy: Strategy, guard: FenceGuard) -> Option<FenceGuard> {
    match strategy {
        Strategy::Fenced => Some(guard),
        Strategy::Unfenced => None,
    }
}

/// Prerequisite failures in one pass before yielding to other work (the fence keeps moving).
pub const MAX_FENCE_REFUSALS: u32 = 5;

/// One enactment pass over one plan, as a step function: the driver performs each [`PassStep`]
/// against the DNS server and feeds the answer back as an [`Observation`]. The production enactor
/// and the model checker run this same machine, so every interleaving the checker explores is one
/// the enactor can take.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EnactmentPass {
    generation: u64,
    content_hash: String,
    owner: String,
    adopt: bool,
    strategy: Strategy,
    refused: u32,
    /// This pass's UPDATE made the plan live (it, not another replica, enacted it).
    applied: bool,
    /// Verification already rewrote the records once under this plan's fence.
    repaired: bool,
    /// The fence as last read.
    fence: Option<Fence>,
    /// The fence under which the name was seen with records while unclaimed: if a fresh read
    /// still shows it, the records are someone else's (another enactor's claim lands fence and
    /// records together, so it would show its fence).
    records_seen_under: Option<Option<Fence>>,
    awaiting: Awaiting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Awaiting {
    Start,
    Fence,
    /// Whether an unowned name has records before claiming it.
    Unclaimed,
    Write,
    Served,
    Repair,
    /// Whether this pass's plan is still its generation's current object.
    Plan,
}

/// What the server answered to the last [`PassStep`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Observation {
    /// Nothing yet: the first call.
    Start,
    Fence(Option<Fence>),
    Written(super::provider::WriteOutcome),
    /// Whether the authoritative answer equals the plan's records, and whether it is empty.
    Served {
        matches_plan: bool,
        empty: bool,
    },
    /// Whether the API server (a read from it, not a cache) still holds this pass's plan object.
    Plan {
        current: bool,
    },
}

/// The next I/O the driver performs, or the pass's end.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PassStep {
    ReadFence,
    /// Write the plan's records and its fence in one UPDATE carrying `guard`. `repair` marks a
    /// rewrite under the plan's own, already live fence (records edited at the server).
    Write {
        guard: Option<FenceGuard>,
        repair: bool,
    },
    ReadServed,
    /// Read the pass's plan object from the API server: the fence holds another plan of its
    /// generation.
    ReadPlan,
    Done(PassOutcome),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PassOutcome {
    /// The fence holds this plan's generation. `verified`: the answer matched the plan on the
    /// last read; `applied`: this pass's own UPDATE made it live.
    Live {
        applied: bool,
        verified: bool,
    },
    /// The server holds a newer generation: the plan is marked Superseded and never retried.
    Superseded {
        live: u64,
    },
    /// The fence kept moving under this pass; try again shortly.
    Contended,
    /// The plan's object is gone from the API server while another plan of its generation is
    /// live: nothing is written, and the cache brings the generation's current plan.
    Outdated,
    /// The name was removed by this endpoint: nothing is written.
    Removed,
    Conflict(Conflict),
}

impl EnactmentPass {
    /// A pass writing plan `generation` (content hash `content_hash`) for the endpoint `owner`
    /// (its UID); `adopt` lets it take over a name whose records Bulwark did not write.
    pub fn new(
        generation: u64,
        content_hash: &str,
        owner: &str,
        adopt: bool,
        strategy: Strategy,
    ) -> Self {
        EnactmentPass {
            generation,
            content_hash: content_hash.to_owned(),
            owner: owner.to_owned(),
            adopt,
            strategy,
            refused: 0,
            applied: false,
            repaired: false,
            fence: None,
            records_seen_under: None,
            awaiting: Awaiting::Start,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The fence this pass writes.
    pub fn fence(&self) -> Fence {
        Fence::live(self.generation, &self.owner, &self.content_hash)
    }

    fn write(&self, expect: Option<Fence>, name_unclaimed: bool, repair: bool) -> PassStep {
        let guard = FenceGuard {
            expect,
            name_unclaimed,
        };
        PassStep::Write {
            guard: write_guard(self.strategy, guard),
            repair,
        }
    }

    /// Feed the answer to the previous step; returns the next one.
    pub fn step(&mut self, observation: Observation) -> PassStep {
        use super::provider::WriteOutcome::{Applied, FenceMismatch};
        let step = match (self.awaiting, observation) {
            (Awaiting::Start, _) => PassStep::ReadFence,
            (Awaiting::Fence, Observation::Fence(fence)) => {
                let seen_under = self.records_seen_under.take();
                self.fence = fence;
                match decide_enactment(
                    self.generation,
                    &self.content_hash,
                    self.fence.as_ref(),
                    &self.owner,
                ) {
                    Enactment::Apply { expect } => self.write(expect, false, false),
                    Enactment::Claim { expect } if self.adopt => self.write(expect, false, false),
                    Enactment::Claim { ref expect } if seen_under.as_ref() == Some(expect) => {
                        PassStep::Done(PassOutcome::Conflict(Conflict::ForeignRecords))
                    }
                    Enactment::Claim { .. } => PassStep::ReadServed,
                    Enactment::AlreadyLive => PassStep::ReadServed,
                    // Which of the two is current is the API server's to say: the holder of a
                    // deleted one must not write, the holder of its successor must.
                    Enactment::OtherContentLive { .. } => PassStep::ReadPlan,
                    Enactment::Superseded { live } => {
                        PassStep::Done(PassOutcome::Superseded { live })
                    }
                    Enactment::Removed => PassStep::Done(PassOutcome::Removed),
                    Enactment::Conflict(conflict) => {
                        PassStep::Done(PassOutcome::Conflict(conflict))
                    }
                }
            }
            (Awaiting::Plan, Observation::Plan { current: true }) => {
                // Over exactly the fence read: if it moved since, the server refuses the write and
                // the pass decides again.
                self.write(self.fence.clone(), false, false)
            }
            (Awaiting::Plan, Observation::Plan { current: false }) => {
                PassStep::Done(PassOutcome::Outdated)
            }
            (Awaiting::Unclaimed, Observation::Served { empty: true, .. }) => {
                // The UPDATE re-checks both at the server: records added meanwhile refuse it.
                self.write(self.fence.clone(), true, false)
            }
            (Awaiting::Unclaimed, Observation::Served { empty: false, .. }) => {
                // Another enactor of this endpoint may have just claimed the name: look again.
                self.records_seen_under = Some(self.fence.clone());
                PassStep::ReadFence
            }
            (Awaiting::Write | Awaiting::Repair, Observation::Written(Applied)) => {
                self.applied |= self.awaiting == Awaiting::Write;
                PassStep::ReadServed
            }
            (Awaiting::Write | Awaiting::Repair, Observation::Written(FenceMismatch)) => {
                self.refused += 1;
                if self.refused >= MAX_FENCE_REFUSALS {
                    PassStep::Done(PassOutcome::Contended)
                } else {
                    // The fence moved since it was read: read it again and decide again, so a
                    // newer live generation ends the pass as Superseded, never as Live.
                    PassStep::ReadFence
                }
            }
            (
                Awaiting::Served,
                Observation::Served {
                    matches_plan: true, ..
                },
            ) => PassStep::Done(PassOutcome::Live {
                applied: self.applied,
                verified: true,
            }),
            (Awaiting::Served, Observation::Served { .. }) if !self.repaired => {
                // Records edited under this plan's fence: rewrite them, fenced on the fence just
                // read (this very generation) so nothing newer can be overwritten.
                self.repaired = true;
                let expect = if self.applied {
                    Some(self.fence())
                } else {
                    self.fence.clone()
                };
                self.write(expect, false, true)
            }
            (Awaiting::Served, Observation::Served { .. }) => PassStep::Done(PassOutcome::Live {
                applied: self.applied,
                verified: false,
            }),
            (awaiting, observation) => {
                panic!("enactment pass awaiting {awaiting:?} was fed {observation:?}")
            }
        };
        self.awaiting = match &step {
            PassStep::ReadFence => Awaiting::Fence,
            PassStep::Write { repair: false, .. } => Awaiting::Write,
            PassStep::Write { repair: true, .. } => Awaiting::Repair,
            PassStep::ReadServed if self.awaiting == Awaiting::Fence && !self.fence_is_mine() => {
                Awaiting::Unclaimed
            }
            PassStep::ReadServed => Awaiting::Served,
            PassStep::ReadPlan => Awaiting::Plan,
            PassStep::Done(_) => self.awaiting,
        };
        step
    }

    fn fence_is_mine(&self) -> bool {
        self.fence
            .as_ref()
            .is_some_and(|f| f.owned_by(&self.owner) && !f.removed)
    }
}

/// Why an enactor refuses a plan: only what the planner could have minted for this endpoint is
/// written, whoever created the object.
pub fn plan_refusal(plan: &PlanFacts<'_>, endpoint: &EndpointFacts<'_>) -> Option<String> {
    if !plan
        .fqdn
        .trim_end_matches('.')
        .eq_ignore_ascii_case(endpoint.fqdn.trim_end_matches('.'))
    {
        return Some(format!(
            "plan is for {} but its endpoint manages {}",
            plan.fqdn, endpoint.fqdn
        ));
    }
    let bound = trusted_bound(endpoint.reserved_generation, endpoint.live_generation);
    if plan.generation > bound {
        return Some(format!(
            "generation {} was never reserved: the endpoint's newest reserved generation is {}, and only the generation right after the live one ({}) needs no reservation",
            plan.generation,
            endpoint.reserved_generation,
            endpoint
                .live_generation
                .map_or("none".into(), |g| g.to_string()),
        ));
    }
    if plan.empty && !endpoint.allow_empty {
        return Some(
            "plan has no records and the endpoint does not set allowEmpty: enacting it would empty the name"
                .into(),
        );
    }
    None
}

/// What [`plan_refusal`] checks of a plan.
pub struct PlanFacts<'a> {
    pub fqdn: &'a str,
    pub generation: u64,
    pub empty: bool,
}

/// What [`plan_refusal`] checks a plan against.
pub struct EndpointFacts<'a> {
    pub fqdn: &'a str,
    pub reserved_generation: u64,
    /// The live generation the endpoint's status records.
    pub live_generation: Option<u64>,
    pub allow_empty: bool,
}

/// The newest generation an enactor accepts for an endpoint: the reserved one, or the one right
/// after the live one. The planner mints the generation after the live one without reserving it
/// (its create under the plan's deterministic name is the compare-and-set between planners, and
/// the fence at the server decides between enactors); a plan minted while another is pending
/// is reserved first. A plan above this bound could jump the fence far ahead of the planner.
pub fn trusted_bound(reserved: u64, live: Option<u64>) -> u64 {
    reserved.max(live.unwrap_or(0) + 1)
}

/// What one cleanup pass removes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cleanup {
    /// Plan generations whose `DnsPlan` objects are deleted (each with a UID precondition).
    pub delete_plans: Vec<u64>,
    /// Generations whose records are also removed from the server. Always empty when fenced:
    /// records only ever change through a fenced enactment.
    pub delete_records_of: Vec<u64>,
}

/// Decide which plans to collect. `server_fence` is the fence read from the server at cleanup
/// time, never a remembered value; plans older than `live − retention` go, so the live plan
/// (and anything a stale enactor could still be holding that is newer) stays.
pub fn decide_cleanup(
    strategy: Strategy,
    plan_generations: &[u64],
    server_fence: Option<u64>,
    retention: u64,
) -> Cleanup {
    let basis = match strategy {
        Strategy::Fenced => server_fence,
        Strategy::Unfenced => plan_generations.iter().copied().max(),
    };
    let Some(basis) = basis else {
        return Cleanup::default();
    };
    let keep_from = basis.saturating_sub(retention);
    let mut delete_plans: Vec<u64> = plan_generations
        .iter()
        .copied()
        .filter(|g| *g < keep_from)
        .collect();
    delete_plans.sort_unstable();
    let delete_records_of = match strategy {
        Strategy::Fenced => Vec::new(),
        Strategy::Unfenced => delete_plans.clone(),
    };
    Cleanup {
        delete_plans,
        delete_records_of,
    }
}

/// Whether fenced cleanup could delete any plan while the live generation is at most
/// `live_at_most`. When it could not, the fence need not be read: every converged endpoint's
/// resync skipped one exchange.
pub fn cleanup_may_delete(plan_generations: &[u64], live_at_most: u64, retention: u64) -> bool {
    let keep_from = live_at_most.saturating_sub(retention);
    plan_generations.iter().any(|g| *g < keep_from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::provider::WriteOutcome::{Applied, FenceMismatch};

    #[test]
    fn cleanup_is_skipped_only_when_no_live_generation_up_to_the_reservation_deletes_a_plan() {
        for retention in 0..3 {
            for reserved in 0..8 {
                for plans in [vec![], vec![reserved], vec![1, 2, 3], vec![4, 5, 6, 7]] {
                    let may = cleanup_may_delete(&plans, reserved, retention);
                    let would = (0..=reserved).any(|live| {
                        !decide_cleanup(Strategy::Fenced, &plans, Some(live), retention)
                            .delete_plans
                            .is_empty()
                    });
                    assert_eq!(
                        may, would,
                        "plans {plans:?}, reserved {reserved}, retention {retention}"
                    );
                }
            }
        }
    }

    const ME: &str = "6b1c0e4e-uid-of-this-endpoint";
    const OTHER: &str = "0d2a7f51-uid-of-another";
    /// The content hash of the plan every pass here writes, and of another plan.
    const CONTENT: &str = "9a1e6f0c2b7d4e58a3c1f09b6d2e7a4c5b8f1e3d0a9c6b2f7e4d1a8c5b3f0e6d";
    const OTHER_CONTENT: &str = "41d7c09e8b2a6f35e1c4d8b7a0f3e6c9d2b5a8f1e4c7b0d3a6f9e2c5b8a1d4e7";

    fn mine(generation: u64) -> Fence {
        Fence::live(generation, ME, CONTENT)
    }

    #[test]
    fn fence_round_trips_and_rejects_foreign_values() {
        for generation in [1, 2, 99, u64::MAX] {
            let live = mine(generation);
            assert_eq!(Fence::parse(&live.value()), Some(live.clone()));
            let tombstone = live.tombstone(ME);
            assert_eq!(Fence::parse(&tombstone.value()), Some(tombstone));
        }
        assert_eq!(
            Fence::parse("gen=3"),
            Some(Fence {
                generation: 3,
                owner: None,
                content: None,
                removed: false
            }),
            "fences written before owners were recorded"
        );
        let before_contents = Fence::parse("gen=3 owner=a").unwrap();
        assert_eq!(before_contents.content, None);
        assert!(before_contents.holds_content(CONTENT));
        assert_eq!(
            mine(3).value(),
            format!("gen=3 owner={ME} content=9a1e6f0c2b7d4e58")
        );
        assert!(mine(3).holds_content(CONTENT));
        assert!(!mine(3).holds_content(OTHER_CONTENT));
        assert_eq!(
            mine(3).tombstone(ME).value(),
            format!("gen=3 owner={ME} removed")
        );
        for foreign in [
            "",
            "gen=",
            "gen=0",
            "gen=-1",
            "gen=1x",
            "v=spf1",
            "GEN=3",
            "gen=3 owner=",
            "gen=3 owner=a deleted",
            "gen=3 owner=a removed x",
            "gen=3  owner=a",
            "gen=3 owner=a content=",
            "gen=3 owner=a removed content=9a1e",
            "gen=3 owner=a content=9a1e content=9a1e",
        ] {
            assert_eq!(Fence::parse(foreign), None, "{foreign:?}");
        }
        assert_eq!(fence_name("api.example.com."), "_bulwark.api.example.com");
    }

    #[test]
    fn enactment_applies_only_over_older_own_fences_and_claims_only_unowned_names() {
        let decide = |fence: Option<Fence>| decide_enactment(3, CONTENT, fence.as_ref(), ME);
        assert_eq!(decide(None), Enactment::Claim { expect: None });
        assert_eq!(
            decide(Some(mine(2))),
            Enactment::Apply {
                expect: Some(mine(2))
            }
        );
        assert_eq!(decide(Some(mine(3))), Enactment::AlreadyLive);
        let reminted = Fence::live(3, ME, OTHER_CONTENT);
        assert_eq!(
            decide(Some(reminted.clone())),
            Enactment::OtherContentLive { expect: reminted },
            "another plan of generation 3 is live"
        );
        assert_eq!(
            decide(Some(Fence::parse(&format!("gen=3 owner={ME}")).unwrap())),
            Enactment::AlreadyLive,
            "a fence from before contents were recorded"
        );
        assert_eq!(decide(Some(mine(7))), Enactment::Superseded { live: 7 });
        let legacy = Fence::parse("gen=2").unwrap();
        assert_eq!(
            decide(Some(legacy.clone())),
            Enactment::Apply {
                expect: Some(legacy)
            }
        );
        assert_eq!(
            decide(Some(Fence::live(1, OTHER, CONTENT))),
            Enactment::Conflict(Conflict::OwnedBy(OTHER.into()))
        );
        let released = Fence::live(9, OTHER, OTHER_CONTENT).tombstone(OTHER);
        assert_eq!(
            decide(Some(released.clone())),
            Enactment::Claim {
                expect: Some(released)
            }
        );
        assert_eq!(decide(Some(mine(2).tombstone(ME))), Enactment::Removed);
    }

    /// Runs a pass against a scripted server: `answers` are fed in order.
    fn run(generation: u64, adopt: bool, answers: &[Observation]) -> Vec<PassStep> {
        let mut pass = EnactmentPass::new(generation, CONTENT, ME, adopt, Strategy::Fenced);
        let mut steps = vec![pass.step(Observation::Start)];
        for answer in answers {
            steps.push(pass.step(answer.clone()));
        }
        steps
    }

    fn served(matches_plan: bool, empty: bool) -> Observation {
        Observation::Served {
            matches_plan,
            empty,
        }
    }

    fn write(expect: Option<Fence>, name_unclaimed: bool, repair: bool) -> PassStep {
        PassStep::Write {
            guard: Some(FenceGuard {
                expect,
                name_unclaimed,
            }),
            repair,
        }
    }

    #[test]
    fn a_pass_writes_over_an_older_fence_and_verifies() {
        let steps = run(
            3,
            false,
            &[
                Observation::Fence(Some(mine(2))),
                Observation::Written(Applied),
                served(true, false),
            ],
        );
        assert_eq!(
            steps,
            vec![
                PassStep::ReadFence,
                write(Some(mine(2)), false, false),
                PassStep::ReadServed,
                PassStep::Done(PassOutcome::Live {
                    applied: true,
                    verified: true
                }),
            ]
        );
    }

    #[test]
    fn an_unowned_name_is_claimed_only_without_foreign_records_unless_adopted() {
        let claim = run(
            1,
            false,
            &[
                Observation::Fence(None),
                served(false, true),
                Observation::Written(Applied),
                served(true, false),
            ],
        );
        assert_eq!(claim[2], write(None, true, false), "{claim:?}");
        assert_eq!(
            claim.last(),
            Some(&PassStep::Done(PassOutcome::Live {
                applied: true,
                verified: true
            }))
        );
        let foreign = run(
            1,
            false,
            &[
                Observation::Fence(None),
                served(false, false),
                Observation::Fence(None),
            ],
        );
        assert_eq!(
            foreign.last(),
            Some(&PassStep::Done(PassOutcome::Conflict(
                Conflict::ForeignRecords
            )))
        );
        // The records were another replica's claim landing: its fence shows on the re-read.
        let raced = run(
            1,
            false,
            &[
                Observation::Fence(None),
                served(false, false),
                Observation::Fence(Some(mine(1))),
                served(true, false),
            ],
        );
        assert_eq!(
            raced.last(),
            Some(&PassStep::Done(PassOutcome::Live {
                applied: false,
                verified: true
            }))
        );
        let adopted = run(1, true, &[Observation::Fence(None)]);
        assert_eq!(adopted.last(), Some(&write(None, false, false)));
        let taken = run(
            1,
            false,
            &[Observation::Fence(Some(Fence::live(1, OTHER, CONTENT)))],
        );
        assert_eq!(
            taken.last(),
            Some(&PassStep::Done(PassOutcome::Conflict(Conflict::OwnedBy(
                OTHER.into()
            ))))
        );
    }

    #[test]
    fn a_refused_repair_ends_superseded_never_live() {
        // Plan 3 is live, its records were edited; while repairing, plan 4 went live. Before the
        // fix the refused repair counted as verified, and status said 3 while 4 was served.
        let steps = run(
            3,
            false,
            &[
                Observation::Fence(Some(mine(3))),
                served(false, false),
                Observation::Written(FenceMismatch),
                Observation::Fence(Some(mine(4))),
            ],
        );
        assert_eq!(steps[2], write(Some(mine(3)), false, true));
        assert_eq!(
            steps.last(),
            Some(&PassStep::Done(PassOutcome::Superseded { live: 4 }))
        );
    }

    /// The plan of generation 3 was deleted before it was recorded live and minted again with
    /// other records. The holder of the deleted one must never put its records back over its
    /// successor's; before fences carried the content, its repair did, and the name flapped
    /// between the two until its cache caught up.
    #[test]
    fn only_the_current_plan_of_a_generation_minted_again_is_written() {
        let successor = Fence::live(3, ME, OTHER_CONTENT);
        let stale = run(
            3,
            false,
            &[
                Observation::Fence(Some(mine(2))),
                Observation::Written(Applied),
                // The successor's holder wrote its records over this pass's.
                served(false, false),
                Observation::Written(FenceMismatch),
                Observation::Fence(Some(successor.clone())),
                Observation::Plan { current: false },
            ],
        );
        assert_eq!(stale[3], write(Some(mine(3)), false, true), "{stale:?}");
        assert_eq!(stale[5], PassStep::ReadPlan);
        assert_eq!(stale.last(), Some(&PassStep::Done(PassOutcome::Outdated)));

        let current = run(
            3,
            false,
            &[
                Observation::Fence(Some(successor.clone())),
                Observation::Plan { current: true },
                Observation::Written(Applied),
                served(true, false),
            ],
        );
        assert_eq!(
            current,
            vec![
                PassStep::ReadFence,
                PassStep::ReadPlan,
                write(Some(successor), false, false),
                PassStep::ReadServed,
                PassStep::Done(PassOutcome::Live {
                    applied: true,
                    verified: true
                }),
            ]
        );
    }

    #[test]
    fn a_pass_yields_after_repeated_refusals_and_repairs_only_once() {
        let mut answers = Vec::new();
        for fence in 0..MAX_FENCE_REFUSALS as u64 {
            answers.push(Observation::Fence(Some(mine(fence + 1))));
            answers.push(Observation::Written(FenceMismatch));
        }
        let steps = run(9, false, &answers);
        assert_eq!(steps.last(), Some(&PassStep::Done(PassOutcome::Contended)));
        let unverified = run(
            3,
            false,
            &[
                Observation::Fence(Some(mine(3))),
                served(false, false),
                Observation::Written(Applied),
                served(false, false),
            ],
        );
        assert_eq!(
            unverified.last(),
            Some(&PassStep::Done(PassOutcome::Live {
                applied: false,
                verified: false
            }))
        );
        let removed = run(3, false, &[Observation::Fence(Some(mine(3).tombstone(ME)))]);
        assert_eq!(removed.last(), Some(&PassStep::Done(PassOutcome::Removed)));
    }

    #[test]
    fn plans_the_planner_could_not_have_minted_are_refused() {
        let endpoint = EndpointFacts {
            fqdn: "api.example.com",
            reserved_generation: 4,
            live_generation: Some(2),
            allow_empty: false,
        };
        let plan = |fqdn, generation, empty| PlanFacts {
            fqdn,
            generation,
            empty,
        };
        assert_eq!(
            plan_refusal(&plan("api.example.com.", 4, false), &endpoint),
            None
        );
        let other = plan_refusal(&plan("bank.example.com", 2, false), &endpoint).unwrap();
        assert!(other.contains("bank.example.com"), "{other}");
        let forged = plan_refusal(&plan("api.example.com", 5, false), &endpoint).unwrap();
        assert!(forged.contains("never reserved"), "{forged}");
        // Nothing pending: the generation right after the live one needs no reservation, the
        // one after that does.
        let converged = EndpointFacts {
            live_generation: Some(4),
            ..endpoint
        };
        assert_eq!(
            plan_refusal(&plan("api.example.com", 5, false), &converged),
            None
        );
        assert!(plan_refusal(&plan("api.example.com", 6, false), &converged).is_some());
        let new_endpoint = EndpointFacts {
            reserved_generation: 0,
            live_generation: None,
            ..endpoint
        };
        assert_eq!(
            plan_refusal(&plan("api.example.com", 1, false), &new_endpoint),
            None
        );
        assert!(plan_refusal(&plan("api.example.com", 2, false), &new_endpoint).is_some());
        let empty = plan_refusal(&plan("api.example.com", 3, true), &endpoint).unwrap();
        assert!(empty.contains("allowEmpty"), "{empty}");
        let allowing = EndpointFacts {
            allow_empty: true,
            ..endpoint
        };
        assert_eq!(
            plan_refusal(&plan("api.example.com", 3, true), &allowing),
            None
        );
    }

    #[test]
    fn unfenced_writes_carry_no_guard() {
        let guard = FenceGuard {
            expect: Some(mine(4)),
            name_unclaimed: false,
        };
        assert_eq!(
            write_guard(Strategy::Fenced, guard.clone()),
            Some(guard.clone())
        );
        assert_eq!(write_guard(Strategy::Unfenced, guard), None);
    }

    /// Fence values come from the DNS server: any text must parse or be refused, never panic,
    /// and whatever parses must write back as the same value.
    #[test]
    fn fuzz_fence_values() {
        bolero::check!().for_each(|bytes: &[u8]| {
            if let Ok(text) = std::str::from_utf8(bytes)
                && let Some(fence) = Fence::parse(text)
            {
                assert_eq!(Fence::parse(&fence.value()), Some(fence));
            }
        });
    }

    proptest::proptest! {
        /// Whatever the fence and plan, a pass never writes over a newer generation or another
        /// owner's live fence, and ends within a bounded number of steps.
        #[test]
        fn a_pass_never_writes_over_a_newer_or_foreign_fence(
            plan in 1u64..6,
            fences in proptest::collection::vec(
                proptest::option::of((1u64..8, proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY)),
                1..12,
            ),
            answers_match in proptest::collection::vec(proptest::bool::ANY, 12),
            plan_current in proptest::collection::vec(proptest::bool::ANY, 12),
            adopt in proptest::bool::ANY,
        ) {
            let to_fence = |(generation, foreign, removed, other_content): (u64, bool, bool, bool)| {
                let owner = if foreign { OTHER } else { ME };
                let content = if other_content { OTHER_CONTENT } else { CONTENT };
                let live = Fence::live(generation, owner, content);
                if removed { live.tombstone(owner) } else { live }
            };
            let mut pass = EnactmentPass::new(plan, CONTENT, ME, adopt, Strategy::Fenced);
            let mut said_current = false;
            let mut observation = Observation::Start;
            let mut fences = fences.into_iter().map(|f| f.map(to_fence));
            let mut current: Option<Fence> = None;
            for step in 0..64 {
                match pass.step(observation.clone()) {
                    PassStep::ReadFence => {
                        current = fences.next().unwrap_or(current.clone());
                        observation = Observation::Fence(current.clone());
                    }
                    PassStep::Write { guard, .. } => {
                        let guard = guard.expect("fenced writes carry a guard");
                        proptest::prop_assert_eq!(&guard.expect, &current);
                        if let Some(fence) = &current {
                            proptest::prop_assert!(
                                fence.generation <= plan || fence.removed && !fence.owned_by(ME),
                                "wrote plan {} over {:?}", plan, fence
                            );
                            proptest::prop_assert!(fence.owned_by(ME) || fence.removed);
                            proptest::prop_assert!(
                                fence.generation != plan || fence.holds_content(CONTENT) || said_current,
                                "wrote plan {} over another plan of its generation, {:?}, unasked", plan, fence
                            );
                        }
                        // The write lands: the server now holds this plan's fence.
                        current = Some(pass.fence());
                        observation = Observation::Written(Applied);
                    }
                    PassStep::ReadServed => {
                        let matches_plan = answers_match[step % answers_match.len()];
                        observation = served(matches_plan, !matches_plan);
                    }
                    PassStep::ReadPlan => {
                        said_current = plan_current[step % plan_current.len()];
                        observation = Observation::Plan { current: said_current };
                    }
                    PassStep::Done(_) => return Ok(()),
                }
            }
            proptest::prop_assert!(false, "the pass did not end within 64 steps");
        }

        #[test]
        fn cleanup_keeps_the_live_plan_and_everything_newer(
            plans in proptest::collection::btree_set(1u64..40, 0..20),
            live in proptest::option::of(1u64..40),
            retention in 0u64..4,
        ) {
            let plans: Vec<u64> = plans.into_iter().collect();
            let cleanup = decide_cleanup(Strategy::Fenced, &plans, live, retention);
            proptest::prop_assert!(cleanup.delete_records_of.is_empty());
            for deleted in &cleanup.delete_plans {
                proptest::prop_assert!(live.is_some_and(|live| deleted + retention < live));
            }
        }
    }

    #[test]
    fn fenced_cleanup_never_collects_the_live_plan_or_anything_newer() {
        let plans: Vec<u64> = (1..=10).collect();
        for live in 0..=12 {
            let fence = (live > 0).then_some(live);
            for retention in 0..4 {
                let cleanup = decide_cleanup(Strategy::Fenced, &plans, fence, retention);
                assert!(cleanup.delete_records_of.is_empty());
                for g in &cleanup.delete_plans {
                    assert!(
                        *g + retention < live,
                        "live {live}, retention {retention}, deleted {g}"
                    );
                }
                let kept = plans.len() - cleanup.delete_plans.len();
                assert_eq!(kept as u64, 10 - live.saturating_sub(retention + 1).min(10));
            }
        }
        assert!(
            decide_cleanup(Strategy::Fenced, &plans, None, 0)
                .delete_plans
                .is_empty(),
            "no fence read means nothing is known to be live, so nothing is collected"
        );
    }

    #[test]
    fn unfenced_cleanup_goes_by_age_and_takes_records_along() {
        let cleanup = decide_cleanup(Strategy::Unfenced, &[3, 1, 2], Some(1), 0);
        assert_eq!(cleanup.delete_plans, vec![1, 2]);
        assert_eq!(cleanup.delete_records_of, vec![1, 2]);
    }
}
