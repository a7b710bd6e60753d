//! The model checks are this package's tests (`tests/`): each explores every interleaving of a
//! protocol by calling the step functions `bulwark-controllers` ships. They live apart from that
//! crate so they build optimised while its own unit tests build fast (see the workspace profiles).
//!
//! This library is the search they share: breadth-first over a protocol's worlds, each stored
//! once, so every trace it reports is a shortest one.

use std::collections::VecDeque;
use std::hash::Hash;

use indexmap::IndexSet;

/// Every world reached so far, numbered in the order found, with how each was first reached.
pub struct StateSpace<W> {
    /// One copy of each world; its index is its number. foldhash, not SipHash: hashing worlds is
    /// most of the search's time, and nothing here is adversarial.
    worlds: IndexSet<W, foldhash::fast::FixedState>,
    /// `parent[i]`: the world before `i` on a shortest path from the first, and the step's label.
    parent: Vec<Option<(usize, String)>>,
    frontier: VecDeque<usize>,
}

impl<W: Hash + Eq> StateSpace<W> {
    pub fn new(initial: W) -> Self {
        let mut worlds = IndexSet::with_hasher(foldhash::fast::FixedState::default());
        worlds.insert(initial);
        StateSpace {
            worlds,
            parent: vec![None],
            frontier: VecDeque::from([0]),
        }
    }

    /// The next world to expand, breadth-first.
    pub fn next_to_expand(&mut self) -> Option<usize> {
        self.frontier.pop_front()
    }

    pub fn world(&self, id: usize) -> &W {
        &self.worlds[id]
    }

    /// Records that step `label` leads from world `from` to `world`. Returns the world's number
    /// and whether it is new; a new world is queued for expansion and remembers this step.
    pub fn reach(
        &mut self,
        from: usize,
        label: impl FnOnce() -> String,
        world: W,
    ) -> (usize, bool) {
        let (id, new) = self.worlds.insert_full(world);
        if new {
            self.parent.push(Some((from, label())));
            self.frontier.push_back(id);
        }
        (id, new)
    }

    pub fn len(&self) -> usize {
        self.worlds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.worlds.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &W> {
        self.worlds.iter()
    }

    /// The labels of a shortest path from the first world to `id`.
    pub fn trace(&self, mut id: usize) -> Vec<String> {
        let mut steps = Vec::new();
        while let Some((from, label)) = &self.parent[id] {
            steps.push(label.clone());
            id = *from;
        }
        steps.reverse();
        steps
    }
}
