//! A small, fully specified PRNG (xoshiro256** seeded by SplitMix64) and the distributions the
//! generator samples.
//!
//! The generator promises the same trace for the same seed in every build, so it does not use
//! `rand`'s `StdRng`, whose algorithm may change between releases.

/// SplitMix64: a bijective mixer, used to seed and to derive stable ids.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman and Vigna).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut s = [0u64; 4];
        let mut z = seed;
        for v in &mut s {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            *v = splitmix64(z);
        }
        Rng { s }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: safe under `ln`.
    pub fn f64_open(&mut self) -> f64 {
        1.0 - self.f64()
    }

    /// Uniform integer in [0, n); n > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the tiny bias is irrelevant for trace synthesis.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.f64_open().ln()
    }

    /// Standard normal (Box-Muller; one value per call, the pair's twin is dropped for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.f64_open();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Log-normal given the median and the sigma of the underlying normal.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// Pareto with minimum 1 and shape `alpha` (heavy tail for alpha near 1).
    pub fn pareto(&mut self, alpha: f64) -> f64 {
        self.f64_open().powf(-1.0 / alpha)
    }
}

/// Zipf over ranks `0..n` with exponent `alpha`, sampled by binary search in a cumulative table.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, alpha: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for i in 0..n {
            acc += 1.0 / ((i + 1) as f64).powf(alpha);
            cdf.push(acc);
        }
        for v in &mut cdf {
            *v /= acc;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// A Fenwick (binary indexed) tree of weights, for sampling an index with probability
/// proportional to its weight while weights change (images are born and die).
#[derive(Debug, Clone)]
pub struct Fenwick {
    tree: Vec<f64>,
    weights: Vec<f64>,
}

impl Fenwick {
    pub fn new(n: usize) -> Fenwick {
        Fenwick {
            tree: vec![0.0; n + 1],
            weights: vec![0.0; n],
        }
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    pub fn set(&mut self, i: usize, w: f64) {
        let delta = w - self.weights[i];
        self.weights[i] = w;
        let mut j = i + 1;
        while j < self.tree.len() {
            self.tree[j] += delta;
            j += j & j.wrapping_neg();
        }
    }

    pub fn get(&self, i: usize) -> f64 {
        self.weights[i]
    }

    pub fn total(&self) -> f64 {
        let mut s = 0.0;
        let mut j = self.weights.len();
        while j > 0 {
            s += self.tree[j];
            j &= j - 1;
        }
        s
    }

    /// An index drawn with probability weight/total; `None` when all weights are zero.
    pub fn sample(&self, rng: &mut Rng) -> Option<usize> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let mut target = rng.f64() * total;
        let mut pos = 0usize;
        let mut step = self.tree.len().next_power_of_two() / 2;
        while step > 0 {
            let next = pos + step;
            if next < self.tree.len() && self.tree[next] <= target {
                target -= self.tree[next];
                pos = next;
            }
            step /= 2;
        }
        // `pos` is the count of leading weights whose sum is <= target; float rounding can land on a
        // zero-weight slot, so walk to the nearest live one.
        let mut i = pos.min(self.weights.len() - 1);
        while self.weights[i] <= 0.0 {
            if i == 0 {
                return self.weights.iter().position(|&w| w > 0.0);
            }
            i -= 1;
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(
            a,
            (0..5)
                .scan(Rng::new(8), |r, _| Some(r.next_u64()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn fenwick_samples_by_weight() {
        let mut f = Fenwick::new(5);
        f.set(1, 1.0);
        f.set(3, 3.0);
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 5];
        for _ in 0..40_000 {
            counts[f.sample(&mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[0] + counts[2] + counts[4], 0);
        let share = f64::from(counts[3]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
        f.set(1, 0.0);
        f.set(3, 0.0);
        assert_eq!(f.sample(&mut rng), None);
    }

    #[test]
    fn zipf_is_skewed() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = Rng::new(3);
        let top = (0..10_000).filter(|_| z.sample(&mut rng) == 0).count();
        // P(rank 0) = 1 / H(1000) ~ 0.134
        assert!((1100..1600).contains(&top), "{top}");
    }

    #[test]
    fn distributions_have_their_means() {
        let mut rng = Rng::new(5);
        let n = 100_000;
        let m: f64 = (0..n).map(|_| rng.exp(3.0)).sum::<f64>() / n as f64;
        assert!((m - 3.0).abs() < 0.1, "{m}");
        let mut v: Vec<f64> = (0..n).map(|_| rng.lognormal(10.0, 1.0)).collect();
        v.sort_by(f64::total_cmp);
        assert!((v[n / 2] - 10.0).abs() < 0.5, "{}", v[n / 2]);
    }
}
