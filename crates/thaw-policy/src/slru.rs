//! Segmented LRU with `n` segments, with libCacheSim's `SLRU` semantics.
//!
//! The byte capacity is split evenly: each segment may hold `capacity / n` bytes (integer
//! division, so up to `n - 1` bytes of the capacity are never used by a segment quota, although
//! the cache as a whole is still bounded by `capacity`). Segment 0 is the probation segment,
//! segment `n - 1` the most protected.
//!
//! - **Insertion**: a new object goes to the head of the *lowest segment that has room for it*;
//!   when none has, free space is first made by eviction and the object goes to segment 0 even if
//!   that overfills segment 0's quota for a while (libCacheSim does exactly this).
//! - **Hit**: an object in the top segment moves to its head; any other object is promoted to the
//!   head of the next segment up. If that overfills the segment, its tail is demoted to the head
//!   of the segment below, which may cascade down; a demotion out of segment 0 is an eviction.
//! - **Eviction** (making room for an insertion): the tail of the lowest segment holding any bytes.
//! - **Admission**: an object larger than one segment's quota is never admitted.
//!
//! Because a hit can cascade into an eviction, the live store should use
//! [`CachePolicy::lookup_pinned`] with this policy.

use rustc_hash::FxHashMap;

use crate::slab::{enough_unpinned, Idx, List, Slab};
use crate::{Effect, Key, OneTier, Pinned, Request, Tier};

/// The most segments `slru:N` accepts.
pub const SLRU_MAX_SEGMENTS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    size: u64,
    seg: u8,
}

#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    list: List,
    bytes: u64,
    quota: u64,
}

#[derive(Debug)]
pub struct Slru {
    capacity: u64,
    used: u64,
    segs: Vec<Segment>,
    slab: Slab<Entry>,
    map: FxHashMap<Key, Idx>,
}

impl Slru {
    /// `segments` is clamped to `1..=SLRU_MAX_SEGMENTS`; the spec parser rejects other values.
    pub fn new(capacity: u64, segments: usize) -> Slru {
        let n = segments.clamp(1, SLRU_MAX_SEGMENTS);
        let quota = capacity / n as u64;
        Slru {
            capacity,
            used: 0,
            segs: vec![
                Segment {
                    quota,
                    ..Default::default()
                };
                n
            ],
            slab: Slab::default(),
            map: FxHashMap::default(),
        }
    }

    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    /// Bytes held by segment `i` (0 = probation).
    pub fn segment_bytes(&self, i: usize) -> u64 {
        self.segs[i].bytes
    }

    /// Which segment holds `key`.
    pub fn segment_of(&self, key: Key) -> Option<usize> {
        self.map.get(&key).map(|&id| self.slab.get(id).seg as usize)
    }

    fn hit(&mut self, key: Key, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        let Some(&id) = self.map.get(&key) else {
            return false;
        };
        let top = self.segs.len() - 1;
        let seg = self.slab.get(id).seg as usize;
        if seg == top {
            self.slab.move_to_front(&mut self.segs[top].list, id);
            return true;
        }
        let size = self.slab.get(id).size;
        self.move_between(id, seg, seg + 1, size);
        while self.segs[seg + 1].bytes > self.segs[seg + 1].quota {
            if !self.cool(seg + 1, pinned, effects) {
                break;
            }
        }
        true
    }

    fn move_between(&mut self, id: Idx, from: usize, to: usize, size: u64) {
        self.slab.unlink(&mut self.segs[from].list, id);
        self.segs[from].bytes -= size;
        self.slab.push_front(&mut self.segs[to].list, id);
        self.segs[to].bytes += size;
        self.slab.get_mut(id).seg = to as u8;
    }

    /// libCacheSim's `SLRU_cool`: demote the tail of segment `id` one segment down, or evict it
    /// from segment 0. Returns false when nothing could be done because every candidate is pinned
    /// (then the segment stays over its quota; the cache as a whole never exceeds its capacity).
    fn cool(&mut self, id: usize, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        if id == 0 {
            let victim = match pinned {
                None => self.segs[0].list.back(),
                Some(p) => self
                    .slab
                    .iter_from_back(&self.segs[0].list)
                    .find(|(_, e)| !p(e.key))
                    .map(|(i, _)| i),
            };
            return match victim {
                Some(v) => {
                    self.evict(v, effects);
                    true
                }
                None => false,
            };
        }
        let Some(tail) = self.segs[id].list.back() else {
            return false;
        };
        let size = self.slab.get(tail).size;
        self.move_between(tail, id, id - 1, size);
        while self.segs[id - 1].bytes > self.segs[id - 1].quota {
            if !self.cool(id - 1, pinned, effects) {
                break;
            }
        }
        true
    }

    fn evict(&mut self, id: Idx, effects: &mut Vec<Effect>) {
        let e = *self.slab.get(id);
        let seg = &mut self.segs[e.seg as usize];
        self.slab.unlink(&mut seg.list, id);
        seg.bytes -= e.size;
        self.slab.release(id);
        self.map.remove(&e.key);
        self.used -= e.size;
        effects.push(Effect::Evicted {
            key: e.key,
            tier: Tier::Fast,
            size: e.size,
        });
    }

