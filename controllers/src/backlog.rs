//! A controller's backlog kept here rather than in kube-runtime's scheduler. The scheduler holds
//! every queued request in a hash map and a timer queue whose tables grow to the largest backlog
//! and never shrink: the first list (or becoming leader) queues every endpoint at once, and at
//! 10,000 endpoints that left megabytes of empty tables in each DNS controller of every replica
//! for good. Here the backlog is a queue of references, one per object however often it is
//! triggered, released when it drains, and the scheduler is given at most a bound at a time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, FusedStream};
use futures::{Stream, StreamExt};
use kube::runtime::Controller;
use kube::runtime::reflector::{Lookup, ObjectRef, Store};
use tokio::sync::Notify;

use crate::index::name_ref;
use crate::runtime::Watched;

/// Objects a controller has in kube-runtime's scheduler at once: several times the reconciles it
/// runs at once, so a free reconcile slot always finds the next one queued.
pub const QUEUED_AT_ONCE: usize = 4 * crate::runtime::RECONCILE_CONCURRENCY as usize;

/// After this long without its reconcile, a queued object no longer counts against the bound:
/// kube-runtime drops a request whose object left the cache before its turn, without a reconcile
/// that would say so.
const UNANSWERED_AFTER: Duration = Duration::from_secs(30);

/// The objects one controller has queued and not yet begun to reconcile.
pub struct QueueBound<K: Lookup<DynamicType = ()>> {
    limit: usize,
    unanswered_after: Duration,
    queued: Mutex<HashMap<ObjectRef<K>, Instant>>,
    /// Woken when an object's reconcile begins, which frees its place.
    freed: Notify,
}

impl<K: Lookup<DynamicType = ()>> QueueBound<K> {
    pub fn new() -> Arc<Self> {
        Self::with_limit(QUEUED_AT_ONCE, UNANSWERED_AFTER)
    }

    fn with_limit(limit: usize, unanswered_after: Duration) -> Arc<Self> {
        Arc::new(QueueBound {
            limit,
            unanswered_after,
            queued: Mutex::default(),
            freed: Notify::new(),
        })
    }

    /// Called as `object`'s reconcile begins (past any wait for the caches, which requeues it):
    /// its request has left the scheduler.
    pub fn reconciling(&self, object: &K) {
        if self.queued().remove(&name_ref(object)).is_some() {
            self.freed.notify_waiters();
        }
    }

    /// Whether `object` may go to the scheduler now; if so it counts as queued until its
    /// reconcile begins.
    fn admit(&self, object: &ObjectRef<K>) -> bool {
        let mut queued = self.queued();
        let now = Instant::now();
        if queued.len() >= self.limit && !queued.contains_key(object) {
            queued.retain(|_, at| now.duration_since(*at) < self.unanswered_after);
        }
        if queued.len() >= self.limit && !queued.contains_key(object) {
            return false;
        }
        queued.insert(object.clone(), now);
        true
    }

    /// Whether `object` is in the scheduler, not yet reconciled: a new trigger for it goes there
    /// at once, where it merges with the request already queued. Sent to the back of the backlog
    /// instead, it would become a second pass later (in a burst: a plan's trigger arriving while
    /// its endpoint's own change is queued).
    fn still_queued(&self, object: &ObjectRef<K>) -> bool {
        match self.queued().get_mut(object) {
            Some(at) => {
                *at = Instant::now();
                true
            }
            None => false,
        }
    }

