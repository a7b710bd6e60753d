//! The SLO controller (leader only): renders each ServiceLevelObjective into its PrometheusRule
//! and dashboard ConfigMap with server-side apply, both owned by the SLO so they go with it, and
//! writes the live burn rates from Prometheus into status.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use bulwark_crds::slo::{RuleCount, ServiceLevelObjective, ServiceLevelObjectiveStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::status::{LiveRounds, Prometheus};
use super::{Outputs, SLO_LABEL, prometheus_rule_resource, render};
use crate::conditions;
use crate::events::Recorder;
use crate::leadership::{Leadership, became_leader, still_leading};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::runtime::{
    Backoff, apply_status, as_leader, cached_trimmed, drain, forget_deleted, is_not_found,
    object_key, publish,
};
use crate::scope::Scope;

const CONTROLLER: &str = "slo";
const FIELD_MANAGER: &str = "bulwark-slo";
/// Outputs are checked this often even when nothing changed, repairing hand edits of the
/// PrometheusRule (whose kind may not exist, so it is not watched).
const RESYNC: Duration = Duration::from_secs(300);
/// How long one LIST of the PrometheusRules answers the checks of every SLO due meanwhile: the
/// SLOs created together come due together, and a blind re-apply of each (1,000 server-side
/// applies of large objects every RESYNC at 1,000 SLOs) took a third of the API server's writes
/// from a DNS burst that happened to fall there.
const LISTING_REUSE: Duration = Duration::from_secs(30);
/// How soon a missing PrometheusRule CRD is looked for again.
const CRD_RETRY: Duration = Duration::from_secs(60);
/// How long unchanged live numbers keep their evaluatedAt: a status write per SLO per interval
/// only to move a timestamp was most of the API writes at 1,000 SLOs, while drill guards need it
/// fresher than 5 minutes.
const EVALUATED_AT_REFRESH: Duration = Duration::from_secs(60);

pub const READY: &str = "Ready";
pub const LIVE_STATUS: &str = "LiveStatus";

#[derive(Clone, Debug)]
pub struct SloSettings {
    /// The namespaces whose objects this replica manages.
    pub scope: Scope,
    /// Base URL of the Prometheus whose numbers go into status, e.g. `http://prometheus:9090`.
    pub prometheus_url: Option<String>,
    /// How often live numbers are refreshed.
    pub status_interval: Duration,
    pub query_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

struct Context {
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    leadership: watch::Receiver<Leadership>,
    prometheus: Result<Option<LiveRounds>, String>,
    settings: SloSettings,
    backoff: Backoff,
    dashboards: Store<ConfigMap>,
    readiness: Readiness,
    /// Per SLO (by UID): the PrometheusRule last applied or found current, so status refreshes
    /// do not re-apply it.
    rules_applied: Mutex<HashMap<String, RulesApplied>>,
    /// The latest LIST of the PrometheusRules, which the checks on start and every RESYNC
    /// compare with, where a GET or a re-apply per SLO (1,000 at 1,000 SLOs) held up the API
    /// server; `None` until the first check.
    rule_listing: tokio::sync::Mutex<Option<RuleListing>>,
    /// The SLOs there are, to forget deleted ones in `rules_applied`.
    slos: Store<ServiceLevelObjective>,
}

/// The PrometheusRules listed at `listed_at`, as spec digests by `namespace/name`; `None` if they
/// could not be listed (the kind not served, or no `list` in an older chart's role).
struct RuleListing {
    listed_at: Instant,
    digests: Option<HashMap<String, Vec<u8>>>,
}

#[derive(Clone, Copy)]
struct RulesApplied {
    generation: Option<i64>,
    /// When the rule was applied, or listed as rendered.
    at: Instant,
    /// Whether the cluster served the PrometheusRule kind.
    served: bool,
}

pub async fn run(
    client: kube::Client,
    metrics: Metrics,
    recorder: Recorder,
    readiness: Readiness,
    leadership: watch::Receiver<Leadership>,
    settings: SloSettings,
    shutdown: CancellationToken,
) {
    let namespace = settings.scope.namespace();
    // Without spare list capacity, as every cache (`strip_unread`).
    let (slos, slo_events) = cached_trimmed::<ServiceLevelObjective>(
        &client,
        namespace,
        watcher::Config::default(),
        readiness.gate(format!("{CONTROLLER}/ServiceLevelObjective")),
        |slo| {
            if let Some(status) = slo.status.as_mut() {
                status.burn_rates.shrink_to_fit();
                status.conditions.shrink_to_fit();
            }
        },
    );
    // Dashboards deleted or edited by hand are restored at once.
    let (dashboards, dashboard_events) = cached_trimmed::<ConfigMap>(
        &client,
        namespace,
        watcher::Config::default().labels(SLO_LABEL),
        readiness.gate(format!("{CONTROLLER}/ConfigMap")),
        |dashboard| dashboard.data = data_digests(dashboard.data.as_ref()),
    );
    let prometheus = settings
        .prometheus_url
        .as_deref()
        .map(|url| Prometheus::new(url, settings.query_timeout))
        .transpose()
        .map(|p| p.map(|p| LiveRounds::new(p, settings.status_interval)));
    let context = Arc::new(Context {
        client,
        metrics,
        recorder,
        leadership: leadership.clone(),
        prometheus,
        settings,
        backoff: Backoff::default(),
        dashboards,
        readiness,
        rules_applied: Mutex::default(),
        rule_listing: tokio::sync::Mutex::default(),
        slos: slos.clone(),
    });
    // Only spec changes (generation) trigger a reconcile: every reconcile writes status, and
    // reacting to that write would query Prometheus in a loop. Live numbers refresh on the
    // requeue interval instead.
    let spec_changes = slo_events
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let results = Controller::for_stream(spec_changes, slos)
        .with_config(crate::runtime::bounded())
        .owns_stream(dashboard_events.touched_objects())
        .reconcile_all_on(became_leader(leadership))
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, context);
    drain(CONTROLLER, results).await;
}

