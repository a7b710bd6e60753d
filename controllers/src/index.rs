//! A cache with a secondary index: objects by keys derived from each (plans by their endpoint,
//! EndpointSlices by their Service, endpoints by the Services they follow), so a reconcile finds
//! its few objects without walking and cloning the whole cache. Walking it made every reconcile
//! cost as much as the cluster is large: most of the operator's CPU at 3,000 endpoints.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::stream::BoxStream;
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use tracing::warn;

use crate::readiness::Gate;
use crate::runtime::{Watched, trimmed_watch};

/// The index keys of one object.
pub type Keys<K> = fn(&K) -> Vec<String>;

/// A cache of `K` (an API object, or what a replica keeps of one) and, for each key, the objects
/// that have it.
#[derive(Clone)]
pub struct Indexed<K: Lookup<DynamicType = ()> + 'static> {
    store: Store<K>,
    index: Arc<RwLock<Index<K>>>,
}

struct Index<K: Lookup<DynamicType = ()> + 'static> {
    keys: Keys<K>,
    live: Entries<K>,
    /// Filled during a (re)list, then swapped in whole: a relist after a broken watch brings
    /// no Delete events for what went meanwhile.
    relisting: Option<Entries<K>>,
}

/// Most keys have one or two objects (an endpoint's plans, a Service's slice), and half the
/// objects have no key at all (literal endpoints): a `Vec` per key and nothing per object (the
/// keys an object is filed under are computed again from its cached copy to move it), where a
/// `HashSet` per key and a map of every object's keys was the largest part of the index at
/// 10,000 endpoints.
struct Entries<K: Lookup<DynamicType = ()> + 'static> {
    by_key: HashMap<String, Vec<ObjectRef<K>>>,
}

impl<K: Lookup<DynamicType = ()> + 'static> Default for Entries<K> {
    fn default() -> Self {
        Entries {
            by_key: HashMap::new(),
        }
    }
}

impl<K: Lookup<DynamicType = ()> + 'static> Entries<K> {
    fn add(&mut self, reference: &ObjectRef<K>, keys: Vec<String>) {
        for key in keys {
            let refs = self.by_key.entry(key).or_default();
            refs.push(reference.clone());
            refs.shrink_to_fit();
        }
    }

    fn remove(&mut self, reference: &ObjectRef<K>, keys: Vec<String>) {
        for key in keys {
            if let Some(refs) = self.by_key.get_mut(&key) {
                refs.retain(|r| r != reference);
                if refs.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }
}

impl<K> Indexed<K>
where
    K: Lookup<DynamicType = ()> + Clone + 'static,
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
        index.live.by_key.get(key).cloned().unwrap_or_default()
    }

    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    fn new(store: Store<K>, keys: Keys<K>) -> Self {
        let index = Index {
            keys,
            live: Entries::default(),
            relisting: None,
        };
        Indexed {
            store,
            index: Arc::new(RwLock::new(index)),
        }
    }

    /// An index of `objects` as a watch's first list fills it, for tests of what reads it.
    #[cfg(test)]
    pub fn listed(objects: impl IntoIterator<Item = K>, keys: Keys<K>) -> Self {
        let (store, mut writer) = reflector::store();
        let indexed = Indexed::new(store, keys);
        for object in objects {
            let event = watcher::Event::Apply(object);
            indexed.observe(&event);
            writer.apply_watcher_event(&event);
        }
        indexed
    }

    /// Brings the index up to date with an event the store is about to be given: the store's
    /// copy tells what the object was filed under.
    fn observe(&self, event: &watcher::Event<K>) {
        let cached = match event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                self.store.get(&name_ref(object))
            }
            _ => None,
        };
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .observe(event, cached.as_deref());
    }
}

/// A reference by namespace and name alone: `ObjectRef::from_obj` also carries the uid and
/// resourceVersion, which lookups ignore and which the index would hold twice per object.
pub fn name_ref<K: Lookup<DynamicType = ()>>(object: &K) -> ObjectRef<K> {
    let reference = ObjectRef::new(&object.name().unwrap_or_default());
    match object.namespace() {
        Some(namespace) => reference.within(&namespace),
        None => reference,
    }
}

impl<K: Lookup<DynamicType = ()> + 'static> Index<K> {
    /// The keys `object` is filed under, each once.
    fn keys_of(&self, object: &K) -> Vec<String> {
        let mut keys = (self.keys)(object);
        keys.sort();
        keys.dedup();
        keys
    }

    /// `cached` is the cache's copy of the event's object before the event: what it is filed
    /// under until now.
    fn observe(&mut self, event: &watcher::Event<K>, cached: Option<&K>) {
        match event {
            watcher::Event::Apply(object) => {
                let old = cached.map(|c| self.keys_of(c)).unwrap_or_default();
                let new = self.keys_of(object);
                // Most changes (status writes) leave the keys as they were.
                if old != new {
                    let reference = name_ref(object);
                    self.live.remove(&reference, old);
                    self.live.add(&reference, new);
                }
            }
            watcher::Event::Delete(object) => {
                let keys = self.keys_of(cached.unwrap_or(object));
                self.live.remove(&name_ref(object), keys);
            }
            watcher::Event::Init => self.relisting = Some(Entries::default()),
            watcher::Event::InitApply(object) => {
                let keys = self.keys_of(object);
                let fresh = self.relisting.get_or_insert_with(Entries::default);
                fresh.add(&name_ref(object), keys);
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = self.relisting.take() {
                    self.live = fresh;
                }
            }
        }
    }
}

