//! A Python function that imports json, decimal, email and http.client and returns JSON, started
//! four ways side by side on one root filesystem (Debian's python3 copied to /dev/shm):
//!
//! 1. the floor: fork, chroot and exec of python3 on the host, no sandbox;
//! 2. thaw template fork: `Template::invoke` on an instance forked from a template that imported
//!    the modules once (the pool refilling in the background, on the same cores);
//! 3. thaw pooled with a fresh interpreter: `Pool::run_output` of `python3 -c ...`;
//! 4. `crun run` of the same command, in one private mount namespace with
//!    /sys/fs/cgroup/unified unmounted (crun refuses this machine's hybrid layout otherwise),
//!    timed by hyperfine.
//!
//! `cargo bench -p thaw-sandbox --bench zygote -- [RUNS]` (root; crun and hyperfine for line 4).
//! Prints medians and p99 over RUNS (default 100) starts each, the ratios, and the CPU time all
//! of thaw's processes spent per template invocation, refills included.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thaw_sandbox::{testsupport, HelperCommand, PoolConfig, RootfsConfig, Runtime, RuntimeConfig, SandboxSpec};
use thaw_sandbox::{TemplateConfig, TemplateRuntime};

const FUNCTION: &str = r#"import json, decimal, email.message, http.client

def handler(payload):
    total = decimal.Decimal("1.10") * 3
    m = email.message.EmailMessage()
    m["Subject"] = "invoice"
    return {"total": str(total), "subject": m["Subject"], "status": http.client.responses[200],
            "payload": json.loads(payload or b"null")}
"#;
const FRESH: &str = "import sys; sys.path.insert(0, '/app'); import fn, json; sys.stdout.write(json.dumps(fn.handler(b'7')))";
const PYTHON: &str = "/usr/bin/python3";


