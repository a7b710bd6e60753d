//! The zone prober (leader only): a signed SOA query to each DnsZone's server, so a wrong key or
//! an unreachable server shows on the zone itself (`Ready`), not only on each of its endpoints.

use std::sync::Arc;

use bulwark_crds::dns::DnsZone;
use kube::ResourceExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::runtime::{DnsSettings, Error, apply_status, cached, drain, zone_client};
use crate::conditions;
use crate::leadership::{Leadership, became_leader, still_leading};
use crate::metrics::Metrics;
use crate::readiness::Readiness;

const CONTROLLER: &str = "dns-zone-prober";
const FIELD_MANAGER: &str = "bulwark-dns-zone-prober";

struct Context {
    client: kube::Client,
    metrics: Metrics,
    leadership: watch::Receiver<Leadership>,
    settings: DnsSettings,
}

pub async fn run(
    client: kube::Client,
    metrics: Metrics,
    readiness: Readiness,
    leadership: watch::Receiver<Leadership>,
    settings: DnsSettings,
    shutdown: CancellationToken,
) {
    let (zones, zone_events) = cached::<DnsZone>(
        &client,
        settings.scope.namespace(),
        watcher::Config::default(),
        readiness.gate(format!("{CONTROLLER}/DnsZone")),
    );
    let context = Arc::new(Context {
        client,
        metrics,
        leadership: leadership.clone(),
        settings,
    });
    // Spec changes only: the prober's own status writes must not re-trigger it.
    let spec_changes = zone_events
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let results = Controller::for_stream(spec_changes, zones)
        .with_config(crate::runtime::bounded())
        .reconcile_all_on(became_leader(leadership))
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, context);
    drain(CONTROLLER, results).await;
}

fn error_policy(zone: Arc<DnsZone>, error: &Error, context: Arc<Context>) -> Action {
    warn!(zone = %zone.name_any(), %error, "could not record the zone's state");
    Action::requeue(context.settings.resync)
}

async fn reconcile(zone: Arc<DnsZone>, context: Arc<Context>) -> Result<Action, Error> {
    let Some(token) = context.leadership.borrow().token() else {
        return Ok(Action::await_change());
    };
    if let Some(action) = context
        .settings
        .scope
        .not_managed(zone.namespace().as_deref())
    {
        return Ok(action);
    }
    let timer = context.metrics.reconcile(CONTROLLER);
    let probe = match zone_client(&context.client, &zone, context.settings.server_timeout).await {
        Ok(dns) => dns.probe().await.map_err(Error::from),
        Err(error) => Err(error),
    };
    let (ready, reason, message) = match &probe {
        // Nothing that changes with every update (such as the SOA serial): a status write per
        // probe would be a zone event, which re-checks every endpoint in the zone.
        Ok(()) => (
            true,
            "Reachable",
            format!(
                "the server answers for {} and accepts the TSIG key",
                zone.spec.zone
            ),
        ),
        Err(error) => (false, error.reason(), error.to_string()),
    };
    let existing = zone
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = conditions::condition(
        existing,
        "Ready",
        ready,
        reason,
        message,
        zone.metadata.generation,
    );
    let result =
        if conditions::differs(existing, &condition) && still_leading(&context.leadership, token) {
            let status = serde_json::json!({
                "observedGeneration": zone.metadata.generation,
                "conditions": [condition],
            });
            apply_status(&context.client, zone.as_ref(), FIELD_MANAGER, status, None)
                .await
                .map(drop)
                .map_err(Error::from)
        } else {
            Ok(())
        };
    timer.done(result.as_ref().err().map(Error::kind));
    result?;
    // Keys and servers change outside the zone object: probe again at the resync interval.
    Ok(Action::requeue(context.settings.resync))
}
