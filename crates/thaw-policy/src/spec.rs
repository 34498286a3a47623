//! Choosing a policy by name, as the command line and the store's config name them.

use std::fmt;
use std::str::FromStr;

use crate::bytes::{format_bytes, parse_bytes};
use crate::{
    AssociationTable, CachePolicy, Capacity, Clock, Fifo, LaCache, LaCacheConfig, Lfu, Lru, S3Fifo,
    Sieve, SizeTieredLru, Slru, CLOCK_MAX_BITS, LACACHE_DEFAULT_FAST_MAX_OBJECT,
    SIZE_TIERED_DEFAULT_THRESHOLD, SLRU_MAX_SEGMENTS,
};

/// Every policy name this build knows, each with its default parameters, exactly as
/// [`PolicySpec`]'s `Display` prints it. The conformance suite runs every one of them.
pub const POLICY_NAMES: &[&str] = &[
    "fifo",
    "lru",
    "clock",
    "lfu",
    "slru",
    "s3fifo",
    "sieve",
    "size-tiered-lru",
    "lacache",
];

/// The accepted syntax, for help texts.
pub const POLICY_SYNTAX: &str = "fifo, lru, clock[:BITS], lfu, slru[:SEGMENTS], s3fifo, sieve, \
     size-tiered-lru[:THRESHOLD] (two tiers), lacache[:FAST_MAX_OBJECT|any] (two tiers)";

/// libCacheSim's default number of SLRU segments.
pub const SLRU_DEFAULT_SEGMENTS: usize = 4;

/// A parsed policy name with its parameters, e.g. `lru`, `clock:2` or `slru:4`.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySpec {
    Fifo,
    Lru,
    /// CLOCK with `bits`-bit counters (1 = classic CLOCK).
    Clock {
        bits: u32,
    },
    Lfu,
    /// Segmented LRU with this many segments (libCacheSim's default: 4).
    Slru {
        segments: usize,
    },
    S3Fifo,
    Sieve,
    /// The two-tier baseline: objects smaller than `threshold` bytes in the fast tier, the others
    /// in the slow tier, LRU in each.
    SizeTieredLru {
        threshold: u64,
    },
    /// LACache with its default configuration (no association table; build it with
    /// [`build_with_associations`] or [`LaCache`] directly to give it one). Objects larger than
    /// `fast_max_object` bytes are never placed in the fast tier (`u64::MAX`: any size may be).
    LaCache {
        fast_max_object: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    /// The name is not one this build knows.
    #[error("unknown cache policy {name:?}; known policies: {}", POLICY_SYNTAX)]
    Unknown { name: String },
    /// A parameter is out of range or not a number.
    #[error("bad parameter for cache policy {name:?}: {why}")]
    BadParameter { name: String, why: String },
    /// The policy needs two tiers and got one, or the other way round.
    #[error("cache policy {name:?} {why}")]
    Tiers { name: String, why: String },
}

