//! Least frequently used, with libCacheSim's tie-breaking.
//!
//! Definition (libCacheSim's `LFU`, which thaw reproduces exactly): an object's frequency is 1
//! when it is inserted and grows by one on every hit; it is forgotten when the object leaves (no
//! history, no ageing). The victim is, among the objects with the lowest frequency, the one that
//! reached that frequency earliest — each frequency bucket is a FIFO of the objects in the order
//! they entered it, whether by insertion (frequency 1) or by a hit.
//!
//! libCacheSim finds the lowest non-empty bucket by scanning frequencies upwards; here the
//! non-empty buckets form a list sorted by frequency (the classic O(1) LFU layout), so a hit moves
//! an object to the bucket right after its own or creates that bucket, and the victim is always in
//! the first bucket. Both give the same order.

use rustc_hash::FxHashMap;

use crate::slab::{enough_unpinned, Idx, List, Slab};
use crate::{Effect, Key, OneTier, Pinned, Request, Tier};

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    size: u64,
    bucket: Idx,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    freq: u64,
    /// Objects with this frequency; front = entered last, back = entered first (the victim).
    objs: List,
}

#[derive(Debug, Default)]
pub struct Lfu {
    capacity: u64,
    used: u64,
    objs: Slab<Entry>,
    buckets: Slab<Bucket>,
    /// Non-empty buckets, front = lowest frequency.
    order: List,
    map: FxHashMap<Key, Idx>,
}

impl Lfu {
    pub fn new(capacity: u64) -> Lfu {
        Lfu {
            capacity,
            ..Default::default()
        }
    }

    /// The frequency libCacheSim would report for `key`, if resident.
    pub fn frequency(&self, key: Key) -> Option<u64> {
        let id = *self.map.get(&key)?;
        Some(self.buckets.get(self.objs.get(id).bucket).freq)
    }

    #[inline]
    fn hit(&mut self, key: Key) -> bool {
        let Some(&id) = self.map.get(&key) else {
            return false;
        };
        let b = self.objs.get(id).bucket;
        let freq = self.buckets.get(b).freq;
        let target = match self.buckets.next(b) {
            Some(nb) if self.buckets.get(nb).freq == freq + 1 => nb,
            _ => {
                let nb = self.buckets.alloc(Bucket {
                    freq: freq + 1,
                    objs: List::default(),
                });
                self.buckets.insert_after(&mut self.order, b, nb);
                nb
            }
        };
        self.unlink_from_bucket(id, b);
        let mut objs = self.buckets.get(target).objs;
        self.objs.push_front(&mut objs, id);
        self.buckets.get_mut(target).objs = objs;
        self.objs.get_mut(id).bucket = target;
        true
    }

    /// Unlinks object `id` from bucket `b`, dropping the bucket when it becomes empty.
    fn unlink_from_bucket(&mut self, id: Idx, b: Idx) {
        let mut objs = self.buckets.get(b).objs;
        self.objs.unlink(&mut objs, id);
        if objs.is_empty() {
            self.buckets.unlink(&mut self.order, b);
            self.buckets.release(b);
        } else {
            self.buckets.get_mut(b).objs = objs;
        }
    }

