//! Content digests (`algorithm:hex`), as the OCI image spec defines them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// The algorithms thaw verifies. Others are refused: content that cannot be verified is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest: a known algorithm and lowercase hex of exactly its length.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no ':' between algorithm and hex (expected e.g. sha256:<64 hex digits>)")]
    NoSeparator(String),
    #[error("digest algorithm {0:?} is not supported; thaw verifies sha256 and sha512")]
    UnsupportedAlgorithm(String),
    #[error("digest {digest:?}: {algorithm} needs {expected} lowercase hex digits")]
    BadHex { digest: String, algorithm: &'static str, expected: usize },
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of `data` under sha256.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest { algorithm: Algorithm::Sha256, hex: hex::encode(Sha256::digest(data)) }
    }

    /// Starts an incremental hash with this digest's algorithm.
    pub fn digester(&self) -> Digester {
        Digester::new(self.algorithm)
    }

    /// Whether `data` hashes to this digest.
    pub fn verify(&self, data: &[u8]) -> bool {
        let mut d = self.digester();
        d.update(data);
        d.finish() == *self
    }

    /// A stable 64-bit key for cache policies: the first 8 bytes of the hash. Content hashes are
    /// uniformly distributed, so collisions among the objects of one store are negligible; the
    /// store still keys its files and database by the full digest.
    pub fn key64(&self) -> u64 {
        let mut b = [0u8; 8];
        // hex is validated to be at least 64 digits, so the first 16 decode.
        hex::decode_to_slice(&self.hex[..16], &mut b).expect("validated hex");
        u64::from_be_bytes(b)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s.split_once(':').ok_or_else(|| DigestError::NoSeparator(clip(s)))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(clip(other))),
        };
        let ok = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::BadHex {
                digest: clip(s),
                algorithm: algorithm.as_str(),
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest { algorithm, hex: hex.to_string() })
    }
}

/// Keeps error messages bounded when the input is huge.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 160;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for one algorithm.
#[derive(Clone)]
pub enum Digester {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Digester {
    pub fn new(algorithm: Algorithm) -> Digester {
        match algorithm {
            Algorithm::Sha256 => Digester::Sha256(Sha256::new()),
            Algorithm::Sha512 => Digester::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Digester::Sha256(h) => h.update(data),
            Digester::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Digester::Sha256(h) => {
                Digest { algorithm: Algorithm::Sha256, hex: hex::encode(h.finalize()) }
            }
            Digester::Sha512(h) => {
                Digest { algorithm: Algorithm::Sha512, hex: hex::encode(h.finalize()) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_value() {
        let d = Digest::sha256_of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(d.verify(b""));
        assert!(!d.verify(b"x"));
    }

    #[test]
    fn rejects_bad_forms() {
        for s in ["", "sha256", "sha256:", "md5:abc", "sha256:ABC", &format!("sha256:{}", "A".repeat(64)),
                  &format!("sha256:{}", "a".repeat(63)), &format!("sha512:{}", "a".repeat(64)),
                  &format!("sha256:{}g", "a".repeat(63))] {
            assert!(s.parse::<Digest>().is_err(), "{s:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn valid_round_trips(bytes in proptest::collection::vec(any::<u8>(), 32)) {
            let s = format!("sha256:{}", hex::encode(&bytes));
            let d: Digest = s.parse().unwrap();
            prop_assert_eq!(d.to_string(), s);
        }

        #[test]
        fn incremental_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..2000), cut in 0usize..2000) {
            let cut = cut.min(data.len());
            let mut h = Digester::new(Algorithm::Sha256);
            h.update(&data[..cut]);
            h.update(&data[cut..]);
            prop_assert_eq!(h.finish(), Digest::sha256_of(&data));
        }
    }
}
