//! S3-FIFO (Yang et al., SOSP '23), with libCacheSim's `S3FIFO` semantics and defaults.
//!
//! Three FIFO queues: *small* (10% of the bytes), *main* (the rest) and a *ghost* queue of keys
//! recently evicted from small (bounded by 90% of the capacity in the evicted objects' bytes; it
//! holds no data). Parameters are libCacheSim's defaults: `small-size-ratio=0.10`,
//! `ghost-size-ratio=0.90`, `move-to-main-threshold=2`.
//!
//! - A hit adds one to the object's counter (no data moves).
//! - A miss on a key found in the ghost queue inserts into main; any other miss inserts into small
//!   — except that until the first eviction ever, once small is full, new objects go to main.
//! - Room is made one eviction at a time: from main when main is over its share or small is empty,
//!   otherwise from small. Evicting from small: the tail moves to main (counter reset) when its
//!   counter reached the threshold, else it leaves the cache and its key enters the ghost queue.
//!   Evicting from main: a tail with a positive counter is reinserted at the head with the counter
//!   lowered (`min(freq, 3) - 1`); one with counter 0 leaves the cache.
//!
//! Two details copied on purpose because they change miss counts: an object may be admitted only
//! when it is no larger than small (`S3FIFO_can_insert`), yet one *exactly* as large as small
//! makes room first and is then not inserted (`S3FIFO_insert` tests `>=`); [`CachePolicy::admit`]
//! then returns false after reporting those evictions. And the ghost queue is searched (and the key
//! dropped from it) before the size check, so a refused object still leaves the ghost queue.

use rustc_hash::FxHashMap;

use crate::slab::{enough_unpinned, Idx, List, Slab};
use crate::{Effect, Key, OneTier, Pinned, Request, Tier};

pub const S3FIFO_SMALL_RATIO: f64 = 0.10;
pub const S3FIFO_GHOST_RATIO: f64 = 0.90;
pub const S3FIFO_MOVE_TO_MAIN_THRESHOLD: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
    Ghost,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    size: u64,
    freq: u32,
    queue: Queue,
}

#[derive(Debug, Default)]
struct Fifo {
    list: List,
    bytes: u64,
    capacity: u64,
}

#[derive(Debug)]
pub struct S3Fifo {
    capacity: u64,
    small: Fifo,
    main: Fifo,
    ghost: Fifo,
    /// Resident objects and ghosts share one map (a key is never both), so a request costs one
    /// hash lookup whatever queue it ends up touching.
    map: FxHashMap<Key, Idx>,
    slab: Slab<Entry>,
    resident: usize,
    /// Set by the first eviction ever; before it, a full small queue sends new objects to main.
    has_evicted: bool,
}

impl S3Fifo {
    pub fn new(capacity: u64) -> S3Fifo {
        // Same arithmetic as libCacheSim: `(int64_t)(cache_size * ratio)` in doubles.
        let small = (capacity as f64 * S3FIFO_SMALL_RATIO) as u64;
        let ghost = (capacity as f64 * S3FIFO_GHOST_RATIO) as u64;
        S3Fifo {
            capacity,
            small: Fifo {
                capacity: small,
                ..Default::default()
            },
            main: Fifo {
                capacity: capacity - small,
                ..Default::default()
            },
            ghost: Fifo {
                capacity: ghost,
                ..Default::default()
            },
            map: FxHashMap::default(),
            slab: Slab::default(),
            resident: 0,
            has_evicted: false,
        }
    }

    /// Bytes in the small and main queues and keys' bytes in the ghost queue.
    pub fn queue_bytes(&self) -> (u64, u64, u64) {
        (self.small.bytes, self.main.bytes, self.ghost.bytes)
    }

    fn used_bytes(&self) -> u64 {
        self.small.bytes + self.main.bytes
    }

    #[inline]
    fn hit(&mut self, key: Key) -> bool {
        match self.map.get(&key) {
            Some(&id) => {
                let e = self.slab.get_mut(id);
                if e.queue == Queue::Ghost {
                    return false;
                }
                e.freq = e.freq.saturating_add(1);
                true
            }
            None => false,
        }
    }

    fn fifo(&mut self, q: Queue) -> &mut Fifo {
        match q {
            Queue::Small => &mut self.small,
            Queue::Main => &mut self.main,
            Queue::Ghost => &mut self.ghost,
        }
    }

    fn push(&mut self, q: Queue, key: Key, size: u64, freq: u32) -> Idx {
        let id = self.slab.alloc(Entry {
            key,
            size,
            freq,
            queue: q,
        });
        let mut fifo = std::mem::take(self.fifo(q));
        self.slab.push_front(&mut fifo.list, id);
        fifo.bytes += size;
        *self.fifo(q) = fifo;
        self.map.insert(key, id);
        id
    }

    /// Unlinks `id` from its queue and frees its slot and map entry.
    fn drop_entry(&mut self, id: Idx) -> Entry {
        let e = *self.slab.get(id);
        let mut fifo = std::mem::take(self.fifo(e.queue));
        self.slab.unlink(&mut fifo.list, id);
        fifo.bytes -= e.size;
        *self.fifo(e.queue) = fifo;
        self.slab.release(id);
        self.map.remove(&e.key);
        e
    }

