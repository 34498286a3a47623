//! Start-to-exit of `echo hi` in one process, side by side: the chroot floor (fork, chroot,
//! exec in an already-made root), thaw pooled, thaw cold; then sustained throughput one at a
//! time and 8 at a time, and the CPU time all processes spent per sandbox.
//!
//! `cargo bench -p thaw-sandbox --bench startup -- [RUNS]` (needs root). The CLI comparison
//! against crun and runc is `bench/sandbox/run.sh`. Root filesystem and data directory are on
//! tmpfs (/dev/shm). Pools refill on the same cores while starts run.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thaw_sandbox::{testsupport, HelperCommand, PoolConfig, Runtime, RuntimeConfig, SandboxSpec, StdioFds};


fn cpu_seconds() -> f64 {
    let get = |who| {
        // SAFETY: getrusage fills the struct we pass and nothing else.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200);
    if !testsupport::require_privileges("bench startup") {
        return;
    }
    let dir = testsupport::tmpfs_dir("thaw-bench-").unwrap();
    let rootfs = dir.path().join("rootfs");
    testsupport::busybox_rootfs(&rootfs).unwrap();
    let rt = Runtime::new(RuntimeConfig {
        data_dir: dir.path().join("data"),
        helper: HelperCommand { program: env!("CARGO_BIN_EXE_thaw-sandbox-helper").into(), args: vec![] },
        cgroup_layout: None,
    })
    .unwrap();
    let spec = SandboxSpec::for_rootfs(&rootfs, vec!["echo".into(), "hi".into()]);
    println!("thaw-sandbox startup bench: echo hi, {runs} runs each, rootfs and upper on tmpfs, date {}", date());

    // The floor: the same command in an already-made chroot.
    let mut floor = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        testsupport::chrooted(&rootfs, "/bin/echo", &["hi"]).stdout(Stdio::null()).status().unwrap();
        floor.push(t.elapsed());
    }
    let floor_med = testsupport::print_latencies("chroot floor", floor);

    let run_one = |f: &dyn Fn(StdioFds) -> thaw_sandbox::Result<thaw_sandbox::Sandbox>| {
        let t = Instant::now();
        let sb = f(StdioFds::null().unwrap()).unwrap();
        let exec = sb.timings().to_exec;
        let pooled = sb.timings().pooled;
        assert!(sb.wait().unwrap().success());
        (t.elapsed(), exec, pooled)
    };

    // Pooled, one at a time, the pool refilling in the background between starts.
    let pool = rt.pool(PoolConfig { profile: spec.profile.clone(), rootfs: Some(spec.rootfs.clone()), depth: 8 });
    pool.wait_ready(8, Duration::from_secs(30));
    let cpu0 = cpu_seconds();
    let (mut e2e, mut to_exec, mut misses) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        // Let the refill keep up so each start measures the pooled path (the sustained rate
        // without this pause is measured below).
        pool.wait_ready(1, Duration::from_secs(5));
        let (d, x, pooled) = run_one(&|io| pool.start(None, &spec.process, io));
        misses += usize::from(!pooled);
        e2e.push(d);
        to_exec.push(x);
    }
    rt.wait_teardowns(Duration::from_secs(30));
    let pooled_cpu = (cpu_seconds() - cpu0) / runs as f64;
    let pooled_med = testsupport::print_latencies("thaw pooled start-to-exit", e2e);
    testsupport::print_latencies("thaw pooled request-to-exec", to_exec);
    println!("  pooled misses {misses}; CPU (all processes, incl. refill) per sandbox {:.3} ms", pooled_cpu * 1e3);

    let cpu0 = cpu_seconds();
    let mut cold = Vec::new();
    for _ in 0..runs.min(100) {
        let (d, _, _) = run_one(&|io| rt.start(&spec, io));
        cold.push(d);
    }
    rt.wait_teardowns(Duration::from_secs(30));
    let cold_cpu = (cpu_seconds() - cpu0) / runs.min(100) as f64;
    let cold_med = testsupport::print_latencies("thaw cold start-to-exit", cold);
    println!("  cold CPU per sandbox {:.3} ms", cold_cpu * 1e3);

    // Sustained throughput: back to back, no pause for refill; then 8 threads at once.
    for threads in [1usize, 8] {
        let per = (runs / threads).max(10);
        let pool = Arc::new(rt.pool(PoolConfig { profile: spec.profile.clone(), rootfs: Some(spec.rootfs.clone()), depth: 8 }));
        pool.wait_ready(8, Duration::from_secs(30));
        let t = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let pool = pool.clone();
                let process = spec.process.clone();
                std::thread::spawn(move || {
                    let mut v = Vec::new();
                    for _ in 0..per {
                        let t = Instant::now();
                        let sb = pool.start(None, &process, StdioFds::null().unwrap()).unwrap();
                        assert!(sb.wait().unwrap().success());
                        v.push(t.elapsed());
                    }
                    v
                })
            })
            .collect();
        let all: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let wall = t.elapsed();
        let n = all.len();
        testsupport::print_latencies(&format!("sustained, {threads} at a time, latency"), all);
        println!(
            "  {:.0} sandboxes/s; pool hits {} misses {}",
            n as f64 / wall.as_secs_f64(),
            pool.stats().hits.load(Ordering::Relaxed),
            pool.stats().misses.load(Ordering::Relaxed)
        );
    }
    println!(
        "ratios: pooled - floor = {:+.3} ms; cold / pooled = {:.1}x",
        pooled_med - floor_med,
        cold_med / pooled_med
    );
}

fn date() -> String {
    Command::new("date").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}
