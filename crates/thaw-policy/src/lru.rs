//! Least recently used and first in, first out: one byte-bounded queue, which a hit either moves
//! to the head (LRU) or leaves where it is (FIFO).

use crate::queue::QueueCore;
use crate::{Effect, Key, OneTier, Pinned, Request, Tier};

/// A queue over bytes whose victims leave from the tail, skipping pinned objects. With
/// `REORDER_ON_HIT` a hit moves the object to the head: that is [`Lru`], libCacheSim's `LRU` (built
/// without `USE_BELADY`, as its PyPI wheel is). Without it a hit changes nothing: [`Fifo`],
/// libCacheSim's `FIFO`.
#[derive(Debug, Default)]
pub struct QueuePolicy<const REORDER_ON_HIT: bool> {
    core: QueueCore,
}

/// Least recently used.
pub type Lru = QueuePolicy<true>;
/// First in, first out.
pub type Fifo = QueuePolicy<false>;

impl<const REORDER_ON_HIT: bool> QueuePolicy<REORDER_ON_HIT> {
    pub fn new(capacity: u64) -> Self {
        QueuePolicy {
            core: QueueCore::new(capacity),
        }
    }

    /// Keys from the tail (next victim) to the head: least to most recently used for LRU, oldest
    /// to newest for FIFO (for persisting the order, and for tests).
    pub fn keys_oldest_first(&self) -> impl Iterator<Item = Key> + '_ {
        self.core.keys_oldest_first()
    }

    /// Whether `key` is resident, moving it to the head when this is LRU.
    fn hit(&mut self, key: Key) -> bool {
        if REORDER_ON_HIT {
            self.core.touch(key)
        } else {
            self.core.contains(key)
        }
    }
}

impl<const REORDER_ON_HIT: bool> OneTier for QueuePolicy<REORDER_ON_HIT> {
    fn policy_name(&self) -> String {
        if REORDER_ON_HIT { "lru" } else { "fifo" }.into()
    }

    #[inline]
    fn touch(&mut self, key: Key, _pinned: Pinned<'_>, _effects: &mut Vec<Effect>) -> bool {
        self.hit(key)
    }

    fn resident(&self, key: Key) -> bool {
        self.core.contains(key)
    }

    #[inline]
    fn insert(&mut self, req: &Request, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        self.core.admit_absent(req, pinned, Tier::Fast, effects)
    }

    fn remove_key(&mut self, key: Key) -> bool {
        self.core.remove(key).is_some()
    }

    fn bytes(&self) -> u64 {
        self.core.used
    }

    fn bytes_capacity(&self) -> u64 {
        self.core.capacity
    }

    fn objects(&self) -> usize {
        self.core.len()
    }
}

#[cfg(test)]
mod tests {
    use crate::CachePolicy;
    use super::*;

    #[test]
    fn evicts_least_recent() {
        let mut lru = Lru::new(30);
        let mut fx = Vec::new();
        for k in [1, 2, 3] {
            assert_eq!(lru.access(&Request::new(0, k, 10), &mut fx), None);
        }
        assert_eq!(
            lru.access(&Request::new(0, 1, 10), &mut fx),
            Some(Tier::Fast)
        );
        fx.clear();
        lru.access(&Request::new(0, 4, 10), &mut fx);
        assert!(fx.contains(&Effect::Evicted {
            key: 2,
            tier: Tier::Fast,
            size: 10
        }));
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
        assert_eq!(
            fx[0],
            Effect::Evicted {
                key: 2,
                tier: Tier::Fast,
                size: 10
            }
        );
        fx.clear();
        // everything but 4 pinned, and 4 alone is not enough room for 20 bytes
        assert!(!lru.admit(&Request::new(0, 5, 20), &|k| k != 4, &mut fx));
        assert!(fx.is_empty());
        assert_eq!(lru.len(), 3);
    }

    proptest::proptest! {
        /// The lazy queue decides exactly as a textbook LRU list (a `Vec` in recency order) on any
        /// trace, including zero-size and larger-than-cache objects, and keeps the same order.
        #[test]
        fn matches_a_textbook_lru(
            reqs in proptest::collection::vec((0u64..30, 0u64..40), 1..600),
            cap in 1u64..200,
        ) {
            let mut lru = Lru::new(cap);
            let mut model: Vec<(u64, u64)> = Vec::new(); // front = least recent
            let mut fx = Vec::new();
            for (k, s) in reqs {
                let hit = lru.access(&Request::new(0, k, s), &mut fx).is_some();
                let pos = model.iter().position(|e| e.0 == k);
                proptest::prop_assert_eq!(hit, pos.is_some());
                match pos {
                    Some(p) => { let e = model.remove(p); model.push(e); }
                    None if s <= cap => {
                        while model.iter().map(|e| e.1).sum::<u64>() + s > cap { model.remove(0); }
                        model.push((k, s));
                    }
                    None => {}
                }
                let keys: Vec<u64> = lru.keys_oldest_first().collect();
                proptest::prop_assert_eq!(keys, model.iter().map(|e| e.0).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn hits_do_not_reorder() {
        let mut p = Fifo::new(30);
        let mut fx = Vec::new();
        for k in [1, 2, 3] {
            assert_eq!(p.access(&Request::new(0, k, 10), &mut fx), None);
        }
        assert_eq!(p.access(&Request::new(0, 1, 10), &mut fx), Some(Tier::Fast));
        fx.clear();
        p.access(&Request::new(0, 4, 10), &mut fx);
        assert_eq!(
            fx[0],
            Effect::Evicted {
                key: 1,
                tier: Tier::Fast,
                size: 10
            }
        );
        assert_eq!(p.keys_oldest_first().collect::<Vec<_>>(), vec![2, 3, 4]);
    }
}
