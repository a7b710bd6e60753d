//! `/readyz` is true only once every registered cache has synced.

use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use std::time::Duration;
use tracing::info;

/// A set of named gates; ready when every gate is open and at least one was registered.
#[derive(Clone, Default)]
pub struct Readiness {
    gates: Arc<Mutex<Vec<(String, bool)>>>,
}

/// Handle that opens one gate.
pub struct Gate {
    readiness: Readiness,
    index: usize,
}

impl Readiness {
    pub fn gate(&self, name: impl Into<String>) -> Gate {
        let mut gates = self.gates.lock().unwrap();
        gates.push((name.into(), false));
        Gate {
            readiness: self.clone(),
            index: gates.len() - 1,
        }
    }

    /// Whether every cache of `controller` (its gates `<controller>/<kind>`) has its first full
    /// list. A controller's runner waits only for its main cache; a reconcile that read another
    /// one before it synced would take what is not listed yet for absent: a plan for missing, a
    /// Service for without endpoints.
    pub fn synced(&self, controller: &str) -> bool {
        let prefix = format!("{controller}/");
        let gates = self.gates.lock().unwrap();
        let mut mine = gates.iter().filter(|(name, _)| name.starts_with(&prefix));
        mine.clone().next().is_some() && mine.all(|(_, open)| *open)
    }

    /// A short requeue while `controller`'s caches are still listing (see [`Self::synced`]).
    pub fn until_synced(&self, controller: &str) -> Option<Action> {
        (!self.synced(controller)).then(|| Action::requeue(Duration::from_millis(200)))
    }

    /// Names of the gates still closed; empty means ready.
    pub fn pending(&self) -> Vec<String> {
        let gates = self.gates.lock().unwrap();
        if gates.is_empty() {
            return vec!["startup".into()];
        }
        gates
            .iter()
            .filter(|(_, open)| !open)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

impl Gate {
    pub fn open(&self) {
        let mut gates = self.readiness.gates.lock().unwrap();
        let (name, open) = &mut gates[self.index];
        // Once, at the first full list: when each cache was in is where a slow start's time went.
        if !*open {
            info!(cache = %name, "listed");
        }
        *open = true;
    }

    /// Passes a watch stream through and opens the gate once its first full list is in.
    /// (Not `Store::wait_until_ready`: kube wakes only one of several waiters on a store, and a
    /// controller's runner already waits on its own.)
    pub fn open_when_listed<K, S>(self, events: S) -> impl Stream<Item = S::Item>
    where
        S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    {
        events.inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                self.open();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_gate_is_open() {
        let readiness = Readiness::default();
        assert_eq!(
            readiness.pending(),
            vec!["startup"],
            "nothing registered is not ready"
        );
        let api = readiness.gate("api");
        let cache = readiness.gate("cache/DnsPlan");
        api.open();
        assert_eq!(readiness.pending(), vec!["cache/DnsPlan"]);
        cache.open();
        assert!(readiness.pending().is_empty());
    }

    #[test]
    fn a_controller_is_synced_once_all_its_own_caches_are() {
        let readiness = Readiness::default();
        assert!(!readiness.synced("dns-enactor"), "no caches registered yet");
        let endpoints = readiness.gate("dns-enactor/DnsEndpoint");
        let plans = readiness.gate("dns-enactor/DnsPlan");
        let _other = readiness.gate("dns-planner/DnsPlan");
        endpoints.open();
        assert!(!readiness.synced("dns-enactor"));
        plans.open();
        assert!(readiness.synced("dns-enactor"));
        assert!(!readiness.synced("dns-planner"));
        assert!(
            !readiness.synced("dns"),
            "a prefix of another controller's name is not it"
        );
    }
}
