//! thaw's policies against libCacheSim, the reference implementation: same trace file, same byte
//! capacity, exactly the same number of misses and missed bytes.
//!
//! The traces are generated here (Zipf with mixed sizes including zero-size objects and objects
//! larger than the cache, scan-heavy, unit-size, and a tiny-cache edge-case trace), written in
//! libCacheSim's oracleGeneral format (24-byte little-endian records: u32 time, u64 object id,
//! u32 size, i64 next access vtime or -1), and replayed both by thaw and by libCacheSim through
//! `libcachesim_run.py`.
//!
//! Needs Python with the PyPI package `libcachesim==0.3.5`: `$THAW_PYTHON` if set, else
//! `<workspace>/.venv/bin/python`. Without it the test fails when `CI` is set and otherwise prints
//! `skipping ...` and passes.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use thaw_policy::testutil::{Rng, Zipf};
use thaw_policy::{build, Capacity, PolicySpec, Request};

/// thaw policy names compared; libcachesim_run.py maps each to libCacheSim's policy and
/// parameters (`slru` is libCacheSim's default of 4 segments).
const POLICIES: &[&str] = &[
    "fifo", "lru", "lfu", "clock", "clock:2", "clock:3", "slru", "slru:2", "slru:3", "s3fifo",
    "sieve",
];

struct Trace {
    name: &'static str,
    reqs: Vec<(u64, u32)>,
    sizes: Vec<u64>,
}

impl Trace {
    fn working_set_bytes(&self) -> u64 {
        let mut seen = HashMap::new();
        for &(id, size) in &self.reqs {
            seen.insert(id, size as u64);
        }
        seen.values().sum()
    }
}

/// Zipf(0.9) over 4000 objects with log-uniform sizes up to 200 kB, every 40th object of size
/// zero and five 5 MB objects, larger than the smaller caches.
fn zipf_mixed() -> Trace {
    let mut rng = Rng(1);
    let n = 4000;
    let sizes: Vec<u32> = (0..n)
        .map(|i| match i {
            _ if i % 40 == 7 => 0,
            _ if i % 800 == 3 => 5_000_000,
            _ => rng.log_uniform(1, 200_000) as u32,
        })
        .collect();
    let z = Zipf::new(n, 0.9);
    let reqs = (0..40_000)
        .map(|_| {
            let r = z.sample(&mut rng);
            (r as u64 * 7 + 11, sizes[r])
        })
        .collect();
    Trace {
        name: "zipf-mixed",
        reqs,
        sizes: vec![],
    }
}

/// A Zipf(1.0) hot set of 500 objects interleaved with a looping sequential scan over 8000 cold
/// objects (30% of requests) — the pattern that separates scan-resistant policies from LRU.
fn scan_heavy() -> Trace {
    let mut rng = Rng(2);
    let hot: Vec<u32> = (0..500)
        .map(|_| rng.log_uniform(100, 50_000) as u32)
        .collect();
    let cold: Vec<u32> = (0..8000)
        .map(|_| rng.log_uniform(100, 50_000) as u32)
        .collect();
    let z = Zipf::new(hot.len(), 1.0);
    let mut scan = 0usize;
    let reqs = (0..30_000)
        .map(|_| {
            if rng.unit() < 0.3 {
                scan = (scan + 1) % cold.len();
                (1_000_000 + scan as u64, cold[scan])
            } else {
                let r = z.sample(&mut rng);
                (r as u64, hot[r])
            }
        })
        .collect();
    Trace {
        name: "scan-heavy",
        reqs,
        sizes: vec![],
    }
}

/// Unit sizes (an object-count cache): many ties in every policy's ordering.
fn unit_sizes() -> Trace {
    let mut rng = Rng(3);
    let z = Zipf::new(3000, 0.8);
    let reqs = (0..25_000)
        .map(|_| (z.sample(&mut rng) as u64, 1))
        .collect();
    Trace {
        name: "unit-size",
        reqs,
        sizes: vec![100, 500, 1500],
    }
}

/// Sizes 0..=20 against caches of 10 to 64 bytes: zero sizes, objects larger than SLRU's segment
/// quota and than S3-FIFO's small queue, and objects exactly as large as the small queue.
fn tiny() -> Trace {
    let mut rng = Rng(4);
    let z = Zipf::new(200, 0.7);
    let sizes: Vec<u32> = (0..200).map(|_| (rng.next_u64() % 21) as u32).collect();
    let reqs = (0..6000)
        .map(|_| {
            let r = z.sample(&mut rng);
            (r as u64, sizes[r])
        })
        .collect();
    Trace {
        name: "tiny",
        reqs,
        sizes: vec![10, 23, 64],
    }
}

