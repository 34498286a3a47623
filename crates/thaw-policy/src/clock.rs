//! CLOCK with n-bit reference counters, as libCacheSim's `Clock` implements it.
//!
//! libCacheSim keeps CLOCK as a queue rather than a ring with a moving hand: a new object enters at
//! the head with counter 0 (`init-freq=0`), a hit raises the counter up to `2^n - 1`, and eviction
//! looks at the tail: a zero counter is evicted, a positive one is decremented and the object is
//! moved to the head ("second chance"). With one bit this is the classic CLOCK; that queue walk is
//! the same order a hand sweeping a ring would visit objects in, and reproducing it exactly is what
//! makes thaw's miss counts equal libCacheSim's.

use crate::listcache::{ListCache, ListEntry};
use crate::{Effect, Key, OneTier, Pinned, Request, Tier};

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    size: u64,
    freq: u32,
}

impl ListEntry for Entry {
    fn key(&self) -> Key {
        self.key
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// The largest counter width accepted (`clock:N`); libCacheSim stores the counter in an `int`.
pub const CLOCK_MAX_BITS: u32 = 16;

#[derive(Debug)]
pub struct Clock {
    c: ListCache<Entry>,
    bits: u32,
    max_freq: u32,
}

impl Clock {
    /// A CLOCK cache whose counters have `bits` bits (1 = classic CLOCK). `bits` is clamped to
    /// `1..=CLOCK_MAX_BITS`; the spec parser rejects other values with an error first.
    pub fn new(capacity: u64, bits: u32) -> Clock {
        let bits = bits.clamp(1, CLOCK_MAX_BITS);
        Clock {
            c: ListCache::new(capacity),
            bits,
            max_freq: (1u32 << bits) - 1,
        }
    }

    #[inline]
    fn hit(&mut self, key: Key) -> bool {
        let max = self.max_freq;
        match self.c.get_mut(key) {
            Some(e) => {
                if e.freq < max {
                    e.freq += 1;
                }
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
            freq: 0,
        };
        self.c
            .admit_absent(req, entry, pinned, effects, Self::evict_one)
    }

    /// libCacheSim's `Clock_evict`. A pinned object at the tail is treated like a referenced one
    /// (moved to the head) but keeps its counter; the caller made sure an unpinned object exists,
    /// and its counter reaches zero within `max_freq` sweeps, so this ends.
    fn evict_one(
        c: &mut ListCache<Entry>,
        pinned: Option<&dyn Fn(Key) -> bool>,
        effects: &mut Vec<Effect>,
    ) {
        loop {
            let id = c.list.back().expect("eviction from an empty CLOCK");
            let e = c.slab.get_mut(id);
            let is_pinned = pinned.is_some_and(|p| p(e.key));
            if e.freq >= 1 || is_pinned {
                if !is_pinned {
                    e.freq -= 1;
                }
                c.slab.move_to_front(&mut c.list, id);
                continue;
            }
            c.evict(id, effects);
            return;
        }
    }
}

impl OneTier for Clock {
    fn policy_name(&self) -> String {
        if self.bits == 1 {
            "clock".into()
        } else {
            format!("clock:{}", self.bits)
        }
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

    fn run(p: &mut dyn CachePolicy, keys: &[u64]) -> Vec<bool> {
        let mut fx = Vec::new();
        keys.iter()
            .map(|&k| p.access(&Request::new(0, k, 1), &mut fx).is_some())
            .collect()
    }

    #[test]
    fn referenced_object_gets_a_second_chance() {
        let mut c = Clock::new(3, 1);
        // 1 2 3 fill; 1 is referenced; 4 must evict 2 (1 is spared once, its bit cleared)
        run(&mut c, &[1, 2, 3, 1, 4]);
        assert_eq!(c.peek(2), None);
        assert_eq!(c.peek(1), Some(Tier::Fast));
        // 5 now evicts 3, then 6 evicts 1 whose bit was cleared
        run(&mut c, &[5, 6]);
        assert_eq!(c.peek(3), None);
        assert_eq!(c.peek(1), None);
    }

    #[test]
    fn two_bit_counters_saturate_at_three() {
        let mut c = Clock::new(2, 2);
        run(&mut c, &[1, 1, 1, 1, 1, 2]);
        assert_eq!(c.c.slab.get(c.c.map[&1]).freq, 3);
        // 3 arrives: 2 (freq 0) is at the tail after 1 is swept 0 times? tail is 1 (oldest):
        // 1 is decremented and moved to the head, then 2 is evicted.
        run(&mut c, &[3]);
        assert_eq!(c.peek(2), None);
        assert_eq!(c.c.slab.get(c.c.map[&1]).freq, 2);
        assert_eq!(c.name(), "clock:2");
    }

    #[test]
    fn pinned_tail_is_passed_over() {
        let mut c = Clock::new(2, 1);
        let mut fx = Vec::new();
        run(&mut c, &[1, 2]);
        assert!(c.admit(&Request::new(0, 3, 1), &|k| k == 1, &mut fx));
        assert_eq!(c.peek(1), Some(Tier::Fast));
        assert_eq!(c.peek(2), None);
        assert!(!c.admit(&Request::new(0, 4, 2), &|k| k == 1, &mut fx));
    }
}
