//! `/readyz` is true only once every registered cache has synced.

use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::runtime::watcher;

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
        self.readiness.gates.lock().unwrap()[self.index].1 = true;
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
}
