//! `thaw run`: run a container from a root filesystem directory, an OCI image layout
//! (`oci:PATH[:TAG]`) or an OCI runtime bundle, in a sandbox built by `thaw-sandbox`.
//!
//! Two paths:
//!
//! * **through the daemon**: when a `thaw serve` with a `[sandbox]` section serves the data
//!   directory (its sandbox socket, `<data>/sandbox.sock`, answers), `thaw run` sends it the
//!   request and its own stdin, stdout and stderr descriptors; the daemon starts the sandbox from
//!   a pool with them, so output goes straight to this terminal. This process relays the signals
//!   it gets and exits with the workload's status. Root directories and `oci:` layouts are
//!   resolved by the daemon (which holds the layer store), bundles here.
//! * **cold** (`--cold`, or no such daemon): this command builds every part itself through helper
//!   processes (this same binary re-executed with the hidden `--sandbox-helper` flag), so no
//!   namespace work happens in this process.
//!
//! Either way it blocks the signals it relays before any thread exists.
//!
//! Each invocation is its own runtime instance under `<data>/run/<pid>-<n>`, so concurrent
//! `thaw run`s never share cgroups; on start, instances whose owner died (their lock is free)
//! are cleaned up: their processes killed, cgroups removed, directory deleted.

use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use thaw_sandbox::service::{Client, Overrides, RunRequest, Target};
use thaw_sandbox::{HelperCommand, Runtime, RuntimeConfig, SandboxSpec, StdioFds};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Build every part of the sandbox on demand (thaw's own baseline).
    #[arg(long)]
    pub cold: bool,
    /// Run an OCI runtime bundle: a directory with `config.json` and the root it names.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub bundle: Option<PathBuf>,
    /// A root filesystem directory, an image in an OCI layout as `oci:PATH[:TAG]`, or (through a
    /// daemon with sandboxes) an image of a registry it mirrors as `docker://REF`.
    #[arg(value_name = "ROOTFS|IMAGE", required_unless_present_any = ["bundle", "sandbox_helper"])]
    pub image: Option<String>,
    /// Print the time of each stage to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Give the workload a terminal: a pseudo-terminal of the sandbox's own as its stdin, stdout
    /// and stderr and its controlling terminal, sized like this one and copied to and from it
    /// (put in raw mode while it runs, so Ctrl-C goes to the workload). Implied by a bundle
    /// whose process asks for a terminal.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Run a minimal init as PID 1 that forwards signals to the command and reaps orphaned
    /// processes. Without it the command is PID 1, and the kernel drops the signals (SIGTERM,
    /// Ctrl-C) it has no handler for. With it, a command killed by signal N exits 128 + N.
    #[arg(long)]
    pub init: bool,
    /// Data directory (layer store, sandbox state); the daemon's default when unset.
    #[arg(long, env = "THAW_DATA")]
    pub data: Option<PathBuf>,
    /// A profile of the daemon's `[sandbox.profiles]` (limits and pool depth); needs the daemon.
    #[arg(long, conflicts_with = "cold")]
    pub profile: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Hostname inside the sandbox.
    #[arg(long)]
    pub hostname: Option<String>,
    /// `none` (loopback only, the default) or `bridge`: eth0 on the bridge of the daemon (its
    /// `[sandbox] bridge` subnet) or, without a daemon, of this run's instance, with an address
    /// and a default route via the bridge. Reaching beyond the host needs forwarding and NAT
    /// set up on the host.
    #[arg(long, value_name = "none|bridge")]
    pub network: Option<thaw_sandbox::net::NetworkMode>,
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

/// Cgroup limits, as `thaw run` and `thaw fn deploy` take them.
#[derive(Debug, Args, Clone, Default)]
pub struct LimitArgs {
    /// Memory limit (bytes, or with a k, m or g suffix).
    #[arg(long)]
    pub memory: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pub pids: Option<i64>,
    /// CPU limit in CPUs (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
}

impl LimitArgs {
    /// (memory bytes, pids, thousandths of a CPU), checked.
    pub fn resolve(&self) -> anyhow::Result<(Option<i64>, Option<i64>, Option<u64>)> {
        let cpu_millis = match self.cpus {
            Some(c) if !(c > 0.0 && c.is_finite()) => bail!("--cpus must be a positive number of CPUs"),
            Some(c) => Some((c * 1000.0).round().max(1.0) as u64),
            None => None,
        };
        Ok((self.memory.as_deref().map(parse_bytes).transpose()?, self.pids, cpu_millis))
    }
}

/// Signals relayed to the workload.
const RELAYED: &[i32] = &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.sandbox_helper {
        thaw_sandbox::helper::main();
    }
    let t0 = Instant::now();
    // Before any thread exists, so every thread inherits the mask and the signals reach the
    // signalfd in `wait_relaying` instead of killing us. SIGWINCH too, for a terminal's size.
    thaw_sandbox::block_signals(RELAYED).context("blocking signals")?;
    thaw_sandbox::block_signals(&[libc::SIGWINCH]).context("blocking signals")?;
    let data = args.data.clone().unwrap_or_else(super::serve::default_data_dir);
    let data = if data.is_absolute() { data } else { std::env::current_dir()?.join(data) };
    let overrides = overrides(&args)?;
    if !args.cold {
        let socket = super::serve::default_sandbox_socket(&data);
        if let Some(client) = Client::connect(&socket).with_context(|| format!("connecting to the daemon's sandbox socket {}", socket.display()))? {
            return run_through_daemon(&args, client, overrides, t0);
        }
    }
    if let Some(p) = &args.profile {
        bail!("--profile {p} names a profile of a daemon's [sandbox] configuration, but no daemon with sandboxes serves {}", data.display());
    }
    let (mut spec, _pins) = base_spec(&args, &data)?;
    overrides.apply(&mut spec)?;
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
    if args.tty || spec.process.terminal {
        spec.process.terminal = true;
        spec.process.terminal_size = Some(spec.process.terminal_size.unwrap_or_else(thaw_sandbox::tty::caller_size));
    }
    let mut sb = rt.start(&spec, StdioFds::inherit()?).context("starting the sandbox")?;
    let mut term = attach_terminal(sb.take_terminal())?;
    let timings = sb.timings().clone();
    let status = sb.wait_relaying(RELAYED, term.as_mut()).context("waiting for the sandbox")?;
    drop(term);
    if args.timings {
        eprintln!("thaw run timings (cold path, {}):", if args.cold { "--cold" } else { "no daemon pools" });
        stage("resolve_spec", t_spec);
        stage("open_runtime", t_rt - t_spec);
        for (name, d) in &timings.stages {
            stage(name, *d);
        }
        stage("request_to_exec", timings.to_exec);
        stage("total_to_exit", t0.elapsed());
    }
    Ok(exit_code(status))
}