fn error_policy(slo: Arc<ServiceLevelObjective>, error: &Error, context: Arc<Context>) -> Action {
    warn!(slo = %object_key(&*slo), %error, "SLO reconciliation failed");
    context.backoff.failed(&object_key(&*slo))
}

async fn reconcile(
    slo: Arc<ServiceLevelObjective>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    if let Some(action) = context.readiness.until_synced(CONTROLLER) {
        return Ok(action);
    }
    as_leader(
        &*slo,
        CONTROLLER,
        &context.leadership,
        &context.settings.scope,
        &context.metrics,
        &context.backoff,
        |token| reconcile_as_leader(&slo, &context, token),
    )
    .await
}

/// The status being built, and the Events its condition changes call for.
struct StatusUpdate<'a> {
    slo: &'a ServiceLevelObjective,
    status: ServiceLevelObjectiveStatus,
    events: Vec<(EventType, String, String)>,
}

impl StatusUpdate<'_> {
    fn set(&mut self, type_: &str, ok: bool, reason: &str, message: String) {
        let existing = &self.status.conditions;
        let wanted = conditions::condition(
            existing,
            type_,
            ok,
            reason,
            message.clone(),
            self.slo.metadata.generation,
        );
        // An Event per change of reason, not per new error text.
        if !existing
            .iter()
            .any(|c| c.type_ == type_ && c.reason == reason)
        {
            let kind = if ok {
                EventType::Normal
            } else {
                EventType::Warning
            };
            self.events.push((kind, reason.to_string(), message));
        }
        let mut conditions: Vec<Condition> = existing
            .iter()
            .filter(|c| c.type_ != type_)
            .cloned()
            .collect();
        conditions.push(wanted);
        self.status.conditions = conditions;
    }
}

async fn reconcile_as_leader(
    slo: &ServiceLevelObjective,
    context: &Context,
    token: u64,
) -> Result<Action, Error> {
    let namespace = slo.namespace().unwrap_or_default();
    let mut update = StatusUpdate {
        slo,
        status: slo.status.clone().unwrap_or_default(),
        events: Vec::new(),
    };
    update.status.observed_generation = slo.metadata.generation;
    let action = match render(slo, &namespace) {
        // Nothing is applied from an invalid spec; the outputs of the last valid one stay.
        Err(invalid) => {
            update.set(READY, false, "InvalidQuery", invalid.to_string());
            Action::await_change()
        }
        Ok(outputs) => {
            if !still_leading(&context.leadership, token) {
                return Ok(Action::await_change());
            }
            let rules_applied = apply_outputs(slo, &outputs, &namespace, context).await?;
            let count = |alerting: bool| {
                outputs
                    .rule_group
                    .rules
                    .iter()
                    .filter(|r| r.alert.is_some() == alerting)
                    .count() as u32
            };
            update.status.rules = Some(RuleCount {
                recording: count(false),
                alerting: count(true),
            });
            let dashboard = outputs.dashboard.name_any();
            let warnings = outputs.compiled.warnings();
            let next = if rules_applied { RESYNC } else { CRD_RETRY };
            // Live numbers are refreshed on their own interval, which also paces the retries.
            let next = match &context.prometheus {
                Ok(Some(_)) => next.min(context.settings.status_interval),
                _ => next,
            };
            let action = Action::requeue(next);
            if rules_applied {
                let mut message = format!(
                    "PrometheusRule {} and dashboard ConfigMap {dashboard} applied",
                    outputs.prometheus_rule.name_any()
                );
                for warning in &warnings {
                    message.push_str("; ");
                    message.push_str(warning);
                }
                update.set(READY, true, "RulesApplied", message);
            } else {
                update.set(
                    READY,
                    false,
                    "PrometheusRuleCRDMissing",
                    format!(
                        "the cluster does not serve monitoring.coreos.com/v1 PrometheusRule, so no alerts exist; install the Prometheus Operator's CRDs (dashboard ConfigMap {dashboard} is applied; retrying every {}s)",
                        next.as_secs_f64()
                    ),
                );
            }
            refresh_live(&outputs, context, &mut update).await;
            action
        }
    };
    // The Prometheus queries above take time; a replica deposed meanwhile writes nothing.
    if still_leading(&context.leadership, token) {
        write_status(slo, context, update).await?;
    }
    Ok(action)
}

