//! The conformance suite every policy passes: invariants that hold whatever the replacement rule.
//!
//! Each property drives every policy in [`crate::POLICY_NAMES`] (plus a few parameter variants)
//! with random request sequences and checks the accounting the store and the simulator rely on.
//! Single-tier policies run with one capacity, two-tier ones with a fast and a slow capacity; a
//! policy that refuses a capacity shape (an error from [`build`]) is skipped for that shape.

use proptest::prelude::*;
use std::collections::HashMap;

use crate::{build, CachePolicy, Capacity, Effect, Key, PolicySpec, Request, Tier, POLICY_NAMES};

/// Parameter variants run in addition to the defaults in `POLICY_NAMES`.
const VARIANTS: &[&str] = &[
    "clock:2",
    "clock:4",
    "slru:1",
    "slru:2",
    "slru:3",
    "size-tiered-lru:100",
];

fn specs() -> Vec<PolicySpec> {
    POLICY_NAMES
        .iter()
        .chain(VARIANTS)
        .map(|n| n.parse().unwrap())
        .collect()
}

fn policies(capacity: Capacity) -> Vec<Box<dyn CachePolicy>> {
    specs()
        .iter()
        .filter_map(|s| build(s, capacity).ok())
        .collect()
}

#[derive(Debug, Clone)]
struct Req {
    key: u64,
    size: u64,
    category: Option<u16>,
    image: Option<u64>,
    prefetch: bool,
    /// Microseconds since the previous request.
    gap: u64,
}

fn requests() -> impl Strategy<Value = Vec<Req>> {
    let one = (
        0u64..40,
        0u64..300,
        proptest::option::of(0u16..3),
        proptest::option::of(0u64..6),
        proptest::bool::weighted(0.1),
        0u64..5_000_000,
    )
        .prop_map(|(key, size, category, image, prefetch, gap)| Req {
            key,
            size,
            category,
            image,
            prefetch,
            gap,
        });
    proptest::collection::vec(one, 1..400)
}

fn to_requests(reqs: &[Req]) -> Vec<Request> {
    let mut t = 0;
    reqs.iter()
        .map(|r| {
            t += r.gap;
            Request {
                time_us: t,
                key: r.key,
                size: r.size,
                category: r.category,
                image: r.image,
                prefetch: r.prefetch,
            }
        })
        .collect()
}

fn s3fifo_small(cap: u64) -> u64 {
    (cap as f64 * crate::S3FIFO_SMALL_RATIO) as u64
}

/// Replays `reqs` and checks, after every step: used bytes never exceed each tier's capacity and
/// equal the sum of resident sizes derived from the effects; every effect is consistent with the
/// residents before it (no double insert, evictions of resident keys with their tier and size,
/// demotions fast to slow, promotions slow to fast); a hit is reported exactly for a resident key;
/// `peek` and `len` agree with the effects; pinned keys are never evicted or demoted; a refusal
/// evicts nothing (except libCacheSim's S3-FIFO quirk); prefetch requests announce nothing.
fn check(
    policy: &mut dyn CachePolicy,
    reqs: &[Request],
    pinned_mod: u64,
) -> Result<(), TestCaseError> {
    let name = policy.name();
    let cap = policy.capacity();
    let mut resident: HashMap<Key, (Tier, u64)> = HashMap::new();
    let mut fx = Vec::new();
    for req in reqs {
        let key = req.key;
        fx.clear();
        let pinned = |k: u64| pinned_mod != 0 && k.is_multiple_of(pinned_mod) && k != key;
        let hit = policy.lookup_pinned(req, &pinned, &mut fx);
        prop_assert_eq!(
            hit.is_some(),
            resident.contains_key(&key),
            "{}: hit for a non-resident key or miss for a resident one",
            name
        );
        let lookup_effects = fx.len();
        let mut refused = false;
        if hit.is_none() {
            let admitted = policy.admit(req, &pinned, &mut fx);
            refused = !admitted;
            if req.size > cap.total() {
                prop_assert!(
                    !admitted,
                    "{}: admitted an object larger than the cache",
                    name
                );
            }
        }
        for (i, e) in fx.iter().enumerate() {
            match *e {
                Effect::Inserted { key, tier, size } => {
                    prop_assert!(i >= lookup_effects, "{}: inserted during lookup", name);
                    prop_assert_eq!(key, req.key);
                    prop_assert!(
                        resident.insert(key, (tier, size)).is_none(),
                        "{}: inserted a resident key",
                        name
                    );
                }
                Effect::Evicted { key, tier, size } => {
                    prop_assert!(!pinned(key), "{}: evicted pinned key {}", name, key);
                    prop_assert_eq!(
                        resident.remove(&key),
                        Some((tier, size)),
                        "{}: evicted a non-resident key or from the wrong tier",
                        name
                    );
                }
                Effect::Demoted { key, size } => {
                    prop_assert!(!pinned(key), "{}: demoted pinned key {}", name, key);
                    let r = resident.get_mut(&key);
                    prop_assert_eq!(
                        r.as_deref().copied(),
                        Some((Tier::Fast, size)),
                        "{}: demoted a key not in the fast tier",
                        name
                    );
                    r.unwrap().0 = Tier::Slow;
                }
                Effect::Promoted { key, size } => {
                    let r = resident.get_mut(&key);
                    prop_assert_eq!(
                        r.as_deref().copied(),
                        Some((Tier::Slow, size)),
                        "{}: promoted a key not in the slow tier",
                        name
                    );
                    r.unwrap().0 = Tier::Fast;
                }
                Effect::Prefetch { probability, .. } => {
                    prop_assert!(
                        !req.prefetch,
                        "{}: a prefetch request announced more prefetches",
                        name
                    );
                    prop_assert!((0.0..=1.0).contains(&probability));
                }
            }
        }
        if refused {
            let s3_quirk = name == "s3fifo" && req.size == s3fifo_small(cap.fast);
            let moved = fx[lookup_effects..]
                .iter()
                .any(|e| matches!(e, Effect::Evicted { .. } | Effect::Demoted { .. }));
            prop_assert!(!moved || s3_quirk, "{}: a refusal evicted or demoted", name);
        }
        if let Some(t) = hit {
            prop_assert_eq!(
                resident.get(&key).map(|r| r.0),
                Some(t),
                "{}: hit reported the wrong tier",
                name
            );
        }
        for tier in Tier::ALL {
            let sum: u64 = resident
                .values()
                .filter(|(t, _)| *t == tier)
                .map(|(_, s)| s)
                .sum();
            prop_assert_eq!(
                policy.used(tier),
                sum,
                "{}: used bytes disagree with effects",
                name
            );
            prop_assert!(policy.used(tier) <= cap.of(tier), "{}: over capacity", name);
        }
        prop_assert_eq!(policy.len(), resident.len());
        for (k, (tier, _)) in &resident {
            prop_assert_eq!(policy.peek(*k), Some(*tier));
        }
    }
    Ok(())
}

