//! Choosing a policy by name, as the command line and the store's config name them.

use std::fmt;
use std::str::FromStr;

use crate::{CachePolicy, Capacity, Lru};

/// Every policy name this build knows, for help texts and error messages.
pub const POLICY_NAMES: &[&str] = &["lru"];

/// A parsed policy name with its parameters, e.g. `lru` or `slru:4`.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySpec {
    Lru,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    /// The name is not one of [`POLICY_NAMES`].
    #[error("unknown cache policy {name:?}; known policies: {}", POLICY_NAMES.join(", "))]
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
        let (base, _param) = match name.split_once(':') {
            Some((b, p)) => (b.to_string(), Some(p.to_string())),
            None => (name.clone(), None),
        };
        match base.as_str() {
            "lru" => Ok(PolicySpec::Lru),
            _ => Err(PolicyError::Unknown { name: s.to_string() }),
        }
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySpec::Lru => f.write_str("lru"),
        }
    }
}

/// Builds the policy `spec` names with the given capacity.
pub fn build(spec: &PolicySpec, capacity: Capacity) -> Result<Box<dyn CachePolicy>, PolicyError> {
    match spec {
        PolicySpec::Lru => {
            if capacity.slow != 0 {
                return Err(PolicyError::Tiers {
                    name: spec.to_string(),
                    why: "has one tier; give it one cache size".into(),
                });
            }
            Ok(Box::new(Lru::new(capacity.fast)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in POLICY_NAMES {
            let spec: PolicySpec = name.parse().unwrap();
            assert_eq!(&spec.to_string(), name);
        }
        assert!(matches!("nope".parse::<PolicySpec>(), Err(PolicyError::Unknown { .. })));
    }
}