/// A ConfigMap's data with each value replaced by its SHA-256: how dashboards are cached, since
/// the controller only asks whether one is as rendered, and 1,000 SLOs' dashboards (pretty JSON,
/// about 10 KB each) held about 10 MB in every replica.
fn data_digests(data: Option<&BTreeMap<String, String>>) -> Option<BTreeMap<String, String>> {
    data.map(|data| {
        data.iter()
            .map(|(key, value)| {
                let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
                (
                    key.clone(),
                    base64::engine::general_purpose::STANDARD.encode(digest),
                )
            })
            .collect()
    })
}

/// Applies the dashboard unless the cache shows it as rendered, then the PrometheusRule on a
/// spec change, and the first time and every RESYNC unless a listing shows it current; `false`
/// when the PrometheusRule kind is not served (the Prometheus Operator's CRDs are not installed).
async fn apply_outputs(
    slo: &ServiceLevelObjective,
    outputs: &Outputs,
    namespace: &str,
    context: &Context,
) -> Result<bool, Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let dashboard = &outputs.dashboard;
    let cached = context
        .dashboards
        .get(&ObjectRef::from_obj(dashboard).within(namespace));
    if cached.is_none_or(|cached| cached.data != data_digests(dashboard.data.as_ref())) {
        let config_maps: Api<ConfigMap> = Api::namespaced(context.client.clone(), namespace);
        config_maps
            .patch(&dashboard.name_any(), &params, &Patch::Apply(dashboard))
            .await?;
    }
    let uid = slo.uid().unwrap_or_default();
    let last = context.applied().get(&uid).copied();
    // A kind not served is asked for again on every reconcile, so the rules follow as soon as
    // the Prometheus Operator's CRDs are installed.
    if let Some(last) = last
        && last.served
        && last.generation == slo.metadata.generation
        && last.at.elapsed() < RESYNC
    {
        return Ok(true);
    }
    let rules: Api<DynamicObject> = Api::namespaced_with(
        context.client.clone(),
        namespace,
        &prometheus_rule_resource(),
    );
    let rule = &outputs.prometheus_rule;
    // A spec change is applied at once, and so is a rule whose kind was not served last time
    // (the listing would fail as well: a LIST on top of each retry).
    let may_be_current =
        last.is_none_or(|last| last.served && last.generation == slo.metadata.generation);
    let listed_current = if may_be_current {
        listed_current(context, rule, last.map(|l| l.at)).await
    } else {
        None
    };
    let served = listed_current.is_some()
        || match rules
            .patch(&rule.name_any(), &params, &Patch::Apply(rule))
            .await
        {
            Ok(_) => true,
            // Server-side apply creates a missing object, so 404 means the kind itself is missing.
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(e.into()),
        };
    let mut applied = context.applied();
    applied.insert(
        uid,
        RulesApplied {
            generation: slo.metadata.generation,
            at: listed_current.unwrap_or_else(Instant::now),
            served,
        },
    );
    // Once they outnumber the SLOs there are (a scan per reconcile would cost O(SLOs) each).
    if applied.len() > context.slos.len() {
        forget_deleted(&mut applied, &context.slos);
    }
    Ok(served)
}

/// When a LIST of the PrometheusRules that shows the rule as rendered was taken; `None` if it
/// shows it otherwise. A listing is shared by the checks of [`LISTING_REUSE`], but only by those
/// of rules last found current before it was taken, so a hand edit is seen by the next check.
async fn listed_current(
    context: &Context,
    rule: &DynamicObject,
    last_current: Option<Instant>,
) -> Option<Instant> {
    let mut listing = context.rule_listing.lock().await;
    let now = Instant::now();
    if !listing
        .as_ref()
        .is_some_and(|l| listing_answers(l.listed_at, last_current, now))
    {
        *listing = Some(RuleListing {
            listed_at: now,
            digests: list_rule_specs(context).await,
        });
    }
    let listing = listing.as_ref()?;
    let digest = listing.digests.as_ref()?.get(&object_key(rule))?;
    (Some(digest) == spec_digest(rule).as_ref()).then_some(listing.listed_at)
}

