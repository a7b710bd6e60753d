//! Runtime helpers every controller shares: scoped APIs, cached watches, backoff, Events.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::events::Recorder;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::readiness::Gate;
use crate::scope::Scope;

/// An API over the watched namespace, or over all namespaces when `namespace` is `None`.
pub fn scoped_api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Server-side applies `status` to the object's status subresource under `manager`, so each
/// controller owns only its own fields. `resource_version` turns the write into a
/// compare-and-set (a conflict comes back as HTTP 409). Returns the object as written.
pub async fn apply_status<K: Watched>(
    client: &kube::Client,
    object: &K,
    manager: &str,
    status: serde_json::Value,
    resource_version: Option<&str>,
) -> Result<K, kube::Error> {
    let mut patch = serde_json::json!({ "status": status });
    if let Some(rv) = resource_version {
        patch["metadata"]["resourceVersion"] = rv.into();
    }
    apply(client, object, manager, patch, Subresource::Status).await
}

/// Adds `finalizer` by server-side apply under `manager`: finalizers are a set whose entries
/// each field manager owns, so no other write on the object (another replica's add, a status
/// write) makes it lose a compare-and-set. For kinds whose spec is required: an object deleted
/// meanwhile is not created again, since an apply of metadata alone fails validation (422), as
/// does a new finalizer on an object being deleted. Returns the object as written.
pub async fn add_finalizer<K: Watched>(
    client: &kube::Client,
    object: &K,
    manager: &str,
    finalizer: &str,
) -> Result<K, kube::Error> {
    let patch = serde_json::json!({ "metadata": { "finalizers": [finalizer] } });
    apply(client, object, manager, patch, Subresource::None).await
}

enum Subresource {
    None,
    Status,
}

/// Server-side applies `patch`, given the object's kind and name here, under `manager`.
async fn apply<K: Watched>(
    client: &kube::Client,
    object: &K,
    manager: &str,
    mut patch: serde_json::Value,
    subresource: Subresource,
) -> Result<K, kube::Error> {
    let name = object.meta().name.as_deref().unwrap_or_default();
    patch["apiVersion"] = K::api_version(&()).into();
    patch["kind"] = K::kind(&()).into();
    patch["metadata"]["name"] = name.into();
    let api = Api::<K>::namespaced(
        client.clone(),
        object.meta().namespace.as_deref().unwrap_or_default(),
    );
    let params = kube::api::PatchParams::apply(manager).force();
    let patch = kube::api::Patch::Apply(patch);
    match subresource {
        Subresource::None => api.patch(name, &params, &patch).await,
        Subresource::Status => api.patch_status(name, &params, &patch).await,
    }
}

/// Removes `finalizer` with a compare-and-set on the resourceVersion (a lost race comes back as
/// HTTP 409): the list is written whole, so it must be the one read. Returns the object as
/// written.
pub async fn remove_finalizer<K: Watched>(
    client: &kube::Client,
    object: &K,
    finalizer: &str,
) -> Result<K, kube::Error> {
    let finalizers: Vec<String> = object
        .meta()
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": object.meta().resource_version,
    }});
    Api::<K>::namespaced(
        client.clone(),
        object.meta().namespace.as_deref().unwrap_or_default(),
    )
    .patch(
        object.meta().name.as_deref().unwrap_or_default(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(patch),
    )
    .await
}

/// Reconciles one controller runs at once. Unbounded (kube-runtime's default), 10,000
/// endpoints reconciled together open one HTTP/1.1 connection to the API server per request in
/// flight: thousands of connections, until the API server answers 504 and refuses more.
pub const RECONCILE_CONCURRENCY: u16 = 32;