fn write_oracle_general(trace: &Trace, path: &Path) {
    // Real next-access vtimes (index of the object's next request, -1 after its last), as
    // libCacheSim's converters write them; thaw ignores the field and so must libCacheSim.
    let mut next = vec![-1i64; trace.reqs.len()];
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, &(id, _)) in trace.reqs.iter().enumerate().rev() {
        if let Some(&j) = last.get(&id) {
            next[i] = j as i64;
        }
        last.insert(id, i);
    }
    let mut out = Vec::with_capacity(trace.reqs.len() * 24);
    for (i, &(id, size)) in trace.reqs.iter().enumerate() {
        out.extend_from_slice(&((i / 10) as u32).to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&next[i].to_le_bytes());
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&out))
        .expect("writing the trace");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    requests: u64,
    misses: u64,
    miss_bytes: u64,
}

fn thaw_counts(trace: &Trace, policy: &str, cache_size: u64, keep_zero: bool) -> Counts {
    let spec: PolicySpec = policy.parse().unwrap();
    let mut p = build(&spec, Capacity::single(cache_size)).unwrap();
    let mut c = Counts {
        requests: 0,
        misses: 0,
        miss_bytes: 0,
    };
    let mut fx = Vec::new();
    for (t, &(id, size)) in trace.reqs.iter().enumerate() {
        if size == 0 && !keep_zero {
            continue;
        }
        fx.clear();
        c.requests += 1;
        if p.access(&Request::new(t as u64, id, size as u64), &mut fx)
            .is_none()
        {
            c.misses += 1;
            c.miss_bytes += size as u64;
        }
    }
    c
}

fn python() -> Option<PathBuf> {
    let candidate = match std::env::var_os("THAW_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
    };
    let ok = Command::new(&candidate)
        .args(["-c", "import libcachesim"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(candidate)
}

fn run_libcachesim(
    py: &Path,
    trace: &Path,
    sizes: &[u64],
    keep_zero: bool,
) -> HashMap<(String, u64), Counts> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libcachesim_run.py");
    let sizes_arg = sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(py);
    cmd.arg(&script)
        .arg(trace)
        .args(["--sizes", &sizes_arg, "--policies", &POLICIES.join(",")]);
    if keep_zero {
        cmd.arg("--keep-zero-size");
    }
    let out = cmd.output().expect("running libcachesim_run.py");
    assert!(
        out.status.success(),
        "libcachesim_run.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut res = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        // a flat JSON object of known keys; parsed by hand to keep the crate free of serde_json
        let field = |k: &str| -> String {
            let pat = format!("\"{k}\": ");
            let start = line
                .find(&pat)
                .unwrap_or_else(|| panic!("no {k} in {line}"))
                + pat.len();
            let rest = &line[start..];
            let end = rest.find([',', '}']).unwrap();
            rest[..end].trim().trim_matches('"').to_string()
        };
        let num = |k: &str| field(k).parse::<u64>().unwrap();
        res.insert(
            (field("policy"), num("cache_size")),
            Counts {
                requests: num("requests"),
                misses: num("misses"),
                miss_bytes: num("miss_bytes"),
            },
        );
    }
    res
}

#[test]
fn miss_counts_equal_libcachesim() {
    let Some(py) = python() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but no Python with libcachesim was found; create it with \
                 `python3 -m venv .venv && .venv/bin/pip install libcachesim==0.3.5` or set THAW_PYTHON"
            );
        }
        eprintln!("skipping miss_counts_equal_libcachesim: no Python with libcachesim (set THAW_PYTHON or create <workspace>/.venv)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for mut trace in [zipf_mixed(), scan_heavy(), unit_sizes(), tiny()] {
        if trace.sizes.is_empty() {
            let wss = trace.working_set_bytes();
            trace.sizes = vec![wss / 200, wss / 20, wss * 3 / 10];
        }
        let path = dir.path().join(format!("{}.oracleGeneral", trace.name));
        write_oracle_general(&trace, &path);
        // zero-size requests fed to the cache, and dropped as libCacheSim's readers do by default
        for keep_zero in [true, false] {
            let reference = run_libcachesim(&py, &path, &trace.sizes, keep_zero);
            for policy in POLICIES {
                for &size in &trace.sizes {
                    let want = reference[&(policy.to_string(), size)];
                    let got = thaw_counts(&trace, policy, size, keep_zero);
                    compared += 1;
                    if got != want {
                        mismatches.push(format!(
                            "{} keep_zero={keep_zero} {policy} cache={size}: thaw {got:?}, libCacheSim {want:?}",
                            trace.name
                        ));
                    }
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {compared} runs differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    eprintln!("{compared} policy/trace/size runs agree exactly with libCacheSim");
}