/// The event with its object (if any) replaced by what `project` makes of it. kube-runtime's
/// `watcher::Event` only has `modify`, in place.
fn map_event<K, P>(event: watcher::Event<K>, project: fn(K) -> P) -> watcher::Event<P> {
    use watcher::Event::*;
    match event {
        Apply(object) => Apply(project(object)),
        Delete(object) => Delete(project(object)),
        Init => Init,
        InitApply(object) => InitApply(project(object)),
        InitDone => InitDone,
    }
}

/// Which of a shared watch's changes a subscriber is sent.
pub enum Changes<K> {
    /// Objects listed, created or changed: what a controller's own kind triggers on.
    Applied,
    /// Also deleted objects: what an owner must hear of its children.
    Touched,
    /// Objects listed or created, and changed ones for which `differs(cached, new)`: a
    /// controller that reacted to every write (its own status writes included) redid its work
    /// for nothing. Deletions are not sent.
    AppliedIf(fn(&K, &K) -> bool),
    /// [`Changes::AppliedIf`] and deleted objects.
    TouchedIf(fn(&K, &K) -> bool),
}

/// One watch of a kind for several controllers of a replica: one cache and index for all of them,
/// and for each subscriber its own stream of changes. A watch per controller held every object
/// once per controller, and the API server sent every write once per controller. The cache holds
/// `P`: the API object itself, or what a replica keeps of one (for kinds a cluster holds thousands
/// of, of which controllers read a few fields: even trimmed, an API object costs its whole
/// `ObjectMeta` and a map node per label or annotation).
pub struct SharedWatch<P: Lookup<DynamicType = ()> + Clone + 'static> {
    indexed: Indexed<P>,
    writer: Writer<P>,
    events: BoxStream<'static, Result<watcher::Event<P>, watcher::Error>>,
    subscribers: Vec<Subscriber<P>>,
}

struct Subscriber<P> {
    changes: Changes<P>,
    /// Opened with the first full list.
    gate: Gate,
    sender: UnboundedSender<Arc<P>>,
}

