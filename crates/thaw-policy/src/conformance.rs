//! The conformance suite every policy passes: invariants that hold whatever the replacement rule.
//!
//! Each property drives a policy built from every name in [`crate::POLICY_NAMES`] with random
//! request sequences and checks the accounting the store and the simulator rely on.

use proptest::prelude::*;
use std::collections::HashMap;

use crate::{build, CachePolicy, Capacity, Effect, PolicySpec, Request, Tier, POLICY_NAMES};

fn policies(capacity: Capacity) -> Vec<Box<dyn CachePolicy>> {
    POLICY_NAMES
        .iter()
        .filter_map(|n| build(&n.parse::<PolicySpec>().unwrap(), capacity).ok())
        .collect()
}

/// Replays `reqs` and checks, after every step: used bytes never exceed capacity; used bytes equal
/// the sum of resident sizes derived from the effects; a hit is only reported for a resident key;
/// `peek` agrees with the effects; pinned keys are never evicted.
fn check(policy: &mut dyn CachePolicy, reqs: &[(u64, u64)], pinned_mod: u64) -> Result<(), TestCaseError> {
    let cap = policy.capacity();
    let mut resident: HashMap<u64, (Tier, u64)> = HashMap::new();
    let mut fx = Vec::new();
    for (t, &(key, size)) in reqs.iter().enumerate() {
        let req = Request::new(t as u64, key, size);
        fx.clear();
        let pinned = |k: u64| pinned_mod != 0 && k % pinned_mod == 0 && k != key;
        let hit = policy.lookup(&req, &mut fx);
        prop_assert_eq!(hit.is_some(), resident.contains_key(&key), "{}: hit for a non-resident key or miss for a resident one", policy.name());
        if hit.is_none() {
            let admitted = policy.admit(&req, &pinned, &mut fx);
            if size > cap.total() {
                prop_assert!(!admitted, "{}: admitted an object larger than the cache", policy.name());
            }
        }
        for e in &fx {
            match *e {
                Effect::Inserted { key, tier, size } => { resident.insert(key, (tier, size)); }
                Effect::Evicted { key, .. } => {
                    prop_assert!(!pinned(key), "{}: evicted pinned key {}", policy.name(), key);
                    prop_assert!(resident.remove(&key).is_some(), "{}: evicted a non-resident key", policy.name());
                }
                Effect::Demoted { key, .. } => { resident.get_mut(&key).unwrap().0 = Tier::Slow; }
                Effect::Promoted { key, .. } => { resident.get_mut(&key).unwrap().0 = Tier::Fast; }
                Effect::Prefetch { .. } => {}
            }
        }
        for tier in Tier::ALL {
            let sum: u64 = resident.values().filter(|(t, _)| *t == tier).map(|(_, s)| s).sum();
            prop_assert_eq!(policy.used(tier), sum, "{}: used bytes disagree with effects", policy.name());
            prop_assert!(policy.used(tier) <= cap.of(tier), "{}: over capacity", policy.name());
        }
        prop_assert_eq!(policy.len(), resident.len());
        for (k, (tier, _)) in &resident {
            prop_assert_eq!(policy.peek(*k), Some(*tier));
        }
    }
    Ok(())
}

fn trace() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::vec((0u64..40, 0u64..300), 1..400)
}

proptest! {
    #[test]
    fn single_tier_invariants(reqs in trace(), cap in 1u64..2000, pinned_mod in 0u64..5) {
        for mut p in policies(Capacity::single(cap)) {
            check(p.as_mut(), &reqs, pinned_mod)?;
        }
    }

    #[test]
    fn remove_forgets(reqs in trace(), cap in 1u64..2000) {
        for mut p in policies(Capacity::single(cap)) {
            let mut fx = Vec::new();
            for &(k, s) in &reqs { p.access(&Request::new(0, k, s), &mut fx); }
            for &(k, _) in &reqs {
                let was = p.peek(k).is_some();
                prop_assert_eq!(p.remove(k), was);
                prop_assert_eq!(p.peek(k), None);
            }
            prop_assert_eq!(p.len(), 0);
            prop_assert_eq!(p.used(Tier::Fast), 0);
        }
    }
}
