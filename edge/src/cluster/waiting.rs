//! The requests this node sent to others that wait for their answers, sans-IO: ids, the node
//! each went to, and its deadline, with no clock, lock or reply in it.
//!
//! The router keeps one behind its lock with [`std::time::Instant`] deadlines and the replies
//! as values; the simulator keeps one per node with virtual milliseconds and its own record of
//! what each request was for. Both then leave the same requests unanswered for the same
//! reasons: an answer only from the node that was asked, every request to a node that went
//! down, every request past its deadline.
//!
//! Ids count from 1 in each table, so they are unique per process run. An answer that comes
//! after its request was given up matches nothing and is dropped.

use std::collections::BTreeMap;
use switchboard_backplane::NodeId;

/// Requests waiting for answers, keyed by id.
///
/// Deadlines are expected in the order of the inserts (a fixed wait after a clock that does
/// not go back): [`Waiting::expired`] then stops at the first request still in time, so a
/// sweep costs what it removes. A deadline out of that order only waits for those before it.
#[derive(Debug)]
pub struct Waiting<T, D> {
    next: u64,
    entries: BTreeMap<u64, Entry<T, D>>,
}

#[derive(Debug)]
struct Entry<T, D> {
    node: NodeId,
    deadline: D,
    value: T,
}

impl<T, D> Default for Waiting<T, D> {
    fn default() -> Self {
        Waiting { next: 1, entries: BTreeMap::new() }
    }
}

impl<T, D: Ord + Copy> Waiting<T, D> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for an answer from `node` until `deadline`; the request's id.
    pub fn insert(&mut self, node: NodeId, deadline: D, value: T) -> u64 {
        let id = self.next;
        self.next += 1;
        self.entries.insert(id, Entry { node, deadline, value });
        id
    }

    /// Stops waiting for `id` without an answer (its request could not be sent).
    pub fn remove(&mut self, id: u64) -> Option<T> {
        self.entries.remove(&id).map(|e| e.value)
    }

    /// An answer for `id` came from `from`: what waited for it, if it was asked of `from`.
    /// Another node's answer with the same id (ids are per asker) leaves it waiting.
    pub fn answered(&mut self, from: NodeId, id: u64) -> Option<T> {
        match self.entries.get(&id) {
            Some(e) if e.node == from => self.remove(id),
            _ => None,
        }
    }

    /// `node` went down: everything asked of it, in the order it was asked.
    pub fn down(&mut self, node: NodeId) -> Vec<T> {
        let ids: Vec<u64> = self.entries.iter().filter(|(_, e)| e.node == node).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Every request whose deadline is `now` or earlier, oldest first, with the node it was
    /// asked of.
    pub fn expired(&mut self, now: D) -> Vec<(NodeId, T)> {
        let mut late = Vec::new();
        while let Some(entry) = self.entries.first_entry() {
            if entry.get().deadline > now {
                break;
            }
            let e = entry.remove();
            late.push((e.node, e.value));
        }
        late
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    #[test]
    fn an_answer_is_taken_only_from_the_node_that_was_asked() {
        let mut w = Waiting::new();
        let id = w.insert(A, 10, "a");
        assert_eq!(w.answered(B, id), None, "B was not asked");
        assert_eq!(w.len(), 1);
        assert_eq!(w.answered(A, id), Some("a"));
        assert_eq!(w.answered(A, id), None, "answered once");
        assert!(w.is_empty());
    }

    #[test]
    fn ids_are_not_reused() {
        let mut w = Waiting::new();
        let first = w.insert(A, 10, 1);
        w.remove(first);
        let second = w.insert(A, 10, 2);
        assert_ne!(first, second);
        assert_eq!(w.answered(A, first), None, "a late answer for the first finds nothing");
        assert_eq!(w.answered(A, second), Some(2));
    }

    #[test]
    fn a_node_down_gives_up_what_was_asked_of_it_only() {
        let mut w = Waiting::new();
        w.insert(A, 10, "a1");
        let b = w.insert(B, 10, "b");
        w.insert(A, 20, "a2");
        assert_eq!(w.down(A), vec!["a1", "a2"]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.answered(B, b), Some("b"));
    }

    #[test]
    fn expired_gives_up_what_is_due_and_keeps_what_is_not() {
        let mut w = Waiting::new();
        w.insert(A, 10, "a");
        let b = w.insert(B, 20, "b");
        w.insert(A, 30, "c");
        assert_eq!(w.expired(9), vec![]);
        assert_eq!(w.expired(20), vec![(A, "a"), (B, "b")], "a deadline of now is due");
        assert_eq!(w.answered(B, b), None);
        assert_eq!(w.len(), 1);
        assert_eq!(w.expired(u64::MAX), vec![(A, "c")]);
    }
}