impl FromStr for PolicySpec {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        let (base, param) = match name.split_once(':') {
            Some((b, p)) => (b, Some(p.trim())),
            None => (name.as_str(), None),
        };
        let bad = |why: String| PolicyError::BadParameter {
            name: s.to_string(),
            why,
        };
        let no_param = |spec: PolicySpec| match param {
            None => Ok(spec),
            Some(_) => Err(PolicyError::BadParameter {
                name: s.to_string(),
                why: format!("{base} takes no parameter"),
            }),
        };
        match base {
            "fifo" => no_param(PolicySpec::Fifo),
            "lru" => no_param(PolicySpec::Lru),
            "lfu" => no_param(PolicySpec::Lfu),
            "s3fifo" | "s3-fifo" => no_param(PolicySpec::S3Fifo),
            "sieve" => no_param(PolicySpec::Sieve),
            "lacache" => {
                let fast_max_object = match param {
                    None => LACACHE_DEFAULT_FAST_MAX_OBJECT,
                    Some("any") => u64::MAX,
                    Some(p) => parse_bytes(p).map_err(|e| {
                        bad(format!(
                            "largest object for the fast tier: {e} (or \"any\")"
                        ))
                    })?,
                };
                Ok(PolicySpec::LaCache { fast_max_object })
            }
            "clock" => {
                let bits = match param {
                    None => 1,
                    Some(p) => p
                        .parse::<u32>()
                        .ok()
                        .filter(|b| (1..=CLOCK_MAX_BITS).contains(b))
                        .ok_or_else(|| bad(format!("counter bits must be a number from 1 to {CLOCK_MAX_BITS}, got {p:?}")))?,
                };
                Ok(PolicySpec::Clock { bits })
            }
            "slru" => {
                let segments = match param {
                    None => SLRU_DEFAULT_SEGMENTS,
                    Some(p) => p
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=SLRU_MAX_SEGMENTS).contains(n))
                        .ok_or_else(|| bad(format!("segments must be a number from 1 to {SLRU_MAX_SEGMENTS}, got {p:?}")))?,
                };
                Ok(PolicySpec::Slru { segments })
            }
            "size-tiered-lru" => {
                let threshold = match param {
                    None => SIZE_TIERED_DEFAULT_THRESHOLD,
                    Some(p) => parse_bytes(p).map_err(|e| bad(format!("threshold: {e}")))?,
                };
                Ok(PolicySpec::SizeTieredLru { threshold })
            }
            _ => Err(PolicyError::Unknown {
                name: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySpec::Fifo => f.write_str("fifo"),
            PolicySpec::Lru => f.write_str("lru"),
            PolicySpec::Clock { bits: 1 } => f.write_str("clock"),
            PolicySpec::Clock { bits } => write!(f, "clock:{bits}"),
            PolicySpec::Lfu => f.write_str("lfu"),
            PolicySpec::Slru { segments } if *segments == SLRU_DEFAULT_SEGMENTS => {
                f.write_str("slru")
            }
            PolicySpec::Slru { segments } => write!(f, "slru:{segments}"),
            PolicySpec::S3Fifo => f.write_str("s3fifo"),
            PolicySpec::Sieve => f.write_str("sieve"),
            PolicySpec::SizeTieredLru { threshold }
                if *threshold == SIZE_TIERED_DEFAULT_THRESHOLD =>
            {
                f.write_str("size-tiered-lru")
            }
            PolicySpec::SizeTieredLru { threshold } => {
                write!(f, "size-tiered-lru:{}", format_bytes(*threshold))
            }
            PolicySpec::LaCache { fast_max_object }
                if *fast_max_object == LACACHE_DEFAULT_FAST_MAX_OBJECT =>
            {
                f.write_str("lacache")
            }
            PolicySpec::LaCache {
                fast_max_object: u64::MAX,
            } => f.write_str("lacache:any"),
            PolicySpec::LaCache { fast_max_object } => {
                write!(f, "lacache:{}", format_bytes(*fast_max_object))
            }
        }
    }
}

impl PolicySpec {
    /// Whether the policy manages two tiers (and so needs a slow-tier capacity).
    pub fn two_tier(&self) -> bool {
        matches!(
            self,
            PolicySpec::SizeTieredLru { .. } | PolicySpec::LaCache { .. }
        )
    }
}

/// Builds the policy `spec` names with the given capacity.
pub fn build(spec: &PolicySpec, capacity: Capacity) -> Result<Box<dyn CachePolicy>, PolicyError> {
    build_with_associations(spec, capacity, AssociationTable::new())
}

