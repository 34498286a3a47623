//! HTTP `Range` headers (RFC 9110 §14.1.2), single byte ranges only.
//!
//! Registries are asked for one range at a time (resuming downloads, lazy-pulling snapshotters);
//! multi-range requests would need multipart answers, which no OCI client asks for, so they are
//! refused with a clear error and the caller answers with the whole blob or 416.

use std::fmt;

/// A resolved, satisfiable byte range: `start..=end` within a body of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
    pub total: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` value for a 206 answer.
    pub fn content_range(&self) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, self.total)
    }
}

/// Why a `Range` header was not turned into a range.
///
/// RFC 9110 §14.2 lets a server ignore a `Range` header it cannot use, so for every variant except
/// [`RangeError::NotSatisfiable`] the right answer is the whole body with `200`; only an
/// unsatisfiable but well-formed range is answered `416` with
/// [`RangeError::unsatisfied_content_range`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("Range header is malformed; expected 'bytes=START-END', 'bytes=START-' or 'bytes=-SUFFIX'")]
    Malformed,
    #[error("Range header asks for several ranges; thaw serves one range per request")]
    MultipleRanges,
    #[error("Range unit is not 'bytes'")]
    Unit,
    /// 416: the range starts past the end of the body.
    #[error("Range is not satisfiable for a body of {total} bytes")]
    NotSatisfiable { total: u64 },
}

impl RangeError {
    /// `Content-Range` for a 416 answer.
    pub fn unsatisfied_content_range(total: u64) -> String {
        format!("bytes */{total}")
    }
}

/// The range as the client wrote it, before the body's length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=start-` or `bytes=start-end`
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// Parses a `Range` header value.
    pub fn parse(header: &str) -> Result<RangeSpec, RangeError> {
        let header = header.trim();
        let (unit, set) = header.split_once('=').ok_or(RangeError::Malformed)?;
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return Err(RangeError::Unit);
        }
        if set.contains(',') {
            return Err(RangeError::MultipleRanges);
        }
        let (a, b) = set.trim().split_once('-').ok_or(RangeError::Malformed)?;
        // RFC 9110 puts no bound on the digits of a position. A number that does not fit in u64
        // saturates: a first-pos that large is past any body (416), and a last-pos or suffix
        // that large simply means "to the end" once clipped to the body's length.
        let num = |s: &str| -> Result<u64, RangeError> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(RangeError::Malformed);
            }
            Ok(s.bytes().fold(0u64, |n, c| n.saturating_mul(10).saturating_add(u64::from(c - b'0'))))
        };
        match (a.trim(), b.trim()) {
            ("", suffix) => Ok(RangeSpec::Suffix(num(suffix)?)),
            (start, "") => Ok(RangeSpec::From { start: num(start)?, end: None }),
            (start, end) => {
                let (start, end) = (num(start)?, num(end)?);
                if end < start {
                    return Err(RangeError::Malformed);
                }
                Ok(RangeSpec::From { start, end: Some(end) })
            }
        }
    }

    /// Resolves against a body of `total` bytes (RFC 9110: an end past the body is clipped; a
    /// start past it is unsatisfiable; a zero suffix is unsatisfiable).
    pub fn resolve(self, total: u64) -> Result<ByteRange, RangeError> {
        match self {
            RangeSpec::From { start, end } => {
                if start >= total {
                    return Err(RangeError::NotSatisfiable { total });
                }
                let end = end.map_or(total - 1, |e| e.min(total - 1));
                Ok(ByteRange { start, end, total })
            }
            RangeSpec::Suffix(n) => {
                if n == 0 || total == 0 {
                    return Err(RangeError::NotSatisfiable { total });
                }
                let n = n.min(total);
                Ok(ByteRange { start: total - n, end: total - 1, total })
            }
        }
    }
}

impl ByteRange {
    /// Parses and resolves in one step.
    pub fn parse(header: &str, total: u64) -> Result<ByteRange, RangeError> {
        RangeSpec::parse(header)?.resolve(total)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes={}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        assert_eq!(ByteRange::parse("bytes=0-9", 100).unwrap(), ByteRange { start: 0, end: 9, total: 100 });
        assert_eq!(ByteRange::parse("bytes=90-", 100).unwrap(), ByteRange { start: 90, end: 99, total: 100 });
        assert_eq!(ByteRange::parse("bytes=-10", 100).unwrap(), ByteRange { start: 90, end: 99, total: 100 });
        assert_eq!(ByteRange::parse("bytes=50-500", 100).unwrap().end, 99);
        assert_eq!(ByteRange::parse("bytes=-500", 100).unwrap().start, 0);
        assert_eq!(ByteRange::parse("bytes=100-", 100), Err(RangeError::NotSatisfiable { total: 100 }));
        assert_eq!(ByteRange::parse("bytes=0-1,5-6", 100), Err(RangeError::MultipleRanges));
        assert_eq!(ByteRange::parse("items=0-1", 100), Err(RangeError::Unit));
        assert_eq!(ByteRange::parse("bytes=99999999999999999999-", 100), Err(RangeError::NotSatisfiable { total: 100 }));
        assert_eq!(ByteRange::parse("bytes=10-99999999999999999999999", 100).unwrap(), ByteRange { start: 10, end: 99, total: 100 });
        assert_eq!(ByteRange::parse("bytes=-99999999999999999999999", 100).unwrap(), ByteRange { start: 0, end: 99, total: 100 });
        assert_eq!(ByteRange::parse("BYTES=1-1", 100).unwrap().len(), 1);
        assert_eq!(ByteRange::parse("bytes=-0", 100), Err(RangeError::NotSatisfiable { total: 100 }));
        assert_eq!(ByteRange::parse("bytes=0-", 0), Err(RangeError::NotSatisfiable { total: 0 }));
        for bad in ["", "bytes", "bytes=", "bytes=-", "bytes=5-1", "bytes=a-b", "bytes=+1-2", "bytes=1--2", "bytes=1-2-3", "bytes=0x1-2"] {
            assert_eq!(ByteRange::parse(bad, 100), Err(RangeError::Malformed), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(h in ".{0,60}", total in 0u64..1_000_000) {
            if let Ok(r) = ByteRange::parse(&h, total) {
                prop_assert!(r.start <= r.end && r.end < total);
            }
        }

        #[test]
        fn written_ranges_round_trip(start in 0u64..10_000, len in 1u64..10_000, total in 1u64..30_000) {
            // The Display form of a resolved range is what thaw sends upstream; parsing it back
            // against the same body must give the same range.
            if let Ok(r) = ByteRange::parse(&format!("bytes={}-{}", start, start + len - 1), total) {
                prop_assert_eq!(ByteRange::parse(&r.to_string(), total).unwrap(), r);
                prop_assert_eq!(r.len(), r.end - r.start + 1);
            }
        }

        #[test]
        fn suffix_is_the_tail(n in 1u64..5000, total in 1u64..5000) {
            let r = ByteRange::parse(&format!("bytes=-{n}"), total).unwrap();
            prop_assert_eq!(r.end, total - 1);
            prop_assert_eq!(r.len(), n.min(total));
        }

        #[test]
        fn resolved_ranges_are_inside(start in 0u64..1000, len in 0u64..1000, total in 1u64..1500) {
            let h = format!("bytes={}-{}", start, start + len);
            match ByteRange::parse(&h, total) {
                Ok(r) => { prop_assert!(r.end < total); prop_assert_eq!(r.start, start); }
                Err(e) => { prop_assert_eq!(e, RangeError::NotSatisfiable { total }); prop_assert!(start >= total); }
            }
        }
    }
}
