//! Leader election on a coordination.k8s.io Lease, with the Lease's transition count as a
//! fencing token.
//!
//! Every write to the Lease is a compare-and-set on `resourceVersion`, so two replicas can never
//! both believe they acquired it. A leader that cannot renew within `renew_deadline` steps down
//! before any standby may take over (`lease_duration` after the last renewal), and on shutdown the
//! leader releases the Lease so a standby leads at once. No crate exposed the transition count at
//! acquisition time, which is the token singleton controllers need, hence this small module.

use bulwark_controllers::{leadership::Leadership, metrics::Metrics};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// What the Lease says, reduced to what the decision needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub holder: Option<String>,
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
    /// Someone else holds a live lease: look again at this time (or when it changes).
    WaitUntil(Timestamp),
}

/// The election rule, free of I/O. A Lease with no holder, or whose holder has not renewed
/// within its own duration, may be taken; taking it from anyone but ourselves is a transition.
pub fn decide(observed: Option<&Observed>, me: &str, now: Timestamp) -> Decision {
    let Some(lease) = observed else {
        return Decision::Acquire { transitions: 0 };
    };
    match lease.holder.as_deref() {
        Some(holder) if holder == me => Decision::Renew,
        None | Some("") => Decision::Acquire {
            transitions: lease.transitions + 1,
        },
        Some(_) => {
            let expiry = lease
                .renewed
                .map(|renewed| {
                    renewed
                        + SignedDuration::try_from(lease.duration).unwrap_or(SignedDuration::MAX)
                })
                .unwrap_or(Timestamp::MIN);
            if expiry <= now {
                Decision::Acquire {
                    transitions: lease.transitions + 1,
                }
            } else {
                Decision::WaitUntil(expiry)
            }
        }
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
        loop {
            // After a pause (GC, SIGSTOP, a slow node) a standby may already lead: stop first.
            self.step_down_if_stale(last_renewal);
            // A hung API call must not keep a leader that can no longer renew.
            let round = tokio::time::timeout(self.config.retry_period * 2, self.step()).await;
            let wake_at = match round.unwrap_or_else(|_| Err("lease request timed out".to_string()))
            {
                Ok(Some(until)) => {
                    let wait = Duration::try_from(until.duration_since(Timestamp::now()))
                        .unwrap_or(Duration::ZERO);
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

    /// One round: returns `Some(time)` to wait for another holder, `None` after holding it.
    async fn step(&self) -> Result<Option<Timestamp>, String> {
        self.try_step().await.map_err(|e| e.to_string())
    }

    async fn try_step(&self) -> Result<Option<Timestamp>, kube::Error> {
        let current = self.api.get_opt(&self.config.lease_name).await?;
        let now = Timestamp::now();
        let decision = decide(
            current.as_ref().map(observe).as_ref(),
            &self.config.identity,
            now,
        );
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
            Decision::WaitUntil(until) => {
                if self.tx.borrow().token().is_some() {
                    warn!(holder = ?spec.holder_identity, "another replica holds the lease; stepping down");
                    self.set(Leadership::Follower);
                }
                return Ok(Some(until));
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
        let token = written.spec.and_then(|s| s.lease_transitions).unwrap_or(0) as u64;
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

    fn held_by(holder: &str, renewed_secs_ago: i64, duration_secs: u64) -> Observed {
        Observed {
            holder: Some(holder.into()),
            renewed: Some(Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago)),
            duration: Duration::from_secs(duration_secs),
            transitions: 4,
        }
    }

    #[test]
    fn missing_lease_is_acquired_with_token_zero() {
        assert_eq!(
            decide(None, "a", Timestamp::now()),
            Decision::Acquire { transitions: 0 }
        );
    }

    #[test]
    fn own_lease_is_renewed_without_a_transition() {
        assert_eq!(
            decide(Some(&held_by("a", 100, 15)), "a", Timestamp::now()),
            Decision::Renew
        );
    }

    #[test]
    fn live_lease_of_another_is_waited_for_until_expiry() {
        let lease = held_by("b", 5, 15);
        match decide(Some(&lease), "a", Timestamp::now()) {
            Decision::WaitUntil(t) => {
                assert_eq!(t, lease.renewed.unwrap() + SignedDuration::from_secs(15));
            }
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    #[test]
    fn expired_or_released_lease_is_taken_with_the_next_token() {
        assert_eq!(
            decide(Some(&held_by("b", 16, 15)), "a", Timestamp::now()),
            Decision::Acquire { transitions: 5 }
        );
        let released = Observed {
            holder: None,
            ..held_by("b", 0, 1)
        };
        assert_eq!(
            decide(Some(&released), "a", Timestamp::now()),
            Decision::Acquire { transitions: 5 }
        );
    }
}