/// Microseconds of CPU the processes in cgroup2 directory `dir` (and below, removed ones
/// included) have used.
fn cgroup_cpu_us(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("cpu.stat"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

fn self_cpu_us() -> u64 {
    // SAFETY: getrusage fills the struct we pass and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn check(out: &[u8]) {
    let s = String::from_utf8_lossy(out);
    assert!(s.contains("\"total\": \"3.30\"") && s.contains("\"status\": \"OK\""), "unexpected output: {s}");
}

fn crun(root: &Path, work: &Path, runs: usize) -> Option<f64> {
    for tool in ["crun", "hyperfine", "unshare"] {
        if Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            println!("crun line skipped: {tool} is not installed");
            return None;
        }
    }
    let bundle = work.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let st = Command::new("crun").arg("spec").current_dir(&bundle).status().unwrap();
    assert!(st.success(), "crun spec failed");
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["root"] = serde_json::json!({"path": root, "readonly": true});
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!([PYTHON, "-B", "-s", "-c", FRESH]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let state = work.join("crun-state");
    let json = work.join("crun.json");
    let cmd = format!(
        "umount /sys/fs/cgroup/unified 2>/dev/null; crun --root {} run -b {} thaw-zygote-bench | grep -q 3.30 || exit 1; \
         hyperfine -N --warmup 3 --runs {runs} --style basic --export-json {} 'crun --root {} run -b {} thaw-zygote-bench' >/dev/null",
        state.display(),
        bundle.display(),
        json.display(),
        state.display(),
        bundle.display()
    );
    let st = Command::new("unshare").args(["-m", "--propagation", "private", "bash", "-c", &cmd]).status().unwrap();
    if !st.success() {
        println!("crun line failed (exit {st}); see the messages above");
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut times: Vec<Duration> =
        v["results"][0]["times"].as_array().unwrap().iter().map(|t| Duration::from_secs_f64(t.as_f64().unwrap())).collect();
    times.sort();
    Some(testsupport::print_latencies("crun run (python3 -c, fresh interpreter)", times))
}

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100).max(50);
    if !testsupport::require_privileges("bench zygote") {
        return;
    }
    let work = testsupport::tmpfs_dir("thaw-zbench-").unwrap();
    let root = work.path().join("rootfs");
    testsupport::python_rootfs(&root).unwrap();
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::write(root.join("app/fn.py"), FUNCTION).unwrap();
    println!(
        "thaw-sandbox zygote bench: python function (json, decimal, email, http.client), {runs} runs each, root filesystem and uppers on tmpfs (/dev/shm), {}",
        String::from_utf8_lossy(&Command::new("date").arg("-u").output().unwrap().stdout).trim()
    );

    // 1. The floor: python3 in a chroot, nothing else.
    let mut floor = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = testsupport::chrooted(&root, PYTHON, &["-B", "-s", "-c", FRESH]).stdout(Stdio::piped()).output().unwrap();
        check(&out.stdout);
        floor.push(t.elapsed());
    }
    let floor_med = testsupport::print_latencies("floor: python3 in a chroot", floor);

    let rt = Runtime::new(RuntimeConfig {
        data_dir: work.path().join("data"),
        helper: HelperCommand { program: env!("CARGO_BIN_EXE_thaw-sandbox-helper").into(), args: vec![] },
        cgroup_layout: None,
    })
    .unwrap();
    let unified = match rt.cgroup_layout() {
        thaw_sandbox::cgroup::CgroupLayout::Hybrid { unified: Some(u), .. } => Some(u.join(&rt.names().cgroup_parent)),
        thaw_sandbox::cgroup::CgroupLayout::V2 { root } => Some(root.join(&rt.names().cgroup_parent)),
        _ => None,
    };

    // 2. Template fork.
    let t0 = Instant::now();
    let template = rt
        .template(TemplateConfig {
            profile: Default::default(),
            rootfs: RootfsConfig::with_defaults(vec![root.clone()]),
            runtime: TemplateRuntime::Python {
                interpreter: PYTHON.into(),
                // What the function imports, and the email modules its first call would import.
                preload: ["json", "decimal", "email.message", "email.policy", "email.headerregistry", "email.contentmanager", "http.client"]
                    .map(String::from)
                    .to_vec(),
                handler: "fn:handler".into(),
            },
            env: vec!["PYTHONPATH=/app".into()],
            cwd: "/".into(),
            user: (0, 0),
            depth: 4,
        })
        .unwrap();
    println!("template start (interpreter, imports): {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    assert!(template.wait_ready(4, Duration::from_secs(60)));
    let cpu0 = (self_cpu_us(), unified.as_deref().map(cgroup_cpu_us).unwrap_or(0));
    let (mut e2e, mut critical) = (Vec::new(), Vec::new());
    let mut prepared: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    let mut misses = 0;
    for i in 0..runs {
        // Let the refill keep up, so each invocation measures the pooled path; the sustained
        // rate without this pause is below.
        template.wait_ready(1, Duration::from_secs(5));
        let t = Instant::now();
        let inv = template.invoke(format!("{i}").as_bytes(), Some(Duration::from_secs(30))).unwrap();
        e2e.push(t.elapsed());
        check(&inv.stdout);
        misses += usize::from(!inv.timings.pooled);
        critical.push(inv.timings.stages[inv.timings.critical_from..].iter().map(|(_, d)| *d).sum());
        for (name, d) in &inv.timings.stages[..inv.timings.critical_from] {
            prepared.entry(name.clone()).or_default().push(*d);
        }
    }
    rt.wait_teardowns(Duration::from_secs(30));
    let cpu1 = (self_cpu_us(), unified.as_deref().map(cgroup_cpu_us).unwrap_or(0));
    let fork_med = testsupport::print_latencies("thaw template fork (invoke, end to end)", e2e);
    testsupport::print_latencies("  of which take+send+run+collect", critical);
    for (name, v) in prepared {
        testsupport::print_latencies(&format!("  ahead of time: {name}"), v);
    }
    println!(
        "  misses {misses}; CPU per invocation, refill included: {:.3} ms (this process {:.3} ms, sandbox processes {:.3} ms{})",
        ((cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1)) as f64 / runs as f64 / 1e3,
        (cpu1.0 - cpu0.0) as f64 / runs as f64 / 1e3,
        (cpu1.1 - cpu0.1) as f64 / runs as f64 / 1e3,
        if unified.is_none() { ", not measured: no cgroup2 mount" } else { "" }
    );
    let t = Instant::now();
    let mut sustained = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        let inv = template.invoke(format!("{i}").as_bytes(), Some(Duration::from_secs(30))).unwrap();
        check(&inv.stdout);
        sustained.push(t.elapsed());
    }
    let wall = t.elapsed();
    testsupport::print_latencies("thaw template fork, back to back", sustained);
    println!("  {:.0} invocations/s sustained, one at a time (pool depth 4, refill on the same 2 cores)", runs as f64 / wall.as_secs_f64());
    let template = std::sync::Arc::new(template);
    let per = (runs / 8).max(10);
    let t = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let template = template.clone();
            std::thread::spawn(move || {
                (0..per)
                    .map(|i| {
                        let t = Instant::now();
                        let inv = template.invoke(format!("{i}").as_bytes(), Some(Duration::from_secs(60))).unwrap();
                        check(&inv.stdout);
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let wall = t.elapsed();
    let n = all.len();
    testsupport::print_latencies("thaw template fork, 8 at a time", all);
    println!("  {:.0} invocations/s sustained, 8 at a time", n as f64 / wall.as_secs_f64());
    drop(template);

    // 3. Pooled sandbox, fresh interpreter.
    let spec = SandboxSpec::for_rootfs(&root, [PYTHON, "-B", "-s", "-c", FRESH].map(String::from).to_vec());
    let pool = rt.pool(PoolConfig { profile: spec.profile.clone(), rootfs: Some(spec.rootfs.clone()), depth: 4 });
    assert!(pool.wait_ready(4, Duration::from_secs(60)));
    let mut pooled = Vec::new();
    for _ in 0..runs {
        pool.wait_ready(1, Duration::from_secs(5));
        let t = Instant::now();
        let out = pool.run_output(None, &spec.process).unwrap();
        pooled.push(t.elapsed());
        check(&out.stdout);
    }
    let pooled_med = testsupport::print_latencies("thaw pooled, fresh interpreter", pooled);
    drop(pool);
    rt.wait_teardowns(Duration::from_secs(30));

    // 4. crun.
    let crun_med = crun(&root, work.path(), runs);

    println!("ratios: pooled-fresh / fork = {:.1}x, floor / fork = {:.1}x", pooled_med / fork_med, floor_med / fork_med);
    if let Some(c) = crun_med {
        println!("        crun / fork = {:.1}x (goal >= 10x); fork median {fork_med:.3} ms (goal <= 5 ms)", c / fork_med);
    }
}