    /// libCacheSim's `SLRU_to_evict`: the tail of the lowest segment holding any bytes (segments
    /// of only zero-size objects are passed over), skipping pinned objects.
    fn victim(&self, pinned: Pinned<'_>) -> Option<Idx> {
        for seg in &self.segs {
            if seg.bytes == 0 {
                continue;
            }
            match pinned {
                None => return seg.list.back(),
                Some(p) => {
                    if let Some((id, _)) =
                        self.slab.iter_from_back(&seg.list).find(|(_, e)| !p(e.key))
                    {
                        return Some(id);
                    }
                }
            }
        }
        None
    }

    /// [`Self::admit_inner`] for a key the caller just found absent.
    fn admit_absent(
        &mut self,
        req: &Request,
        pinned: Pinned<'_>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        // `SLRU_can_insert`: fits the cache and one segment's quota.
        if req.size > self.capacity || req.size > self.segs[0].quota {
            return false;
        }
        let need = (self.used + req.size).saturating_sub(self.capacity);
        if let Some(p) = pinned {
            let all = self
                .segs
                .iter()
                .flat_map(|s| self.slab.iter_from_back(&s.list))
                .map(|(_, e)| (e.key, e.size));
            if !enough_unpinned(all, need, p) {
                return false;
            }
        }
        while self.used + req.size > self.capacity {
            let v = self
                .victim(pinned)
                .expect("unpinned bytes were counted before evicting");
            self.evict(v, effects);
        }
        let seg = self
            .segs
            .iter()
            .position(|s| s.bytes + req.size <= s.quota)
            .unwrap_or(0);
        let id = self.slab.alloc(Entry {
            key: req.key,
            size: req.size,
            seg: seg as u8,
        });
        self.slab.push_front(&mut self.segs[seg].list, id);
        self.segs[seg].bytes += req.size;
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

impl OneTier for Slru {
    fn policy_name(&self) -> String {
        if self.segs.len() == crate::spec::SLRU_DEFAULT_SEGMENTS {
            "slru".into()
        } else {
            format!("slru:{}", self.segs.len())
        }
    }

    #[inline]
    fn touch(&mut self, key: Key, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        self.hit(key, pinned, effects)
    }

    fn resident(&self, key: Key) -> bool {
        self.map.contains_key(&key)
    }

    #[inline]
    fn insert(&mut self, req: &Request, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        self.admit_absent(req, pinned, effects)
    }

    fn remove_key(&mut self, key: Key) -> bool {
        let Some(&id) = self.map.get(&key) else {
            return false;
        };
        let mut scratch = Vec::new();
        self.evict(id, &mut scratch);
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

    fn run(p: &mut Slru, keys: &[u64]) -> Vec<Effect> {
        let mut fx = Vec::new();
        for &k in keys {
            p.access(&Request::new(0, k, 1), &mut fx);
        }
        fx
    }

    #[test]
    fn new_objects_fill_the_lowest_segment_with_room() {
        let mut p = Slru::new(4, 2); // quota 2 per segment
        run(&mut p, &[1, 2, 3]);
        assert_eq!(p.segment_of(1), Some(0));
        assert_eq!(p.segment_of(2), Some(0));
        // segment 0 full: 3 goes straight to segment 1, as in libCacheSim
        assert_eq!(p.segment_of(3), Some(1));
    }

    #[test]
    fn promotion_demotes_the_tail_of_a_full_segment() {
        let mut p = Slru::new(4, 2);
        run(&mut p, &[1, 2, 3, 4]); // seg0: 1 2, seg1: 3 4
        run(&mut p, &[1]); // 1 -> seg1 (3 bytes > 2): tail of seg1 (3) demoted to seg0
        assert_eq!(p.segment_of(1), Some(1));
        assert_eq!(p.segment_of(3), Some(0));
        assert_eq!(p.segment_bytes(0), 2);
        assert_eq!(p.segment_bytes(1), 2);
        // a miss evicts the tail of segment 0: 2 (older than 3, which entered seg0 at its head)
        let fx = run(&mut p, &[5]);
        assert!(fx.contains(&Effect::Evicted {
            key: 2,
            tier: Tier::Fast,
            size: 1
        }));
    }

    #[test]
    fn objects_larger_than_a_segment_are_refused() {
        let mut p = Slru::new(100, 4);
        let mut fx = Vec::new();
        assert!(!p.admit(&Request::new(0, 1, 26), &|_| false, &mut fx));
        assert!(p.admit(&Request::new(0, 1, 25), &|_| false, &mut fx));
    }

    #[test]
    fn a_hit_can_evict_but_never_a_pinned_object() {
        // quota 2 per segment out of 5 bytes: the fifth object overfills segment 0
        let setup = || {
            let mut p = Slru::new(5, 2);
            run(&mut p, &[1, 2, 3, 4, 5]);
            assert_eq!(p.segment_of(5), Some(0));
            assert_eq!(p.segment_bytes(0), 3);
            p
        };
        // promoting 5 overfills segment 1, whose tail (3) falls into segment 0, whose tail (1)
        // is evicted: a hit that evicts, as in libCacheSim
        let mut p = setup();
        let fx = run(&mut p, &[5]);
        assert_eq!(
            fx,
            vec![Effect::Evicted {
                key: 1,
                tier: Tier::Fast,
                size: 1
            }]
        );
        // the same with everything pinned evicts nothing and stays within capacity
        let mut p = setup();
        let mut fx = Vec::new();
        assert_eq!(
            p.lookup_pinned(&Request::new(0, 5, 1), &|_| true, &mut fx),
            Some(Tier::Fast)
        );
        assert!(fx.is_empty());
        assert_eq!(p.used(Tier::Fast), 5);
        assert_eq!(p.len(), 5);
    }
}
