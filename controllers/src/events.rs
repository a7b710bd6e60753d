//! Events (events.k8s.io/v1) on the objects Bulwark manages, with repeats folded into a series.
//!
//! kube-runtime's `Recorder` folded repeats by reason alone: a second `PlanLive` on an endpoint
//! within six minutes became "count 2" on the first one, still naming the first plan's records.
//! It also kept a copy of every Event it had published for six minutes and walked them all on
//! each publish: at 10,000 endpoints, megabytes per replica and a walk of 10,000 per Event.
//! Here an Event repeats only when its object, type, reason and note are all the same, and what
//! is kept of it is its name and count.
//!
//! Normal Events draw on a budget per replica (client-go's recorder limits Events per object,
//! which one change on each of many objects passes): a burst of 1,000 endpoint changes would
//! otherwise cost the API server 1,000 Event writes on top of the plans, at the pace that decides
//! how fast the names change. What is left out is counted in `bulwark_events_dropped_total`;
//! Warnings are never left out.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use prometheus::{IntCounterVec, Opts};
use tracing::debug;

/// How long a published Event takes repeats into its series (kube-runtime's and client-go's).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// Normal Events a replica publishes at once, and per second after that.
const NORMAL_BURST: f64 = 100.0;
const NORMAL_PER_SECOND: f64 = 10.0;

/// Publishes Events as one controller instance (`reportingController` / `reportingInstance`).
/// Clones share what they remember of recent Events.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    /// Recent Events by a hash of what makes a repeat, for folding repeats into a series.
    recent: Arc<Mutex<Recent>>,
    normal_budget: Arc<Mutex<Budget>>,
    /// Normal Events left out for want of budget, by reason.
    pub dropped: IntCounterVec,
}

#[derive(Default)]
struct Recent {
    series: HashMap<u64, Series>,
    last_pruned: Option<Instant>,
}

struct Series {
    name: String,
    count: i32,
    last_seen: Instant,
}

impl Recorder {
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Recorder {
            client,
            controller: controller.into(),
            instance: instance.into(),
            recent: Arc::default(),
            normal_budget: Arc::new(Mutex::new(Budget::new(
                NORMAL_BURST,
                NORMAL_PER_SECOND,
                Instant::now(),
            ))),
            dropped: IntCounterVec::new(
                Opts::new(
                    "events_dropped_total",
                    "Normal Events not published because the replica's Event budget was spent, by reason",
                ),
                &["reason"],
            )
            .expect("static metric options are valid"),
        }
    }

    /// Creates an Event on `regarding`, or counts a repeat of one created within
    /// [`SERIES_WINDOW`].
    pub async fn publish(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or("default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let type_ = match type_ {
            EventType::Normal => {
                let spent = !self
                    .normal_budget
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(Instant::now());
                if spent {
                    self.dropped.with_label_values(&[reason]).inc();
                    debug!(reason, %note, "Event budget spent; Event left out");
                    return Ok(());
                }
                "Normal"
            }
            EventType::Warning => "Warning",
        };
        let key = repeat_key(&regarding, type_, reason, &note);
        let now = Timestamp::now();
        let repeat = self.recent().repeat_of(key, Instant::now());
        if let Some((name, count)) = repeat {
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(now),
            };
            let patch = serde_json::json!({ "series": series });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.recent().counted(key, count, Instant::now());
                    return Ok(());
                }
                // Deleted meanwhile (`kubectl delete events`, or expired): a new Event.
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(error) => return Err(error),
            }
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            action: Some(reason.into()),
            note: Some(note),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.recent().remember(key, name, Instant::now());
        Ok(())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A token bucket: `burst` tokens at most, refilled at `per_second`.
struct Budget {
    tokens: f64,
    burst: f64,
    per_second: f64,
    refilled_at: Instant,
}

