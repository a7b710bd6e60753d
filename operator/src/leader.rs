//! Leader election on a coordination.k8s.io Lease, with the Lease's transition count as a
//! fencing token.
//!
//! Every write to the Lease is a compare-and-set on `resourceVersion`, so two replicas can never
//! both believe they acquired it. Expiry is judged as client-go judges it: from the moment this
//! replica last saw the Lease change, on its own monotonic clock, never from the holder's
//! `renewTime` against the local wall clock, so skewed clocks cannot make two leaders. A leader that cannot renew within `renew_deadline` steps down
//! before any standby may take over (`lease_duration` after the last renewal), and on shutdown the
//! leader releases the Lease so a standby leads at once. No crate exposed the transition count at
//! acquisition time, which is the token singleton controllers need, hence this small module.

use bulwark_controllers::{leadership::Leadership, metrics::Metrics};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// What the Lease says, reduced to what the decision needs. Two reads with different values
/// mean the holder renewed (or the holder changed) in between.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub holder: Option<String>,
    /// The holder's `renewTime` as written: compared for change only, never against our clock.
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
    pub transitions: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// We hold it: write a fresh renewTime.
    Renew,
    /// Free or expired: take it; `transitions` is the new count and our fencing token.
    Acquire { transitions: i32 },
    /// Someone else holds a live lease: look again after this long (or when it changes).
    Wait(Duration),
    /// The transition count cannot grow any more, so no new leader could carry a larger
    /// fencing token than the last one: refuse to lead rather than reuse a token.
    TokensExhausted,
}

/// The election rule, free of I/O. `unchanged_for` is how long this replica, on its own
/// monotonic clock, has seen the Lease exactly as `observed` (zero when it just changed). A Lease
/// with no holder, or unchanged for its whole duration, may be taken; taking it from anyone but
/// ourselves is a transition.
pub fn decide(observed: Option<&Observed>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(lease) = observed else {
        return Decision::Acquire { transitions: 0 };
    };
    let next = || match lease.transitions.max(0).checked_add(1) {
        Some(transitions) => Decision::Acquire { transitions },
        None => Decision::TokensExhausted,
    };
    match lease.holder.as_deref() {
        Some(holder) if holder == me => Decision::Renew,
        None | Some("") => next(),
        Some(_) if unchanged_for >= lease.duration => next(),
        Some(_) => Decision::Wait(lease.duration - unchanged_for),
    }
}

fn observe(lease: &Lease) -> Observed {
    let spec = lease.spec.clone().unwrap_or_default();
    Observed {
        holder: spec.holder_identity,
        renewed: spec.renew_time.or(spec.acquire_time).map(|t| t.0),
        duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
        transitions: spec.lease_transitions.unwrap_or(0),
    }
}

/// The fencing token of a Lease this replica wrote: its transition count, never negative.
fn token_of(transitions: Option<i32>) -> u64 {
    u64::try_from(transitions.unwrap_or(0)).unwrap_or(0)
}

/// The Lease as last read, and since when (local monotonic clock) it has looked like that.
struct LastSeen {
    observed: Option<Observed>,
    since: tokio::time::Instant,
}

impl LastSeen {
    /// Records a fresh read; returns how long the Lease has been unchanged.
    fn update(seen: &mut Option<LastSeen>, observed: Option<Observed>) -> Duration {
        let now = tokio::time::Instant::now();
        match seen {
            Some(last) if last.observed == observed => now - last.since,
            _ => {
                *seen = Some(LastSeen {
                    observed,
                    since: now,
                });
                Duration::ZERO
            }
        }
    }
}

pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    metrics: Metrics,
    tx: watch::Sender<Leadership>,
}

impl Elector {
    pub fn new(
        client: Client,
        config: ElectionConfig,
        metrics: Metrics,
    ) -> (Self, watch::Receiver<Leadership>) {
        let (tx, rx) = watch::channel(Leadership::Follower);
        let api = Api::namespaced(client, &config.namespace);
        (
            Self {
                api,
                config,
                metrics,
                tx,
            },
            rx,
        )
    }

