//! The single-queue core shared by FIFO, LRU and each tier of the size-tiered baseline.

use rustc_hash::FxHashMap;

use crate::slab::{enough_unpinned, Idx, List, Slab};
use crate::{Effect, Key, Request, Tier};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Obj {
    pub(crate) key: Key,
    pub(crate) size: u64,
}

/// One byte-bounded queue: objects enter at the front, victims leave from the back.
#[derive(Debug, Default)]
pub(crate) struct QueueCore {
    pub(crate) capacity: u64,
    pub(crate) used: u64,
    slab: Slab<Obj>,
    list: List,
    map: FxHashMap<Key, Idx>,
}

impl QueueCore {
    pub(crate) fn new(capacity: u64) -> QueueCore {
        QueueCore { capacity, ..Default::default() }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn contains(&self, key: Key) -> bool {
        self.map.contains_key(&key)
    }

    /// Moves `key` to the front if resident; returns whether it was.
    #[inline]
    pub(crate) fn touch(&mut self, key: Key) -> bool {
        match self.map.get(&key) {
            Some(&id) => {
                self.slab.move_to_front(&mut self.list, id);
                true
            }
            None => false,
        }
    }

    pub(crate) fn keys_oldest_first(&self) -> impl Iterator<Item = Key> + '_ {
        self.slab.iter_from_back(&self.list).map(|(_, o)| o.key)
    }

    /// Admits `req` at the front, evicting unpinned objects from the back. `pinned == None` means
    /// nothing is pinned (the simulator), which skips the pinned-bytes walk entirely.
    #[inline]
    pub(crate) fn admit(
        &mut self,
        req: &Request,
        pinned: Option<&dyn Fn(Key) -> bool>,
        tier: Tier,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if self.map.contains_key(&req.key) {
            return true;
        }
        // libCacheSim's `cache_can_insert_default`: an object larger than the cache is a miss
        // that evicts nothing.
        if req.size > self.capacity {
            return false;
        }
        let need = (self.used + req.size).saturating_sub(self.capacity);
        if let Some(p) = pinned {
            let candidates = self.slab.iter_from_back(&self.list).map(|(_, o)| (o.key, o.size));
            if !enough_unpinned(candidates, need, p) {
                return false;
            }
        }
        let mut cursor = self.list.back();
        while self.used + req.size > self.capacity {
            let id = cursor.expect("unpinned bytes were counted before evicting");
            cursor = self.slab.prev(id);
            let o = *self.slab.get(id);
            if pinned.is_some_and(|p| p(o.key)) {
                continue;
            }
            self.unlink(id);
            effects.push(Effect::Evicted { key: o.key, tier, size: o.size });
        }
        let id = self.slab.alloc(Obj { key: req.key, size: req.size });
        self.slab.push_front(&mut self.list, id);
        self.map.insert(req.key, id);
        self.used += req.size;
        effects.push(Effect::Inserted { key: req.key, tier, size: req.size });
        true
    }

    pub(crate) fn remove(&mut self, key: Key) -> Option<Obj> {
        let id = *self.map.get(&key)?;
        let o = *self.slab.get(id);
        self.unlink(id);
        Some(o)
    }

    fn unlink(&mut self, id: Idx) {
        let o = *self.slab.get(id);
        self.slab.unlink(&mut self.list, id);
        self.slab.release(id);
        self.map.remove(&o.key);
        self.used -= o.size;
    }
}