/// The controller settings of the controllers that fan out over many objects (DNS, SLO).
pub fn bounded() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// What a cached watch needs of an object's type.
pub trait Watched:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Drops from a cached object what no controller reads and the cache would hold for every
/// object in the cluster: managedFields (often the larger part of an object: every field twice,
/// per manager) and the copy of the whole object that `kubectl apply` keeps in an annotation.
/// Its lists lose their spare capacity: serde_json grows a list from room for four entries up,
/// so one condition (128 bytes) or one finalizer held the room of four; a cache of a kind keeps
/// its own lists compact the same way (at 10,000 endpoints, about 7 MB of a replica's memory).
pub fn strip_unread<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(finalizers) = meta.finalizers.as_mut() {
        finalizers.shrink_to_fit();
    }
    if let Some(owners) = meta.owner_references.as_mut() {
        owners.shrink_to_fit();
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        // An emptied map still holds its B-tree node.
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A cache of `K` in the watched namespace(s), and the watch events that fill it; `gate` opens
/// once the first full list is in. Callers take `applied_objects` or `touched_objects`.
/// Objects are cached without what [`strip_unread`] drops.
pub fn cached<K: Watched>(
    client: &kube::Client,
    namespace: Option<&str>,
    config: watcher::Config,
    gate: Gate,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) {
    cached_trimmed(client, namespace, config, gate, |_| {})
}

/// [`cached`], where `trim` also drops the fields of `K` its one reader never looks at: for
/// kinds the cluster holds thousands of (EndpointSlices) or that are large (dashboards).
pub fn cached_trimmed<K: Watched>(
    client: &kube::Client,
    namespace: Option<&str>,
    config: watcher::Config,
    gate: Gate,
    trim: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let events = gate
        .open_when_listed(trimmed_watch(client, namespace, config, trim))
        .reflect(writer);
    (store, events)
}

/// The watch every cache fills from: retried with backoff, its objects without what
/// [`strip_unread`] and `trim` drop.
pub fn trimmed_watch<K: Watched>(
    client: &kube::Client,
    namespace: Option<&str>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    watcher(scoped_api::<K>(client, namespace), config)
        .default_backoff()
        .modify(move |object| {
            strip_unread(object);
            trim(object);
        })
}

/// Runs a controller's result stream to its end (shutdown), logging what it reports besides
/// reconcile failures (which the error policy logs): watch and queue errors.
pub async fn drain<T, R, Q>(
    controller: &str,
    results: impl futures::Stream<Item = Result<T, kube::runtime::controller::Error<R, Q>>>,
) where
    R: std::error::Error + 'static,
    Q: std::error::Error + 'static,
{
    use futures::StreamExt;
    results
        .for_each(|result| {
            if let Err(error) = result
                && !matches!(
                    error,
                    kube::runtime::controller::Error::ReconcilerFailed(..)
                )
            {
                warn!(%error, controller, "watch failed");
            }
            futures::future::ready(())
        })
        .await
}

/// `namespace/name`: how logs, backoff and queues name an object.
pub fn object_key<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// What every singleton controller's reconcile does around its own `work`: only the leader
/// acts (handed its fencing token), only in namespaces this replica manages; the pass is timed
/// in the reconcile metrics, and a success resets the object's backoff.
pub async fn as_leader<K, E, Fut>(
    object: &K,
    controller: &'static str,
    leadership: &tokio::sync::watch::Receiver<Leadership>,
    scope: &Scope,
    metrics: &Metrics,
    backoff: &Backoff,
    work: impl FnOnce(u64) -> Fut,
) -> Result<Action, E>
where
    K: Resource,
    Fut: std::future::Future<Output = Result<Action, E>>,
{
    let Some(token) = leadership.borrow().token() else {
        return Ok(Action::await_change());
    };
    if let Some(action) = scope.not_managed(object.meta().namespace.as_deref()) {
        return Ok(action);
    }
    let timer = metrics.reconcile(controller);
    let result = work(token).await;
    timer.done(result.as_ref().err().map(|_| "api"));
    if result.is_ok() {
        backoff.succeeded(&object_key(object));
    }
    result
}

/// Exponential backoff per object: 0.5 s doubling to 60 s, reset by a success.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn failed(&self, key: &str) -> Action {
        let mut failures = self.failures.lock().unwrap();
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        let delay = Duration::from_millis(500).saturating_mul(1 << (*count - 1).min(7));
        Action::requeue(delay.min(Duration::from_secs(60)))
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }
}

/// Publishes an Event; failing to record one never fails a reconciliation.
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish_regarding(recorder, object.object_ref(&()), type_, reason, note).await;
}

/// [`publish`] for an object a replica caches as less than the API object.
pub async fn publish_regarding(
    recorder: &Recorder,
    regarding: ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    if let Err(e) = recorder.publish(regarding, type_, reason, note).await {
        warn!(error = %e, reason, "could not record Event");
    }
}

/// Drops what `remembered` holds for objects no longer in `objects`: a deleted object is never
/// reconciled again to drop its own entries, and one recreated under the same name must not
/// inherit them. Keys are an object's UID, or start with `<UID>/`.
pub fn forget_deleted<K, V>(remembered: &mut HashMap<String, V>, objects: &Store<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let existing: HashSet<String> = objects.state().iter().filter_map(|o| o.uid()).collect();
    remembered.retain(|key, _| {
        let uid = key.split_once('/').map_or(key.as_str(), |(uid, _)| uid);
        existing.contains(uid)
    });
}

/// A 404 of any kind: a missing object (reason NotFound), or an API group or kind the server
/// does not serve (a plain-text "404 page not found", which `Status::is_not_found` misses).
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// `500ms`, `15s`, `2m` (a bare number is seconds): the durations of flags and of specs.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 15s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{text}`: unknown unit `{unit}` (use ms, s or m)")),
    }
}

/// Installs ring as rustls's process-wide crypto provider unless one is installed already.
/// reqwest (built without a provider of its own) panics when building a client without one;
/// kube installs it too, but only once its first client exists.
pub fn ensure_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_remembered_of_deleted_objects_is_forgotten() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let with_uid = |uid: &str| {
            let mut map = ConfigMap::default();
            map.metadata.name = Some(format!("map-{uid}"));
            map.metadata.namespace = Some("ns".into());
            map.metadata.uid = Some(uid.into());
            map
        };
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(with_uid("kept")));
        writer.apply_watcher_event(&watcher::Event::Apply(with_uid("deleted")));
        writer.apply_watcher_event(&watcher::Event::Delete(with_uid("deleted")));
        let mut remembered: HashMap<String, u8> = [
            "kept",
            "kept/instance-0",
            "deleted",
            "deleted/instance-0",
            "never-seen/instance-1",
        ]
        .into_iter()
        .map(|key| (key.to_string(), 0))
        .collect();
        forget_deleted(&mut remembered, &store);
        let mut left: Vec<&str> = remembered.keys().map(String::as_str).collect();
        left.sort();
        assert_eq!(left, ["kept", "kept/instance-0"]);
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_resets() {
        let backoff = Backoff::default();
        let delays: Vec<Action> = (0..10).map(|_| backoff.failed("ns/a")).collect();
        assert_eq!(delays[0], Action::requeue(Duration::from_millis(500)));
        assert_eq!(delays[1], Action::requeue(Duration::from_secs(1)));
        assert_eq!(delays[6], Action::requeue(Duration::from_secs(32)));
        assert_eq!(delays[9], Action::requeue(Duration::from_secs(60)));
        assert_eq!(
            backoff.failed("ns/b"),
            Action::requeue(Duration::from_millis(500))
        );
        backoff.succeeded("ns/a");
        assert_eq!(
            backoff.failed("ns/a"),
            Action::requeue(Duration::from_millis(500))
        );
    }
}
