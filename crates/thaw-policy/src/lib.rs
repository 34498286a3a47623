//! Cache policies as plain data structures.
//!
//! Architecture invariant: this crate does no I/O and knows nothing of files, HTTP or clocks. The
//! live store (`thaw-store`) and the trace simulator (`thaw-trace`) drive the very same
//! [`CachePolicy`] objects, so a simulation result is a prediction of the live cache.
//!
//! # The protocol
//!
//! A cache access (see `thaw_record` for which requests count) is two calls:
//!
//! 1. [`CachePolicy::lookup`]: is the object resident? On a hit the policy updates its own state
//!    (recency, frequency, promotion between tiers) and says which tier holds the object.
//! 2. On a miss, once the caller has the object (the simulator at once; the live store after the
//!    download was verified and made durable), [`CachePolicy::admit`]: the policy makes room by
//!    evicting or demoting victims and records the object. It refuses objects that cannot fit —
//!    larger than the cache, or when pinned objects leave too little room — and the caller then
//!    serves the object without caching it.
//!
//! What the policy decides is reported as [`Effect`]s, which the store turns into file operations
//! and the simulator into counters. Pinned objects (being served, or in use by a sandbox) are never
//! chosen as victims: `admit` and [`CachePolicy::lookup_pinned`] (a hit can evict in some
//! policies) take a predicate that tells which keys are pinned; the simulator passes one that pins
//! nothing, so both run the same code. [`CachePolicy::access`] is the simulator's shortcut for
//! "lookup, then admit with nothing pinned"; policies override it with a faster path whose
//! decisions the conformance suite checks to be identical.
//!
//! # Policies
//!
//! | name (command line)            | type              | tiers | reference                        |
//! |--------------------------------|-------------------|-------|----------------------------------|
//! | `fifo`                         | [`Fifo`]          | 1     | libCacheSim `FIFO`, exact        |
//! | `lru`                          | [`Lru`]           | 1     | libCacheSim `LRU`, exact         |
//! | `clock`, `clock:BITS`          | [`Clock`]         | 1     | libCacheSim `Clock`, exact       |
//! | `lfu`                          | [`Lfu`]           | 1     | libCacheSim `LFU`, exact         |
//! | `slru`, `slru:SEGMENTS`        | [`Slru`]          | 1     | libCacheSim `SLRU`, exact        |
//! | `s3fifo`                       | [`S3Fifo`]        | 1     | libCacheSim `S3FIFO`, exact      |
//! | `sieve`                        | [`Sieve`]         | 1     | libCacheSim `Sieve`, exact       |
//! | `size-tiered-lru[:THRESHOLD]`  | [`SizeTieredLru`] | 2     | the registry papers' "SLRU"      |
//! | `lacache`                      | [`LaCache`]       | 2     | the LACache paper, see its module |
//!
//! [`build`] makes one from a [`PolicySpec`]; `lacache` built that way has no association table,
//! so to prefetch use [`build_with_associations`], or [`LaCache::new`] with a full
//! [`LaCacheConfig`].
//!
//! # Conventions (shared with libCacheSim, the reference implementation)
//!
//! Capacities and sizes are bytes. The single-tier policies (`fifo`, `lru`, `clock`, `lfu`,
//! `slru`, `s3fifo`, `sieve`) reproduce libCacheSim 0.3.5's miss counts exactly; the integration
//! test `tests/libcachesim.rs` runs both on the same traces. What that took, read from
//! libCacheSim's C sources (`cache_get_base`, `cache_can_insert_default`, and each policy's
//! find/insert/evict):
//!
//! - **Objects larger than the cache** (`size > capacity`; libCacheSim adds `obj_md_size`, which is
//!   0 unless object metadata is requested) are misses that evict nothing and are not inserted.
//!   Some policies refuse more: SLRU anything larger than one segment's quota, S3-FIFO anything
//!   larger than its small queue (and see [`S3Fifo`] for the object exactly as large as small).
//! - **Zero-size objects** are admitted, occupy no bytes, and take part in the replacement order
//!   like any other object (evicting one frees nothing, so eviction goes on to the next victim).
//!   Note that libCacheSim's trace *readers* drop zero-size requests by default
//!   (`ignore_size_zero_req`), so its reported request and miss counts leave them out; the
//!   simulator must drop them too when it wants to print the same totals as libCacheSim's tools.
//! - **Size changes** of a resident object are ignored on a hit: the size recorded at insertion
//!   stays, as in libCacheSim.
//! - **Time** plays no part in these policies (the PyPI build of libCacheSim does not define
//!   `SUPPORT_TTL`), and the `next access` field of oracleGeneral records is not used (its
//!   `USE_BELADY` variants, which skip updates for objects never requested again, are not compiled
//!   in either: the test writes real next-access values and -1 and still agrees).
//!
//! # Two tiers
//!
//! `size-tiered-lru` and `lacache` manage a fast and a slow tier ([`Capacity`]); see their modules.
//! Hits on either may move objects between tiers and, through cascades, evict; such policies
//! override [`CachePolicy::lookup_pinned`], which the live store should call instead of `lookup`.