/// [`build`], handing `associations` (image A is followed by image B with probability p, as
/// `thaw trace analyze` mines them) to the policies that prefetch (`lacache`); the others ignore
/// it.
pub fn build_with_associations(
    spec: &PolicySpec,
    capacity: Capacity,
    associations: AssociationTable,
) -> Result<Box<dyn CachePolicy>, PolicyError> {
    if spec.two_tier() && (capacity.slow == 0 || capacity.fast == 0) {
        return Err(PolicyError::Tiers {
            name: spec.to_string(),
            why: "has two tiers; give it a fast-tier and a slow-tier size".into(),
        });
    }
    if !spec.two_tier() && capacity.slow != 0 {
        return Err(PolicyError::Tiers {
            name: spec.to_string(),
            why: "has one tier; give it one cache size".into(),
        });
    }
    let c = capacity.fast;
    Ok(match *spec {
        PolicySpec::Fifo => Box::new(Fifo::new(c)),
        PolicySpec::Lru => Box::new(Lru::new(c)),
        PolicySpec::Clock { bits } => Box::new(Clock::new(c, bits)),
        PolicySpec::Lfu => Box::new(Lfu::new(c)),
        PolicySpec::Slru { segments } => Box::new(Slru::new(c, segments)),
        PolicySpec::S3Fifo => Box::new(S3Fifo::new(c)),
        PolicySpec::Sieve => Box::new(Sieve::new(c)),
        PolicySpec::SizeTieredLru { threshold } => {
            Box::new(SizeTieredLru::new(capacity, threshold))
        }
        PolicySpec::LaCache { fast_max_object } => Box::new(LaCache::new(
            capacity,
            LaCacheConfig {
                associations,
                fast_max_object,
                ..Default::default()
            },
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for name in POLICY_NAMES {
            let spec: PolicySpec = name.parse().unwrap();
            assert_eq!(&spec.to_string(), name);
        }
        for name in [
            "clock:2",
            "slru:2",
            "slru:8",
            "size-tiered-lru:1MiB",
            "size-tiered-lru:1000",
            "lacache:any",
            "lacache:64MiB",
        ] {
            let spec: PolicySpec = name.parse().unwrap();
            assert_eq!(spec.to_string(), name);
        }
        assert_eq!(
            "lacache:any".parse::<PolicySpec>(),
            Ok(PolicySpec::LaCache {
                fast_max_object: u64::MAX
            })
        );
        assert!("lacache:lots".parse::<PolicySpec>().is_err());
        assert!(matches!(
            "nope".parse::<PolicySpec>(),
            Err(PolicyError::Unknown { .. })
        ));
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(
            "CLOCK:3".parse::<PolicySpec>(),
            Ok(PolicySpec::Clock { bits: 3 })
        );
        assert_eq!(
            "slru".parse::<PolicySpec>(),
            Ok(PolicySpec::Slru { segments: 4 })
        );
        assert_eq!(
            "size-tiered-lru:64MiB".parse::<PolicySpec>(),
            Ok(PolicySpec::SizeTieredLru {
                threshold: 64 << 20
            })
        );
        for bad in [
            "clock:0",
            "clock:99",
            "slru:0",
            "slru:x",
            "lru:2",
            "size-tiered-lru:12XB",
            "size-tiered-lru:",
        ] {
            assert!(
                matches!(
                    bad.parse::<PolicySpec>(),
                    Err(PolicyError::BadParameter { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn tiers_must_match_the_policy() {
        let one = Capacity::single(100);
        let two = Capacity {
            fast: 100,
            slow: 1000,
        };
        assert!(build(&PolicySpec::Lru, two).is_err());
        assert!(build(
            &PolicySpec::LaCache {
                fast_max_object: LACACHE_DEFAULT_FAST_MAX_OBJECT
            },
            one
        )
        .is_err());
        let err = build(&PolicySpec::SizeTieredLru { threshold: 10 }, one)
            .err()
            .unwrap();
        assert!(err.to_string().contains("two tiers"), "{err}");
        assert!(build(
            &PolicySpec::LaCache {
                fast_max_object: LACACHE_DEFAULT_FAST_MAX_OBJECT
            },
            two
        )
        .is_ok());
    }

    #[test]
    fn associations_reach_lacache() {
        let table: AssociationTable = [(1, 2, 0.9)].into_iter().collect();
        let cap = Capacity {
            fast: 100,
            slow: 100,
        };
        let mut p = build_with_associations(
            &PolicySpec::LaCache {
                fast_max_object: LACACHE_DEFAULT_FAST_MAX_OBJECT,
            },
            cap,
            table,
        )
        .unwrap();
        let mut fx = Vec::new();
        let r = crate::Request {
            image: Some(1),
            ..crate::Request::new(0, 7, 1)
        };
        p.access(&r, &mut fx);
        assert!(fx.contains(&crate::Effect::Prefetch {
            image: 2,
            probability: 0.9
        }));
        // plain `build` has no table, so nothing is announced
        let mut p = build(
            &PolicySpec::LaCache {
                fast_max_object: LACACHE_DEFAULT_FAST_MAX_OBJECT,
            },
            cap,
        )
        .unwrap();
        fx.clear();
        p.access(&r, &mut fx);
        assert!(!fx
            .iter()
            .any(|e| matches!(e, crate::Effect::Prefetch { .. })));
    }

    proptest! {
        /// Any string parses to a spec or a typed error, never a panic; specs print back to a name
        /// that parses to the same spec.
        #[test]
        fn parsing_never_panics_and_round_trips(
            s in "\\PC{0,24}|(fifo|lru|clock|lfu|slru|s3fifo|sieve|size-tiered-lru|lacache|x)(:[0-9a-zA-Z ]{0,8})?"
        ) {
            if let Ok(spec) = s.parse::<PolicySpec>() {
                let again: PolicySpec = spec.to_string().parse().unwrap();
                prop_assert_eq!(again, spec);
            }
        }
    }
}