/// Whether a listing taken at `listed_at` can answer, at `now`, for a rule last found current at
/// `last_current`.
fn listing_answers(listed_at: Instant, last_current: Option<Instant>, now: Instant) -> bool {
    now.duration_since(listed_at) < LISTING_REUSE && last_current.is_none_or(|at| at < listed_at)
}

/// Every SLO's PrometheusRule in the managed namespaces, as [`spec_digest`]s.
async fn list_rule_specs(context: &Context) -> Option<HashMap<String, Vec<u8>>> {
    let rules: Api<DynamicObject> = match context.settings.scope.namespace() {
        Some(namespace) => Api::namespaced_with(
            context.client.clone(),
            namespace,
            &prometheus_rule_resource(),
        ),
        None => Api::all_with(context.client.clone(), &prometheus_rule_resource()),
    };
    let mut found = HashMap::new();
    let mut params = ListParams::default().labels(SLO_LABEL).limit(500);
    loop {
        let page = rules.list(&params).await.ok()?;
        for rule in &page.items {
            if let Some(digest) = spec_digest(rule) {
                found.insert(object_key(rule), digest);
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Some(found)
}

/// SHA-256 of a PrometheusRule's spec as JSON (object keys sorted, so the server's order and the
/// rendered one compare equal).
fn spec_digest(rule: &DynamicObject) -> Option<Vec<u8>> {
    let spec = serde_json::to_vec(rule.data.get("spec")?).ok()?;
    Some(
        ring::digest::digest(&ring::digest::SHA256, &spec)
            .as_ref()
            .to_vec(),
    )
}

impl Context {
    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<String, RulesApplied>> {
        self.rules_applied.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn refresh_live(outputs: &Outputs, context: &Context, update: &mut StatusUpdate<'_>) {
    let prometheus = match &context.prometheus {
        Ok(Some(prometheus)) => prometheus,
        Ok(None) => {
            update.set(
                LIVE_STATUS,
                false,
                "NotConfigured",
                "no Prometheus to read burn rates from; start the operator with --prometheus-url"
                    .into(),
            );
            return;
        }
        Err(e) => {
            update.set(LIVE_STATUS, false, "PrometheusUnreachable", e.clone());
            return;
        }
    };
    match prometheus.live(&outputs.compiled).await {
        Ok(live) => {
            let status = &mut update.status;
            let firing = (!live.firing.is_empty()).then(|| live.firing.join(","));
            let now = k8s_openapi::jiff::Timestamp::now();
            let unchanged = status.burn_rates == live.burn_rates
                && status.error_budget_remaining == live.budget_remaining
                && status.firing == firing
                && status.evaluated_at.as_ref().is_some_and(|at| {
                    now.duration_since(at.0).unsigned_abs() < EVALUATED_AT_REFRESH
                });
            if !unchanged {
                status.burn_rates = live.burn_rates;
                status.error_budget_remaining = live.budget_remaining;
                status.firing = firing;
                status.evaluated_at = Some(Time(now));
            }
            update.set(
                LIVE_STATUS,
                true,
                "Evaluated",
                format!("read from Prometheus at {}", prometheus.url()),
            );
        }
        // The last numbers stay, dated by evaluatedAt, rather than vanish with a blip.
        Err(e) => update.set(LIVE_STATUS, false, e.reason(), e.to_string()),
    }
}

async fn write_status(
    slo: &ServiceLevelObjective,
    context: &Context,
    update: StatusUpdate<'_>,
) -> Result<(), Error> {
    if slo.status.as_ref() != Some(&update.status) {
        let status = serde_json::to_value(&update.status).expect("status serializes");
        apply_status(&context.client, slo, FIELD_MANAGER, status, None).await?;
    }
    for (kind, reason, note) in update.events {
        info!(slo = %object_key(slo), %reason, %note, "SLO condition changed");
        publish(&context.recorder, slo, kind, &reason, note).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_listing_answers_for_rules_due_together_but_not_for_one_checked_after_it() {
        let before = Instant::now();
        let listed_at = before + RESYNC;
        let soon = listed_at + Duration::from_secs(5);
        assert!(listing_answers(listed_at, None, soon), "a first check");
        assert!(listing_answers(listed_at, Some(before), soon), "a resync");
        assert!(
            !listing_answers(listed_at, Some(listed_at), soon),
            "a rule found current by this listing is checked again by a newer one"
        );
        assert!(
            !listing_answers(listed_at, Some(soon), soon),
            "a rule applied after the listing"
        );
        assert!(
            !listing_answers(listed_at, Some(before), listed_at + LISTING_REUSE),
            "a listing too old to stand for the rules now"
        );
    }
}