    fn queued(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<K>, Instant>> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Objects triggered and not yet given to the scheduler, in the order first triggered.
struct Waiting<K: Lookup<DynamicType = ()>> {
    order: VecDeque<ObjectRef<K>>,
    members: HashSet<ObjectRef<K>>,
}

impl<K: Lookup<DynamicType = ()>> Waiting<K> {
    fn push(&mut self, object: ObjectRef<K>) {
        if self.members.insert(object.clone()) {
            self.order.push_back(object);
        }
    }

    fn pop(&mut self) -> Option<ObjectRef<K>> {
        let object = self.order.pop_front()?;
        self.members.remove(&object);
        if self.order.is_empty() {
            // The point of keeping the backlog here: its memory goes once it has drained.
            self.order = VecDeque::new();
            self.members = HashSet::new();
        }
        Some(object)
    }
}

/// A controller of the objects in `store` (at [`crate::runtime::bounded`] concurrency) that is
/// triggered by `sources` alone, through a backlog within `bound`; its reconcile must call
/// [`QueueBound::reconciling`].
pub fn controller<K: Watched>(
    store: Store<K>,
    sources: impl IntoIterator<Item = BoxStream<'static, ObjectRef<K>>>,
    bound: Arc<QueueBound<K>>,
) -> Controller<K> {
    let triggers = futures::stream::select_all(sources).boxed();
    Controller::for_shared_stream(futures::stream::pending(), store)
        .with_config(crate::runtime::bounded())
        .reconcile_on(within(triggers, bound))
}

/// A controller's triggers, read as they come (so the watch channels behind them hold nothing)
/// and passed on to the scheduler within `bound`. Every trigger of the controller goes through
/// one such stream, with `bound.reconciling` called by its reconcile.
fn within<K>(
    triggers: BoxStream<'static, ObjectRef<K>>,
    bound: Arc<QueueBound<K>>,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Lookup<DynamicType = ()> + Send + Sync + 'static,
{
    let waiting = Waiting {
        order: VecDeque::new(),
        members: HashSet::new(),
    };
    futures::stream::unfold(
        (triggers.fuse(), waiting, bound),
        |(mut triggers, mut waiting, bound)| async move {
            loop {
                let passed = {
                    let freed = bound.freed.notified();
                    tokio::pin!(freed);
                    // Registered before the check, so a place freed after it still wakes this.
                    freed.as_mut().enable();
                    if waiting.order.front().is_some_and(|next| bound.admit(next)) {
                        waiting.pop()
                    } else if waiting.order.is_empty() && triggers.is_terminated() {
                        return None;
                    } else {
                        tokio::select! {
                            trigger = triggers.next(), if !triggers.is_terminated() => match trigger {
                                Some(object) if bound.still_queued(&object) => Some(object),
                                Some(object) => {
                                    waiting.push(object);
                                    None
                                }
                                None => None,
                            },
                            _ = freed, if !waiting.order.is_empty() => None,
                            // Places held by requests kube-runtime dropped are taken back in
                            // `admit`.
                            _ = tokio::time::sleep(bound.unanswered_after), if !waiting.order.is_empty() => None,
                        }
                    }
                };
                if let Some(next) = passed {
                    return Some((next, (triggers, waiting, bound)));
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn map(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn triggers(names: Vec<String>) -> BoxStream<'static, ObjectRef<ConfigMap>> {
        futures::stream::iter(names.into_iter().map(|n| name_ref(&map(&n)))).boxed()
    }

    #[tokio::test]
    async fn the_scheduler_is_given_no_more_than_the_bound_and_a_waiting_object_once() {
        let bound = QueueBound::<ConfigMap>::with_limit(8, Duration::from_secs(3600));
        // 1,000 objects, each triggered twice (by its own list event and its plan's, say).
        let names: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
        let twice = names.iter().chain(&names).cloned().collect();
        let mut passed = Box::pin(within(triggers(twice), bound.clone()));
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(passed.next().await.unwrap().name);
        }
        // The bound is full: every other trigger is read meanwhile, and waits.
        // Triggered again while still in the scheduler, the first eight go again at once (the
        // scheduler merges each with its queued request) ahead of the 992 waiting.
        for _ in 0..8 {
            seen.push(passed.next().await.unwrap().name);
        }
        let held = tokio::time::timeout(Duration::from_millis(200), passed.next()).await;
        assert!(held.is_err(), "a ninth object went to the scheduler");
        while seen.len() < 1008 {
            assert!(bound.queued().len() <= 8, "{} queued", bound.queued().len());
            // The scheduler runs its oldest request once all places are taken.
            if bound.queued().len() == 8 {
                bound.reconciling(&map(&seen[seen.len() - 8]));
            }
            let next = tokio::time::timeout(Duration::from_secs(5), passed.next()).await;
            seen.push(
                next.expect("a place was freed")
                    .expect("triggers left")
                    .name,
            );
        }
        // The other 992 waited, and go once, in the order first triggered.
        let expected: Vec<String> = names[..8].iter().chain(&names).cloned().collect();
        assert_eq!(seen, expected);
        for name in &seen[seen.len() - 8..] {
            bound.reconciling(&map(name));
        }
        assert!(bound.queued().is_empty());
        assert!(passed.next().await.is_none(), "an object passed more often");
    }

    #[tokio::test]
    async fn places_held_by_requests_never_reconciled_are_taken_back() {
        let bound = QueueBound::<ConfigMap>::with_limit(2, Duration::from_millis(200));
        let names = vec!["gone-1".into(), "gone-2".into(), "next".into()];
        let mut passed = Box::pin(within(triggers(names), bound.clone()));
        assert_eq!(passed.next().await.unwrap().name, "gone-1");
        assert_eq!(passed.next().await.unwrap().name, "gone-2");
        // Both deleted before their turn: no reconcile frees their places.
        let early = tokio::time::timeout(Duration::from_millis(100), passed.next()).await;
        assert!(
            early.is_err(),
            "the bound holds while the places may still be answered"
        );
        let late = tokio::time::timeout(Duration::from_secs(5), passed.next()).await;
        assert_eq!(late.expect("taken back").unwrap().name, "next");
    }

    #[tokio::test]
    async fn a_trigger_for_an_object_already_queued_goes_at_once_ahead_of_the_backlog() {
        let bound = QueueBound::<ConfigMap>::with_limit(1, Duration::from_secs(3600));
        let names = vec!["a".into(), "b".into(), "c".into(), "a".into()];
        let mut passed = Box::pin(within(triggers(names), bound.clone()));
        assert_eq!(passed.next().await.unwrap().name, "a");
        // "a" is not yet reconciled and the bound is full, so "b" and "c" wait; the scheduler
        // merges the second "a" with the first.
        let again = tokio::time::timeout(Duration::from_secs(5), passed.next()).await;
        assert_eq!(again.expect("not held back").unwrap().name, "a");
        let held = tokio::time::timeout(Duration::from_millis(200), passed.next()).await;
        assert!(held.is_err(), "the bound let a waiting object through");
        bound.reconciling(&map("a"));
        assert_eq!(passed.next().await.unwrap().name, "b");
        bound.reconciling(&map("b"));
        assert_eq!(passed.next().await.unwrap().name, "c");
    }
}
