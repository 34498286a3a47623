//! Simulator throughput on an oracleGeneral Zipf trace (2 M requests, 1 GiB cache), one policy
//! per benchmark. `cargo bench -p thaw-trace --bench replay`; the end-to-end comparison with
//! libCacheSim on 20 M requests is bench/trace/sim_throughput.py.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use thaw_policy::{build, Capacity, PolicySpec};
use thaw_trace::category::CategoryMap;
use thaw_trace::gen::{generate_zipf, ZipfParams};
use thaw_trace::read::{ReadOptions, TraceFormat};
use thaw_trace::sim::{simulate_policies, SimConfig};

const REQUESTS: u64 = 2_000_000;

fn trace() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let p = dir.join(format!(
        "thaw-bench-zipf-{}.oracleGeneral",
        std::process::id()
    ));
    let params = ZipfParams {
        seed: 7,
        requests: REQUESTS,
        objects: 200_000,
        alpha: 1.0,
        size_median: 4096.0,
        size_sigma: 1.0,
        rate: 1000.0,
    };
    let mut f = std::fs::File::create(&p).expect("create bench trace");
    generate_zipf(&params, &mut f).expect("write bench trace");
    p
}

fn bench(c: &mut Criterion) {
    let path = trace();
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.throughput(Throughput::Elements(REQUESTS));
    for name in ["lru", "fifo", "clock", "sieve", "s3fifo"] {
        let Ok(spec) = name.parse::<PolicySpec>() else {
            continue;
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let pol = build(&spec, Capacity::single(256 << 20)).expect("policy builds");
                let cfg = SimConfig {
                    threads: 1,
                    ..SimConfig::new(vec![], vec![])
                };
                simulate_policies(
                    std::slice::from_ref(&path),
                    TraceFormat::OracleGeneral,
                    ReadOptions::default(),
                    CategoryMap::by_namespace(),
                    &cfg,
                    vec![pol],
                    &mut |_| {},
                )
                .expect("replay")
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, bench);
criterion_main!(benches);
