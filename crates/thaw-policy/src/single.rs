//! The part of [`CachePolicy`] every one-tier policy shares.
//!
//! A one-tier policy keeps everything in the fast tier and nothing in the slow one, never
//! demotes or promotes, and answers `peek`, `used` and `capacity` the same way. What differs
//! between FIFO, LRU, CLOCK, SIEVE, LFU, segmented LRU and S3-FIFO is only what a hit does, how an
//! absent object is admitted (which victims go) and how a removal unlinks it. [`OneTier`] is that
//! difference; the blanket implementation below turns any [`OneTier`] into a [`CachePolicy`], so
//! the tier bookkeeping is written once. It is public so that a new one-tier policy needs only
//! these methods.

use crate::{CachePolicy, Capacity, Effect, Key, Request, Tier};

/// Objects that must not be evicted right now (in use by a reader), if the caller has any.
pub type Pinned<'a> = Option<&'a dyn Fn(Key) -> bool>;

/// A policy with a single (fast) tier; see the module docs.
pub trait OneTier: Send {
    /// The policy's name as `PolicySpec` prints it.
    fn policy_name(&self) -> String;

    /// Records a hit of `key` and returns true, or returns false when `key` is not resident.
    /// Policies whose hits can evict (segmented LRU moving an object up) honour `pinned`.
    fn touch(&mut self, key: Key, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool;

    /// Whether `key` is resident.
    fn resident(&self, key: Key) -> bool;

    /// Admits `req`, whose key is not resident, evicting unpinned victims as needed; false
    /// when it cannot be admitted (larger than the cache, or pins leave no room).
    fn insert(&mut self, req: &Request, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool;

    /// Removes `key`; false when it was not resident.
    fn remove_key(&mut self, key: Key) -> bool;

    /// Bytes resident.
    fn bytes(&self) -> u64;

    /// Capacity in bytes.
    fn bytes_capacity(&self) -> u64;

    /// Objects resident.
    fn objects(&self) -> usize;

    /// A lookup followed, on a miss, by an admission. Policies whose map entry already tells
    /// hit from miss (S3-FIFO's ghosts) override it to probe the map once.
    #[inline]
    fn touch_or_insert(&mut self, req: &Request, effects: &mut Vec<Effect>) -> bool {
        if self.touch(req.key, None, effects) {
            return true;
        }
        self.insert(req, None, effects);
        false
    }
}

impl<P: OneTier> CachePolicy for P {
    fn name(&self) -> String {
        self.policy_name()
    }

    #[inline]
    fn lookup(&mut self, req: &Request, effects: &mut Vec<Effect>) -> Option<Tier> {
        self.touch(req.key, None, effects).then_some(Tier::Fast)
    }

    fn lookup_pinned(
        &mut self,
        req: &Request,
        pinned: &dyn Fn(Key) -> bool,
        effects: &mut Vec<Effect>,
    ) -> Option<Tier> {
        self.touch(req.key, Some(pinned), effects)
            .then_some(Tier::Fast)
    }

    fn admit(
        &mut self,
        req: &Request,
        pinned: &dyn Fn(Key) -> bool,
        effects: &mut Vec<Effect>,
    ) -> bool {
        if self.resident(req.key) {
            return true;
        }
        self.insert(req, Some(pinned), effects)
    }

    #[inline]
    fn access(&mut self, req: &Request, effects: &mut Vec<Effect>) -> Option<Tier> {
        self.touch_or_insert(req, effects).then_some(Tier::Fast)
    }

    fn remove(&mut self, key: Key) -> bool {
        self.remove_key(key)
    }

    fn peek(&self, key: Key) -> Option<Tier> {
        self.resident(key).then_some(Tier::Fast)
    }

    fn used(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Fast => self.bytes(),
            Tier::Slow => 0,
        }
    }

    fn capacity(&self) -> Capacity {
        Capacity::single(self.bytes_capacity())
    }

    fn len(&self) -> usize {
        self.objects()
    }
}
