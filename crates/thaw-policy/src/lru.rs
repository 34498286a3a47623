//! Least recently used.

use rustc_hash::FxHashMap;

use crate::{Capacity, CachePolicy, DList, Effect, Key, NodeId, Request, Tier};

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    size: u64,
}

/// LRU over bytes: a hit moves the object to the head; victims leave from the tail, skipping
/// pinned objects.
#[derive(Debug, Default)]
pub struct Lru {
    capacity: u64,
    used: u64,
    list: DList<Entry>,
    index: FxHashMap<Key, NodeId>,
}

impl Lru {
    pub fn new(capacity: u64) -> Lru {
        Lru { capacity, ..Default::default() }
    }

    /// Keys from least to most recently used (for persisting the order, and for tests).
    pub fn keys_oldest_first(&self) -> impl Iterator<Item = Key> + '_ {
        self.list.iter_from_back().map(|(_, e)| e.key)
    }

    /// Bytes held by unpinned objects, i.e. what eviction could free.
    fn evictable(&self, pinned: &dyn Fn(Key) -> bool) -> u64 {
        self.list.iter_from_back().filter(|(_, e)| !pinned(e.key)).map(|(_, e)| e.size).sum()
    }
}

impl CachePolicy for Lru {
    fn name(&self) -> String {
        "lru".into()
    }

    fn lookup(&mut self, req: &Request, _effects: &mut Vec<Effect>) -> Option<Tier> {
        let id = *self.index.get(&req.key)?;
        self.list.move_to_front(id);
        Some(Tier::Fast)
    }

    fn admit(
        &mut self,
        req: &Request,
        pinned: &dyn Fn(Key) -> bool,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if self.index.contains_key(&req.key) {
            return true;
        }
        if req.size > self.capacity {
            return false;
        }
        let need = (self.used + req.size).saturating_sub(self.capacity);
        // Only walk the list for pinned bytes when eviction is actually needed and something could
        // be pinned; the simulator's predicate pins nothing, so this stays O(1) there.
        if need > 0 && self.evictable(pinned) < need {
            return false;
        }
        let mut cursor = self.list.back();
        while self.used + req.size > self.capacity {
            let id = cursor.expect("evictable bytes were counted above");
            cursor = self.list.prev(id);
            let e = *self.list.get(id);
            if pinned(e.key) {
                continue;
            }
            self.list.remove(id);
            self.index.remove(&e.key);
            self.used -= e.size;
            effects.push(Effect::Evicted { key: e.key, tier: Tier::Fast, size: e.size });
        }
        let id = self.list.push_front(Entry { key: req.key, size: req.size });
        self.index.insert(req.key, id);
        self.used += req.size;
        effects.push(Effect::Inserted { key: req.key, tier: Tier::Fast, size: req.size });
        true
    }

    fn remove(&mut self, key: Key) -> bool {
        let Some(id) = self.index.remove(&key) else { return false };
        let e = self.list.remove(id);
        self.used -= e.size;
        true
    }

    fn peek(&self, key: Key) -> Option<Tier> {
        self.index.contains_key(&key).then_some(Tier::Fast)
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
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent() {
        let mut lru = Lru::new(30);
        let mut fx = Vec::new();
        for k in [1, 2, 3] {
            assert_eq!(lru.access(&Request::new(0, k, 10), &mut fx), None);
        }
        assert_eq!(lru.access(&Request::new(0, 1, 10), &mut fx), Some(Tier::Fast));
        fx.clear();
        lru.access(&Request::new(0, 4, 10), &mut fx);
        assert!(fx.contains(&Effect::Evicted { key: 2, tier: Tier::Fast, size: 10 }));
        assert_eq!(lru.keys_oldest_first().collect::<Vec<_>>(), vec![3, 1, 4]);
    }

    #[test]
    fn pinned_objects_are_skipped_and_refusal_evicts_nothing() {
        let mut lru = Lru::new(30);
        let mut fx = Vec::new();
        for k in [1, 2, 3] {
            lru.access(&Request::new(0, k, 10), &mut fx);
        }
        fx.clear();
        assert!(lru.admit(&Request::new(0, 4, 10), &|k| k == 1, &mut fx));
        assert_eq!(fx[0], Effect::Evicted { key: 2, tier: Tier::Fast, size: 10 });
        fx.clear();
        // everything but 4 pinned, and 4 alone is not enough room for 20 bytes
        assert!(!lru.admit(&Request::new(0, 5, 20), &|k| k != 4, &mut fx));
        assert!(fx.is_empty());
        assert_eq!(lru.len(), 3);
    }
}