impl<P: Lookup<DynamicType = ()> + Clone + Send + Sync + 'static> SharedWatch<P> {
    /// A watch of `K`, each object cached as what `project` makes of it (after what
    /// [`trimmed_watch`] drops).
    pub fn new<K: Watched>(
        client: &kube::Client,
        namespace: Option<&str>,
        config: watcher::Config,
        keys: Keys<P>,
        project: fn(K) -> P,
    ) -> Self {
        let events = trimmed_watch(client, namespace, config, |_| {})
            .map(move |event| event.map(|event| map_event(event, project)))
            .boxed();
        Self::from_events(events, keys)
    }

    fn from_events(
        events: BoxStream<'static, Result<watcher::Event<P>, watcher::Error>>,
        keys: Keys<P>,
    ) -> Self {
        let (store, writer) = reflector::store();
        SharedWatch {
            indexed: Indexed::new(store, keys),
            writer,
            events,
            subscribers: Vec::new(),
        }
    }

    pub fn indexed(&self) -> Indexed<P> {
        self.indexed.clone()
    }

    /// A stream of the `changes` for one controller; `gate` opens once the cache is listed.
    pub fn subscribe(&mut self, changes: Changes<P>, gate: Gate) -> UnboundedReceiver<Arc<P>> {
        let (sender, receiver) = futures::channel::mpsc::unbounded();
        self.subscribers.push(Subscriber {
            changes,
            gate,
            sender,
        });
        receiver
    }

    /// Fills the cache and index and sends each subscriber its changes, for as long as the
    /// watch runs (it retries with backoff on its own).
    pub async fn run(mut self) {
        let kind = P::kind(&()).into_owned();
        while let Some(event) = self.events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    warn!(%error, %kind, "watch failed");
                    continue;
                }
            };
            // The cached copy before this event, which `AppliedIf` compares with.
            let before = match &event {
                watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                    self.indexed.store.get(&name_ref(object))
                }
                _ => None,
            };
            self.indexed.observe(&event);
            self.writer.apply_watcher_event(&event);
            let (object, deleted) = match event {
                // The store's own copy; a relisted one is in the store only once the list is done.
                watcher::Event::Apply(object) => {
                    let cached = self.indexed.store.get(&name_ref(&object));
                    (cached.unwrap_or_else(|| Arc::new(object)), false)
                }
                watcher::Event::InitApply(object) => (Arc::new(object), false),
                watcher::Event::Delete(object) => (Arc::new(object), true),
                watcher::Event::InitDone => {
                    self.subscribers.iter().for_each(|s| s.gate.open());
                    continue;
                }
                watcher::Event::Init => continue,
            };
            for subscriber in &self.subscribers {
                let wanted = match subscriber.changes {
                    Changes::Applied => !deleted,
                    Changes::Touched => true,
                    Changes::AppliedIf(differs) | Changes::TouchedIf(differs) if !deleted => before
                        .as_ref()
                        .is_none_or(|before| differs(before, &object)),
                    Changes::AppliedIf(_) => false,
                    Changes::TouchedIf(_) => true,
                };
                if wanted {
                    // A controller that has stopped (shutdown) no longer listens.
                    let _ = subscriber.sender.unbounded_send(object.clone());
                }
            }
        }
    }
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
        let (store, mut writer) = reflector::store();
        let indexed = Indexed::new(store, index().keys);
        // As a watch fills them: the index first, while the store still has the old copy.
        let mut observe = |event: watcher::Event<ConfigMap>| {
            indexed.observe(&event);
            writer.apply_watcher_event(&event);
        };
        let names = |key: &str| names(&indexed.index.read().unwrap(), key);
        observe(watcher::Event::Apply(map("a", "red")));
        observe(watcher::Event::Apply(map("b", "red")));
        assert_eq!(names("red"), ["a", "b"]);
        observe(watcher::Event::Apply(map("a", "blue")));
        assert_eq!(names("red"), ["b"]);
        assert_eq!(names("blue"), ["a"]);
        // The deleted object's last state may carry other keys than the copy it was filed as.
        observe(watcher::Event::Delete(map("b", "green")));
        assert!(names("red").is_empty());
        assert!(
            !indexed
                .index
                .read()
                .unwrap()
                .live
                .by_key
                .contains_key("red"),
            "empty keys are dropped"
        );
        assert_eq!(indexed.get("blue").len(), 1);
    }

    /// A spec change, not a status write.
    fn new_generation(cached: &ConfigMap, new: &ConfigMap) -> bool {
        cached.metadata.generation != new.metadata.generation
    }

    fn versioned(name: &str, generation: i64, label: &str) -> ConfigMap {
        let mut object = map(name, label);
        object.metadata.generation = Some(generation);
        object
    }

    fn names_in(changes: &mut UnboundedReceiver<Arc<ConfigMap>>) -> Vec<String> {
        std::iter::from_fn(|| changes.try_recv().ok())
            .map(|object| object.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[tokio::test]
    async fn a_shared_watch_sends_each_subscriber_the_changes_it_asked_for() {
        use watcher::Event::*;
        let events = vec![
            Init,
            InitApply(versioned("a", 1, "red")),
            InitDone,
            // A status write: same generation.
            Apply(versioned("a", 1, "red")),
            Apply(versioned("b", 1, "blue")),
            Apply(versioned("a", 2, "red")),
            Delete(versioned("b", 1, "blue")),
        ];
        let events = futures::stream::iter(events.into_iter().map(Ok)).boxed();
        let mut watch = SharedWatch::from_events(events, index().keys);
        let readiness = crate::readiness::Readiness::default();
        let mut applied = watch.subscribe(Changes::Applied, readiness.gate("one/ConfigMap"));
        let mut touched = watch.subscribe(Changes::Touched, readiness.gate("two/ConfigMap"));
        let mut specs = watch.subscribe(
            Changes::AppliedIf(new_generation),
            readiness.gate("three/ConfigMap"),
        );
        let mut specs_and_deletions = watch.subscribe(
            Changes::TouchedIf(new_generation),
            readiness.gate("four/ConfigMap"),
        );
        let indexed = watch.indexed();
        watch.run().await;
        assert_eq!(names_in(&mut applied), ["a", "a", "b", "a"]);
        assert_eq!(names_in(&mut touched), ["a", "a", "b", "a", "b"]);
        assert_eq!(names_in(&mut specs), ["a", "b", "a"]);
        assert_eq!(names_in(&mut specs_and_deletions), ["a", "b", "a", "b"]);
        assert!(
            readiness.pending().is_empty(),
            "every gate opens with the list"
        );
        let cached: Vec<_> = indexed
            .get("red")
            .iter()
            .map(|m| m.metadata.generation)
            .collect();
        assert_eq!(cached, [Some(2)]);
        assert!(indexed.get("blue").is_empty(), "deleted");
    }

    #[test]
    fn a_relist_replaces_the_index_whole_once_done() {
        let mut index = index();
        index.observe(&watcher::Event::Apply(map("gone", "red")), None);
        index.observe(&watcher::Event::Init, None);
        index.observe(&watcher::Event::InitApply(map("kept", "red")), None);
        // Until the list is complete, lookups still answer from the old index.
        assert_eq!(names(&index, "red"), ["gone"]);
        index.observe(&watcher::Event::InitDone, None);
        // Deleted while the watch was down: no Delete event ever came for it.
        assert_eq!(names(&index, "red"), ["kept"]);
    }
}
