//! Several doubly linked lists sharing one slab of nodes.
//!
//! [`crate::dlist::DList`] owns its nodes, so an object cannot move from one list to another without being
//! copied into a new slot. Policies with several queues (segmented LRU's segments, S3-FIFO's small,
//! main and ghost queues, LFU's frequency buckets, the two tiers of the tiered policies) move
//! objects between queues on almost every request, so here the nodes live in one [`Slab`] and a
//! [`List`] is only a head, a tail and a length. Moving a node is an unlink and a link: no
//! allocation, and the handle a hash map stores stays valid for the object's whole stay.
//!
//! Free slots keep their stale value (the value type is `Copy`), which avoids an `Option` per node
//! and keeps a node at 32 bytes for the common entry types.

pub(crate) type Idx = u32;

pub(crate) const NIL: Idx = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node<T> {
    prev: Idx,
    next: Idx,
    value: T,
}

/// The head ("front", most recently linked end) and tail ("back", oldest end) of one list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct List {
    head: Idx,
    tail: Idx,
    len: u32,
}

impl Default for List {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

impl List {
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn front(&self) -> Option<Idx> {
        (self.head != NIL).then_some(self.head)
    }

    pub(crate) fn back(&self) -> Option<Idx> {
        (self.tail != NIL).then_some(self.tail)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Slab<T> {
    nodes: Vec<Node<T>>,
    free: Vec<Idx>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            nodes: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Copy> Slab<T> {
    /// Stores `value` in a free slot, not linked into any list yet.
    #[inline]
    pub(crate) fn alloc(&mut self, value: T) -> Idx {
        let node = Node {
            prev: NIL,
            next: NIL,
            value,
        };
        if let Some(id) = self.free.pop() {
            self.nodes[id as usize] = node;
            id
        } else {
            let id = Idx::try_from(self.nodes.len())
                .ok()
                .filter(|&id| id != NIL)
                .expect("a cache policy holds more than 2^32-1 objects");
            self.nodes.push(node);
            id
        }
    }

    /// Returns the slot of an unlinked node to the free list.
    #[inline]
    pub(crate) fn release(&mut self, id: Idx) {
        self.free.push(id);
    }

    #[inline]
    pub(crate) fn get(&self, id: Idx) -> &T {
        &self.nodes[id as usize].value
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, id: Idx) -> &mut T {
        &mut self.nodes[id as usize].value
    }

    /// The node after `id` towards the back of its list.
    #[inline]
    pub(crate) fn next(&self, id: Idx) -> Option<Idx> {
        let n = self.nodes[id as usize].next;
        (n != NIL).then_some(n)
    }

    /// The node before `id` towards the front of its list.
    #[inline]
    pub(crate) fn prev(&self, id: Idx) -> Option<Idx> {
        let p = self.nodes[id as usize].prev;
        (p != NIL).then_some(p)
    }

    #[inline]
    pub(crate) fn push_front(&mut self, list: &mut List, id: Idx) {
        let old = list.head;
        {
            let n = &mut self.nodes[id as usize];
            n.prev = NIL;
            n.next = old;
        }
        if old != NIL {
            self.nodes[old as usize].prev = id;
        } else {
            list.tail = id;
        }
        list.head = id;
        list.len += 1;
    }

    #[cfg(test)]
    pub(crate) fn push_back(&mut self, list: &mut List, id: Idx) {
        let old = list.tail;
        {
            let n = &mut self.nodes[id as usize];
            n.next = NIL;
            n.prev = old;
        }
        if old != NIL {
            self.nodes[old as usize].next = id;
        } else {
            list.head = id;
        }
        list.tail = id;
        list.len += 1;
    }

    /// Links `id` right behind `anchor` (on the back side), which must be in `list`.
    #[inline]
    pub(crate) fn insert_after(&mut self, list: &mut List, anchor: Idx, id: Idx) {
        let after = self.nodes[anchor as usize].next;
        {
            let n = &mut self.nodes[id as usize];
            n.prev = anchor;
            n.next = after;
        }
        self.nodes[anchor as usize].next = id;
        if after != NIL {
            self.nodes[after as usize].prev = id;
        } else {
            list.tail = id;
        }
        list.len += 1;
    }

    #[inline]
    pub(crate) fn unlink(&mut self, list: &mut List, id: Idx) {
        let (prev, next) = {
            let n = &self.nodes[id as usize];
            (n.prev, n.next)
        };
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            list.head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            list.tail = prev;
        }
        list.len -= 1;
    }

    #[inline]
    pub(crate) fn move_to_front(&mut self, list: &mut List, id: Idx) {
        if list.head != id {
            self.unlink(list, id);
            self.push_front(list, id);
        }
    }

    /// Iterates `list` from its back (oldest) towards its front.
    pub(crate) fn iter_from_back<'a>(
        &'a self,
        list: &List,
    ) -> impl Iterator<Item = (Idx, &'a T)> + 'a {
        let mut cur = list.tail;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let id = cur;
            let node = &self.nodes[id as usize];
            cur = node.prev;
            Some((id, &node.value))
        })
    }
}

/// Whether `pinned` leaves at least `need` bytes evictable among `candidates` (key, size). Stops at
/// the first moment the answer is known, so with nothing pinned it costs about as many steps as
/// there will be victims.
pub(crate) fn enough_unpinned(
    candidates: impl Iterator<Item = (crate::Key, u64)>,
    need: u64,
    pinned: &dyn Fn(crate::Key) -> bool,
) -> bool {
    if need == 0 {
        return true;
    }
    let mut free = 0u64;
    for (key, size) in candidates {
        if !pinned(key) {
            free += size;
            if free >= need {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        PushFront(usize, u8),
        PushBack(usize, u8),
        Move(usize, usize),
        Touch(usize),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..3, any::<u8>()).prop_map(|(l, v)| Op::PushFront(l, v)),
            (0usize..3, any::<u8>()).prop_map(|(l, v)| Op::PushBack(l, v)),
            (any::<usize>(), 0usize..3).prop_map(|(i, l)| Op::Move(i, l)),
            any::<usize>().prop_map(Op::Touch),
            any::<usize>().prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Three lists over one slab behave like three `VecDeque`s under any operations,
        /// including moving nodes between lists.
        #[test]
        fn lists_match_vecdeques(ops in proptest::collection::vec(op(), 0..300)) {
            let mut slab: Slab<u8> = Slab::default();
            let mut lists = [List::default(); 3];
            let mut model: [VecDeque<(Idx, u8)>; 3] = Default::default();
            let pick = |model: &[VecDeque<(Idx, u8)>; 3], i: usize| -> Option<(usize, usize)> {
                let total: usize = model.iter().map(|m| m.len()).sum();
                if total == 0 { return None; }
                let mut i = i % total;
                for (l, m) in model.iter().enumerate() {
                    if i < m.len() { return Some((l, i)); }
                    i -= m.len();
                }
                None
            };
            for op in ops {
                match op {
                    Op::PushFront(l, v) => { let id = slab.alloc(v); slab.push_front(&mut lists[l], id); model[l].push_front((id, v)); }
                    Op::PushBack(l, v) => { let id = slab.alloc(v); slab.push_back(&mut lists[l], id); model[l].push_back((id, v)); }
                    Op::Move(i, to) => if let Some((l, pos)) = pick(&model, i) {
                        let (id, v) = model[l].remove(pos).unwrap();
                        slab.unlink(&mut lists[l], id);
                        slab.push_front(&mut lists[to], id);
                        model[to].push_front((id, v));
                    },
                    Op::Touch(i) => if let Some((l, pos)) = pick(&model, i) {
                        let (id, v) = model[l].remove(pos).unwrap();
                        slab.move_to_front(&mut lists[l], id);
                        model[l].push_front((id, v));
                    },
                    Op::Remove(i) => if let Some((l, pos)) = pick(&model, i) {
                        let (id, v) = model[l].remove(pos).unwrap();
                        prop_assert_eq!(*slab.get(id), v);
                        slab.unlink(&mut lists[l], id);
                        slab.release(id);
                    },
                }
                for l in 0..3 {
                    prop_assert_eq!(lists[l].len(), model[l].len());
                    let got: Vec<u8> = slab.iter_from_back(&lists[l]).map(|(_, v)| *v).collect();
                    let want: Vec<u8> = model[l].iter().rev().map(|x| x.1).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn insert_after_links_both_ways() {
        let mut slab: Slab<u8> = Slab::default();
        let mut list = List::default();
        let a = slab.alloc(1);
        slab.push_front(&mut list, a);
        let c = slab.alloc(3);
        slab.insert_after(&mut list, a, c);
        let b = slab.alloc(2);
        slab.insert_after(&mut list, a, b);
        let order: Vec<u8> = slab.iter_from_back(&list).map(|(_, v)| *v).collect();
        assert_eq!(order, vec![3, 2, 1]);
        assert_eq!(list.back(), Some(c));
        assert_eq!(slab.next(a), Some(b));
        assert_eq!(slab.prev(c), Some(b));
    }

    #[test]
    fn enough_unpinned_stops_early_and_counts_only_unpinned() {
        let items = [(1u64, 10u64), (2, 10), (3, 10)];
        assert!(enough_unpinned(items.iter().copied(), 20, &|k| k == 2));
        assert!(!enough_unpinned(items.iter().copied(), 21, &|k| k == 2));
        assert!(enough_unpinned(std::iter::empty(), 0, &|_| true));
    }
}
