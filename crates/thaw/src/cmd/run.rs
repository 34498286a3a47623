//! `thaw run`: run a container from a root filesystem directory, an OCI image layout
//! (`oci:PATH[:TAG]`) or an OCI runtime bundle, in a sandbox built by `thaw-sandbox`.
//!
//! Process model: this command blocks the signals it relays before any thread exists, then
//! builds the sandbox through helper processes (this same binary re-executed with the hidden
//! `--sandbox-helper` flag), so no namespace work happens in this process. Without a daemon
//! API for pools, every `thaw run` takes the cold path; `--cold` states it explicitly.
//!
//! Each invocation is its own runtime instance under `<data>/run/<pid>-<n>`, so concurrent
//! `thaw run`s never share cgroups; on start, instances whose owner died (their lock is free)
//! are cleaned up: their processes killed, cgroups removed, directory deleted.

use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use thaw_sandbox::{HelperCommand, Runtime, RuntimeConfig, SandboxSpec, StdioFds};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Build every part of the sandbox on demand (thaw's own baseline).
    #[arg(long)]
    pub cold: bool,
    /// Run an OCI runtime bundle: a directory with `config.json` and the root it names.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub bundle: Option<PathBuf>,
    /// A root filesystem directory, or an image in an OCI layout as `oci:PATH[:TAG]`.
    #[arg(value_name = "ROOTFS|IMAGE", required_unless_present_any = ["bundle", "sandbox_helper"])]
    pub image: Option<String>,
    /// Print the time of each stage to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Data directory (layer store, sandbox state); the daemon's default when unset.
    #[arg(long, env = "THAW_DATA")]
    pub data: Option<PathBuf>,
    /// Memory limit (bytes, or with a k, m or g suffix).
    #[arg(long)]
    pub memory: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pub pids: Option<i64>,
    /// CPU limit in CPUs (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Hostname inside the sandbox.
    #[arg(long)]
    pub hostname: Option<String>,
    /// User as `UID[:GID]`.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Extra environment variables `KEY=VALUE`.
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Internal: run as a sandbox helper process (control socket on descriptor 3).
    #[arg(long, hide = true)]
    pub sandbox_helper: bool,
    /// Command and arguments (after `--`); the image's or bundle's own when omitted.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Signals relayed to the workload.
const RELAYED: &[i32] = &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.sandbox_helper {
        thaw_sandbox::helper::main();
    }
    let t0 = Instant::now();
    // Before any thread exists, so every thread inherits the mask and the signals reach the
    // signalfd in `wait_relaying` instead of killing us.
    thaw_sandbox::block_signals(RELAYED).context("blocking signals")?;
    let data = args.data.clone().unwrap_or_else(super::serve::default_data_dir);
    let (spec, _pins) = build_spec(&args, &data)?;
    let t_spec = t0.elapsed();
    // `_dir` is declared before `rt`, so it drops after it: the runtime kills and removes its
    // cgroups first, then the directory goes. (If thaw dies in between, the directory is still
    // there for the next `thaw run` to find and clean.)
    let _dir: InstanceDir;
    let rt: Runtime;
    {
        let (r, d) = open_instance(&data)?;
        _dir = InstanceDir(d);
        rt = r;
    }
    let t_rt = t0.elapsed();
    let sb = rt.start(&spec, StdioFds::inherit()?).context("starting the sandbox")?;
    let timings = sb.timings().clone();
    let status = sb.wait_relaying(RELAYED).context("waiting for the sandbox")?;
    if args.timings {
        eprintln!("thaw run timings (cold path, {}):", if args.cold { "--cold" } else { "no daemon pools" });
        eprintln!("  {:<28} {:>9.3} ms", "resolve_spec", t_spec.as_secs_f64() * 1e3);
        eprintln!("  {:<28} {:>9.3} ms", "open_runtime", (t_rt - t_spec).as_secs_f64() * 1e3);
        for (name, d) in &timings.stages {
            eprintln!("  {:<28} {:>9.3} ms", name, d.as_secs_f64() * 1e3);
        }
        eprintln!("  {:<28} {:>9.3} ms", "request_to_exec", timings.to_exec.as_secs_f64() * 1e3);
        eprintln!("  {:<28} {:>9.3} ms", "total_to_exit", t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(ExitCode::from(status.shell_code().clamp(0, 255) as u8))
}

/// Opens this invocation's runtime instance after cleaning up instances of dead invocations.
fn open_instance(data: &Path) -> anyhow::Result<(Runtime, PathBuf)> {
    let runs = data.join("run");
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let exe = std::env::current_exe().context("locating the thaw executable for the sandbox helper")?;
    let helper = HelperCommand { program: exe, args: vec!["run".into(), "--sandbox-helper".into()] };
    let cfg = |dir: PathBuf| RuntimeConfig { data_dir: dir, helper: helper.clone(), cgroup_layout: None };
    if let Ok(rd) = std::fs::read_dir(&runs) {
        for e in rd.flatten() {
            // An instance whose `thaw run` process still exists is left alone, even before it
            // has taken its lock (a reused pid only delays the clean-up to a later run).
            let owner = e.file_name().to_string_lossy().split('-').next().and_then(|p| p.parse::<u32>().ok());
            if owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
                continue;
            }
            // A free lock means the owner is gone: opening the instance kills and removes what
            // it left, dropping it cleans again, then the directory goes.
            if let Ok(stale) = Runtime::new(cfg(e.path())) {
                drop(stale);
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = runs.join(format!("{}-{nanos}", std::process::id()));
    let rt = Runtime::new(cfg(dir.clone())).context("opening the sandbox runtime")?;
    Ok((rt, dir))
}

/// Keeps the instance directory tidy: removed when `thaw run` ends normally.
struct InstanceDir(PathBuf);

impl Drop for InstanceDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn build_spec(args: &RunArgs, data: &Path) -> anyhow::Result<(SandboxSpec, Vec<thaw_store::layers::LayerPin>)> {
    let mut pins = Vec::new();
    let mut spec = if let Some(b) = &args.bundle {
        SandboxSpec::from_bundle(b)?
    } else {
        let image = args.image.as_deref().unwrap_or_default();
        if image.starts_with("oci:") {
            let (s, p) = spec_from_layout(image, data)?;
            pins = p;
            s
        } else if image.starts_with("docker://") {
            bail!("docker:// images need the daemon's mirror; pull into an OCI layout first (skopeo copy docker://... oci:DIR:TAG) and run oci:DIR:TAG");
        } else {
            let dir = PathBuf::from(image);
            if !dir.is_dir() {
                bail!("{image} is neither a directory nor an image name (oci:PATH[:TAG])");
            }
            SandboxSpec::for_rootfs(&std::fs::canonicalize(&dir)?, vec![])
        }
    };
    if !args.command.is_empty() {
        spec.process.args = args.command.clone();
    }
    if spec.process.args.is_empty() {
        bail!("no command: give one after `--`");
    }
    if let Some(m) = &args.memory {
        spec.profile.limits.memory_bytes = Some(parse_bytes(m)?);
    }
    if let Some(p) = args.pids {
        spec.profile.limits.pids_max = Some(p);
    }
    if let Some(c) = args.cpus {
        if c <= 0.0 {
            bail!("--cpus must be positive");
        }
        spec.profile.limits.cpu_period_us = Some(100_000);
        spec.profile.limits.cpu_quota_us = Some((c * 100_000.0) as i64);
    }
    if let Some(h) = &args.hostname {
        spec.profile.hostname = h.clone();
    }
    if let Some(u) = &args.user {
        let (uid, gid) = parse_user(u)?;
        spec.process.uid = uid;
        spec.process.gid = gid;
    }
    spec.process.env.extend(args.env.iter().cloned());
    if let Some(w) = &args.workdir {
        spec.process.cwd = w.clone();
    }
    Ok((spec, pins))
}

/// Unpacks (or finds) the image's layers in the layer store and applies its config.
fn spec_from_layout(image: &str, data: &Path) -> anyhow::Result<(SandboxSpec, Vec<thaw_store::layers::LayerPin>)> {
    let store = thaw_store::layers::LayerStore::open(data)
        .context("opening the layer store (if a thaw daemon holds it, stop it or use another --data)")?;
    let pins = store.ensure_layout_image(image).with_context(|| format!("unpacking {image}"))?;
    let r = thaw_oci::layout::LayoutRef::parse(image)?;
    let img = thaw_oci::layout::Layout::open(&r.path)?.image(r.tag.as_deref())?;
    let lowers: Vec<PathBuf> = pins.iter().rev().map(|p| p.path().to_path_buf()).collect();
    let mut spec = SandboxSpec::for_rootfs(Path::new("/"), vec![]);
    spec.rootfs.lowers = lowers;
    let cfg: serde_json::Value = serde_json::from_slice(&img.config).context("parsing the image config")?;
    let c = &cfg["config"];
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let env = strings(&c["Env"]);
    if !env.is_empty() {
        spec.process.env = env;
    }
    let mut argv = strings(&c["Entrypoint"]);
    argv.extend(strings(&c["Cmd"]));
    spec.process.args = argv;
    if let Some(w) = c["WorkingDir"].as_str().filter(|w| !w.is_empty()) {
        spec.process.cwd = w.to_string();
    }
    if let Some(u) = c["User"].as_str().filter(|u| !u.is_empty()) {
        let (uid, gid) = parse_user(u).context("the image's User must be numeric (UID[:GID]) or root")?;
        spec.process.uid = uid;
        spec.process.gid = gid;
    }
    Ok((spec, pins))
}

fn parse_user(u: &str) -> anyhow::Result<(u32, u32)> {
    if u == "root" {
        return Ok((0, 0));
    }
    let (a, b) = u.split_once(':').unwrap_or((u, u));
    let uid = a.parse().with_context(|| format!("user {u:?}: expected UID[:GID]"))?;
    let gid = b.parse().with_context(|| format!("user {u:?}: expected UID[:GID]"))?;
    Ok((uid, gid))
}

fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mul) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1i64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s.as_str(), 1),
    };
    let n: i64 = num.parse().with_context(|| format!("size {s:?}: expected a number with an optional k, m or g"))?;
    n.checked_mul(mul).filter(|v| *v > 0).with_context(|| format!("size {s:?} out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_users() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("-1").is_err());
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert_eq!(parse_user("7").unwrap(), (7, 7));
        assert_eq!(parse_user("root").unwrap(), (0, 0));
        assert!(parse_user("alice").is_err());
    }
}