impl Budget {
    fn new(burst: f64, per_second: f64, now: Instant) -> Self {
        Budget {
            tokens: burst,
            burst,
            per_second,
            refilled_at: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled_at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl Recent {
    /// The name of the Event `key` repeats and its count with this repeat.
    fn repeat_of(&mut self, key: u64, now: Instant) -> Option<(String, i32)> {
        self.prune(now);
        let series = self.series.get(&key)?;
        Some((series.name.clone(), series.count + 1))
    }

    /// Records a repeat the API server has counted.
    fn counted(&mut self, key: u64, count: i32, now: Instant) {
        if let Some(series) = self.series.get_mut(&key) {
            series.count = series.count.max(count);
            series.last_seen = now;
        }
    }

    fn remember(&mut self, key: u64, name: String, now: Instant) {
        let series = Series {
            name,
            count: 1,
            last_seen: now,
        };
        self.series.insert(key, series);
    }

    /// Forgets Events not repeated within the window; at most once a minute, so a burst of
    /// Events is not a walk of all recent ones each.
    fn prune(&mut self, now: Instant) {
        if self
            .last_pruned
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60))
        {
            return;
        }
        self.last_pruned = Some(now);
        self.series
            .retain(|_, series| now.duration_since(series.last_seen) < SERIES_WINDOW);
    }
}

/// What makes two Events one series: the same object (by uid), type, reason and note.
fn repeat_key(regarding: &ObjectReference, type_: &str, reason: &str, note: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (
        &regarding.uid,
        &regarding.namespace,
        &regarding.name,
        &regarding.kind,
    )
        .hash(&mut hasher);
    (type_, reason, note).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("DnsEndpoint".into()),
            name: Some("api".into()),
            namespace: Some("shop".into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn only_the_same_note_on_the_same_object_repeats() {
        let plan = |n: u32| format!("plan {n} live: A 10.0.0.{n}");
        let key = |uid: &str, note: &str| repeat_key(&reference(uid), "Normal", "PlanLive", note);
        let now = Instant::now();
        let mut recent = Recent::default();
        assert_eq!(recent.repeat_of(key("u1", &plan(1)), now), None);
        recent.remember(key("u1", &plan(1)), "api.1".into(), now);
        assert_eq!(
            recent.repeat_of(key("u1", &plan(2)), now),
            None,
            "another plan's note is a new Event, not a repeat of the first"
        );
        assert_eq!(
            recent.repeat_of(key("u2", &plan(1)), now),
            None,
            "an object of the same name created again"
        );
        let first_repeat = Some(("api.1".to_string(), 2));
        assert_eq!(recent.repeat_of(key("u1", &plan(1)), now), first_repeat);
        assert_eq!(
            recent.repeat_of(key("u1", &plan(1)), now),
            first_repeat,
            "a repeat is counted only once the API server has taken it"
        );
        recent.counted(key("u1", &plan(1)), 2, now);
        assert_eq!(
            recent.repeat_of(key("u1", &plan(1)), now),
            Some(("api.1".into(), 3))
        );
    }

    #[test]
    fn a_spent_budget_refills_at_its_rate_up_to_its_burst() {
        let start = Instant::now();
        let mut budget = Budget::new(3.0, 2.0, start);
        assert_eq!((0..5).filter(|_| budget.take(start)).count(), 3);
        let half_a_second = start + Duration::from_millis(500);
        assert!(
            budget.take(half_a_second),
            "one token back after 0.5 s at 2/s"
        );
        assert!(!budget.take(half_a_second));
        let an_hour = half_a_second + Duration::from_secs(3600);
        assert_eq!(
            (0..5).filter(|_| budget.take(an_hour)).count(),
            3,
            "an idle hour refills to the burst, no more"
        );
    }

    #[test]
    fn series_older_than_the_window_are_forgotten() {
        let start = Instant::now();
        let mut recent = Recent::default();
        recent.remember(1, "old".into(), start);
        recent.remember(2, "new".into(), start + SERIES_WINDOW / 2);
        let later = start + SERIES_WINDOW + Duration::from_secs(1);
        assert_eq!(recent.repeat_of(2, later), Some(("new".into(), 2)));
        assert_eq!(recent.repeat_of(1, later), None, "pruned on the first look");
    }
}
