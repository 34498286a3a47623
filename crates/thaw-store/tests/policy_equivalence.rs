//! The live store and a bare policy, fed the same requests, make the same decisions: a
//! simulation with thaw-policy predicts the live cache (one tier, no prefetch, nothing pinned).

mod common;

use common::{blob, put, scratch};
use proptest::prelude::*;
use thaw_oci::Digest;
use thaw_policy::{build, Capacity, PolicySpec, Request, POLICY_NAMES};
use thaw_store::{BlobStore, Committed, StoreConfig};

/// Hit/miss per request, and the keys resident at the end.
type Outcome = (Vec<bool>, Vec<u64>);

/// Replays `trace` (object number, size) through a store and through the policy's own `access`
/// loop, and returns both hit/miss sequences and the final resident sets.
fn replay(spec: &PolicySpec, capacity: u64, trace: &[(u64, usize)]) -> (Outcome, Outcome) {
    let dir = scratch();
    let store = BlobStore::open(dir.path(), StoreConfig { capacity: Some(capacity), policy: spec.clone() }).unwrap();
    let mut policy = build(spec, Capacity::single(capacity)).unwrap();
    let mut fx = Vec::new();
    let (mut store_hits, mut sim_hits) = (Vec::new(), Vec::new());
    let mut keys = std::collections::BTreeMap::new();
    for (t, &(n, size)) in trace.iter().enumerate() {
        let data = blob(n, size);
        let d = Digest::sha256_of(&data);
        keys.insert(d.key64(), d.clone());

        // the live store: a hit is a successful get; a miss fetches and commits
        let hit = store.get(&d).unwrap().is_some();
        if !hit {
            let c = put(&store, &data).unwrap();
            assert!(matches!(c, Committed::Stored | Committed::NotCached), "{c:?}");
        }
        store_hits.push(hit);

        // the simulator's loop
        sim_hits.push(policy.access(&Request::new(t as u64, d.key64(), size as u64), &mut fx).is_some());
    }
    let mut store_resident: Vec<u64> = store.list().iter().map(|(d, _)| d.key64()).collect();
    let mut sim_resident: Vec<u64> = keys.keys().copied().filter(|k| policy.peek(*k).is_some()).collect();
    store_resident.sort();
    sim_resident.sort();
    assert!(store.check().unwrap().is_clean());
    ((store_hits, store_resident), (sim_hits, sim_resident))
}

/// Object `n` always has the same size, as content-addressed objects do.
fn size_of(n: u64) -> usize {
    200 + (n as usize * 397) % 1800
}

#[test]
fn store_and_simulator_agree_on_a_skewed_trace() {
    // a Zipf-like mix: small ids come back often
    let mut x = 12345u64;
    let trace: Vec<(u64, usize)> = (0..600)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (x >> 33) as f64 / (1u64 << 31) as f64;
            let n = (40.0 * u * u * u) as u64;
            (n, size_of(n))
        })
        .collect();
    for name in POLICY_NAMES {
        let spec: PolicySpec = name.parse().unwrap();
        if build(&spec, Capacity::single(1)).is_err() {
            continue; // a two-tier policy; the store has one tier for now
        }
        let (store, sim) = replay(&spec, 12_000, &trace);
        assert_eq!(store.0, sim.0, "{name}: hit/miss decisions differ");
        assert_eq!(store.1, sim.1, "{name}: resident sets differ");
        let hits = store.0.iter().filter(|h| **h).count();
        assert!(hits > 100 && hits < 590, "{name}: the trace should mix hits and misses, got {hits}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn store_and_simulator_agree_on_random_traces(
        ids in proptest::collection::vec(0u64..25, 1..150),
        capacity in 500u64..15_000,
    ) {
        let trace: Vec<(u64, usize)> = ids.iter().map(|&n| (n, size_of(n))).collect();
        let (store, sim) = replay(&PolicySpec::Lru, capacity, &trace);
        prop_assert_eq!(store, sim);
    }
}
