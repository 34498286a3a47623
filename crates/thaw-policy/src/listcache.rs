//! The state every single-list, single-tier policy keeps — capacity, used bytes, the objects in a
//! slab list, and an index from key to slot — with the operations they share: the room check
//! before an admission, inserting at the head, evicting a chosen object, removing one, and the
//! `CachePolicy` accounting. A policy adds only its hit rule and how it picks a victim (CLOCK's
//! second chance, SIEVE's hand).

use rustc_hash::FxHashMap;

use crate::slab::{enough_unpinned, Idx, List, Slab};
use crate::{Effect, Key, Request, Tier};

/// What a cached object must tell the shared core.
pub(crate) trait ListEntry: Copy {
    fn key(&self) -> Key;
    fn size(&self) -> u64;
}

#[derive(Debug, Default)]
pub(crate) struct ListCache<E> {
    pub capacity: u64,
    pub used: u64,
    pub slab: Slab<E>,
    pub list: List,
    pub map: FxHashMap<Key, Idx>,
}

impl<E: ListEntry> ListCache<E> {
    pub fn new(capacity: u64) -> Self {
        ListCache {
            capacity,
            used: 0,
            slab: Slab::default(),
            list: List::default(),
            map: FxHashMap::default(),
        }
    }

    /// The entry of a resident key.
    #[inline]
    pub fn get_mut(&mut self, key: Key) -> Option<&mut E> {
        let id = *self.map.get(&key)?;
        Some(self.slab.get_mut(id))
    }

    /// Admits `entry` (for `req`, known absent): refuses, evicting nothing, when it is larger than
    /// the cache or pinned objects leave too little room; otherwise calls `evict_one` until it fits
    /// and inserts it at the head. libCacheSim's `cache_get_base` order.
    #[inline]
    pub fn admit_absent(
        &mut self,
        req: &Request,
        entry: E,
        pinned: Option<&dyn Fn(Key) -> bool>,
        effects: &mut Vec<Effect>,
        mut evict_one: impl FnMut(&mut Self, Option<&dyn Fn(Key) -> bool>, &mut Vec<Effect>),
    ) -> bool {
        if req.size > self.capacity {
            return false;
        }
        let need = (self.used + req.size).saturating_sub(self.capacity);
        if let Some(p) = pinned {
            let candidates = self
                .slab
                .iter_from_back(&self.list)
                .map(|(_, e)| (e.key(), e.size()));
            if !enough_unpinned(candidates, need, p) {
                return false;
            }
        }
        while self.used + req.size > self.capacity {
            evict_one(self, pinned, effects);
        }
        let id = self.slab.alloc(entry);
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

    /// Evicts the object in slot `id`.
    #[inline]
    pub fn evict(&mut self, id: Idx, effects: &mut Vec<Effect>) {
        let e = *self.slab.get(id);
        self.slab.unlink(&mut self.list, id);
        self.slab.release(id);
        self.map.remove(&e.key());
        self.used -= e.size();
        effects.push(Effect::Evicted {
            key: e.key(),
            tier: Tier::Fast,
            size: e.size(),
        });
    }

    /// Forgets `key`; returns its slot as it was (for a policy whose hand may rest on it).
    pub fn remove(&mut self, key: Key) -> Option<Idx> {
        let id = self.map.remove(&key)?;
        let e = *self.slab.get(id);
        self.slab.unlink(&mut self.list, id);
        self.slab.release(id);
        self.used -= e.size();
        Some(id)
    }

    pub fn used(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Fast => self.used,
            Tier::Slow => 0,
        }
    }
}
