//! LACache: a two-tier registry cache driven by per-service lifetimes and image associations.
//!
//! The idea (from the LACache paper on container registry caching): images of different service
//! categories (web, ML, IoT, ...) stay in demand for very different times after a pull, so one
//! recency rule for the whole memory tier keeps the wrong layers. LACache gives each category a
//! *lifetime threshold* for the fast (memory) tier, demotes layers to the slow (SSD) tier instead
//! of deleting them, adapts the thresholds, and prefetches the images that usually follow a pull.
//! The paper describes these mechanisms in prose; where it leaves the rules open, the choices
//! below are thaw's, each with its reason.
//!
//! # Placement and demotion
//!
//! A new object goes to the fast tier when it fits there and is no larger than the size gate
//! (`fast_max_object`, 16 MiB by default, as the size-tiered baseline's threshold), else to the
//! slow tier. The gate is thaw's addition: memory is worth most for the many small layers whose
//! fetch is dominated by round trips, and without it one large layer promoted into memory
//! demotes hundreds of them (on the generated web/ML/IoT trace LACache then lost to the
//! baseline; with it, it wins — BENCHMARKS.md). `lacache:any` turns the gate off. Each category
//! keeps its own LRU list in the fast tier. When the fast tier needs room, the victim is the
//! least recently used object of the category whose tail is *most over its lifetime*: the largest
//! `idle / lifetime(category)` among the categories' tails, ties to the lower category. Objects
//! past their lifetime (ratio above 1) therefore leave first, oldest-relative-to-its-category
//! first; only when none is expired does memory pressure push out live objects. Victims are
//! *demoted* to the slow tier (an LRU); the slow tier evicts its LRU tail to make room, and only
//! those evictions delete data. Choice: demotion happens on demand rather than by a timer, because
//! keeping an expired object in memory that nobody else needs costs nothing and can still hit, and
//! because this crate has no clock of its own (time comes from [`Request::time_us`]).
//!
//! A hit in the slow tier promotes the object back to the fast tier (demoting others as needed),
//! unless it is above the size gate.
//!
//! # Adapting the lifetimes
//!
//! - **As the cache fills**: when room must be made and the chosen victim is *not* expired, the
//!   lifetimes are longer than memory can afford; the victim category's lifetime moves a step
//!   (`adapt_rate`) towards the victim's idle time.
//! - **On misses caused by early eviction**: a request for an object that was demoted (a slow-tier
//!   hit) or evicted (a miss whose key is in a bounded ghost list) after an idle gap longer than its
//!   category's lifetime shows the lifetime was too short for that reuse; the category's lifetime
//!   moves a step towards the gap. Gaps shorter than the lifetime mean the object was pushed out by
//!   pressure, which a longer lifetime would not fix, so they change nothing.
//!
//! Lifetimes stay within `[min_lifetime_us, max_lifetime_us]`.
//!
//! # Categories
//!
//! Requests without a category share one *default category* (slot [`DEFAULT_CATEGORY_SLOT`]),
//! with its own lifetime; category `c` uses slot `c + 1`. So the policy runs on traces that carry
//! no categories: it then behaves as a two-tier LRU with demotion and lifetime-normalised victims.
//!
//! # Prefetch
//!
//! Given an [`AssociationTable`] ("after image A, image B is pulled with probability p"), a
//! client's request for a layer of image A emits [`Effect::Prefetch`] for A's followers whose
//! probability is at least `prefetch_min_probability`, highest first, at most `prefetch_top_k`,
//! and at most once per `prefetch_window_us` per image (the layers of one pull share the image, so
//! a pull announces its followers once). Prefetch never cascades: requests with
//! [`Request::prefetch`] set emit nothing, do not count as use (a prefetch lookup of a resident
//! object changes nothing) and do not adapt lifetimes. Without image ids nothing is prefetched.

use rustc_hash::FxHashMap;

use crate::slab::{Idx, List, Slab};
use crate::{CachePolicy, Capacity, CategoryId, Effect, ImageId, Key, Pinned, Request, Tier};

/// The lifetime slot of requests that carry no category.
pub const DEFAULT_CATEGORY_SLOT: usize = 0;

