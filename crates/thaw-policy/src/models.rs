//! Textbook models of the libCacheSim-compatible policies, written as plainly as possible (vectors
//! and linear scans), and property tests that the real policies decide exactly like them. The
//! integration test against libCacheSim needs Python; these run everywhere and pin the same
//! semantics (each model states the rule it implements in one line).

use proptest::prelude::*;

use crate::{CachePolicy, Clock, Fifo, Lfu, Request, Sieve};

trait Model {
    /// Returns whether the access was a hit.
    fn access(&mut self, key: u64, size: u64) -> bool;
}

/// FIFO: victims in insertion order; hits change nothing.
struct FifoModel {
    cap: u64,
    q: Vec<(u64, u64)>, // index 0 = oldest
}

impl Model for FifoModel {
    fn access(&mut self, key: u64, size: u64) -> bool {
        if self.q.iter().any(|e| e.0 == key) {
            return true;
        }
        if size <= self.cap {
            while self.q.iter().map(|e| e.1).sum::<u64>() + size > self.cap {
                self.q.remove(0);
            }
            self.q.push((key, size));
        }
        false
    }
}

/// CLOCK, libCacheSim style: a hit raises a saturating counter; the oldest object is evicted if its
/// counter is 0, else it loses one and becomes the newest.
struct ClockModel {
    cap: u64,
    max: u32,
    q: Vec<(u64, u64, u32)>, // index 0 = oldest
}

impl Model for ClockModel {
    fn access(&mut self, key: u64, size: u64) -> bool {
        if let Some(e) = self.q.iter_mut().find(|e| e.0 == key) {
            e.2 = (e.2 + 1).min(self.max);
            return true;
        }
        if size <= self.cap {
            while self.q.iter().map(|e| e.1).sum::<u64>() + size > self.cap {
                let mut e = self.q.remove(0);
                if e.2 > 0 {
                    e.2 -= 1;
                    self.q.push(e);
                }
            }
            self.q.push((key, size, 0));
        }
        false
    }
}

/// SIEVE: a hand moves from old to new, clearing visited bits, evicts the first unvisited object
/// and stays where it stopped; new objects join at the new end.
struct SieveModel {
    cap: u64,
    q: Vec<(u64, u64, bool)>, // index 0 = oldest
    hand: Option<usize>,
}

impl Model for SieveModel {
    fn access(&mut self, key: u64, size: u64) -> bool {
        if let Some(e) = self.q.iter_mut().find(|e| e.0 == key) {
            e.2 = true;
            return true;
        }
        if size <= self.cap {
            while self.q.iter().map(|e| e.1).sum::<u64>() + size > self.cap {
                let mut i = self.hand.unwrap_or(0);
                while self.q[i].2 {
                    self.q[i].2 = false;
                    i = if i + 1 == self.q.len() { 0 } else { i + 1 };
                }
                self.q.remove(i);
                self.hand = (i < self.q.len()).then_some(i);
            }
            self.q.push((key, size, false));
        }
        false
    }
}

/// LFU: evict the lowest frequency, among those the one that reached its frequency first.
struct LfuModel {
    cap: u64,
    tick: u64,
    objs: Vec<(u64, u64, u64, u64)>, // key, size, freq, tick when the freq was reached
}

impl Model for LfuModel {
    fn access(&mut self, key: u64, size: u64) -> bool {
        self.tick += 1;
        if let Some(e) = self.objs.iter_mut().find(|e| e.0 == key) {
            e.2 += 1;
            e.3 = self.tick;
            return true;
        }
        if size <= self.cap {
            while self.objs.iter().map(|e| e.1).sum::<u64>() + size > self.cap {
                let (i, _) = self
                    .objs
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| (e.2, e.3))
                    .unwrap();
                self.objs.remove(i);
            }
            self.objs.push((key, size, 1, self.tick));
        }
        false
    }
}

fn same(
    policy: &mut dyn CachePolicy,
    model: &mut dyn Model,
    reqs: &[(u64, u64)],
) -> Result<(), TestCaseError> {
    let mut fx = Vec::new();
    for (i, &(k, s)) in reqs.iter().enumerate() {
        let hit = policy.access(&Request::new(0, k, s), &mut fx).is_some();
        prop_assert_eq!(
            hit,
            model.access(k, s),
            "{}: request {} (key {}, size {}) decided differently",
            policy.name(),
            i,
            k,
            s
        );
    }
    Ok(())
}

fn trace() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..30, 0u64..40), 1..500)
}

proptest! {
    #[test]
    fn fifo_is_the_textbook_fifo(reqs in trace(), cap in 1u64..200) {
        same(&mut Fifo::new(cap), &mut FifoModel { cap, q: vec![] }, &reqs)?;
    }

    #[test]
    fn clock_is_the_textbook_clock(reqs in trace(), cap in 1u64..200, bits in 1u32..4) {
        same(&mut Clock::new(cap, bits), &mut ClockModel { cap, max: (1 << bits) - 1, q: vec![] }, &reqs)?;
    }

    #[test]
    fn sieve_is_the_textbook_sieve(reqs in trace(), cap in 1u64..200) {
        same(&mut Sieve::new(cap), &mut SieveModel { cap, q: vec![], hand: None }, &reqs)?;
    }

    #[test]
    fn lfu_is_the_textbook_lfu(reqs in trace(), cap in 1u64..200) {
        same(&mut Lfu::new(cap), &mut LfuModel { cap, tick: 0, objs: vec![] }, &reqs)?;
    }
}
