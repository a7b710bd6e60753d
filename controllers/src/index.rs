//! A cache with a secondary index: objects by keys derived from each (plans by their endpoint,
//! EndpointSlices by their Service, endpoints by the Services they follow), so a reconcile finds
//! its few objects without walking and cloning the whole cache. Walking it made every reconcile
//! cost as much as the cluster is large: most of the operator's CPU at 3,000 endpoints.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::readiness::Gate;
use crate::runtime::{Watched, cached};

/// The index keys of one object.
pub type Keys<K> = fn(&K) -> Vec<String>;

/// A cache of `K` and, for each key, the objects that have it.
#[derive(Clone)]
pub struct Indexed<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    index: Arc<RwLock<Index<K>>>,
}

struct Index<K: Resource<DynamicType = ()> + 'static> {
    keys: Keys<K>,
    live: Entries<K>,
    /// Filled during a (re)list, then swapped in whole: a relist after a broken watch brings
    /// no Delete events for what went meanwhile.
    relisting: Option<Entries<K>>,
}

struct Entries<K: Resource<DynamicType = ()> + 'static> {
    by_key: HashMap<String, HashSet<ObjectRef<K>>>,
    keys_of: HashMap<ObjectRef<K>, Vec<String>>,
}

impl<K: Resource<DynamicType = ()> + 'static> Default for Entries<K> {
    fn default() -> Self {
        Entries {
            by_key: HashMap::new(),
            keys_of: HashMap::new(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Entries<K> {
    fn insert(&mut self, reference: ObjectRef<K>, keys: Vec<String>) {
        // A changed object's keys may differ from its old ones.
        self.remove(&reference);
        for key in &keys {
            self.by_key
                .entry(key.clone())
                .or_default()
                .insert(reference.clone());
        }
        self.keys_of.insert(reference, keys);
    }

    fn remove(&mut self, reference: &ObjectRef<K>) {
        for key in self.keys_of.remove(reference).unwrap_or_default() {
            if let Some(refs) = self.by_key.get_mut(&key) {
                refs.remove(reference);
                if refs.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }
}

impl<K> Indexed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// The objects with `key`, as the cache holds them now.
    pub fn get(&self, key: &str) -> Vec<Arc<K>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.live.by_key.get(key).map_or_else(Vec::new, |refs| {
            refs.iter().filter_map(|r| self.store.get(r)).collect()
        })
    }

    /// References of the objects with `key`.
    pub fn refs(&self, key: &str) -> Vec<ObjectRef<K>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .live
            .by_key
            .get(key)
            .map_or_else(Vec::new, |refs| refs.iter().cloned().collect())
    }

    pub fn store(&self) -> &Store<K> {
        &self.store
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Index<K> {
    fn observe(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(object) => {
                let keys = (self.keys)(object);
                self.live.insert(ObjectRef::from_obj(object), keys);
            }
            watcher::Event::Delete(object) => self.live.remove(&ObjectRef::from_obj(object)),
            watcher::Event::Init => self.relisting = Some(Entries::default()),
            watcher::Event::InitApply(object) => {
                let keys = (self.keys)(object);
                let fresh = self.relisting.get_or_insert_with(Entries::default);
                fresh.insert(ObjectRef::from_obj(object), keys);
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = self.relisting.take() {
                    self.live = fresh;
                }
            }
        }
    }
}

/// [`cached`], indexed by `keys`.
pub fn indexed<K: Watched>(
    client: &kube::Client,
    namespace: Option<&str>,
    config: watcher::Config,
    gate: Gate,
    keys: Keys<K>,
) -> (
    Indexed<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) {
    let (store, events) = cached::<K>(client, namespace, config, gate);
    let index = Arc::new(RwLock::new(Index {
        keys,
        live: Entries::default(),
        relisting: None,
    }));
    let observer = index.clone();
    let events = events.inspect(move |event| {
        if let Ok(event) = event {
            observer
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .observe(event);
        }
    });
    (Indexed { store, index }, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn map(name: &str, group: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some([("group".to_string(), group.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn index() -> Index<ConfigMap> {
        Index {
            keys: |m: &ConfigMap| {
                m.metadata
                    .labels
                    .iter()
                    .flatten()
                    .map(|(_, v)| v.clone())
                    .collect()
            },
            live: Entries::default(),
            relisting: None,
        }
    }

    fn names(index: &Index<ConfigMap>, key: &str) -> Vec<String> {
        let mut names: Vec<String> = index
            .live
            .by_key
            .get(key)
            .into_iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn objects_move_between_keys_and_leave_on_delete() {
        let mut index = index();
        index.observe(&watcher::Event::Apply(map("a", "red")));
        index.observe(&watcher::Event::Apply(map("b", "red")));
        assert_eq!(names(&index, "red"), ["a", "b"]);
        index.observe(&watcher::Event::Apply(map("a", "blue")));
        assert_eq!(names(&index, "red"), ["b"]);
        assert_eq!(names(&index, "blue"), ["a"]);
        index.observe(&watcher::Event::Delete(map("b", "red")));
        assert!(names(&index, "red").is_empty());
        assert!(
            !index.live.by_key.contains_key("red"),
            "empty keys are dropped"
        );
    }

    #[test]
    fn a_relist_replaces_the_index_whole_once_done() {
        let mut index = index();
        index.observe(&watcher::Event::Apply(map("gone", "red")));
        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(map("kept", "red")));
        // Until the list is complete, lookups still answer from the old index.
        assert_eq!(names(&index, "red"), ["gone"]);
        index.observe(&watcher::Event::InitDone);
        // Deleted while the watch was down: no Delete event ever came for it.
        assert_eq!(names(&index, "red"), ["kept"]);
    }
}