    /// Campaigns until `shutdown`, then releases the Lease if held.
    pub async fn run(self, shutdown: CancellationToken) {
        // Lease changes (a release, a new holder) wake a waiting standby at once.
        let selector =
            watcher::Config::default().fields(&format!("metadata.name={}", self.config.lease_name));
        let mut changes = watcher(self.api.clone(), selector)
            .default_backoff()
            .boxed();
        let mut last_renewal = tokio::time::Instant::now();
        let mut seen = None;
        loop {
            // After a pause (GC, SIGSTOP, a slow node) a standby may already lead: stop first.
            self.step_down_if_stale(last_renewal);
            // A hung API call must not keep a leader that can no longer renew.
            let round =
                tokio::time::timeout(self.config.retry_period * 2, self.step(&mut seen)).await;
            let wake_at = match round.unwrap_or_else(|_| Err("lease request timed out".to_string()))
            {
                Ok(Some(wait)) => {
                    tokio::time::Instant::now() + wait.min(self.config.retry_period * 5)
                }
                Ok(None) => {
                    last_renewal = tokio::time::Instant::now();
                    tokio::time::Instant::now() + self.config.retry_period
                }
                Err(error) => {
                    warn!(%error, lease = %self.config.lease_name, "lease update failed");
                    self.step_down_if_stale(last_renewal);
                    tokio::time::Instant::now() + self.config.retry_period
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = changes.next(), if self.tx.borrow().token().is_none() => {}
            }
        }
        self.release().await;
    }

    /// A leader whose last successful renewal is older than the renew deadline stops leading,
    /// so it stops before any standby may take over (`lease_duration` after that renewal).
    fn step_down_if_stale(&self, last_renewal: tokio::time::Instant) {
        if self.tx.borrow().token().is_some() && last_renewal.elapsed() > self.config.renew_deadline
        {
            warn!("could not renew the lease within the renew deadline; stepping down");
            self.set(Leadership::Follower);
        }
    }

    /// One round: returns `Some(wait)` to wait for another holder, `None` after holding it.
    async fn step(&self, seen: &mut Option<LastSeen>) -> Result<Option<Duration>, String> {
        self.try_step(seen).await.map_err(|e| e.to_string())
    }

    async fn try_step(&self, seen: &mut Option<LastSeen>) -> Result<Option<Duration>, kube::Error> {
        let current = self.api.get_opt(&self.config.lease_name).await?;
        let observed = current.as_ref().map(observe);
        let unchanged_for = LastSeen::update(seen, observed.clone());
        let decision = decide(observed.as_ref(), &self.config.identity, unchanged_for);
        let now = Timestamp::now();
        let mut lease = current.clone().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(self.config.lease_name.clone()),
                ..Default::default()
            },
            spec: None,
        });
        let mut spec = lease.spec.take().unwrap_or_default();
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.config.lease_duration.as_secs() as i32);
        match decision {
            Decision::Wait(wait) => {
                if self.tx.borrow().token().is_some() {
                    warn!(holder = ?spec.holder_identity, "another replica holds the lease; stepping down");
                    self.set(Leadership::Follower);
                }
                return Ok(Some(wait));
            }
            Decision::TokensExhausted => {
                error!(lease = %self.config.lease_name, "the Lease's transition count is at its maximum, so a new leader's fencing token could not grow; not leading (delete the Lease only once every replica is stopped)");
                self.set(Leadership::Follower);
                return Ok(Some(self.config.lease_duration));
            }
            Decision::Renew => {}
            Decision::Acquire { transitions } => {
                spec.holder_identity = Some(self.config.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(transitions);
            }
        }
        lease.spec = Some(spec);
        // resourceVersion from the read makes replace a compare-and-set; create fails if another
        // replica created it first. Either way a conflict means someone else won this round.
        let written = match current {
            Some(_) => {
                self.api
                    .replace(&self.config.lease_name, &PostParams::default(), &lease)
                    .await?
            }
            None => self.api.create(&PostParams::default(), &lease).await?,
        };
        let token = token_of(written.spec.and_then(|s| s.lease_transitions));
        if self.tx.borrow().token() != Some(token) {
            info!(identity = %self.config.identity, token, "acquired leadership");
            self.set(Leadership::Leader { token });
        }
        Ok(None)
    }

    fn set(&self, leadership: Leadership) {
        self.metrics
            .is_leader
            .set(leadership.token().is_some() as i64);
        if let Some(token) = leadership.token() {
            self.metrics.leader_token.set(token as i64);
        }
        self.tx.send_replace(leadership);
    }

    /// Gives the Lease up so a standby need not wait for it to expire.
    async fn release(&self) {
        if self.tx.borrow().token().is_none() {
            return;
        }
        self.set(Leadership::Follower);
        let result = async {
            let mut lease = self.api.get(&self.config.lease_name).await?;
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(&self.config.identity) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.config.lease_name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        .await;
        match result {
            Ok(()) => info!(lease = %self.config.lease_name, "released leadership"),
            Err(error) => {
                warn!(%error, "could not release the lease; standbys take over when it expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    fn held_by(holder: &str, duration_secs: u64) -> Observed {
        Observed {
            holder: Some(holder.into()),
            renewed: Some(Timestamp::now()),
            duration: SECS(duration_secs),
            transitions: 4,
        }
    }

    #[test]
    fn missing_lease_is_acquired_with_token_zero() {
        assert_eq!(
            decide(None, "a", Duration::ZERO),
            Decision::Acquire { transitions: 0 }
        );
    }

    #[test]
    fn own_lease_is_renewed_without_a_transition() {
        assert_eq!(
            decide(Some(&held_by("a", 15)), "a", SECS(100)),
            Decision::Renew
        );
    }

    #[test]
    fn live_lease_of_another_is_waited_for_until_it_stays_unchanged_for_its_duration() {
        let lease = held_by("b", 15);
        assert_eq!(decide(Some(&lease), "a", SECS(5)), Decision::Wait(SECS(10)));
        assert_eq!(
            decide(Some(&lease), "a", SECS(15)),
            Decision::Acquire { transitions: 5 }
        );
    }

    #[test]
    fn released_lease_is_taken_with_the_next_token() {
        let released = Observed {
            holder: None,
            ..held_by("b", 1)
        };
        assert_eq!(
            decide(Some(&released), "a", Duration::ZERO),
            Decision::Acquire { transitions: 5 }
        );
    }

    /// The holder's clock is an hour behind ours, so its renewTime looks an hour old. Judged
    /// against our wall clock (the old rule) the Lease looked expired and a second leader took
    /// it; judged by when we saw it change, it is live while the holder renews.
    #[tokio::test(start_paused = true)]
    async fn a_skewed_holder_clock_cannot_make_a_second_leader() {
        use k8s_openapi::jiff::SignedDuration;
        let an_hour_behind = Timestamp::now() - SignedDuration::from_hours(1);
        let renewed_at = |round: i64| Observed {
            renewed: Some(an_hour_behind + SignedDuration::from_secs(5 * round)),
            ..held_by("b", 15)
        };
        let mut seen = None;
        for round in 0..10 {
            // We poll twice between the holder's renewals, every 2.5 s.
            for _ in 0..2 {
                let unchanged_for = LastSeen::update(&mut seen, Some(renewed_at(round)));
                assert!(
                    matches!(
                        decide(Some(&renewed_at(round)), "a", unchanged_for),
                        Decision::Wait(_)
                    ),
                    "round {round}: a renewing holder keeps the Lease"
                );
                tokio::time::advance(Duration::from_millis(2500)).await;
            }
        }
        // The holder stops renewing: the Lease is taken once it was unchanged for its duration.
        let last = renewed_at(10);
        LastSeen::update(&mut seen, Some(last.clone()));
        tokio::time::advance(SECS(14)).await;
        let unchanged_for = LastSeen::update(&mut seen, Some(last.clone()));
        assert_eq!(
            decide(Some(&last), "a", unchanged_for),
            Decision::Wait(SECS(1))
        );
        tokio::time::advance(SECS(1)).await;
        let unchanged_for = LastSeen::update(&mut seen, Some(last.clone()));
        assert_eq!(
            decide(Some(&last), "a", unchanged_for),
            Decision::Acquire { transitions: 5 }
        );
    }

    #[test]
    fn transition_counts_neither_overflow_nor_turn_negative_tokens_huge() {
        let at_max = Observed {
            transitions: i32::MAX,
            ..held_by("b", 15)
        };
        assert_eq!(
            decide(Some(&at_max), "a", SECS(15)),
            Decision::TokensExhausted
        );
        let negative = Observed {
            transitions: -7,
            ..held_by("b", 15)
        };
        assert_eq!(
            decide(Some(&negative), "a", SECS(15)),
            Decision::Acquire { transitions: 1 }
        );
        assert_eq!(token_of(Some(-3)), 0);
        assert_eq!(token_of(Some(9)), 9);
        assert_eq!(token_of(None), 0);
    }
}
