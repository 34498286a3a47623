//! SIEVE (Zhang et al., NSDI '24), as libCacheSim's `Sieve` implements it.
//!
//! New objects enter at the head with their visited bit clear; a hit sets the bit. A hand walks
//! from the tail towards the head: a visited object has its bit cleared and stays where it is; the
//! first unvisited object is evicted, and the hand rests on the object in front of it. When the hand
//! falls off the head it restarts at the tail. Unlike CLOCK, survivors are never moved, which is
//! what lets new objects be evicted quickly.

use crate::listcache::{ListCache, ListEntry};
use crate::slab::{Idx, NIL};
use crate::{Effect, Key, OneTier, Pinned, Request, Tier};

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    size: u64,
    visited: bool,
}

impl ListEntry for Entry {
    fn key(&self) -> Key {
        self.key
    }
    fn size(&self) -> u64 {
        self.size
    }
}

#[derive(Debug)]
pub struct Sieve {
    c: ListCache<Entry>,
    /// Where the next eviction starts; `NIL` means "at the tail" (libCacheSim's NULL pointer).
    hand: Idx,
}

impl Sieve {
    pub fn new(capacity: u64) -> Sieve {
        Sieve {
            c: ListCache::new(capacity),
            hand: NIL,
        }
    }

    #[inline]
    fn hit(&mut self, key: Key) -> bool {
        match self.c.get_mut(key) {
            Some(e) => {
                e.visited = true;
                true
            }
            None => false,
        }
    }

    #[inline]
    fn admit_absent(
        &mut self,
        req: &Request,
        pinned: Option<&dyn Fn(Key) -> bool>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        let entry = Entry {
            key: req.key,
            size: req.size,
            visited: false,
        };
        let hand = &mut self.hand;
        self.c
            .admit_absent(req, entry, pinned, effects, |c, p, fx| {
                Self::evict_one(c, hand, p, fx)
            })
    }

    /// libCacheSim's `Sieve_evict`. Pinned objects are stepped over without touching their bit;
    /// unpinned ones lose theirs, so within two sweeps the hand finds a victim (the caller made
    /// sure an unpinned object exists).
    fn evict_one(
        c: &mut ListCache<Entry>,
        hand: &mut Idx,
        pinned: Option<&dyn Fn(Key) -> bool>,
        effects: &mut Vec<Effect>,
    ) {
        let tail = c.list.back().expect("eviction from an empty SIEVE");
        let mut id = if *hand == NIL { tail } else { *hand };
        loop {
            let e = c.slab.get_mut(id);
            let is_pinned = pinned.is_some_and(|p| p(e.key));
            if !e.visited && !is_pinned {
                break;
            }
            if !is_pinned {
                e.visited = false;
            }
            id = match c.slab.prev(id) {
                Some(p) => p,
                None => c.list.back().expect("non-empty"),
            };
        }
        *hand = c.slab.prev(id).unwrap_or(NIL);
        c.evict(id, effects);
    }
}

impl OneTier for Sieve {
    fn policy_name(&self) -> String {
        "sieve".into()
    }

    #[inline]
    fn touch(&mut self, key: Key, _pinned: Pinned<'_>, _effects: &mut Vec<Effect>) -> bool {
        self.hit(key)
    }

    fn resident(&self, key: Key) -> bool {
        self.c.map.contains_key(&key)
    }

    #[inline]
    fn insert(&mut self, req: &Request, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        self.admit_absent(req, pinned, effects)
    }

    fn remove_key(&mut self, key: Key) -> bool {
        // As libCacheSim's `Sieve_remove_obj`: a hand resting on the removed object moves to the
        // object in front of it (computed before the object leaves the list).
        let Some(&id) = self.c.map.get(&key) else {
            return false;
        };
        if self.hand == id {
            self.hand = self.c.slab.prev(id).unwrap_or(NIL);
        }
        self.c.remove(key).is_some()
    }

    fn bytes(&self) -> u64 {
        self.c.used(Tier::Fast)
    }

    fn bytes_capacity(&self) -> u64 {
        self.c.capacity
    }

    fn objects(&self) -> usize {
        self.c.map.len()
    }
}

#[cfg(test)]
mod tests {
    use crate::CachePolicy;
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
        assert_eq!(s.hand, s.c.map[&2]);
        assert!(s.remove(2));
        assert_eq!(s.hand, s.c.map[&3]);
        run(&mut s, &[5, 6]); // 5 fits; 6 evicts 3 (under the hand)
        assert_eq!(s.peek(3), None);
        assert_eq!(s.peek(4), Some(Tier::Fast));
    }
}
