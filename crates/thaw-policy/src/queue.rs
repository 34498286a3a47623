//! The single-queue core shared by FIFO, LRU and each tier of the size-tiered baseline.
//!
//! LRU is kept as a *lazy* queue instead of a linked list: every object carries the stamp of its
//! last use, and the queue holds `(key, stamp)` records in stamp order. A hit does not unlink
//! anything; it gives the object a new stamp and appends a record, which makes the old record
//! stale. Eviction pops records from the front and skips stale ones (their stamp no longer
//! matches), so victims leave in exactly least-recently-used order — the same order a linked list
//! gives, and the same miss counts as libCacheSim's LRU.
//!
//! Why: a linked-list move-to-front touches four scattered nodes per hit (the object, its two
//! neighbours and the old head), and on a simulator replaying tens of millions of requests those
//! cache misses are the whole cost. Here a hit is one hash probe plus an append to a ring buffer.
//! Stale records are purged when they outnumber live ones three to one (amortised O(1) per hit),
//! so the queue stays within about four times the number of resident objects.
//!
//! FIFO is the same queue without re-stamping on a hit.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::slab::enough_unpinned;
use crate::{Effect, Key, Request, Tier};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Obj {
    pub(crate) key: Key,
    pub(crate) size: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    stamp: u64,
    size: u64,
}

/// One byte-bounded queue: objects enter at the back, victims leave from the front.
#[derive(Debug, Default)]
pub(crate) struct QueueCore {
    pub(crate) capacity: u64,
    pub(crate) used: u64,
    map: FxHashMap<Key, Slot>,
    /// `(key, stamp)` in stamp order, front = oldest; records whose stamp differs from the map's
    /// are stale.
    queue: VecDeque<(Key, u64)>,
    next_stamp: u64,
}

impl QueueCore {
    pub(crate) fn new(capacity: u64) -> QueueCore {
        QueueCore {
            capacity,
            ..Default::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    #[inline]
    pub(crate) fn contains(&self, key: Key) -> bool {
        self.map.contains_key(&key)
    }

    #[inline]
    fn is_live(map: &FxHashMap<Key, Slot>, key: Key, stamp: u64) -> bool {
        map.get(&key).is_some_and(|s| s.stamp == stamp)
    }

    #[inline]
    fn stamp(&mut self) -> u64 {
        let s = self.next_stamp;
        self.next_stamp += 1;
        s
    }

    /// Marks `key` as just used if resident; returns whether it was.
    #[inline]
    pub(crate) fn touch(&mut self, key: Key) -> bool {
        let stamp = self.next_stamp;
        match self.map.get_mut(&key) {
            Some(s) => {
                s.stamp = stamp;
                self.next_stamp += 1;
                self.queue.push_back((key, stamp));
                self.maybe_compact();
                true
            }
            None => false,
        }
    }

    #[inline]
    fn maybe_compact(&mut self) {
        // Purging reads every record's stamp from the map, so it is done rarely: with up to three
        // stale records per live one, a purge costs about 1.3 probes per hit that made a stale
        // record, at 16 bytes per record.
        if self.queue.len() > 4 * self.map.len() + 1024 {
            let map = &self.map;
            self.queue.retain(|&(k, st)| Self::is_live(map, k, st));
        }
    }

    fn live_oldest_first(&self) -> impl Iterator<Item = Obj> + '_ {
        self.queue.iter().filter_map(|&(key, st)| {
            self.map
                .get(&key)
                .filter(|s| s.stamp == st)
                .map(|s| Obj { key, size: s.size })
        })
    }

    pub(crate) fn keys_oldest_first(&self) -> impl Iterator<Item = Key> + '_ {
        self.live_oldest_first().map(|o| o.key)
    }

