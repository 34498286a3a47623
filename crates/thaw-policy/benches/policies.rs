//! Requests per second through each policy on a Zipf-like synthetic trace with a 1 GiB cache —
//! the setting libCacheSim's throughput was measured in (issue 3) — so the numbers can be put side
//! by side. The trace is generated here: 1 M objects with log-uniform sizes from 512 B to 32 KiB
//! (about 7 GiB in all, so the cache holds roughly a seventh), 2 M requests drawn from Zipf(1.0)
//! ranks, keys scrambled so the hash maps see unordered ids. Each iteration replays the whole trace
//! through a policy that stays warm across iterations (steady state, as in a long simulation).
//!
//! Run: `cargo bench -p thaw-policy --bench policies`; throughput is in elements (= requests) per
//! second.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rustc_hash::FxHashMap;
use thaw_policy::dlist::{DList, NodeId};
use thaw_policy::testutil::{Rng, Zipf};
use thaw_policy::{build, Capacity, PolicySpec, Request};

const OBJECTS: usize = 1_000_000;
const REQUESTS: usize = 2_000_000;
const GIB: u64 = 1 << 30;

fn trace() -> Vec<Request> {
    let mut rng = Rng(42);
    let sizes: Vec<u64> = (0..OBJECTS).map(|_| rng.log_uniform(512, 32768)).collect();
    let keys: Vec<u64> = (0..OBJECTS).map(|_| rng.next_u64()).collect();
    let zipf = Zipf::new(OBJECTS, 1.0);
    (0..REQUESTS)
        .map(|t| {
            let r = zipf.sample(&mut rng);
            Request::new(t as u64 * 1000, keys[r], sizes[r])
        })
        .collect()
}

/// The textbook LRU (hash map + [`DList`], move-to-front on a hit), kept here only as the
/// baseline that justifies `Lru`'s lazy queue: same decisions, more scattered memory traffic.
struct LinkedLru {
    capacity: u64,
    used: u64,
    list: DList<(u64, u64)>,
    map: FxHashMap<u64, NodeId>,
}

impl LinkedLru {
    fn access(&mut self, r: &Request) -> bool {
        if let Some(&id) = self.map.get(&r.key) {
            self.list.move_to_front(id);
            return true;
        }
        if r.size > self.capacity {
            return false;
        }
        while self.used + r.size > self.capacity {
            let (k, s) = self.list.pop_back().expect("non-empty");
            self.map.remove(&k);
            self.used -= s;
        }
        let id = self.list.push_front((r.key, r.size));
        self.map.insert(r.key, id);
        self.used += r.size;
        false
    }
}

fn bench(c: &mut Criterion) {
    let reqs = trace();
    let mut group = c.benchmark_group("policies");
    group.throughput(Throughput::Elements(REQUESTS as u64));
    group.sample_size(10);
    for name in [
        "fifo",
        "lru",
        "clock",
        "lfu",
        "slru",
        "s3fifo",
        "sieve",
        "size-tiered-lru",
        "lacache",
    ] {
        let spec: PolicySpec = name.parse().unwrap();
        let cap = if spec.two_tier() {
            Capacity {
                fast: GIB,
                slow: 4 * GIB,
            }
        } else {
            Capacity::single(GIB)
        };
        let mut policy = build(&spec, cap).unwrap();
        let mut fx = Vec::with_capacity(64);
        // warm up to steady state before measuring
        for r in &reqs {
            fx.clear();
            policy.access(r, &mut fx);
        }
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut misses = 0u64;
                for r in &reqs {
                    fx.clear();
                    misses += policy.access(r, &mut fx).is_none() as u64;
                }
                black_box(misses)
            })
        });
    }
    let mut linked = LinkedLru {
        capacity: GIB,
        used: 0,
        list: DList::new(),
        map: FxHashMap::default(),
    };
    for r in &reqs {
        linked.access(r);
    }
    group.bench_function(
        BenchmarkId::from_parameter("lru-linked-list-baseline"),
        |b| b.iter(|| black_box(reqs.iter().filter(|r| !linked.access(r)).count())),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
