//! A log-bucketed histogram: bounded memory, stated relative error.
//!
//! Values below 64 have a bucket each (exact). Above, each power of two is split into 64 equal
//! buckets, so a bucket's width is at most 1/64 of its lower bound: a quantile read back as the
//! bucket's midpoint is within ±0.8% of a value that fell in that bucket. Count, sum, minimum and
//! maximum are exact. 64 × 64 buckets cover all of `u64`: 32 KiB per histogram.

/// Sub-buckets per power of two.
const SUB: u64 = 64;
const SUB_BITS: u32 = 6;
/// Relative error bound of quantiles (half a bucket's width over its lower bound).
pub const RELATIVE_ERROR: f64 = 0.5 / SUB as f64;

#[derive(Debug, Clone, PartialEq)]
pub struct LogHistogram {
    counts: Vec<u64>,
    pub count: u64,
    pub sum: u128,
    pub min: u64,
    pub max: u64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // 0..SUB
    ((u64::from(e - SUB_BITS + 1)) * SUB + mantissa) as usize
}

/// The lowest value and width of a bucket.
fn bounds(b: usize) -> (u64, u64) {
    let b = b as u64;
    if b < SUB {
        return (b, 1);
    }
    let group = b / SUB; // >= 1
    let mantissa = b % SUB;
    let shift = group - 1;
    ((SUB + mantissa) << shift, 1u64 << shift)
}

impl LogHistogram {
    pub fn new() -> LogHistogram {
        LogHistogram {
            counts: vec![0; (SUB * 59) as usize],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[bucket(v)] += n;
        self.count += n;
        self.sum += u128::from(v) * u128::from(n);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, o: &LogHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0..=1), within [`RELATIVE_ERROR`]; exact at 0 and 1.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        if q <= 0.0 {
            return self.min;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, w) = bounds(b);
                return (lo + w / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// (value, cumulative share) points of the CDF, one per non-empty bucket, for plots.
    pub fn cdf(&self) -> Vec<(u64, f64)> {
        let mut out = Vec::new();
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            seen += c;
            let (lo, w) = bounds(b);
            out.push((
                (lo + w - 1).clamp(self.min, self.max),
                seen as f64 / self.count as f64,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_tile_the_range() {
        let mut last_end = 0u64;
        for b in 0..(SUB * 59) as usize {
            let (lo, w) = bounds(b);
            assert_eq!(lo, last_end, "bucket {b}");
            assert_eq!(bucket(lo), b);
            assert_eq!(bucket(lo + (w - 1)), b);
            last_end = match lo.checked_add(w) {
                Some(e) => e,
                None => break,
            };
        }
        assert!(bucket(u64::MAX) < (SUB * 59) as usize);
    }

    proptest! {
        #[test]
        fn quantiles_within_stated_error(mut vals in proptest::collection::vec(1u64..10_000_000_000, 1..300), q in 0.0f64..1.0) {
            let mut h = LogHistogram::new();
            for &v in &vals { h.record(v); }
            vals.sort_unstable();
            let rank = ((q * vals.len() as f64).ceil() as usize).max(1);
            let exact = vals[rank - 1] as f64;
            let got = h.quantile(q) as f64;
            prop_assert!((got - exact).abs() <= exact * 2.0 * RELATIVE_ERROR + 1.0, "q={} exact={} got={}", q, exact, got);
            prop_assert_eq!(h.count, vals.len() as u64);
            prop_assert_eq!(h.max, *vals.last().unwrap());
        }
    }
}
