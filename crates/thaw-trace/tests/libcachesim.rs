//! The simulator against libCacheSim (PyPI `libcachesim`) on the same oracleGeneral file: same
//! trace, same byte capacity, the same miss counts. This checks the whole path — the
//! oracleGeneral reader, the replay loop and its accounting — not only the policies.
//!
//! Needs a Python with `libcachesim` importable: `$THAW_PYTHON`, else `/work/main/.venv/bin/python`
//! or `.venv/bin/python` in the workspace, else `python3`. Without one the test fails when `CI`
//! is set and is skipped otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use thaw_policy::{build, Capacity, PolicySpec};
use thaw_trace::category::CategoryMap;
use thaw_trace::gen::{generate_zipf, ZipfParams};
use thaw_trace::read::{ReadOptions, TraceFormat};
use thaw_trace::sim::{simulate_policies, SimConfig};

fn python() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("THAW_PYTHON") {
        candidates.push(p.into());
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    candidates.push(ws);
    candidates.push("python3".into());
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import libcachesim"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

const SCRIPT: &str = r#"
import sys, libcachesim as l
trace, size = sys.argv[1], int(sys.argv[2])
classes = {"lru": l.LRU, "fifo": l.FIFO, "clock": l.Clock, "sieve": l.Sieve, "s3fifo": l.S3FIFO}
for name in sys.argv[3:]:
    r = l.TraceReader(trace, l.TraceType.ORACLE_GENERAL_TRACE)
    n = 0
    misses = 0
    c = classes[name](cache_size=size)
    for req in r:
        n += 1
        if not c.get(req):
            misses += 1
    print(name, n, misses)
"#;

#[test]
fn miss_counts_match_libcachesim() {
    let Some(py) = python() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "libcachesim is not importable by any python; install it: pip install libcachesim"
            );
        }
        eprintln!("skipping miss_counts_match_libcachesim: no python with libcachesim (pip install libcachesim)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("z.oracleGeneral");
    let p = ZipfParams {
        seed: 3,
        requests: 30_000,
        objects: 3_000,
        alpha: 0.9,
        size_median: 2_000.0,
        size_sigma: 1.0,
        rate: 100.0,
    };
    generate_zipf(&p, &mut std::fs::File::create(&trace).unwrap()).unwrap();
    let capacity: u64 = 1_000_000;
    let names = ["lru", "fifo", "clock", "sieve", "s3fifo"];
    let names: Vec<&str> = names
        .into_iter()
        .filter(|n| n.parse::<PolicySpec>().is_ok())
        .collect();
    let out = Command::new(&py)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&trace)
        .arg(capacity.to_string())
        .args(&names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "libcachesim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policies = names
        .iter()
        .map(|n| build(&n.parse().unwrap(), Capacity::single(capacity)).unwrap())
        .collect();
    let rep = simulate_policies(
        &[trace],
        TraceFormat::OracleGeneral,
        ReadOptions { strict: true },
        CategoryMap::by_namespace(),
        &SimConfig::new(vec![], vec![]),
        policies,
        &mut |_| {},
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for (line, run) in text.lines().zip(&rep.runs) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], run.policy);
        assert_eq!(
            f[1].parse::<u64>().unwrap(),
            run.stats.requests,
            "{}: request count",
            run.policy
        );
        assert_eq!(
            f[2].parse::<u64>().unwrap(),
            run.stats.misses,
            "{}: misses differ from libcachesim",
            run.policy
        );
    }
    assert_eq!(text.lines().count(), rep.runs.len());
}