    /// Moves `id` to the head of `to` with counter `freq`. libCacheSim removes the object and
    /// inserts a copy; relinking the same slot gives the same order without touching the map.
    fn requeue(&mut self, id: Idx, to: Queue, freq: u32) {
        let e = *self.slab.get(id);
        let mut from = std::mem::take(self.fifo(e.queue));
        self.slab.unlink(&mut from.list, id);
        from.bytes -= e.size;
        *self.fifo(e.queue) = from;
        let mut dest = std::mem::take(self.fifo(to));
        self.slab.push_front(&mut dest.list, id);
        dest.bytes += e.size;
        *self.fifo(to) = dest;
        let e = self.slab.get_mut(id);
        e.queue = to;
        e.freq = freq;
    }

    /// `ghost_fifo->get`: a byte-bounded FIFO of keys.
    fn remember_ghost(&mut self, key: Key, size: u64) {
        if self.ghost.capacity == 0 || size > self.ghost.capacity {
            return;
        }
        while self.ghost.bytes + size > self.ghost.capacity {
            let tail = self
                .ghost
                .list
                .back()
                .expect("ghost bytes imply ghost entries");
            self.drop_entry(tail);
        }
        self.push(Queue::Ghost, key, size, 0);
    }

    fn evict_out(&mut self, id: Idx, effects: &mut Vec<Effect>) -> Entry {
        let e = self.drop_entry(id);
        self.resident -= 1;
        effects.push(Effect::Evicted {
            key: e.key,
            tier: Tier::Fast,
            size: e.size,
        });
        e
    }

    fn evict_small(&mut self, pinned: Pinned<'_>, effects: &mut Vec<Effect>) {
        while self.small.bytes > 0 {
            let id = self
                .small
                .list
                .back()
                .expect("small bytes imply small entries");
            let e = *self.slab.get(id);
            // A pinned object is in use, so treating it as hot (moving it to main) is both
            // harmless and what keeps the loop moving.
            if e.freq >= S3FIFO_MOVE_TO_MAIN_THRESHOLD || pinned.is_some_and(|p| p(e.key)) {
                self.requeue(id, Queue::Main, 0);
            } else {
                self.evict_out(id, effects);
                self.remember_ghost(e.key, e.size);
                return;
            }
        }
    }

    /// Returns false only with pins, when a whole round of main found nothing unpinned.
    fn evict_main(&mut self, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        let mut pinned_seen = 0usize;
        while self.main.bytes > 0 {
            let id = self
                .main
                .list
                .back()
                .expect("main bytes imply main entries");
            let e = *self.slab.get(id);
            if pinned.is_some_and(|p| p(e.key)) {
                pinned_seen += 1;
                if pinned_seen > self.main.list.len() {
                    return false;
                }
                self.slab.move_to_front(&mut self.main.list, id);
            } else if e.freq >= 1 {
                self.requeue(id, Queue::Main, e.freq.min(3) - 1);
            } else {
                self.evict_out(id, effects);
                return true;
            }
        }
        true
    }

    fn evict(&mut self, pinned: Pinned<'_>, effects: &mut Vec<Effect>) {
        self.has_evicted = true;
        if self.main.bytes > self.main.capacity || self.small.bytes == 0 {
            if !self.evict_main(pinned, effects) {
                self.evict_small(pinned, effects);
            }
        } else {
            self.evict_small(pinned, effects);
        }
    }

    /// Admission of a non-resident key; `ghost` is its ghost entry, if it has one.
    fn admit_found(
        &mut self,
        req: &Request,
        ghost: Option<Idx>,
        pinned: Pinned<'_>,
        effects: &mut Vec<Effect>,
    ) -> bool {
        // A ghost hit takes the key out of the ghost queue at once (libCacheSim does it in
        // `S3FIFO_find`, before anything else). Its slot and map entry are kept, detached from
        // every queue, to become the main-queue entry below: one hash update fewer per ghost hit.
        if let Some(id) = ghost {
            let size = self.slab.get(id).size;
            self.slab.unlink(&mut self.ghost.list, id);
            self.ghost.bytes -= size;
        }
        let refuse = |this: &mut Self| {
            if let Some(id) = ghost {
                this.slab.release(id);
                this.map.remove(&req.key);
            }
            false
        };
        if req.size > self.small.capacity || req.size > self.capacity {
            return refuse(self);
        }
        let need = (self.used_bytes() + req.size).saturating_sub(self.capacity);
        if let Some(p) = pinned {
            let all = self
                .slab
                .iter_from_back(&self.small.list)
                .chain(self.slab.iter_from_back(&self.main.list))
                .map(|(_, e)| (e.key, e.size));
            if !enough_unpinned(all, need, p) {
                return refuse(self);
            }
        }
        while self.used_bytes() + req.size > self.capacity {
            self.evict(pinned, effects);
        }
        if let Some(id) = ghost {
            *self.slab.get_mut(id) = Entry {
                key: req.key,
                size: req.size,
                freq: 0,
                queue: Queue::Main,
            };
            self.slab.push_front(&mut self.main.list, id);
            self.main.bytes += req.size;
        } else {
            let queue = if req.size >= self.small.capacity {
                return false;
            } else if !self.has_evicted && self.small.bytes >= self.small.capacity {
                Queue::Main
            } else {
                Queue::Small
            };
            self.push(queue, req.key, req.size, 0);
        }
        self.resident += 1;
        effects.push(Effect::Inserted {
            key: req.key,
            tier: Tier::Fast,
            size: req.size,
        });
        true
    }
}

