//! Which namespaces a replica manages: the one it was pinned to (`--watch-namespace`), or every
//! namespace except those labelled `bulwark.dev/exclude=true`.
//!
//! The label lets a namespace-scoped release (a canary, or the e2e suite's own operators) run in
//! a cluster where a cluster-wide release is installed, without the two acting on the same
//! objects. A pinned replica always manages its namespace, label or not.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

/// Label a cluster-wide release reads: `"true"` leaves the namespace's objects alone.
pub const EXCLUDE_LABEL: &str = "bulwark.dev/exclude";

/// A namespace not seen yet is looked at again this soon (the namespace cache lags its objects).
const UNKNOWN_RETRY: Duration = Duration::from_secs(1);
/// An excluded namespace's objects are looked at again this often, so removing the label takes
/// effect without a change to every object.
const EXCLUDED_RECHECK: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Scope {
    pinned: Option<String>,
    /// Metadata of every namespace; present only for a cluster-wide replica.
    namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Managed,
    Excluded,
    /// The object's namespace is not in the cache yet; its labels are unknown.
    Unknown,
}

/// The pure rule: a pinned replica manages exactly its namespace; a cluster-wide one manages a
/// namespace unless its labels exclude it.
pub fn verdict(
    pinned: Option<&str>,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Verdict {
    match (pinned, labels) {
        (Some(pinned), _) if pinned == namespace => Verdict::Managed,
        (Some(_), _) => Verdict::Excluded,
        (None, None) => Verdict::Unknown,
        (None, Some(labels)) if labels.get(EXCLUDE_LABEL).is_some_and(|v| v == "true") => {
            Verdict::Excluded
        }
        (None, Some(_)) => Verdict::Managed,
    }
}

impl Scope {
    /// Manages `namespace` only.
    pub fn pinned(namespace: String) -> Self {
        Scope {
            pinned: Some(namespace),
            namespaces: None,
        }
    }

    /// Manages every namespace not excluded; the returned task keeps the namespace cache (it is
    /// metadata only) until `shutdown`, and must run for the replica's lifetime.
    pub fn cluster_wide(
        client: &kube::Client,
        readiness: &Readiness,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store();
        let gate = readiness.gate("scope/Namespace");
        let namespaces = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
        let events = watcher(namespaces, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        let events = gate
            .open_when_listed(events)
            .take_until(shutdown.cancelled_owned());
        let task = events.for_each(|event| {
            if let Err(error) = event {
                tracing::warn!(%error, "namespace watch failed");
            }
            futures::future::ready(())
        });
        let scope = Scope {
            pinned: None,
            namespaces: Some(store),
        };
        (scope, task)
    }

    /// The namespace to watch, or `None` for all.
    pub fn namespace(&self) -> Option<&str> {
        self.pinned.as_deref()
    }

    pub fn verdict(&self, namespace: &str) -> Verdict {
        let labels = self.namespaces.as_ref().and_then(|store| {
            store
                .get(&ObjectRef::new(namespace))
                .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
        });
        verdict(self.pinned.as_deref(), namespace, labels.as_ref())
    }

    /// What a reconcile returns instead of acting when the object is not this replica's to
    /// manage; `None` when it is.
    pub fn not_managed(&self, namespace: Option<&str>) -> Option<Action> {
        match self.verdict(namespace.unwrap_or_default()) {
            Verdict::Managed => None,
            Verdict::Excluded => Some(Action::requeue(EXCLUDED_RECHECK)),
            Verdict::Unknown => Some(Action::requeue(UNKNOWN_RETRY)),
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pinned {
            Some(namespace) => write!(f, "namespace {namespace}"),
            None => write!(f, "all namespaces but those labelled {EXCLUDE_LABEL}=true"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_pinned_replica_manages_its_namespace_even_when_excluded() {
        let excluded = labels(&[(EXCLUDE_LABEL, "true")]);
        assert_eq!(
            verdict(Some("shop"), "shop", Some(&excluded)),
            Verdict::Managed
        );
        assert_eq!(verdict(Some("shop"), "shop", None), Verdict::Managed);
        assert_eq!(verdict(Some("shop"), "other", None), Verdict::Excluded);
    }

    #[test]
    fn a_cluster_wide_replica_skips_excluded_and_waits_for_unknown_namespaces() {
        assert_eq!(verdict(None, "a", Some(&labels(&[]))), Verdict::Managed);
        assert_eq!(
            verdict(None, "a", Some(&labels(&[(EXCLUDE_LABEL, "false")]))),
            Verdict::Managed
        );
        assert_eq!(
            verdict(None, "a", Some(&labels(&[(EXCLUDE_LABEL, "true")]))),
            Verdict::Excluded
        );
        assert_eq!(verdict(None, "a", None), Verdict::Unknown);
    }
}