mod bytes;
mod clock;
#[doc(hidden)]
pub mod dlist;
mod lacache;
mod lfu;
mod listcache;
mod lru;
mod queue;
mod s3fifo;
mod sieve;
mod single;
mod size_tiered;
mod slab;
mod slru;
mod spec;
#[doc(hidden)]
pub mod testutil;

pub use bytes::{parse_bytes, ByteSizeError};
pub use clock::{Clock, CLOCK_MAX_BITS};
pub use lacache::{
    AssociationTable, LaCache, LaCacheConfig, DEFAULT_CATEGORY_SLOT,
    LACACHE_DEFAULT_FAST_MAX_OBJECT,
};
pub use lfu::Lfu;
pub use lru::{Fifo, Lru, QueuePolicy};
pub use s3fifo::{S3Fifo, S3FIFO_GHOST_RATIO, S3FIFO_MOVE_TO_MAIN_THRESHOLD, S3FIFO_SMALL_RATIO};
pub use sieve::Sieve;
pub use single::{OneTier, Pinned};
pub use size_tiered::{SizeTieredLru, SIZE_TIERED_DEFAULT_THRESHOLD};
pub use slru::{Slru, SLRU_MAX_SEGMENTS};
pub use spec::{
    build, build_with_associations, PolicyError, PolicySpec, POLICY_NAMES,
    POLICY_SYNTAX, SLRU_DEFAULT_SEGMENTS,
};

/// An object's identity inside a policy: a hash of its digest (store) or the trace's object id.
pub type Key = u64;

/// A service category (web, ML, IoT, ...), as an index into the caller's category table.
pub type CategoryId = u16;

/// An image's identity (hash of repository and tag, or the trace's image id).
pub type ImageId = u64;

/// Where a resident object lives. Single-tier policies use only [`Tier::Fast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// The upper tier: memory or a fast SSD.
    Fast,
    /// The lower tier: a slower, larger disk.
    Slow,
}

impl Tier {
    pub const ALL: [Tier; 2] = [Tier::Fast, Tier::Slow];

    pub fn index(self) -> usize {
        match self {
            Tier::Fast => 0,
            Tier::Slow => 1,
        }
    }
}

/// One cache access as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Microseconds since an arbitrary epoch; only differences matter.
    pub time_us: u64,
    pub key: Key,
    /// Object size in bytes.
    pub size: u64,
    /// The service category of the object's repository, when the trace or store knows it.
    pub category: Option<CategoryId>,
    /// The image this access belongs to (layers of one pull share it), when known.
    pub image: Option<ImageId>,
    /// True when the access is a prefetch the caller made on a policy's hint, not a client's.
    pub prefetch: bool,
}