/// Takes over the workload's terminal, when it has one (see `--tty`).
fn attach_terminal(master: Option<std::os::fd::OwnedFd>) -> anyhow::Result<Option<thaw_sandbox::tty::Terminal>> {
    master.map(|m| thaw_sandbox::tty::Terminal::attach(m).context("putting this terminal in raw mode for --tty")).transpose()
}

fn stage(name: &str, d: Duration) {
    eprintln!("  {:<28} {:>9.3} ms", name, d.as_secs_f64() * 1e3);
}

fn exit_code(status: thaw_sandbox::ExitStatus) -> ExitCode {
    ExitCode::from(status.shell_code().clamp(0, 255) as u8)
}

/// The request as the daemon resolves it: bundles become a spec here (their paths are relative
/// to this process's directory), root directories and layouts travel as absolute names.
fn target(args: &RunArgs) -> anyhow::Result<Target> {
    if let Some(b) = &args.bundle {
        return Ok(Target::Spec(Box::new(SandboxSpec::from_bundle(b)?)));
    }
    let image = args.image.as_deref().unwrap_or_default();
    if image.starts_with("oci:") {
        let r = thaw_oci::layout::LayoutRef::parse(image)?;
        let path = std::fs::canonicalize(&r.path).with_context(|| format!("{image}: no OCI layout at {}", r.path.display()))?;
        return Ok(Target::Image(match r.tag {
            Some(t) => format!("oci:{}:{t}", path.display()),
            None => format!("oci:{}", path.display()),
        }));
    }
    if let Some(r) = image.strip_prefix("docker://") {
        r.parse::<thaw_oci::Reference>().with_context(|| format!("{image} is not an image reference"))?;
        return Ok(Target::Image(image.to_string()));
    }
    let dir = PathBuf::from(image);
    if !dir.is_dir() {
        bail!("{image} is neither a directory nor an image name (oci:PATH[:TAG])");
    }
    Ok(Target::Image(std::fs::canonicalize(&dir)?.display().to_string()))
}

