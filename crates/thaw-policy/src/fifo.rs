//! First in, first out.

use crate::queue::QueueCore;
use crate::{CachePolicy, Capacity, Effect, Key, Request, Tier};

/// FIFO over bytes: a hit changes nothing; victims leave in insertion order, skipping pinned
/// objects. Matches libCacheSim's `FIFO`.
#[derive(Debug, Default)]
pub struct Fifo {
    core: QueueCore,
}

impl Fifo {
    pub fn new(capacity: u64) -> Fifo {
        Fifo {
            core: QueueCore::new(capacity),
        }
    }

    /// Keys from oldest to newest.
    pub fn keys_oldest_first(&self) -> impl Iterator<Item = Key> + '_ {
        self.core.keys_oldest_first()
    }
}

impl CachePolicy for Fifo {
    fn name(&self) -> String {
        "fifo".into()
    }

    fn lookup(&mut self, req: &Request, _effects: &mut Vec<Effect>) -> Option<Tier> {
        self.core.contains(req.key).then_some(Tier::Fast)
    }

    fn admit(
        &mut self,
        req: &Request,
        pinned: &dyn Fn(Key) -> bool,
        effects: &mut Vec<Effect>,
    ) -> bool {
        self.core.admit(req, Some(pinned), Tier::Fast, effects)
    }

    fn access(&mut self, req: &Request, effects: &mut Vec<Effect>) -> Option<Tier> {
        if self.core.contains(req.key) {
            return Some(Tier::Fast);
        }
        self.core.admit_absent(req, None, Tier::Fast, effects);
        None
    }

    fn remove(&mut self, key: Key) -> bool {
        self.core.remove(key).is_some()
    }

    fn peek(&self, key: Key) -> Option<Tier> {
        self.core.contains(key).then_some(Tier::Fast)
    }

    fn used(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Fast => self.core.used,
            Tier::Slow => 0,
        }
    }

    fn capacity(&self) -> Capacity {
        Capacity::single(self.core.capacity)
    }

    fn len(&self) -> usize {
        self.core.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_do_not_reorder() {
        let mut p = Fifo::new(30);
        let mut fx = Vec::new();
        for k in [1, 2, 3] {
            assert_eq!(p.access(&Request::new(0, k, 10), &mut fx), None);
        }
        assert_eq!(p.access(&Request::new(0, 1, 10), &mut fx), Some(Tier::Fast));
        fx.clear();
        p.access(&Request::new(0, 4, 10), &mut fx);
        assert_eq!(
            fx[0],
            Effect::Evicted {
                key: 1,
                tier: Tier::Fast,
                size: 10
            }
        );
        assert_eq!(p.keys_oldest_first().collect::<Vec<_>>(), vec![2, 3, 4]);
    }
}
