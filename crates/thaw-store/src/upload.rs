//! Upload ids: the names of push uploads in progress, handed to clients in `Location` headers.

use std::fmt;
use std::str::FromStr;

use crate::error::StoreError;

/// The id of an upload in progress: 128 random bits shown as a lowercase UUID-like string
/// (8-4-4-4-12 hex digits). Parsing accepts exactly that form, so an id from a client can never
/// name a path outside the uploads directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId([u8; 16]);

impl UploadId {
    /// A fresh random id.
    pub fn random() -> UploadId {
        UploadId(rand::random())
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({self})")
    }
}

impl FromStr for UploadId {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StoreError::BadUploadId(s.chars().take(80).collect());
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(bad());
        }
        let mut hexdigits = Vec::with_capacity(32);
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(bad());
                }
            } else if c.is_ascii_digit() || (b'a'..=b'f').contains(&c) {
                hexdigits.push(c);
            } else {
                return Err(bad());
            }
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(&hexdigits, &mut out).map_err(|_| bad())?;
        Ok(UploadId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_rejects() {
        let id = UploadId::random();
        let s = id.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(s.parse::<UploadId>().unwrap(), id);
        for bad in ["", "../../etc/passwd", &s.to_uppercase(), &s[..35], &format!("{s}0"), &s.replace('-', "_")] {
            if bad != s {
                assert!(bad.parse::<UploadId>().is_err(), "{bad:?} parsed");
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_only_accepts_canonical(s in ".{0,64}") {
            if let Ok(id) = s.parse::<UploadId>() {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn every_id_round_trips(bytes in any::<[u8; 16]>()) {
            let id = UploadId(bytes);
            prop_assert_eq!(id.to_string().parse::<UploadId>().unwrap(), id);
        }
    }
}