    fn all_from_victim(&self) -> impl Iterator<Item = (Idx, &Entry)> + '_ {
        let mut bucket = self.order.front();
        let mut inner: Option<Idx> = None;
        std::iter::from_fn(move || loop {
            if let Some(id) = inner {
                inner = self.objs.prev(id);
                return Some((id, self.objs.get(id)));
            }
            let b = bucket?;
            bucket = self.buckets.next(b);
            inner = self.buckets.get(b).objs.back();
        })
    }

    /// [`Self::admit_inner`] for a key the caller just found absent.
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
            if !enough_unpinned(
                self.all_from_victim().map(|(_, e)| (e.key, e.size)),
                need,
                p,
            ) {
                return false;
            }
        }
        while self.used + req.size > self.capacity {
            let victim = match pinned {
                None => {
                    let b = self.order.front().expect("eviction from an empty LFU");
                    self.buckets
                        .get(b)
                        .objs
                        .back()
                        .expect("buckets in the order are non-empty")
                }
                Some(p) => self
                    .all_from_victim()
                    .find(|(_, e)| !p(e.key))
                    .map(|(id, _)| id)
                    .expect("unpinned bytes were counted before evicting"),
            };
            let e = *self.objs.get(victim);
            self.unlink_from_bucket(victim, e.bucket);
            self.objs.release(victim);
            self.map.remove(&e.key);
            self.used -= e.size;
            effects.push(Effect::Evicted {
                key: e.key,
                tier: Tier::Fast,
                size: e.size,
            });
        }
        let b = match self.order.front() {
            Some(b) if self.buckets.get(b).freq == 1 => b,
            _ => {
                let b = self.buckets.alloc(Bucket {
                    freq: 1,
                    objs: List::default(),
                });
                self.buckets.push_front(&mut self.order, b);
                b
            }
        };
        let id = self.objs.alloc(Entry {
            key: req.key,
            size: req.size,
            bucket: b,
        });
        let mut objs = self.buckets.get(b).objs;
        self.objs.push_front(&mut objs, id);
        self.buckets.get_mut(b).objs = objs;
        self.map.insert(req.key, id);
        self.used += req.size;
        effects.push(Effect::Inserted {
            key: req.key,
            tier: Tier::Fast,
            size: req.size,
        });
        true
    }
}

impl OneTier for Lfu {
    fn policy_name(&self) -> String {
        "lfu".into()
    }

    #[inline]
    fn touch(&mut self, key: Key, _pinned: Pinned<'_>, _effects: &mut Vec<Effect>) -> bool {
        self.hit(key)
    }

    fn resident(&self, key: Key) -> bool {
        self.map.contains_key(&key)
    }

    #[inline]
    fn insert(&mut self, req: &Request, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        self.admit_absent(req, pinned, effects)
    }

    fn remove_key(&mut self, key: Key) -> bool {
        let Some(id) = self.map.remove(&key) else {
            return false;
        };
        let e = *self.objs.get(id);
        self.unlink_from_bucket(id, e.bucket);
        self.objs.release(id);
        self.used -= e.size;
        true
    }

    fn bytes(&self) -> u64 {
        self.used
    }

    fn bytes_capacity(&self) -> u64 {
        self.capacity
    }

    fn objects(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use crate::CachePolicy;
    use super::*;

    fn run(p: &mut Lfu, keys: &[u64]) {
        let mut fx = Vec::new();
        for &k in keys {
            p.access(&Request::new(0, k, 1), &mut fx);
        }
    }

    #[test]
    fn evicts_lowest_frequency_earliest_entered() {
        let mut p = Lfu::new(3);
        run(&mut p, &[1, 2, 3, 2, 1]); // freq: 1->2 (entered 2 after 2), 2->2, 3->1
        run(&mut p, &[4]); // evicts 3 (only freq-1 object)
        assert_eq!(p.peek(3), None);
        run(&mut p, &[5]); // freq-1 bucket: 4 only -> evicted
        assert_eq!(p.peek(4), None);
        // now 1 and 2 have freq 2; 2 reached it first, so it goes before 1 once 5 is gone
        run(&mut p, &[5, 5, 6]); // 5 -> freq 3; 6 evicts 2
        assert_eq!(p.peek(2), None);
        assert_eq!(p.frequency(1), Some(2));
        assert_eq!(p.frequency(5), Some(3));
        assert_eq!(p.frequency(6), Some(1));
    }

    #[test]
    fn buckets_are_dropped_when_empty() {
        let mut p = Lfu::new(10);
        run(&mut p, &[1, 1, 1, 1]);
        assert_eq!(p.order.len(), 1);
        assert_eq!(p.frequency(1), Some(4));
        assert!(p.remove(1));
        assert_eq!(p.order.len(), 0);
    }
}
