//! Blob store benchmarks: commit throughput of a 100 MiB blob (write + hash + fsync + rename +
//! metadata commit) on tmpfs (/dev/shm) and on the ext4 disk (/var/tmp), and the latency of `get`
//! on a present blob (policy lookup, pin, open).
//!
//! Run: `cargo bench -p thaw-store --bench store`.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use thaw_oci::Digest;
use thaw_store::{BlobStore, Committed, StoreConfig};

const BLOB: usize = 100 << 20;
const CHUNK: usize = 1 << 20;

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn commit_throughput(c: &mut Criterion) {
    let data = content(7, BLOB);
    let d = Digest::sha256_of(&data);
    let mut g = c.benchmark_group("commit_100MiB");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Bytes(BLOB as u64));
    for (name, base) in [("tmpfs", "/dev/shm"), ("ext4", "/var/tmp")] {
        if !Path::new(base).is_dir() {
            eprintln!("skipping commit_100MiB/{name}: {base} is missing");
            continue;
        }
        let dir = tempfile::Builder::new().prefix("thaw-store-bench-").tempdir_in(base).unwrap();
        let store = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    store.remove(&d).unwrap();
                },
                |_| {
                    let mut w = store.begin(&d, Some(BLOB as u64)).unwrap();
                    for chunk in data.chunks(CHUNK) {
                        w.write(chunk).unwrap();
                    }
                    assert_eq!(w.commit().unwrap(), Committed::Stored);
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn get_latency(c: &mut Criterion) {
    let dir = tempfile::Builder::new().prefix("thaw-store-bench-").tempdir_in("/dev/shm").unwrap();
    let store = BlobStore::open(dir.path(), StoreConfig { capacity: Some(1 << 30), ..StoreConfig::default() }).unwrap();
    let digests: Vec<Digest> = (0..1000u64)
        .map(|i| {
            let data = content(i + 100, 4096);
            let d = Digest::sha256_of(&data);
            let mut w = store.begin(&d, None).unwrap();
            w.write(&data).unwrap();
            w.commit().unwrap();
            d
        })
        .collect();
    let mut i = 0usize;
    c.bench_function("get_present_4KiB", |b| {
        b.iter(|| {
            i = (i + 1) % digests.len();
            let h = store.get(&digests[i]).unwrap().unwrap();
            criterion::black_box(h.size)
        })
    });
    c.bench_function("stat_present", |b| {
        b.iter(|| {
            i = (i + 1) % digests.len();
            criterion::black_box(store.stat(&digests[i]).unwrap())
        })
    });
}

criterion_group!(benches, commit_throughput, get_latency);
criterion_main!(benches);