/// `access` (the simulator's fast path, which policies override) must decide exactly as
/// `lookup_pinned` + `admit` with nothing pinned (the store's path).
fn same_as_two_calls(
    spec: &PolicySpec,
    cap: Capacity,
    reqs: &[Request],
) -> Result<(), TestCaseError> {
    let (Ok(mut a), Ok(mut b)) = (build(spec, cap), build(spec, cap)) else {
        return Ok(());
    };
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    for req in reqs {
        fa.clear();
        fb.clear();
        let ha = a.access(req, &mut fa);
        let hb = match b.lookup_pinned(req, &|_| false, &mut fb) {
            Some(t) => Some(t),
            None => {
                b.admit(req, &|_| false, &mut fb);
                None
            }
        };
        prop_assert_eq!(ha, hb, "{}: access and lookup+admit disagree", spec);
        prop_assert_eq!(
            &fa,
            &fb,
            "{}: access and lookup+admit have different effects",
            spec
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn single_tier_invariants(reqs in requests(), cap in 1u64..2000, pinned_mod in 0u64..5) {
        let reqs = to_requests(&reqs);
        for mut p in policies(Capacity::single(cap)) {
            check(p.as_mut(), &reqs, pinned_mod)?;
        }
    }

    #[test]
    fn two_tier_invariants(reqs in requests(), fast in 1u64..1000, slow in 1u64..3000, pinned_mod in 0u64..5) {
        let reqs = to_requests(&reqs);
        let ps = policies(Capacity { fast, slow });
        prop_assert!(ps.len() >= 3, "two-tier policies did not build");
        for mut p in ps {
            check(p.as_mut(), &reqs, pinned_mod)?;
        }
    }

    #[test]
    fn access_is_lookup_then_admit(reqs in requests(), fast in 1u64..1000, slow in 0u64..3000) {
        let reqs = to_requests(&reqs);
        for spec in specs() {
            same_as_two_calls(&spec, Capacity { fast, slow }, &reqs)?;
            same_as_two_calls(&spec, Capacity::single(fast), &reqs)?;
        }
    }

    #[test]
    fn remove_forgets(reqs in requests(), cap in 1u64..2000, slow in 0u64..2000) {
        let reqs = to_requests(&reqs);
        for capacity in [Capacity::single(cap), Capacity { fast: cap, slow }] {
            for mut p in policies(capacity) {
                let mut fx = Vec::new();
                for r in &reqs { p.access(r, &mut fx); }
                for r in &reqs {
                    let was = p.peek(r.key).is_some();
                    prop_assert_eq!(p.remove(r.key), was);
                    prop_assert_eq!(p.peek(r.key), None);
                }
                prop_assert_eq!(p.len(), 0);
                prop_assert_eq!(p.used(Tier::Fast), 0);
                prop_assert_eq!(p.used(Tier::Slow), 0);
                // and the policy still works after being emptied
                for r in &reqs { p.access(r, &mut fx); }
                prop_assert!(p.used(Tier::Fast) <= p.capacity().fast);
            }
        }
    }

    /// With nothing pinned and a cache larger than all objects together, every policy holds every
    /// admissible object after its first request (no policy evicts without need).
    #[test]
    fn no_eviction_without_need(reqs in requests()) {
        let reqs = to_requests(&reqs);
        let cap = 40 * 300 * 20; // far more than 40 keys of < 300 bytes, even for SLRU quotas / small
        for capacity in [Capacity::single(cap), Capacity { fast: cap, slow: cap }] {
            for mut p in policies(capacity) {
                let mut fx = Vec::new();
                for r in &reqs { p.access(r, &mut fx); }
                prop_assert!(fx.iter().all(|e| !matches!(e, Effect::Evicted { .. } | Effect::Demoted { .. })), "{}: evicted without need", p.name());
            }
        }
    }
}