impl OneTier for S3Fifo {
    fn policy_name(&self) -> String {
        "s3fifo".into()
    }

    #[inline]
    fn touch(&mut self, key: Key, _pinned: Pinned<'_>, _effects: &mut Vec<Effect>) -> bool {
        self.hit(key)
    }

    fn resident(&self, key: Key) -> bool {
        self.map
            .get(&key)
            .is_some_and(|&id| self.slab.get(id).queue != Queue::Ghost)
    }

    fn insert(&mut self, req: &Request, pinned: Pinned<'_>, effects: &mut Vec<Effect>) -> bool {
        // the key may still be in the map as a ghost, which admission must see
        let found = self.map.get(&req.key).copied();
        self.admit_found(req, found, pinned, effects)
    }

    #[inline]
    fn touch_or_insert(&mut self, req: &Request, effects: &mut Vec<Effect>) -> bool {
        // one hash probe decides hit, ghost hit or plain miss
        let found = self.map.get(&req.key).copied();
        if let Some(id) = found {
            let e = self.slab.get_mut(id);
            if e.queue != Queue::Ghost {
                e.freq = e.freq.saturating_add(1);
                return true;
            }
        }
        self.admit_found(req, found, None, effects);
        false
    }

    fn remove_key(&mut self, key: Key) -> bool {
        let Some(&id) = self.map.get(&key) else {
            return false;
        };
        let e = self.drop_entry(id);
        if e.queue == Queue::Ghost {
            return false;
        }
        self.resident -= 1;
        true
    }

    fn bytes(&self) -> u64 {
        self.used_bytes()
    }

    fn bytes_capacity(&self) -> u64 {
        self.capacity
    }

    fn objects(&self) -> usize {
        self.resident
    }
}

#[cfg(test)]
mod tests {
    use crate::CachePolicy;
    use super::*;

    fn run(p: &mut S3Fifo, keys: &[u64], size: u64) -> Vec<bool> {
        let mut fx = Vec::new();
        keys.iter()
            .map(|&k| p.access(&Request::new(0, k, size), &mut fx).is_some())
            .collect()
    }

    #[test]
    fn one_hit_wonders_leave_through_small_and_come_back_to_main() {
        let mut p = S3Fifo::new(100); // small 10, main 90, ghost 90
        run(&mut p, &[1], 5);
        run(&mut p, &[2], 5); // small full (10)
                              // before any eviction, a full small sends new objects to main
        run(&mut p, &[3], 5);
        assert_eq!(p.queue_bytes(), (10, 5, 0));
        // fill main up to the capacity, then one more: main is not over its share and small is
        // not empty, so small's tail (1, never hit) leaves and its key enters the ghost queue
        for k in 4..=20 {
            run(&mut p, &[k], 5);
        }
        assert_eq!(p.used(Tier::Fast), 100);
        run(&mut p, &[21], 5);
        assert_eq!(p.peek(1), None);
        assert_eq!(p.queue_bytes().2, 5);
        // 1 again: a ghost hit, so a miss that goes to main; making room sends 2 to the ghost
        assert_eq!(run(&mut p, &[1], 5), vec![false]);
        assert_eq!(p.slab.get(p.map[&1]).queue, Queue::Main);
        assert_eq!(p.slab.get(p.map[&2]).queue, Queue::Ghost);
        assert_eq!(p.peek(2), None);
        assert_eq!(p.queue_bytes().2, 5);
    }

    #[test]
    fn objects_as_large_as_small_evict_but_are_not_inserted() {
        let mut p = S3Fifo::new(100);
        run(&mut p, &(1..=20).collect::<Vec<_>>(), 5);
        assert_eq!(p.used(Tier::Fast), 100);
        let mut fx = Vec::new();
        assert!(!p.admit(&Request::new(0, 99, 10), &|_| false, &mut fx));
        assert!(fx.iter().any(|e| matches!(e, Effect::Evicted { .. })));
        assert_eq!(p.peek(99), None);
        // larger than small: refused before anything happens
        fx.clear();
        assert!(!p.admit(&Request::new(0, 98, 11), &|_| false, &mut fx));
        assert!(fx.is_empty());
    }

    #[test]
    fn frequent_objects_survive_in_main() {
        let mut p = S3Fifo::new(100);
        // 1 is hit twice while in small, so it moves to main instead of the ghost
        run(&mut p, &[1, 1, 1], 5);
        for k in 2..200 {
            run(&mut p, &[k], 5);
            assert_eq!(run(&mut p, &[1], 5), vec![true]);
        }
        assert_eq!(p.peek(1), Some(Tier::Fast));
    }
}
