//! Replays a libCacheSim oracleGeneral trace through thaw policies and prints requests per second,
//! for side-by-side throughput runs against libCacheSim on the very same file
//! (`bench/libcachesim/compare.sh`). It can also write the Zipf trace that script uses.
//!
//! ```text
//! replay_oracle gen FILE REQUESTS OBJECTS ALPHA SEED      write a Zipf trace (sizes 512 B..32 KiB)
//! replay_oracle run FILE CACHE_BYTES POLICY[,POLICY...]   replay; one line per policy
//! ```
//!
//! Zero-size records are skipped, as libCacheSim's readers do by default. The whole file is read
//! into memory first so that the timing covers the policy only, like libCacheSim's
//! `c_process_trace` loop over its (memory-mapped) reader.

use std::io::Write;
use std::time::Instant;

use thaw_policy::testutil::{Rng, Zipf};
use thaw_policy::{build, parse_bytes, Capacity, PolicySpec, Request};

fn usage() -> ! {
    eprintln!(
        "usage: replay_oracle gen FILE REQUESTS OBJECTS ALPHA SEED | run FILE CACHE_BYTES POLICIES"
    );
    std::process::exit(2)
}

fn generate(
    path: &str,
    requests: usize,
    objects: usize,
    alpha: f64,
    seed: u64,
) -> std::io::Result<()> {
    let mut rng = Rng(seed);
    let sizes: Vec<u32> = (0..objects)
        .map(|_| rng.log_uniform(512, 32768) as u32)
        .collect();
    let zipf = Zipf::new(objects, alpha);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for t in 0..requests {
        let r = zipf.sample(&mut rng);
        // scramble the id so that neither side benefits from sequential keys
        let id = (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555;
        out.write_all(&((t / 1000) as u32).to_le_bytes())?;
        out.write_all(&id.to_le_bytes())?;
        out.write_all(&sizes[r].to_le_bytes())?;
        out.write_all(&(-1i64).to_le_bytes())?;
    }
    out.flush()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen") if args.len() == 6 => {
            let n = args[2].parse().unwrap_or_else(|_| usage());
            let objs = args[3].parse().unwrap_or_else(|_| usage());
            let alpha = args[4].parse().unwrap_or_else(|_| usage());
            let seed = args[5].parse().unwrap_or_else(|_| usage());
            if let Err(e) = generate(&args[1], n, objs, alpha, seed) {
                eprintln!("replay_oracle: cannot write {}: {e}", args[1]);
                std::process::exit(1);
            }
        }
        Some("run") if args.len() == 4 => {
            let bytes = std::fs::read(&args[1]).unwrap_or_else(|e| {
                eprintln!("replay_oracle: cannot read {}: {e}", args[1]);
                std::process::exit(1)
            });
            if !bytes.len().is_multiple_of(24) {
                eprintln!(
                    "replay_oracle: {} is not a whole number of 24-byte oracleGeneral records",
                    args[1]
                );
                std::process::exit(1);
            }
            let reqs: Vec<Request> = bytes
                .chunks_exact(24)
                .map(|r| {
                    let t = u32::from_le_bytes(r[0..4].try_into().unwrap());
                    let id = u64::from_le_bytes(r[4..12].try_into().unwrap());
                    let size = u32::from_le_bytes(r[12..16].try_into().unwrap());
                    Request::new(t as u64 * 1_000_000, id, size as u64)
                })
                .filter(|r| r.size != 0)
                .collect();
            let cache = parse_bytes(&args[2]).unwrap_or_else(|e| {
                eprintln!("replay_oracle: bad cache size: {e}");
                std::process::exit(2)
            });
            for name in args[3].split(',') {
                let spec: PolicySpec = name.parse().unwrap_or_else(|e| {
                    eprintln!("replay_oracle: {e}");
                    std::process::exit(2)
                });
                let cap = if spec.two_tier() {
                    Capacity {
                        fast: cache,
                        slow: 4 * cache,
                    }
                } else {
                    Capacity::single(cache)
                };
                let mut p = build(&spec, cap).unwrap_or_else(|e| {
                    eprintln!("replay_oracle: {e}");
                    std::process::exit(2)
                });
                let mut fx = Vec::with_capacity(64);
                let start = Instant::now();
                let mut misses = 0u64;
                for r in &reqs {
                    fx.clear();
                    misses += p.access(r, &mut fx).is_none() as u64;
                }
                let secs = start.elapsed().as_secs_f64();
                println!(
                    "thaw {name} requests={} misses={misses} miss_ratio={:.4} seconds={secs:.3} mreq_per_s={:.2}",
                    reqs.len(),
                    misses as f64 / reqs.len() as f64,
                    reqs.len() as f64 / secs / 1e6
                );
            }
        }
        _ => usage(),
    }
}
