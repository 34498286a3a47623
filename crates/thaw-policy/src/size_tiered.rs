//! The two-tier baseline that registry-cache papers call "SLRU" (size-based LRU), named
//! `size-tiered-lru` here so it cannot be confused with segmented LRU.
//!
//! Objects smaller than a size threshold live in the fast (memory) tier, the others in the slow
//! (SSD) tier, and each tier is an independent LRU. Objects never move between tiers. The policy
//! uses only sizes: requests need no category or image, and one that carries them is treated the
//! same. An object larger than its tier is not admitted.

use crate::queue::QueueCore;
use crate::{CachePolicy, Capacity, Effect, Key, Request, Tier};

/// The default threshold, 16 MiB. A choice, not a published number: the papers that use this
/// baseline tune the threshold to their traces, so pass it explicitly
/// (`size-tiered-lru:THRESHOLD`) when comparing against one of them.
pub const SIZE_TIERED_DEFAULT_THRESHOLD: u64 = 16 << 20;

#[derive(Debug)]
pub struct SizeTieredLru {
    threshold: u64,
    fast: QueueCore,
    slow: QueueCore,
}

impl SizeTieredLru {
    pub fn new(capacity: Capacity, threshold: u64) -> SizeTieredLru {
        SizeTieredLru {
            threshold,
            fast: QueueCore::new(capacity.fast),
            slow: QueueCore::new(capacity.slow),
        }
    }

    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    fn tier_for(&self, size: u64) -> Tier {
        if size < self.threshold {
            Tier::Fast
        } else {
            Tier::Slow
        }
    }

    #[inline]
    fn hit(&mut self, key: Key) -> Option<Tier> {
        if self.fast.touch(key) {
            Some(Tier::Fast)
        } else if self.slow.touch(key) {
            Some(Tier::Slow)
        } else {
            None
        }
    }

    fn admit_inner(
        &mut self,
        req: &Request,
        pinned: Option<&dyn Fn(Key) -> bool>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if self.fast.contains(req.key) || self.slow.contains(req.key) {
            return true;
        }
        match self.tier_for(req.size) {
            Tier::Fast => self.fast.admit(req, pinned, Tier::Fast, effects),
            Tier::Slow => self.slow.admit(req, pinned, Tier::Slow, effects),
        }
    }
}

impl CachePolicy for SizeTieredLru {
    fn name(&self) -> String {
        crate::PolicySpec::SizeTieredLru {
            threshold: self.threshold,
        }
        .to_string()
    }

    fn lookup(&mut self, req: &Request, _effects: &mut Vec<Effect>) -> Option<Tier> {
        self.hit(req.key)
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
        if let Some(t) = self.hit(req.key) {
            return Some(t);
        }
        self.admit_inner(req, None, effects);
        None
    }

    fn remove(&mut self, key: Key) -> bool {
        self.fast.remove(key).is_some() || self.slow.remove(key).is_some()
    }

    fn peek(&self, key: Key) -> Option<Tier> {
        if self.fast.contains(key) {
            Some(Tier::Fast)
        } else if self.slow.contains(key) {
            Some(Tier::Slow)
        } else {
            None
        }
    }

    fn used(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Fast => self.fast.used,
            Tier::Slow => self.slow.used,
        }
    }

    fn capacity(&self) -> Capacity {
        Capacity {
            fast: self.fast.capacity,
            slow: self.slow.capacity,
        }
    }

    fn len(&self) -> usize {
        self.fast.len() + self.slow.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_objects_go_fast_large_ones_slow_and_tiers_evict_independently() {
        let mut p = SizeTieredLru::new(
            Capacity {
                fast: 20,
                slow: 100,
            },
            10,
        );
        let mut fx = Vec::new();
        p.access(&Request::new(0, 1, 9), &mut fx);
        p.access(&Request::new(0, 2, 10), &mut fx);
        assert_eq!(p.peek(1), Some(Tier::Fast));
        assert_eq!(p.peek(2), Some(Tier::Slow));
        assert_eq!(p.access(&Request::new(0, 2, 10), &mut fx), Some(Tier::Slow));
        fx.clear();
        p.access(&Request::new(0, 3, 9), &mut fx);
        p.access(&Request::new(0, 4, 9), &mut fx); // fast holds 20: evicts 1, not 2
        assert_eq!(
            fx,
            vec![
                Effect::Inserted {
                    key: 3,
                    tier: Tier::Fast,
                    size: 9
                },
                Effect::Evicted {
                    key: 1,
                    tier: Tier::Fast,
                    size: 9
                },
                Effect::Inserted {
                    key: 4,
                    tier: Tier::Fast,
                    size: 9
                },
            ]
        );
        assert_eq!(p.peek(2), Some(Tier::Slow));
        // larger than the slow tier: refused
        assert!(!p.admit(&Request::new(0, 5, 101), &|_| false, &mut fx));
        assert_eq!(p.name(), "size-tiered-lru:10");
    }
}