    /// Admits `req` at the back, evicting unpinned objects from the front. `pinned == None` means
    /// nothing is pinned (the simulator), which skips the pinned-bytes walk entirely. A pinned
    /// object met at the front is passed over and counts as just used (it is in use).
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
        self.admit_absent(req, pinned, tier, effects)
    }

    /// [`QueueCore::admit`] for a key the caller just found absent.
    #[inline]
    pub(crate) fn admit_absent(
        &mut self,
        req: &Request,
        pinned: Option<&dyn Fn(Key) -> bool>,
        tier: Tier,
        effects: &mut Vec<Effect>,
    ) -> bool {
        // libCacheSim's `cache_can_insert_default`: an object larger than the cache is a miss
        // that evicts nothing.
        if req.size > self.capacity {
            return false;
        }
        let need = (self.used + req.size).saturating_sub(self.capacity);
        if let Some(p) = pinned {
            if !enough_unpinned(self.live_oldest_first().map(|o| (o.key, o.size)), need, p) {
                return false;
            }
        }
        while self.used + req.size > self.capacity {
            let (key, st) = self
                .queue
                .pop_front()
                .expect("unpinned bytes were counted before evicting");
            let Some(&slot) = self.map.get(&key) else {
                continue;
            };
            if slot.stamp != st {
                continue;
            }
            if pinned.is_some_and(|p| p(key)) {
                let stamp = self.stamp();
                self.map.get_mut(&key).expect("live").stamp = stamp;
                self.queue.push_back((key, stamp));
                continue;
            }
            self.map.remove(&key);
            self.used -= slot.size;
            effects.push(Effect::Evicted {
                key,
                tier,
                size: slot.size,
            });
        }
        let stamp = self.stamp();
        self.map.insert(
            req.key,
            Slot {
                stamp,
                size: req.size,
            },
        );
        self.queue.push_back((req.key, stamp));
        self.used += req.size;
        effects.push(Effect::Inserted {
            key: req.key,
            tier,
            size: req.size,
        });
        true
    }

    /// Forgets `key`; its queue records become stale.
    pub(crate) fn remove(&mut self, key: Key) -> Option<Obj> {
        let s = self.map.remove(&key)?;
        self.used -= s.size;
        if self.map.is_empty() {
            self.queue.clear();
        } else {
            self.maybe_compact();
        }
        Some(Obj { key, size: s.size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_records_are_purged_and_order_is_kept() {
        let mut q = QueueCore::new(10);
        let mut fx = Vec::new();
        for k in 0..10 {
            q.admit(&Request::new(0, k, 1), None, Tier::Fast, &mut fx);
        }
        for i in 0..100_000u64 {
            q.touch(i % 10);
        }
        assert!(q.queue.len() <= 4 * 10 + 1025);
        q.touch(3);
        let order: Vec<Key> = q.keys_oldest_first().collect();
        assert_eq!(order, vec![0, 1, 2, 4, 5, 6, 7, 8, 9, 3]);
        fx.clear();
        q.admit(&Request::new(0, 99, 2), None, Tier::Fast, &mut fx);
        assert_eq!(
            fx[0],
            Effect::Evicted {
                key: 0,
                tier: Tier::Fast,
                size: 1
            }
        );
        assert_eq!(
            fx[1],
            Effect::Evicted {
                key: 1,
                tier: Tier::Fast,
                size: 1
            }
        );
    }

    #[test]
    fn removed_then_readmitted_keys_are_not_confused_with_old_records() {
        let mut q = QueueCore::new(3);
        let mut fx = Vec::new();
        for k in [1, 2, 3] {
            q.admit(&Request::new(0, k, 1), None, Tier::Fast, &mut fx);
        }
        q.remove(1);
        q.admit(&Request::new(0, 1, 1), None, Tier::Fast, &mut fx); // 1 is now the newest
        fx.clear();
        q.admit(&Request::new(0, 4, 1), None, Tier::Fast, &mut fx);
        assert_eq!(
            fx[0],
            Effect::Evicted {
                key: 2,
                tier: Tier::Fast,
                size: 1
            }
        );
        assert_eq!(q.keys_oldest_first().collect::<Vec<_>>(), vec![3, 1, 4]);
    }
}
