//! SIEVE (Zhang et al., NSDI '24), as libCacheSim's `Sieve` implements it.
//!
//! New objects enter at the head with their visited bit clear; a hit sets the bit. A hand walks
//! from the tail towards the head: a visited object has its bit cleared and stays where it is; the
//! first unvisited object is evicted, and the hand rests on the object in front of it. When the hand
//! falls off the head it restarts at the tail. Unlike CLOCK, survivors are never moved, which is
//! what lets new objects be evicted quickly.

use rustc_hash::FxHashMap;

use crate::slab::{enough_unpinned, Idx, List, Slab, NIL};
use crate::{CachePolicy, Capacity, Effect, Key, Request, Tier};

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    size: u64,
    visited: bool,
}

#[derive(Debug, Default)]
pub struct Sieve {
    capacity: u64,
    used: u64,
    slab: Slab<Entry>,
    list: List,
    map: FxHashMap<Key, Idx>,
    /// Where the next eviction starts; `NIL` means "at the tail" (libCacheSim's NULL pointer).
    hand: Idx,
}

impl Sieve {
    pub fn new(capacity: u64) -> Sieve {
        Sieve {
            capacity,
            hand: NIL,
            ..Default::default()
        }
    }

    #[inline]
    fn hit(&mut self, key: Key) -> bool {
        match self.map.get(&key) {
            Some(&id) => {
                self.slab.get_mut(id).visited = true;
                true
            }
            None => false,
        }
    }

    #[inline]
    fn admit_inner(
        &mut self,
        req: &Request,
        pinned: Option<&dyn Fn(Key) -> bool>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if self.map.contains_key(&req.key) {
            return true;
        }
        self.admit_absent(req, pinned, effects)
    }

    /// [`Self::admit_inner`] for a key the caller just found absent.
    #[inline]
    fn admit_absent(
        &mut self,
        req: &Request,
        pinned: Option<&dyn Fn(Key) -> bool>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if req.size > self.capacity {
            return false;
        }
        let need = (self.used + req.size).saturating_sub(self.capacity);
        if let Some(p) = pinned {
            let candidates = self
                .slab
                .iter_from_back(&self.list)
                .map(|(_, e)| (e.key, e.size));
            if !enough_unpinned(candidates, need, p) {
                return false;
            }
        }
        while self.used + req.size > self.capacity {
            self.evict_one(pinned, effects);
        }
        let id = self.slab.alloc(Entry {
            key: req.key,
            size: req.size,
            visited: false,
        });
        self.slab.push_front(&mut self.list, id);
        self.map.insert(req.key, id);
        self.used += req.size;
        effects.push(Effect::Inserted {
            key: req.key,
            tier: Tier::Fast,
            size: req.size,
        });
        true
    }

    /// libCacheSim's `Sieve_evict`. Pinned objects are stepped over without touching their bit;
    /// unpinned ones lose theirs, so within two sweeps the hand finds a victim (the caller made
    /// sure an unpinned object exists).
    fn evict_one(&mut self, pinned: Option<&dyn Fn(Key) -> bool>, effects: &mut Vec<Effect>) {
        let tail = self.list.back().expect("eviction from an empty SIEVE");
        let mut id = if self.hand == NIL { tail } else { self.hand };
        loop {
            let e = self.slab.get_mut(id);
            let is_pinned = pinned.is_some_and(|p| p(e.key));
            if !e.visited && !is_pinned {
                break;
            }
            if !is_pinned {
                e.visited = false;
            }
            id = match self.slab.prev(id) {
                Some(p) => p,
                None => self.list.back().expect("non-empty"),
            };
        }
        self.hand = self.slab.prev(id).unwrap_or(NIL);
        let e = *self.slab.get(id);
        self.slab.unlink(&mut self.list, id);
        self.slab.release(id);
        self.map.remove(&e.key);
        self.used -= e.size;
        effects.push(Effect::Evicted {
            key: e.key,
            tier: Tier::Fast,
            size: e.size,
        });
    }
}

impl CachePolicy for Sieve {
    fn name(&self) -> String {
        "sieve".into()
    }

    fn lookup(&mut self, req: &Request, _effects: &mut Vec<Effect>) -> Option<Tier> {
        self.hit(req.key).then_some(Tier::Fast)
    }

    fn admit(
        &mut self,
        req: &Request,
        pinned: &dyn Fn(Key) -> bool,
        effects: &mut Vec<Effect>,
    ) -> bool {
        self.admit_inner(req, Some(pinned), effects)
    }

    fn access(&mut self, req: &Request, effects: &mut Vec<Effect>) -> Option<Tier> {
        if self.hit(req.key) {
            return Some(Tier::Fast);
        }
        self.admit_absent(req, None, effects);
        None
    }

    fn remove(&mut self, key: Key) -> bool {
        let Some(id) = self.map.remove(&key) else {
            return false;
        };
        // As libCacheSim's `Sieve_remove_obj`: a hand resting on the removed object moves to the
        // object in front of it.
        if self.hand == id {
            self.hand = self.slab.prev(id).unwrap_or(NIL);
        }
        let e = *self.slab.get(id);
        self.slab.unlink(&mut self.list, id);
        self.slab.release(id);
        self.used -= e.size;
        true
    }

    fn peek(&self, key: Key) -> Option<Tier> {
        self.map.contains_key(&key).then_some(Tier::Fast)
    }

    fn used(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Fast => self.used,
            Tier::Slow => 0,
        }
    }

    fn capacity(&self) -> Capacity {
        Capacity::single(self.capacity)
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &mut dyn CachePolicy, keys: &[u64]) {
        let mut fx = Vec::new();
        for &k in keys {
            p.access(&Request::new(0, k, 1), &mut fx);
        }
    }

    #[test]
    fn hand_keeps_its_place_and_survivors_stay_put() {
        let mut s = Sieve::new(3);
        // fill 1 2 3 (tail 1), visit 1 and 2; 4 clears 1 and 2 and evicts 3, hand rests at head side
        run(&mut s, &[1, 2, 3, 1, 2, 4]);
        assert_eq!(s.peek(3), None);
        // hand is past 3 (at the head side, i.e. NIL -> restart at tail): 5 evicts 1 (bit cleared)
        run(&mut s, &[5]);
        assert_eq!(s.peek(1), None);
        assert_eq!(s.peek(2), Some(Tier::Fast));
    }

    #[test]
    fn removing_the_object_under_the_hand_moves_the_hand() {
        let mut s = Sieve::new(3);
        run(&mut s, &[1, 2, 3, 4]); // evicts 1, hand on 2
        assert_eq!(s.hand, s.map[&2]);
        assert!(s.remove(2));
        assert_eq!(s.hand, s.map[&3]);
        run(&mut s, &[5, 6]); // 5 fits; 6 evicts 3 (under the hand)
        assert_eq!(s.peek(3), None);
        assert_eq!(s.peek(4), Some(Tier::Fast));
    }
}