fn run_through_daemon(args: &RunArgs, client: Client, overrides: Overrides, t0: Instant) -> anyhow::Result<ExitCode> {
    let t_connect = t0.elapsed();
    let target = target(args)?;
    let terminal = args.tty || matches!(&target, Target::Spec(s) if s.process.terminal);
    let terminal_size = terminal.then(thaw_sandbox::tty::caller_size);
    let req = RunRequest { target, overrides: Overrides { terminal, terminal_size, ..overrides } };
    let mut session = client.start(&req, StdioFds::inherit()?).context("starting the sandbox through the daemon")?;
    let mut term = attach_terminal(session.take_terminal())?;
    let t_started = t0.elapsed();
    let info = session.info().clone();
    let round_trip = session.round_trip();
    let status = session.wait_relaying(RELAYED, term.as_mut()).context("waiting for the sandbox")?;
    drop(term);
    if args.timings {
        let how = if info.pooled { "pooled parts" } else { "parts built on demand: the pool was empty" };
        eprintln!("thaw run timings (through the daemon, {how}):");
        stage("connect", t_connect);
        stage("daemon_resolve", Duration::from_micros(info.resolve_us));
        for (i, (name, us)) in info.stages.iter().enumerate() {
            let when = if i < info.critical_from { " (ahead of time)" } else { "" };
            eprintln!("  {:<28} {:>9.3} ms{when}", name, *us as f64 / 1e3);
        }
        stage("daemon_request_to_exec", Duration::from_micros(info.daemon_us));
        // What the trip to the daemon and back adds: the client's view minus the daemon's.
        stage("client_daemon_trip", round_trip.saturating_sub(Duration::from_micros(info.daemon_us)));
        stage("client_request_to_exec", t_started - t_connect);
        stage("total_to_exit", t0.elapsed());
    }
    Ok(exit_code(status))
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

/// The flags that change the image's configuration, in the form both paths apply.
fn overrides(args: &RunArgs) -> anyhow::Result<Overrides> {
    let (memory_bytes, pids_max, cpu_millis) = args.limits.resolve()?;
    Ok(Overrides {
        args: args.command.clone(),
        env: args.env.clone(),
        cwd: args.workdir.clone(),
        user: args.user.as_deref().map(thaw_trace::files::parse_user).transpose().map_err(anyhow::Error::msg)?,
        hostname: args.hostname.clone(),
        memory_bytes,
        pids_max,
        cpu_millis,
        profile: args.profile.clone(),
        network: args.network,
        terminal: false,
        terminal_size: None,
        init: args.init,
    })
}

/// The image's or bundle's own spec, for the cold path (which opens the layer store itself).
fn base_spec(args: &RunArgs, data: &Path) -> anyhow::Result<(SandboxSpec, Vec<thaw_store::layers::LayerPin>)> {
    match target(args)? {
        Target::Spec(s) => Ok((*s, Vec::new())),
        Target::Image(image) if image.starts_with("oci:") => {
            let store = thaw_store::layers::LayerStore::open(data)
                .context("opening the layer store (if a thaw daemon holds it, run without --cold or use another --data)")?;
            spec_from_layout(&store, &image)
        }
        Target::Image(image) if image.starts_with("docker://") => bail!(
            "{image}: registry images are pulled and run by a daemon with sandboxes (`thaw serve` with a [sandbox] section) on {}; start one, or copy the image into an OCI layout (skopeo copy {image} oci:DIR:TAG) and run oci:DIR:TAG",
            data.display()
        ),
        Target::Image(dir) => Ok((SandboxSpec::for_rootfs(Path::new(&dir), vec![]), Vec::new())),
    }
}

/// Unpacks (or finds) the image's layers in the layer store and applies its config.
pub fn spec_from_layout(
    store: &thaw_store::layers::LayerStore,
    image: &str,
) -> anyhow::Result<(SandboxSpec, Vec<thaw_store::layers::LayerPin>)> {
    let pins = store.ensure_layout_image(image).with_context(|| format!("unpacking {image}"))?;
    let r = thaw_oci::layout::LayoutRef::parse(image)?;
    let img = thaw_oci::layout::Layout::open(&r.path)?.image(r.tag.as_deref())?;
    Ok((spec_from_config(&pins, &img.config)?, pins))
}

/// A spec over unpacked layers (base first) with the image config's command, environment,
/// working directory and user.
pub fn spec_from_config(pins: &[thaw_store::layers::LayerPin], config: &[u8]) -> anyhow::Result<SandboxSpec> {
    let lowers: Vec<PathBuf> = pins.iter().rev().map(|p| p.path().to_path_buf()).collect();
    let mut spec = SandboxSpec::for_rootfs(Path::new("/"), vec![]);
    spec.rootfs.lowers = lowers;
    let p = thaw_trace::files::process_from_image_config(config).map_err(anyhow::Error::msg)?;
    // The image's environment when it has one; otherwise the sandbox's default (which also sets
    // TERM) stays.
    if p.env != thaw_trace::files::ProcessSpec::default().env {
        spec.process.env = p.env;
    }
    spec.process.args = p.args;
    spec.process.cwd = p.cwd;
    (spec.process.uid, spec.process.gid) = (p.uid, p.gid);
    Ok(spec)
}


/// `--memory`: a byte size as [`thaw_policy::parse_bytes`] reads it (`64m` is 64 MiB, as in
/// docker; `1.5G` and `512MB` work too), as the positive `i64` the cgroup code takes.
fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    let n = thaw_policy::parse_bytes(s)?;
    i64::try_from(n)
        .ok()
        .filter(|v| *v > 0)
        .with_context(|| format!("memory size {s:?} is out of range: give at least 1 byte and at most {} bytes", i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_users() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("512MB").unwrap(), 512_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes(&i64::MAX.to_string()).unwrap(), i64::MAX);
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("0").unwrap_err().to_string().contains("out of range"));
        assert!(parse_bytes("0.4b").is_err(), "rounds to 0 bytes");
        assert!(parse_bytes("9223372036854775808").unwrap_err().to_string().contains("out of range"));
        assert!(parse_bytes("8388608T").is_err(), "2^63 bytes");
        use thaw_trace::files::parse_user;
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert_eq!(parse_user("7").unwrap(), (7, 7));
        assert_eq!(parse_user("root").unwrap(), (0, 0));
        assert!(parse_user("alice").is_err());
    }
}