/// "After a pull of image A, image B is pulled with probability p", per A, highest p first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssociationTable {
    followers: FxHashMap<ImageId, Vec<(ImageId, f64)>>,
}

impl AssociationTable {
    pub fn new() -> AssociationTable {
        AssociationTable::default()
    }

    /// Records that `follower` follows `image` with `probability` (replacing an earlier value for
    /// the same pair). Probabilities outside `0..=1` or NaN are clamped into range (NaN to 0), so a
    /// bad table cannot reorder prefetches arbitrarily.
    pub fn insert(&mut self, image: ImageId, follower: ImageId, probability: f64) {
        let p = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        let list = self.followers.entry(image).or_default();
        list.retain(|(b, _)| *b != follower);
        let pos = list.partition_point(|(_, q)| *q >= p);
        list.insert(pos, (follower, p));
    }

    /// `image`'s followers, highest probability first.
    pub fn followers(&self, image: ImageId) -> &[(ImageId, f64)] {
        self.followers.get(&image).map_or(&[], |v| v.as_slice())
    }

    pub fn len(&self) -> usize {
        self.followers.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.followers.is_empty()
    }
}

impl FromIterator<(ImageId, ImageId, f64)> for AssociationTable {
    fn from_iter<I: IntoIterator<Item = (ImageId, ImageId, f64)>>(iter: I) -> Self {
        let mut t = AssociationTable::new();
        for (a, b, p) in iter {
            t.insert(a, b, p);
        }
        t
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LaCacheConfig {
    /// The starting lifetime of every category, in microseconds (default 10 minutes).
    pub initial_lifetime_us: u64,
    /// Starting lifetimes for particular categories, overriding `initial_lifetime_us`.
    pub category_lifetimes_us: Vec<(CategoryId, u64)>,
    /// Bounds for adapted lifetimes (default 1 second to 7 days).
    pub min_lifetime_us: u64,
    pub max_lifetime_us: u64,
    /// How far one adaptation step moves a lifetime towards its target, in `(0, 1]` (default 0.25).
    pub adapt_rate: f64,
    /// How many evicted keys are remembered to recognise early evictions (default 65536).
    pub ghost_entries: usize,
    pub associations: AssociationTable,
    /// At most this many followers are announced per pull (default 2).
    pub prefetch_top_k: usize,
    /// Followers below this probability are not announced (default 0.5).
    pub prefetch_min_probability: f64,
    /// An image's followers are announced at most once per this window (default 60 s).
    pub prefetch_window_us: u64,
    /// Objects larger than this never enter the fast tier: they are admitted to the slow tier
    /// and are not promoted on a slow-tier hit (default [`LACACHE_DEFAULT_FAST_MAX_OBJECT`];
    /// `u64::MAX` lets any object in).
    pub fast_max_object: u64,
}

/// The default size gate of LACache's fast tier: the same 16 MiB as the size-tiered baseline's
/// default threshold, so that the two policies differ only in what LACache adds (lifetimes,
/// demotion, prefetch). Without a gate a single multi-GiB layer is promoted into memory and
/// demotes hundreds of small layers whose fetch cost is mostly round trips; measured on the
/// generated web/ML/IoT trace, that made LACache lose to the baseline (BENCHMARKS.md).
pub const LACACHE_DEFAULT_FAST_MAX_OBJECT: u64 = 16 << 20;

impl Default for LaCacheConfig {
    fn default() -> Self {
        LaCacheConfig {
            initial_lifetime_us: 10 * 60 * 1_000_000,
            category_lifetimes_us: Vec::new(),
            min_lifetime_us: 1_000_000,
            max_lifetime_us: 7 * 24 * 3600 * 1_000_000,
            adapt_rate: 0.25,
            ghost_entries: 65536,
            associations: AssociationTable::new(),
            prefetch_top_k: 2,
            prefetch_min_probability: 0.5,
            prefetch_window_us: 60 * 1_000_000,
            fast_max_object: LACACHE_DEFAULT_FAST_MAX_OBJECT,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    size: u64,
    last_access_us: u64,
    slot: u32,
    tier: Tier,
}

#[derive(Debug, Clone, Copy)]
struct Ghost {
    key: Key,
    slot: u32,
    last_access_us: u64,
}

#[derive(Debug)]
pub struct LaCache {
    cfg: LaCacheConfig,
    capacity: Capacity,
    used: [u64; 2],
    slab: Slab<Entry>,
    map: FxHashMap<Key, Idx>,
    /// Fast-tier LRU per category slot.
    fast: Vec<List>,
    lifetimes: Vec<f64>,
    slow: List,
    ghosts: Slab<Ghost>,
    ghost_list: List,
    ghost_map: FxHashMap<Key, Idx>,
    announced: FxHashMap<ImageId, u64>,
}

impl LaCache {
    pub fn new(capacity: Capacity, cfg: LaCacheConfig) -> LaCache {
        let mut cfg = cfg;
        cfg.adapt_rate = if cfg.adapt_rate.is_nan() {
            0.25
        } else {
            cfg.adapt_rate.clamp(0.0, 1.0)
        };
        cfg.max_lifetime_us = cfg.max_lifetime_us.max(cfg.min_lifetime_us);
        let mut p = LaCache {
            cfg,
            capacity,
            used: [0; 2],
            slab: Slab::default(),
            map: FxHashMap::default(),
            fast: Vec::new(),
            lifetimes: Vec::new(),
            slow: List::default(),
            ghosts: Slab::default(),
            ghost_list: List::default(),
            ghost_map: FxHashMap::default(),
            announced: FxHashMap::default(),
        };
        p.ensure_slot(DEFAULT_CATEGORY_SLOT);
        p
    }

    /// The current lifetime threshold of `category` (`None` = the default category), in µs.
    pub fn lifetime_us(&self, category: Option<CategoryId>) -> u64 {
        let slot = Self::slot_of(category);
        match self.lifetimes.get(slot) {
            Some(l) => *l as u64,
            None => self.initial_lifetime(slot) as u64,
        }
    }

    pub fn config(&self) -> &LaCacheConfig {
        &self.cfg
    }

    fn slot_of(category: Option<CategoryId>) -> usize {
        category.map_or(DEFAULT_CATEGORY_SLOT, |c| c as usize + 1)
    }

    fn initial_lifetime(&self, slot: usize) -> f64 {
        let l = if slot == DEFAULT_CATEGORY_SLOT {
            self.cfg.initial_lifetime_us
        } else {
            let c = (slot - 1) as CategoryId;
            self.cfg
                .category_lifetimes_us
                .iter()
                .find(|(k, _)| *k == c)
                .map_or(self.cfg.initial_lifetime_us, |(_, l)| *l)
        };
        l.clamp(self.cfg.min_lifetime_us, self.cfg.max_lifetime_us) as f64
    }

    fn ensure_slot(&mut self, slot: usize) {
        while self.lifetimes.len() <= slot {
            let l = self.initial_lifetime(self.lifetimes.len());
            self.lifetimes.push(l);
            self.fast.push(List::default());
        }
    }

    fn step_lifetime(&mut self, slot: usize, target: f64) {
        let l = self.lifetimes[slot];
        let next = l + self.cfg.adapt_rate * (target - l);
        self.lifetimes[slot] = next.clamp(
            self.cfg.min_lifetime_us as f64,
            self.cfg.max_lifetime_us as f64,
        );
    }

    /// A request for `slot` after an idle gap: early-eviction adaptation.
    fn reuse_after_eviction(&mut self, slot: usize, gap_us: u64) {
        if (gap_us as f64) > self.lifetimes[slot] {
            self.step_lifetime(slot, gap_us as f64);
        }
    }

    fn announce(&mut self, req: &Request, effects: &mut Vec<Effect>) {
        let Some(image) = req.image else { return };
        if req.prefetch || self.cfg.prefetch_top_k == 0 {
            return;
        }
        let followers = self.cfg.associations.followers(image);
        if followers.is_empty() {
            return;
        }
        if let Some(&last) = self.announced.get(&image) {
            if req.time_us.saturating_sub(last) < self.cfg.prefetch_window_us && req.time_us >= last
            {
                return;
            }
        }
        self.announced.insert(image, req.time_us);
        let min_p = self.cfg.prefetch_min_probability;
        for &(b, p) in followers
            .iter()
            .filter(|(b, p)| *b != image && *p >= min_p)
            .take(self.cfg.prefetch_top_k)
        {
            effects.push(Effect::Prefetch {
                image: b,
                probability: p,
            });
        }
    }

    fn remember_ghost(&mut self, e: &Entry) {
        if self.cfg.ghost_entries == 0 {
            return;
        }
        if let Some(&old) = self.ghost_map.get(&e.key) {
            self.ghosts.unlink(&mut self.ghost_list, old);
            self.ghosts.release(old);
        }
        while self.ghost_list.len() >= self.cfg.ghost_entries {
            let tail = self.ghost_list.back().expect("non-empty ghost list");
            let g = *self.ghosts.get(tail);
            self.ghosts.unlink(&mut self.ghost_list, tail);
            self.ghosts.release(tail);
            self.ghost_map.remove(&g.key);
        }
        let id = self.ghosts.alloc(Ghost {
            key: e.key,
            slot: e.slot,
            last_access_us: e.last_access_us,
        });
        self.ghosts.push_front(&mut self.ghost_list, id);
        self.ghost_map.insert(e.key, id);
    }

    fn take_ghost(&mut self, key: Key) -> Option<Ghost> {
        let id = self.ghost_map.remove(&key)?;
        let g = *self.ghosts.get(id);
        self.ghosts.unlink(&mut self.ghost_list, id);
        self.ghosts.release(id);
        Some(g)
    }

    fn list_of(&mut self, e: &Entry) -> &mut List {
        match e.tier {
            Tier::Fast => &mut self.fast[e.slot as usize],
            Tier::Slow => &mut self.slow,
        }
    }

    fn unlink(&mut self, id: Idx) -> Entry {
        let e = *self.slab.get(id);
        let mut list = *self.list_of(&e);
        self.slab.unlink(&mut list, id);
        *self.list_of(&e) = list;
        self.used[e.tier.index()] -= e.size;
        e
    }

    fn link_front(&mut self, id: Idx, tier: Tier) {
        let e = {
            let e = self.slab.get_mut(id);
            e.tier = tier;
            *e
        };
        let mut list = *self.list_of(&e);
        self.slab.push_front(&mut list, id);
        *self.list_of(&e) = list;
        self.used[tier.index()] += e.size;
    }

    fn drop_entry(&mut self, id: Idx, effects: &mut Vec<Effect>) {
        let e = self.unlink(id);
        self.slab.release(id);
        self.map.remove(&e.key);
        effects.push(Effect::Evicted {
            key: e.key,
            tier: e.tier,
            size: e.size,
        });
        self.remember_ghost(&e);
    }

    /// The fast-tier victim (see the module docs) and whether it is past its lifetime.
    fn fast_victim(&self, now: u64, pinned: Pinned<'_>) -> Option<(Idx, bool)> {
        let mut best: Option<(Idx, f64)> = None;
        for (slot, list) in self.fast.iter().enumerate() {
            let cand = match pinned {
                None => list.back(),
                Some(p) => self
                    .slab
                    .iter_from_back(list)
                    .find(|(_, e)| !p(e.key))
                    .map(|(i, _)| i),
            };
            let Some(id) = cand else { continue };
            let idle = now.saturating_sub(self.slab.get(id).last_access_us) as f64;
            let ratio = idle / self.lifetimes[slot];
            if best.is_none_or(|(_, r)| ratio > r) {
                best = Some((id, ratio));
            }
        }
        best.map(|(id, r)| (id, r > 1.0))
    }

    fn unpinned_bytes(&self, lists: &[List], pinned: Pinned<'_>, need: u64) -> bool {
        let Some(p) = pinned else { return true };
        let all = lists
            .iter()
            .flat_map(|l| self.slab.iter_from_back(l))
            .map(|(_, e)| (e.key, e.size));
        crate::slab::enough_unpinned(all, need, p)
    }

    /// Makes `size` bytes of room in the slow tier; false if pins prevent it.
    fn room_in_slow(&mut self, size: u64, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        if size > self.capacity.slow {
            return false;
        }
        let need = (self.used[1] + size).saturating_sub(self.capacity.slow);
        if !self.unpinned_bytes(&[self.slow], pinned, need) {
            return false;
        }
        let mut cursor = self.slow.back();
        while self.used[1] + size > self.capacity.slow {
            let id = cursor.expect("unpinned slow bytes were counted");
            cursor = self.slab.prev(id);
            if pinned.is_some_and(|p| p(self.slab.get(id).key)) {
                continue;
            }
            self.drop_entry(id, effects);
        }
        true
    }

    /// Makes `size` bytes of room in the fast tier by demoting (or, when the slow tier cannot take
    /// them, evicting) victims; false if pins prevent it, in which case nothing moved.
    /// `adapt` is false for prefetch admissions, which must not tune lifetimes.
    fn room_in_fast(
        &mut self,
        now: u64,
        size: u64,
        adapt: bool,
        pinned: Pinned<'_>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if size > self.capacity.fast {
            return false;
        }
        let need = (self.used[0] + size).saturating_sub(self.capacity.fast);
        let lists = std::mem::take(&mut self.fast);
        let ok = self.unpinned_bytes(&lists, pinned, need);
        self.fast = lists;
        if !ok {
            return false;
        }
        while self.used[0] + size > self.capacity.fast {
            let (id, expired) = self
                .fast_victim(now, pinned)
                .expect("unpinned fast bytes were counted");
            let e = *self.slab.get(id);
            if !expired && adapt {
                // memory is too small for the current lifetimes
                let idle = now.saturating_sub(e.last_access_us) as f64;
                self.step_lifetime(e.slot as usize, idle);
            }
            self.unlink(id);
            if self.room_in_slow(e.size, pinned, effects) {
                self.link_front(id, Tier::Slow);
                effects.push(Effect::Demoted {
                    key: e.key,
                    size: e.size,
                });
            } else {
                self.slab.release(id);
                self.map.remove(&e.key);
                effects.push(Effect::Evicted {
                    key: e.key,
                    tier: Tier::Fast,
                    size: e.size,
                });
                self.remember_ghost(&e);
            }
        }
        true
    }

    fn hit(
        &mut self,
        req: &Request,
        pinned: Pinned<'_>,
        effects: &mut Vec<Effect>,
    ) -> Option<Tier> {
        self.announce(req, effects);
        let id = *self.map.get(&req.key)?;
        let e = *self.slab.get(id);
        if req.prefetch {
            return Some(e.tier);
        }
        match e.tier {
            Tier::Fast => {
                self.slab.move_to_front(&mut self.fast[e.slot as usize], id);
                self.slab.get_mut(id).last_access_us = req.time_us.max(e.last_access_us);
                Some(Tier::Fast)
            }
            Tier::Slow => {
                self.reuse_after_eviction(
                    e.slot as usize,
                    req.time_us.saturating_sub(e.last_access_us),
                );
                self.slab.get_mut(id).last_access_us = req.time_us.max(e.last_access_us);
                if e.size > self.cfg.fast_max_object {
                    self.slab.move_to_front(&mut self.slow, id);
                    return Some(Tier::Slow);
                }
                // Take it out of the slow tier first, so that demotions making room in the fast
                // tier can use its space.
                self.unlink(id);
                if self.room_in_fast(req.time_us, e.size, true, pinned, effects) {
                    self.link_front(id, Tier::Fast);
                    effects.push(Effect::Promoted {
                        key: e.key,
                        size: e.size,
                    });
                    Some(Tier::Fast)
                } else {
                    self.link_front(id, Tier::Slow);
                    Some(Tier::Slow)
                }
            }
        }
    }

    fn admit_inner(
        &mut self,
        req: &Request,
        pinned: Pinned<'_>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if self.map.contains_key(&req.key) {
            return true;
        }
        let slot = Self::slot_of(req.category);
        self.ensure_slot(slot);
        if let Some(g) = self.take_ghost(req.key) {
            if !req.prefetch {
                self.reuse_after_eviction(
                    g.slot as usize,
                    req.time_us.saturating_sub(g.last_access_us),
                );
            }
        }
        let tier = if req.size <= self.cfg.fast_max_object
            && self.room_in_fast(req.time_us, req.size, !req.prefetch, pinned, effects)
        {
            Tier::Fast
        } else if self.room_in_slow(req.size, pinned, effects) {
            Tier::Slow
        } else {
            return false;
        };
        let id = self.slab.alloc(Entry {
            key: req.key,
            size: req.size,
            last_access_us: req.time_us,
            slot: slot as u32,
            tier,
        });
        self.link_front(id, tier);
        self.map.insert(req.key, id);
        effects.push(Effect::Inserted {
            key: req.key,
            tier,
            size: req.size,
        });
        true
    }
}

impl CachePolicy for LaCache {
    fn name(&self) -> String {
        // as `PolicySpec` prints it, so runs with different gates are told apart
        crate::PolicySpec::LaCache {
            fast_max_object: self.cfg.fast_max_object,
        }
        .to_string()
    }

    fn lookup(&mut self, req: &Request, effects: &mut Vec<Effect>) -> Option<Tier> {
        self.hit(req, None, effects)
    }

    fn lookup_pinned(
        &mut self,
        req: &Request,
        pinned: &dyn Fn(Key) -> bool,
        effects: &mut Vec<Effect>,
    ) -> Option<Tier> {
        self.hit(req, Some(pinned), effects)
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
        if let Some(t) = self.hit(req, None, effects) {
            return Some(t);
        }
        self.admit_inner(req, None, effects);
        None
    }

    fn remove(&mut self, key: Key) -> bool {
        let Some(id) = self.map.remove(&key) else {
            return false;
        };
        self.unlink(id);
        self.slab.release(id);
        true
    }

    fn peek(&self, key: Key) -> Option<Tier> {
        self.map.get(&key).map(|&id| self.slab.get(id).tier)
    }

    fn used(&self, tier: Tier) -> u64 {
        self.used[tier.index()]
    }

    fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000; // one second in µs

    fn req(t: u64, key: Key, size: u64, cat: Option<CategoryId>) -> Request {
        Request {
            time_us: t,
            key,
            size,
            category: cat,
            image: None,
            prefetch: false,
        }
    }

    fn cfg() -> LaCacheConfig {
        LaCacheConfig {
            initial_lifetime_us: 100 * S,
            category_lifetimes_us: vec![(1, 10 * S)],
            ..Default::default()
        }
    }

    #[test]
    fn expired_objects_are_demoted_before_live_ones_of_another_category() {
        let mut p = LaCache::new(Capacity { fast: 2, slow: 10 }, cfg());
        let mut fx = Vec::new();
        p.access(&req(0, 1, 1, Some(0)), &mut fx); // lifetime 100 s
        p.access(&req(0, 2, 1, Some(1)), &mut fx); // lifetime 10 s
        fx.clear();
        // at 50 s: 1 is at half its lifetime, 2 at five times its: 2 goes, though equally old
        p.access(&req(50 * S, 3, 1, Some(0)), &mut fx);
        assert_eq!(fx[0], Effect::Demoted { key: 2, size: 1 });
        assert_eq!(p.peek(2), Some(Tier::Slow));
        assert_eq!(p.peek(1), Some(Tier::Fast));
        // the victim was expired, so no fill adaptation happened
        assert_eq!(p.lifetime_us(Some(1)), 10 * S);
    }

    #[test]
    fn the_name_carries_the_gate() {
        let named = |g| {
            let c = LaCacheConfig {
                fast_max_object: g,
                ..cfg()
            };
            LaCache::new(Capacity { fast: 1, slow: 1 }, c).name()
        };
        assert_eq!(named(LACACHE_DEFAULT_FAST_MAX_OBJECT), "lacache");
        assert_eq!(named(u64::MAX), "lacache:any");
        assert_eq!(named(64 << 20), "lacache:64MiB");
    }

    #[test]
    fn objects_above_the_size_gate_stay_in_the_slow_tier() {
        let gated = LaCacheConfig {
            fast_max_object: 4,
            ..cfg()
        };
        let mut p = LaCache::new(Capacity { fast: 10, slow: 20 }, gated);
        let mut fx = Vec::new();
        p.access(&req(0, 1, 3, Some(0)), &mut fx);
        p.access(&req(0, 2, 5, Some(0)), &mut fx); // above the gate, though the fast tier has room
        assert_eq!(p.peek(1), Some(Tier::Fast));
        assert_eq!(p.peek(2), Some(Tier::Slow));
        fx.clear();
        // a slow hit of a gated object is served from the slow tier and promotes nothing
        assert_eq!(p.access(&req(S, 2, 5, Some(0)), &mut fx), Some(Tier::Slow));
        assert!(fx.is_empty(), "no promotion or demotion: {fx:?}");
        assert_eq!(p.peek(2), Some(Tier::Slow));
        assert_eq!(p.used(Tier::Fast), 3);
        assert_eq!(p.used(Tier::Slow), 5);
        // without a gate the same object goes to the fast tier
        let mut any = LaCache::new(
            Capacity { fast: 10, slow: 20 },
            LaCacheConfig {
                fast_max_object: u64::MAX,
                ..cfg()
            },
        );
        any.access(&req(0, 2, 5, Some(0)), &mut fx);
        assert_eq!(any.peek(2), Some(Tier::Fast));
    }

    #[test]
    fn demoting_a_live_object_shortens_its_category_lifetime() {
        let mut p = LaCache::new(Capacity { fast: 1, slow: 10 }, cfg());
        let mut fx = Vec::new();
        p.access(&req(0, 1, 1, Some(0)), &mut fx);
        p.access(&req(20 * S, 2, 1, Some(0)), &mut fx); // 1 idle 20 s < 100 s: live victim
                                                        // 100 + 0.25 * (20 - 100) = 80 s
        assert_eq!(p.lifetime_us(Some(0)), 80 * S);
    }

    #[test]
    fn reuse_after_a_long_gap_lengthens_the_lifetime_and_promotes() {
        let mut p = LaCache::new(Capacity { fast: 1, slow: 10 }, cfg());
        let mut fx = Vec::new();
        p.access(&req(0, 1, 1, Some(1)), &mut fx);
        p.access(&req(30 * S, 2, 1, Some(1)), &mut fx); // 1 expired (30 s > 10 s): demoted
        assert_eq!(p.peek(1), Some(Tier::Slow));
        fx.clear();
        // 1 comes back 50 s after its last use: a slow hit after an early demotion
        assert_eq!(
            p.access(&req(50 * S, 1, 1, Some(1)), &mut fx),
            Some(Tier::Fast)
        );
        assert!(fx.contains(&Effect::Promoted { key: 1, size: 1 }));
        assert!(fx.contains(&Effect::Demoted { key: 2, size: 1 }));
        // 10 + 0.25 * (50 - 10) = 20 s
        assert_eq!(p.lifetime_us(Some(1)), 20 * S);
    }

    #[test]
    fn ghost_misses_adapt_and_slow_evictions_delete() {
        let mut p = LaCache::new(Capacity { fast: 1, slow: 1 }, cfg());
        let mut fx = Vec::new();
        p.access(&req(0, 1, 1, Some(1)), &mut fx);
        p.access(&req(20 * S, 2, 1, Some(1)), &mut fx); // 1 -> slow
        fx.clear();
        p.access(&req(40 * S, 3, 1, Some(1)), &mut fx); // 2 -> slow, 1 evicted from slow
        assert!(fx.contains(&Effect::Evicted {
            key: 1,
            tier: Tier::Slow,
            size: 1
        }));
        assert_eq!(p.peek(1), None);
        let before = p.lifetime_us(Some(1));
        assert_eq!(p.access(&req(100 * S, 1, 1, Some(1)), &mut fx), None);
        assert!(p.lifetime_us(Some(1)) > before);
    }

    #[test]
    fn prefetch_admissions_do_not_tune_lifetimes() {
        let mut p = LaCache::new(Capacity { fast: 1, slow: 10 }, cfg());
        let mut fx = Vec::new();
        p.access(&req(0, 1, 1, Some(0)), &mut fx);
        let mut r = req(20 * S, 2, 1, Some(0));
        r.prefetch = true;
        p.access(&r, &mut fx); // demotes live object 1, but as a prefetch: no adaptation
        assert_eq!(p.peek(1), Some(Tier::Slow));
        assert_eq!(p.lifetime_us(Some(0)), 100 * S);
    }

    #[test]
    fn a_slow_hit_stays_slow_when_pins_leave_no_room_in_memory() {
        let mut p = LaCache::new(Capacity { fast: 1, slow: 10 }, cfg());
        let mut fx = Vec::new();
        p.access(&req(0, 1, 1, None), &mut fx);
        p.access(&req(S, 2, 1, None), &mut fx); // 1 demoted
        fx.clear();
        // 2 is pinned (being served), so 1 cannot be promoted: a slow-tier hit, nothing moves
        assert_eq!(
            p.lookup_pinned(&req(2 * S, 1, 1, None), &|k| k == 2, &mut fx),
            Some(Tier::Slow)
        );
        assert!(fx.is_empty());
        assert_eq!(p.peek(2), Some(Tier::Fast));
        // unpinned, the next hit promotes it
        assert_eq!(
            p.lookup_pinned(&req(3 * S, 1, 1, None), &|_| false, &mut fx),
            Some(Tier::Fast)
        );
        assert_eq!(
            fx,
            vec![
                Effect::Demoted { key: 2, size: 1 },
                Effect::Promoted { key: 1, size: 1 }
            ]
        );
    }

    #[test]
    fn uncategorised_requests_use_the_default_category() {
        let mut p = LaCache::new(Capacity { fast: 1, slow: 10 }, cfg());
        let mut fx = Vec::new();
        p.access(&req(0, 1, 1, None), &mut fx);
        p.access(&req(20 * S, 2, 1, None), &mut fx);
        assert_eq!(p.lifetime_us(None), 80 * S);
        assert_eq!(p.lifetime_us(Some(0)), 100 * S);
    }

    #[test]
    fn large_objects_go_to_the_slow_tier() {
        let mut p = LaCache::new(Capacity { fast: 5, slow: 100 }, cfg());
        let mut fx = Vec::new();
        p.access(&req(0, 1, 50, None), &mut fx);
        assert_eq!(p.peek(1), Some(Tier::Slow));
        assert!(!p.admit(&req(0, 2, 101, None), &|_| false, &mut fx));
    }

    #[test]
    fn prefetch_announces_top_followers_once_and_never_cascades() {
        let table: AssociationTable = [
            (7, 8, 0.9),
            (7, 9, 0.6),
            (7, 10, 0.4),
            (7, 11, 0.7),
            (8, 12, 0.99),
        ]
        .into_iter()
        .collect();
        let mut p = LaCache::new(
            Capacity {
                fast: 100,
                slow: 100,
            },
            LaCacheConfig {
                associations: table,
                ..cfg()
            },
        );
        let mut fx = Vec::new();
        let mut r = req(0, 1, 1, None);
        r.image = Some(7);
        p.access(&r, &mut fx);
        let pre: Vec<_> = fx
            .iter()
            .filter(|e| matches!(e, Effect::Prefetch { .. }))
            .copied()
            .collect();
        assert_eq!(
            pre,
            vec![
                Effect::Prefetch {
                    image: 8,
                    probability: 0.9
                },
                Effect::Prefetch {
                    image: 11,
                    probability: 0.7
                },
            ]
        );
        // a second layer of the same pull announces nothing
        fx.clear();
        let mut r2 = req(S, 2, 1, None);
        r2.image = Some(7);
        p.access(&r2, &mut fx);
        assert!(fx.iter().all(|e| !matches!(e, Effect::Prefetch { .. })));
        // the prefetched image 8 has followers, but a prefetch request must not announce them
        fx.clear();
        let mut r3 = req(S, 3, 1, None);
        r3.image = Some(8);
        r3.prefetch = true;
        p.access(&r3, &mut fx);
        assert!(fx.iter().all(|e| !matches!(e, Effect::Prefetch { .. })));
        // after the window, a new pull of 7 announces again
        fx.clear();
        let mut r4 = req(120 * S, 1, 1, None);
        r4.image = Some(7);
        p.access(&r4, &mut fx);
        assert_eq!(
            fx.iter()
                .filter(|e| matches!(e, Effect::Prefetch { .. }))
                .count(),
            2
        );
    }

    #[test]
    fn association_table_keeps_order_and_replaces_pairs() {
        let mut t = AssociationTable::new();
        t.insert(1, 2, 0.5);
        t.insert(1, 3, 0.8);
        t.insert(1, 2, 0.9);
        t.insert(1, 4, f64::NAN);
        assert_eq!(t.followers(1), &[(2, 0.9), (3, 0.8), (4, 0.0)]);
        assert_eq!(t.followers(5), &[]);
        assert_eq!(t.len(), 3);
    }
}
