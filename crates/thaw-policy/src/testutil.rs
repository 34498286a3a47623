//! Seeded random numbers and a Zipf sampler for the crate's tests, benchmark and examples.
//!
//! Not part of the API (hidden from the docs): it is public only because integration tests,
//! benches and examples are separate crates that can reach nothing else. Keeping one copy means
//! the libCacheSim comparison, the throughput bench and `replay_oracle gen` all shape their
//! traces with the same generator, so a trace described in one place is the trace used in the
//! others.

/// splitmix64 (Steele, Lea and Flood): tiny, seedable, and good enough to shape synthetic traces.
/// Not for anything that needs unpredictability.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits (all an `f64` mantissa holds).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in `[lo, hi)` (`lo >= 1`), truncated to an integer: object sizes spread
    /// evenly over orders of magnitude, as registry layers and cached files are.
    pub fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let lo = lo as f64;
        ((lo.ln() + (hi as f64 / lo).ln() * self.unit()).exp()) as u64
    }
}

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)^alpha`, by binary
/// search in the cumulative distribution (n floats of memory, O(log n) per sample).
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// # Panics
    /// If `n` is 0: there is no rank to draw.
    pub fn new(n: usize, alpha: f64) -> Zipf {
        assert!(n > 0, "a zipf distribution needs at least one rank");
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(alpha);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        // rounding can leave the last cdf entry a hair below 1; never step past the last rank
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_its_reference_sequence() {
        // the first outputs of splitmix64 seeded with 0, as the reference C code prints them
        let mut r = Rng(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn unit_and_log_uniform_stay_in_range() {
        let mut r = Rng(9);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let s = r.log_uniform(512, 32768);
            assert!((512..32768).contains(&s), "{s}");
        }
    }

    #[test]
    fn zipf_favours_low_ranks_in_proportion() {
        let z = Zipf::new(100, 1.0);
        let mut r = Rng(5);
        let mut counts = [0u32; 100];
        for _ in 0..200_000 {
            counts[z.sample(&mut r)] += 1;
        }
        // with alpha 1, rank 0 is drawn twice as often as rank 1 and ten times as often as rank 9
        let ratio = |a: usize, b: usize| counts[a] as f64 / counts[b] as f64;
        assert!((ratio(0, 1) - 2.0).abs() < 0.1, "{}", ratio(0, 1));
        assert!((ratio(0, 9) - 10.0).abs() < 1.0, "{}", ratio(0, 9));
        assert!(counts.iter().all(|&c| c > 0));
    }
}
