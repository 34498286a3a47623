//! A doubly linked list kept in a slab (`Vec`) with a free list: the baseline of the policies
//! benchmark, nothing more.
//!
//! No policy uses it. `benches/policies.rs` builds the textbook LRU (hash map plus this list,
//! move-to-front on every hit) from it, to show what [`crate::Lru`]'s lazy queue and the slab
//! shared by the multi-queue policies save. It is public, and hidden from the docs, only so that
//! the bench (a separate crate) can reach it; its unit tests keep the baseline honest.
//!
//! It has what a fair baseline needs: stable `u32` handles that a hash map can store, O(1)
//! unlink and move-to-front by handle, and no allocation per node, so the comparison measures
//! the policy's memory traffic and not the allocator.

/// A handle to a node. Valid until the node is removed.
pub type NodeId = u32;

const NIL: NodeId = u32::MAX;

#[derive(Debug, Clone)]
struct Node<T> {
    prev: NodeId,
    next: NodeId,
    value: Option<T>,
}

/// A doubly linked list whose front is the most recently pushed end ("head") and whose back is the
/// oldest end ("tail").
#[derive(Debug, Clone)]
pub struct DList<T> {
    nodes: Vec<Node<T>>,
    free: Vec<NodeId>,
    head: NodeId,
    tail: NodeId,
    len: usize,
}

impl<T> Default for DList<T> {
    fn default() -> Self {
        DList {
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl<T> DList<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts at the head (most recent end).
    pub fn push_front(&mut self, value: T) -> NodeId {
        let id = self.alloc(value);
        self.link_front(id);
        id
    }

    /// Inserts at the tail (oldest end).
    pub fn push_back(&mut self, value: T) -> NodeId {
        let id = self.alloc(value);
        self.link_back(id);
        id
    }

    pub fn front(&self) -> Option<NodeId> {
        (self.head != NIL).then_some(self.head)
    }

    pub fn back(&self) -> Option<NodeId> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// The node after `id` towards the tail.
    pub fn next(&self, id: NodeId) -> Option<NodeId> {
        let n = self.nodes[id as usize].next;
        (n != NIL).then_some(n)
    }

    /// The node before `id` towards the head.
    pub fn prev(&self, id: NodeId) -> Option<NodeId> {
        let p = self.nodes[id as usize].prev;
        (p != NIL).then_some(p)
    }

    pub fn get(&self, id: NodeId) -> &T {
        self.nodes[id as usize]
            .value
            .as_ref()
            .expect("DList handle used after removal")
    }

    pub fn get_mut(&mut self, id: NodeId) -> &mut T {
        self.nodes[id as usize]
            .value
            .as_mut()
            .expect("DList handle used after removal")
    }

    /// Moves `id` to the head.
    pub fn move_to_front(&mut self, id: NodeId) {
        if self.head == id {
            return;
        }
        self.unlink(id);
        self.link_front(id);
    }

    /// Removes `id` and returns its value. The handle becomes invalid.
    pub fn remove(&mut self, id: NodeId) -> T {
        self.unlink(id);
        self.len -= 1;
        self.free.push(id);
        self.nodes[id as usize]
            .value
            .take()
            .expect("DList handle used after removal")
    }

    pub fn pop_back(&mut self) -> Option<T> {
        self.back().map(|id| self.remove(id))
    }

    /// Iterates from the tail (oldest) towards the head.
    pub fn iter_from_back(&self) -> impl Iterator<Item = (NodeId, &T)> + '_ {
        let mut cur = self.tail;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let id = cur;
            let node = &self.nodes[id as usize];
            cur = node.prev;
            Some((id, node.value.as_ref().expect("linked nodes hold values")))
        })
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    fn alloc(&mut self, value: T) -> NodeId {
        self.len += 1;
        let node = Node {
            prev: NIL,
            next: NIL,
            value: Some(value),
        };
        if let Some(id) = self.free.pop() {
            self.nodes[id as usize] = node;
            id
        } else {
            let id = NodeId::try_from(self.nodes.len()).expect("more than 2^32-1 cached objects");
            assert!(id != NIL, "more than 2^32-1 cached objects");
            self.nodes.push(node);
            id
        }
    }

    fn link_front(&mut self, id: NodeId) {
        let old = self.head;
        {
            let n = &mut self.nodes[id as usize];
            n.prev = NIL;
            n.next = old;
        }
        if old != NIL {
            self.nodes[old as usize].prev = id;
        } else {
            self.tail = id;
        }
        self.head = id;
    }

    fn link_back(&mut self, id: NodeId) {
        let old = self.tail;
        {
            let n = &mut self.nodes[id as usize];
            n.next = NIL;
            n.prev = old;
        }
        if old != NIL {
            self.nodes[old as usize].next = id;
        } else {
            self.head = id;
        }
        self.tail = id;
    }

    fn unlink(&mut self, id: NodeId) {
        let (prev, next) = {
            let n = &self.nodes[id as usize];
            (n.prev, n.next)
        };
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        let n = &mut self.nodes[id as usize];
        n.prev = NIL;
        n.next = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        PushFront(u8),
        PushBack(u8),
        Touch(usize),
        Remove(usize),
        PopBack,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::PushFront),
            any::<u8>().prop_map(Op::PushBack),
            any::<usize>().prop_map(Op::Touch),
            any::<usize>().prop_map(Op::Remove),
            Just(Op::PopBack),
        ]
    }

    proptest! {
        /// The list behaves like a `VecDeque` model under any sequence of operations.
        #[test]
        fn matches_a_vecdeque(ops in proptest::collection::vec(op(), 0..200)) {
            let mut list = DList::new();
            // model: (handle, value), index 0 = head
            let mut model: std::collections::VecDeque<(NodeId, u8)> = Default::default();
            for op in ops {
                match op {
                    Op::PushFront(v) => { let id = list.push_front(v); model.push_front((id, v)); }
                    Op::PushBack(v) => { let id = list.push_back(v); model.push_back((id, v)); }
                    Op::Touch(i) if !model.is_empty() => {
                        let (id, v) = model.remove(i % model.len()).unwrap();
                        list.move_to_front(id);
                        model.push_front((id, v));
                    }
                    Op::Remove(i) if !model.is_empty() => {
                        let (id, v) = model.remove(i % model.len()).unwrap();
                        prop_assert_eq!(list.remove(id), v);
                    }
                    Op::PopBack => { prop_assert_eq!(list.pop_back(), model.pop_back().map(|x| x.1)); }
                    _ => {}
                }
                prop_assert_eq!(list.len(), model.len());
                let from_back: Vec<u8> = list.iter_from_back().map(|(_, v)| *v).collect();
                let expect: Vec<u8> = model.iter().rev().map(|x| x.1).collect();
                prop_assert_eq!(from_back, expect);
            }
        }
    }
}
