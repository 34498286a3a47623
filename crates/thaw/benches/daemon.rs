//! Start-to-exit of `echo hi` through a running `thaw serve` (the real binary) and its sandbox
//! socket, side by side with the chroot floor measured in the same run: pooled one at a time
//! (paced so the refill keeps up), built on demand in the daemon (a depth-0 profile: thaw's cold
//! path behind the API), then sustained starts back to back, one and eight at a time, with the
//! pools refilling on the same cores, and the CPU time the daemon and everything it started
//! spent per sandbox.
//!
//! `cargo bench -p thaw --bench daemon -- [RUNS]` (root; busybox-static). Root filesystem and
//! data directory on tmpfs (/dev/shm). `bench/sandbox/run.sh` runs it after the CLI comparison.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thaw_sandbox::service::{Client, Overrides, RunRequest, Target};
use thaw_sandbox::{testsupport, StdioFds};
use thaw_testkit::{http_get, metric_value, ThawDaemon};

const DEPTH: usize = 8;


/// CPU seconds of `pid` and of its reaped descendants (helpers, and through them the workloads).
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("").split(' ').filter_map(|f| f.parse().ok()).collect();
    // After the command name: state is not numeric, so utime..cstime are 11..14 here.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    fields.get(10..14).map(|t| t.iter().sum::<u64>() as f64 / hz).unwrap_or(0.0)
}

fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Bench {
    sock: std::path::PathBuf,
    rootfs: String,
    addr: std::net::SocketAddr,
}

impl Bench {
    /// One start through the socket: (start-to-exit, daemon's request-to-exec, pooled).
    fn one(&self, profile: Option<&str>) -> (Duration, Duration, bool) {
        let req = RunRequest {
            target: Target::Image(self.rootfs.clone()),
            overrides: Overrides { args: vec!["echo".into(), "hi".into()], profile: profile.map(str::to_string), ..Default::default() },
        };
        let t = Instant::now();
        let s = Client::connect(&self.sock).unwrap().expect("the daemon serves its sandbox socket").start(&req, StdioFds::null().unwrap()).unwrap();
        let (daemon, pooled) = (Duration::from_micros(s.info().daemon_us), s.info().pooled);
        assert!(s.wait().unwrap().success());
        (t.elapsed(), daemon, pooled)
    }

    fn ready(&self) -> f64 {
        let m = http_get(self.addr, "/metrics");
        m.lines()
            .filter(|l| l.starts_with("thaw_sandbox_pool_ready{") && l.contains("[default]"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn wait_ready(&self, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ready() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(200);
    if !testsupport::require_privileges("bench daemon") {
        return;
    }
    let dir = testsupport::tmpfs_dir("thaw-bench-daemon-").unwrap();
    let rootfs = dir.path().join("rootfs");
    testsupport::busybox_rootfs(&rootfs).unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("thaw.toml");
    std::fs::write(&cfg, format!("[sandbox]\ndepth = {DEPTH}\n[sandbox.profiles.ondemand]\ndepth = 0\n")).unwrap();
    let d = ThawDaemon::start(
        Path::new(env!("CARGO_BIN_EXE_thaw")),
        &["--standalone", "--log", "warn", "--config", cfg.to_str().unwrap(), "--data", data.to_str().unwrap()],
    );
    let pid = d.child.as_ref().unwrap().id();
    let b = Bench { sock: data.join("sandbox.sock"), rootfs: rootfs.display().to_string(), addr: d.addr };
    println!("thaw daemon bench: echo hi through the sandbox socket, {runs} runs each, pool depth {DEPTH}, rootfs and data on tmpfs, date {}, load {}", date(), std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());

    // Both the floor and the pooled starts are paced alike: a pause before each, long enough
    // for the pool's background refill to finish (a part takes 5-7 ms of CPU here), so every
    // start takes a ready part without this process polling the daemon right before it.
    let pause = Duration::from_millis(15);
    let mut floor = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(pause);
        let t = Instant::now();
        testsupport::chrooted(&rootfs, "/bin/echo", &["hi"]).stdout(Stdio::null()).status().unwrap();
        floor.push(t.elapsed());
    }
    let floor_med = testsupport::print_latencies("chroot floor", floor);

    // Pooled, paced as the floor was (the unpaced rate is below). A start that found the pool
    // empty is counted as a miss.
    b.one(None);
    b.wait_ready(DEPTH as f64);
    let (mut e2e, mut daemon, mut misses) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        std::thread::sleep(pause);
        let (t, x, pooled) = b.one(None);
        misses += usize::from(!pooled);
        e2e.push(t);
        daemon.push(x);
    }
    let pooled_med = testsupport::print_latencies("daemon API pooled start-to-exit", e2e);
    testsupport::print_latencies("  daemon's request-to-exec", daemon);
    println!("  misses {misses}");

    let mut cold = Vec::new();
    for _ in 0..runs.min(100) {
        let (t, _, pooled) = b.one(Some("ondemand"));
        assert!(!pooled);
        cold.push(t);
    }
    let cold_med = testsupport::print_latencies("daemon API built on demand (cold)", cold);

    for threads in [1usize, 8] {
        let per = (runs / threads).max(10);
        b.wait_ready(DEPTH as f64);
        std::thread::sleep(Duration::from_millis(200));
        let (cpu0, self0) = (cpu_of(pid), self_cpu());
        let t = Instant::now();
        let results: Vec<(Duration, Duration, bool)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(|| (0..per).map(|_| b.one(None)).collect::<Vec<_>>())).collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let wall = t.elapsed();
        // Teardown and refill finish after the last start: wait for the pool to be full again,
        // so their CPU time is counted.
        b.wait_ready(DEPTH as f64);
        let m = http_get(b.addr, "/metrics");
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric_value(&http_get(b.addr, "/metrics"), "thaw_sandbox_pending_teardowns") > 0.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let n = results.len();
        let hits = results.iter().filter(|r| r.2).count();
        testsupport::print_latencies(&format!("sustained, {threads} at a time"), results.into_iter().map(|r| r.0).collect());
        println!(
            "  {:.0} sandboxes/s; pooled {hits}/{n}; CPU per sandbox: daemon+helpers+workloads {:.3} ms (incl. refill), client {:.3} ms; parts built so far {}",
            n as f64 / wall.as_secs_f64(),
            (cpu_of(pid) - cpu0) / n as f64 * 1e3,
            (self_cpu() - self0) / n as f64 * 1e3,
            metric_value(&m, "thaw_sandbox_parts_built_total"),
        );
    }
    println!(
        "ratios: daemon API pooled - floor = {:+.3} ms (goal <= +1 ms); on demand / pooled = {:.1}x",
        pooled_med - floor_med,
        cold_med / pooled_med
    );
    drop(d);
}

fn date() -> String {
    Command::new("date").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}