impl Request {
    /// A plain request with no category, image or prefetch flag.
    pub fn new(time_us: u64, key: Key, size: u64) -> Request {
        Request {
            time_us,
            key,
            size,
            category: None,
            image: None,
            prefetch: false,
        }
    }
}

/// A decision the policy made, for the caller to carry out or count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// `key` now lives in `tier`.
    Inserted { key: Key, tier: Tier, size: u64 },
    /// `key` left the cache entirely.
    Evicted { key: Key, tier: Tier, size: u64 },
    /// `key` moved from the fast tier to the slow tier instead of being evicted.
    Demoted { key: Key, size: u64 },
    /// `key` moved from the slow tier to the fast tier.
    Promoted { key: Key, size: u64 },
    /// The policy expects `image` to be pulled soon (with this probability); the caller may fetch
    /// its layers ahead of time and admit them with [`Request::prefetch`] set.
    Prefetch { image: ImageId, probability: f64 },
}

/// The byte capacity of each tier. A single-tier policy has `slow == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub fast: u64,
    pub slow: u64,
}

impl Capacity {
    pub fn single(bytes: u64) -> Capacity {
        Capacity {
            fast: bytes,
            slow: 0,
        }
    }

    pub fn of(self, tier: Tier) -> u64 {
        match tier {
            Tier::Fast => self.fast,
            Tier::Slow => self.slow,
        }
    }

    pub fn total(self) -> u64 {
        self.fast + self.slow
    }
}

/// A cache replacement policy. See the crate docs for the protocol.
pub trait CachePolicy: Send {
    /// The name it is selected by on the command line (`lru`, `sieve`, `slru:4`, ...).
    fn name(&self) -> String;

    /// Looks `req.key` up. On a hit, updates the policy's state and returns the tier holding the
    /// object (after any promotion, which is reported in `effects`).
    fn lookup(&mut self, req: &Request, effects: &mut Vec<Effect>) -> Option<Tier>;

    /// [`CachePolicy::lookup`] for a caller that pins objects (the live store). Policies whose hits
    /// can evict (segmented LRU's demotion cascade, the two-tier policies' promotions) override it
    /// so that pinned objects are never chosen; for the others it is `lookup`.
    fn lookup_pinned(
        &mut self,
        req: &Request,
        pinned: &dyn Fn(Key) -> bool,
        effects: &mut Vec<Effect>,
    ) -> Option<Tier> {
        let _ = pinned;
        self.lookup(req, effects)
    }

    /// Admits `req.key` after a miss, evicting or demoting unpinned victims to make room. Returns
    /// false when the object is not admitted (larger than the cache, or pinned objects leave too
    /// little room); the caller then serves it uncached. A refusal evicts nothing, with one
    /// exception kept for exact agreement with libCacheSim: S3-FIFO makes room for an object
    /// exactly as large as its small queue and then does not insert it. Always apply `effects`,
    /// whatever the return value. Admitting a key that is already resident is a no-op that
    /// returns true.
    fn admit(
        &mut self,
        req: &Request,
        pinned: &dyn Fn(Key) -> bool,
        effects: &mut Vec<Effect>,
    ) -> bool;

    /// Forgets `key` (deleted from outside: failed verification, garbage collection). Returns
    /// whether it was resident.
    fn remove(&mut self, key: Key) -> bool;

    /// Where `key` lives, without touching the policy's state.
    fn peek(&self, key: Key) -> Option<Tier>;

    /// Bytes held in `tier`.
    fn used(&self, tier: Tier) -> u64;

    /// The capacity the policy was built with.
    fn capacity(&self) -> Capacity;

    /// Number of resident objects (all tiers).
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A whole access as the simulator makes it: lookup, and on a miss admit with nothing pinned.
    /// Returns the tier of a hit, or `None` for a miss.
    fn access(&mut self, req: &Request, effects: &mut Vec<Effect>) -> Option<Tier> {
        if let Some(tier) = self.lookup(req, effects) {
            return Some(tier);
        }
        self.admit(req, &|_| false, effects);
        None
    }
}

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
mod models;
