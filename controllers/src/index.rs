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

/// Most keys have one or two objects (an endpoint's plans, a Service's slice), and half the
/// objects have no key at all (literal endpoints): a `Vec` per key and nothing per object (the
/// keys an object is filed under are computed again from its cached copy to move it), where a
/// `HashSet` per key and a map of every object's keys was the largest part of the index at
/// 10,000 endpoints. The entries are the store's own `Arc`s, not references to look up in it:
/// a reference held the object's name and namespace again (about 150 bytes an entry).
struct Index<K: Lookup<DynamicType = ()> + 'static> {
    keys: Keys<K>,
    by_key: HashMap<String, Vec<Arc<K>>>,
}

impl<K> Indexed<K>
where
    K: Lookup<DynamicType = ()> + Clone + 'static,
{
    /// The objects with `key`, as the cache holds them now.
    pub fn get(&self, key: &str) -> Vec<Arc<K>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.by_key.get(key).cloned().unwrap_or_default()
    }

    /// References of the objects with `key`.
    pub fn refs(&self, key: &str) -> Vec<ObjectRef<K>> {
        self.get(key)
            .iter()
            .map(|object| name_ref(&**object))
            .collect()
    }

    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    fn new(store: Store<K>, keys: Keys<K>) -> Self {
        let index = Index {
            keys,
            by_key: HashMap::new(),
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
        indexed.apply(&mut writer, &watcher::Event::Init);
        for object in objects {
            indexed.apply(&mut writer, &watcher::Event::InitApply(object));
        }
        indexed.apply(&mut writer, &watcher::Event::InitDone);
        indexed
    }

    /// Gives the event to the store through `writer`, and brings the index up to date with it.
    /// Returns the cached copy of the event's object from before it.
    fn apply(&self, writer: &mut Writer<K>, event: &watcher::Event<K>) -> Option<Arc<K>> {
        let before = match event {
            watcher::Event::Apply(object)
            | watcher::Event::Delete(object)
            | watcher::Event::InitApply(object) => self.store.get(&name_ref(object)),
            _ => None,
        };
        writer.apply_watcher_event(event);
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(object) => {
                let new = self.store.get(&name_ref(object));
                match (&before, new) {
                    // Most changes (status writes) leave the keys as they were.
                    (Some(old), Some(new)) if index.keys_of(old) == index.keys_of(&new) => {
                        index.replace(new)
                    }
                    (old, new) => {
                        old.iter().for_each(|old| index.remove(old));
                        new.into_iter().for_each(|new| index.add(new));
                    }
                }
            }
            watcher::Event::Delete(object) => index.remove(before.as_deref().unwrap_or(object)),
            // A relist is in the store once complete, and brings no Delete events for what went
            // while the watch was down: the index is made again from the store.
            watcher::Event::InitDone => {
                index.by_key.clear();
                for object in self.store.state() {
                    index.add(object);
                }
                index.by_key.shrink_to_fit();
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
        before
    }
}

/// A reference by namespace and name alone: `ObjectRef::from_obj` also carries the uid and
/// resourceVersion, which lookups ignore.
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

    fn add(&mut self, object: Arc<K>) {
        for key in self.keys_of(&object) {
            let objects = self.by_key.entry(key).or_default();
            objects.push(object.clone());
            objects.shrink_to_fit();
        }
    }

    /// Removes the object filed as `object` (the cached copy: what it is filed under).
    fn remove(&mut self, object: &K) {
        for key in self.keys_of(object) {
            if let Some(objects) = self.by_key.get_mut(&key) {
                objects.retain(|filed| !same_object(&**filed, object));
                if objects.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
    }

    /// Files `object` where its older copy is, under the same keys.
    fn replace(&mut self, object: Arc<K>) {
        for key in self.keys_of(&object) {
            let mut filed = self.by_key.get_mut(&key).into_iter().flatten();
            if let Some(filed) = filed.find(|filed| same_object(&***filed, &*object)) {
                *filed = object.clone();
            }
        }
    }
}

/// Whether `a` and `b` are copies of one object (by namespace and name).
fn same_object<K: Lookup>(a: &K, b: &K) -> bool {
    a.name() == b.name() && a.namespace() == b.namespace()
}

/// `Lookup` for `$projection`, what a replica caches of API kind `$kind`, whose `name` and
/// `namespace` fields name it. Its UID and resourceVersion are `None`, so the cache's key is the
/// namespace and name alone, not four strings.
macro_rules! projection_lookup {
    ($projection:ty, $kind:ty) => {
        impl kube::runtime::reflector::Lookup for $projection {
            type DynamicType = ();

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                <$kind as kube::Resource>::kind(&())
            }

            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                <$kind as kube::Resource>::group(&())
            }

            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                <$kind as kube::Resource>::version(&())
            }

            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                <$kind as kube::Resource>::plural(&())
            }

            fn name(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some(std::borrow::Cow::Borrowed(&self.name))
            }

            fn namespace(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some(std::borrow::Cow::Borrowed(&self.namespace))
            }

            fn resource_version(&self) -> Option<std::borrow::Cow<'_, str>> {
                None
            }

            fn uid(&self) -> Option<std::borrow::Cow<'_, str>> {
                None
            }
        }
    };
}
pub(crate) use projection_lookup;

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
            let before = self.indexed.apply(&mut self.writer, &event);
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

    fn groups(m: &ConfigMap) -> Vec<String> {
        m.metadata
            .labels
            .iter()
            .flatten()
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn names(indexed: &Indexed<ConfigMap>, key: &str) -> Vec<String> {
        let mut names: Vec<String> = indexed
            .get(key)
            .iter()
            .map(|m| m.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn objects_move_between_keys_and_leave_on_delete() {
        let (store, mut writer) = reflector::store();
        let indexed = Indexed::new(store, groups);
        let mut apply = |event| indexed.apply(&mut writer, &event);
        apply(watcher::Event::Apply(map("a", "red")));
        apply(watcher::Event::Apply(map("b", "red")));
        assert_eq!(names(&indexed, "red"), ["a", "b"]);
        // A change that keeps the keys (a status write): lookups give the new copy.
        let mut written = map("a", "red");
        written.data = Some([("written".to_string(), "yes".to_string())].into());
        let before = apply(watcher::Event::Apply(written));
        assert!(before.is_some_and(|before| before.data.is_none()));
        let a = indexed
            .get("red")
            .into_iter()
            .find(|m| m.metadata.name.as_deref() == Some("a"));
        assert!(a.is_some_and(|a| a.data.is_some()), "the store's new copy");
        apply(watcher::Event::Apply(map("a", "blue")));
        assert_eq!(names(&indexed, "red"), ["b"]);
        assert_eq!(names(&indexed, "blue"), ["a"]);
        assert_eq!(indexed.refs("blue"), [ObjectRef::new("a").within("ns")]);
        // The deleted object's last state may carry other keys than the copy it was filed as.
        apply(watcher::Event::Delete(map("b", "green")));
        assert!(names(&indexed, "red").is_empty());
        assert!(
            !indexed.index.read().unwrap().by_key.contains_key("red"),
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
        let mut watch = SharedWatch::from_events(events, groups);
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
        let (store, mut writer) = reflector::store();
        let indexed = Indexed::new(store, groups);
        let mut apply = |event| indexed.apply(&mut writer, &event);
        apply(watcher::Event::Apply(map("gone", "red")));
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(map("kept", "red")));
        // Until the list is complete, lookups still answer from the old index.
        assert_eq!(names(&indexed, "red"), ["gone"]);
        apply(watcher::Event::InitDone);
        // Deleted while the watch was down: no Delete event ever came for it.
        assert_eq!(names(&indexed, "red"), ["kept"]);
    }
}
