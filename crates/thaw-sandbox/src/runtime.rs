//! The caller's side: a [`Runtime`] per data directory, the cold path, sandbox handles and
//! asynchronous teardown.
//!
//! The runtime itself never enters a namespace: it may live in a multithreaded process (the
//! daemon). Each sandbox is built by a helper process started with fork+exec (see
//! [`crate::helper`]); the runtime talks to it over a socket and reaps it on a background thread,
//! so teardown (waiting for the helper, removing cgroup directories) is off the critical path.

use crate::cgroup::{self, CgroupLayout, CgroupPlan};
use crate::error::{Error, Result};
use crate::net::{self, Bridge, BridgeConfig, Lease, NetworkMode};
use crate::proto::{self, ProcessPlan, Reply, Request, RootPlan, ShellPlan};
use crate::seccomp::{self, CompiledSeccomp};
use crate::spec::{ProcessConfig, Profile, RootfsConfig, SandboxSpec, SeccompOptions};
use crate::ExitStatus;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use crate::spawn::HelperChild;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to start a helper process: a program and its arguments. The helper finds its control
/// socket at descriptor 3.
#[derive(Clone, Debug)]
pub struct HelperCommand {
    /// Executable.
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
}

/// Configuration of a runtime instance.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Data directory; every name the instance creates on the host derives from it.
    pub data_dir: PathBuf,
    /// How to start helpers.
    pub helper: HelperCommand,
    /// Cgroup layout; detected from the mount table when `None`.
    pub cgroup_layout: Option<CgroupLayout>,
}

/// The per-instance names derived from a data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceNames {
    /// Cgroup parent directory name in every hierarchy (`thaw-<hash>`).
    pub cgroup_parent: String,
    /// Host directory sandboxes mount their private tmpfs on (inside their own mount namespace).
    pub mount_prefix: PathBuf,
    /// The bridge of sandboxes with [`NetworkMode::Bridge`] (`thawbr<hash>`).
    pub bridge: String,
    /// The first bytes of the name of every veth pair's host end (`tv<hash>`).
    pub veth_prefix: String,
    /// The bridge's subnet unless one is configured: a /24 in 10.224.0.0/11 picked by the hash,
    /// so that instances on one host rarely collide (configure one when they do).
    pub default_subnet: String,
}

impl InstanceNames {
    /// Names for `data_dir` (made absolute first, so two spellings of one directory agree).
    pub fn for_data_dir(data_dir: &Path) -> Self {
        let abs = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        // FNV-1a: stable across builds and Rust versions, unlike the std hasher.
        let mut h = fnv::FnvHasher::default();
        std::hash::Hasher::write(&mut h, abs.as_os_str().as_encoded_bytes());
        let h = std::hash::Hasher::finish(&h);
        InstanceNames {
            cgroup_parent: format!("thaw-{:012x}", h & 0xffff_ffff_ffff),
            mount_prefix: abs.join("sandbox").join("mnt"),
            bridge: format!("thawbr{:08x}", h & 0xffff_ffff),
            veth_prefix: format!("tv{:05x}", (h >> 32) & 0xf_ffff),
            default_subnet: format!("10.{}.{}.1/24", 224 + (h >> 52) % 32, (h >> 44) & 0xff),
        }
    }
}

/// Where one sandbox's time went. Stages measured inside the helper are named as it names them.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Stage name and duration, in order.
    pub stages: Vec<(String, Duration)>,
    /// From the request to the workload's exec, as the caller saw it (the critical path).
    pub to_exec: Duration,
    /// Whether the parts came from a pool.
    pub pooled: bool,
    /// Index into `stages` of the first stage done after the request arrived (the stages before
    /// it were done ahead of time, in a pool).
    pub critical_from: usize,
}

impl Timings {
    /// Names of the stages on the critical path of the start.
    pub fn critical_stages(&self) -> Vec<&str> {
        self.stages[self.critical_from.min(self.stages.len())..].iter().map(|(n, _)| n.as_str()).collect()
    }
}

impl Timings {
    fn add(&mut self, stages: &[(String, u64)]) {
        self.stages.extend(stages.iter().map(|(n, us)| (n.clone(), Duration::from_micros(*us))));
    }
}

/// The workload's standard input, output and error.
#[derive(Debug)]
pub struct StdioFds {
    /// Descriptor 0 of the workload.
    pub stdin: OwnedFd,
    /// Descriptor 1.
    pub stdout: OwnedFd,
    /// Descriptor 2.
    pub stderr: OwnedFd,
}

impl StdioFds {
    /// Copies of the caller's own 0, 1 and 2.
    pub fn inherit() -> Result<Self> {
        let d = |fd: RawFd| -> Result<OwnedFd> {
            // SAFETY: 0, 1 and 2 are open for the life of the process; we only borrow to dup.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            b.try_clone_to_owned().map_err(|e| Error::io("duplicate stdio", format!("fd {fd}"), e))
        };
        Ok(StdioFds { stdin: d(0)?, stdout: d(1)?, stderr: d(2)? })
    }

    /// /dev/null for all three.
    pub fn null() -> Result<Self> {
        let o = || -> Result<OwnedFd> {
            let f = fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(|e| Error::io("open", "/dev/null", e))?;
            Ok(f.into())
        };
        Ok(StdioFds { stdin: o()?, stdout: o()?, stderr: o()? })
    }
}

/// Output of a sandbox run with captured stdio.
#[derive(Clone, Debug)]
pub struct Output {
    /// How the workload ended.
    pub status: ExitStatus,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Where the time went.
    pub timings: Timings,
}

/// Counters of the runtime.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sandboxes whose teardown (helper reaped, cgroups removed) has not finished.
    pub pending_teardowns: AtomicUsize,
    /// Teardowns that failed (a cgroup that would not go away).
    pub failed_teardowns: AtomicUsize,
    /// Parts (helpers) started, pooled or not.
    pub parts_built: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) names: InstanceNames,
    pub(crate) layout: CgroupLayout,
    helper: HelperCommand,
    seccomp: Mutex<HashMap<SeccompOptions, Arc<CompiledSeccomp>>>,
    /// Device programs loaded on a pure cgroup-v2 host, one per rule set, shared by every
    /// sandbox cgroup with those rules.
    device_programs: Mutex<Vec<(Vec<crate::spec::DeviceRule>, Arc<OwnedFd>)>>,
    next_id: AtomicU64,
    reaper: Mutex<Option<mpsc::Sender<Teardown>>>,
    reaper_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub(crate) counters: Arc<Counters>,
    netns_seen: Mutex<Vec<u64>>,
    /// The bridge, made on first use (or by [`Runtime::set_bridge`]) and deleted with the runtime.
    bridge: Mutex<Option<Arc<Bridge>>>,
    _lock: fs::File,
}

/// One thaw sandbox runtime, bound to a data directory.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

struct Teardown {
    /// The helper to reap; `None` for a template instance, whose processes are not our
    /// children (removing its cgroup waits for them to exit).
    child: Option<HelperChild>,
    cgroup: CgroupPlan,
    /// The sandbox's place on the bridge, given back once its processes are gone.
    lease: Option<Lease>,
}

impl Runtime {
    /// Opens the runtime: locks the data directory, kills and removes whatever a previous
    /// instance with the same data directory left (processes, cgroups), and starts the reaper.
    pub fn new(cfg: RuntimeConfig) -> Result<Self> {
        let dir = cfg.data_dir.join("sandbox");
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let names = InstanceNames::for_data_dir(&cfg.data_dir);
        fs::create_dir_all(&names.mount_prefix).map_err(|e| Error::io("create directory", &names.mount_prefix, e))?;
        let lock_path = dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::Locked(cfg.data_dir.clone()));
        }
        let layout = match cfg.cgroup_layout {
            Some(l) => l,
            None => CgroupLayout::detect()?,
        };
        let killed = cgroup::kill_and_remove_all(&layout, &names.cgroup_parent, Duration::from_secs(10))?;
        if killed > 0 {
            tracing::warn!(killed, parent = %names.cgroup_parent, "removed processes left by a previous instance");
        }
        // Veth pairs a crashed instance left (their namespaces died with its processes, but a
        // pair whose host end outlived them would keep its address). Looked up in sysfs first,
        // which costs nothing, so a runtime without leftovers sends no netlink request.
        if net::host_links_with_prefix(&names.veth_prefix) > 0 {
            let n = net::remove_links_with_prefix(&names.veth_prefix)?;
            tracing::warn!(removed = n, prefix = %names.veth_prefix, "removed veth pairs left by a previous instance");
        }
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel::<Teardown>();
        let c2 = counters.clone();
        let reaper = std::thread::Builder::new()
            .name("thaw-sandbox-reaper".into())
            .spawn(move || {
                for mut t in rx {
                    if let Some(c) = t.child.as_mut() {
                        let _ = c.wait();
                    }
                    if let Err(e) = t.cgroup.remove(Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "sandbox cgroup not removed");
                        c2.failed_teardowns.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(t.lease.take());
                    c2.pending_teardowns.fetch_sub(1, Ordering::Release);
                }
            })
            .map_err(|e| Error::io("spawn thread", "thaw-sandbox-reaper", e))?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                names,
                layout,
                helper: cfg.helper,
                seccomp: Mutex::new(HashMap::new()),
                device_programs: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
                reaper: Mutex::new(Some(tx)),
                reaper_thread: Mutex::new(Some(reaper)),
                counters,
                netns_seen: Mutex::new(Vec::new()),
                bridge: Mutex::new(None),
                _lock: lock,
            }),
        })
    }

    /// Sets the bridge of sandboxes with [`NetworkMode::Bridge`] (creating it now), instead of
    /// the default one made on first use under [`InstanceNames::bridge`] with
    /// [`InstanceNames::default_subnet`]. Fails if a different bridge is already in use.
    pub fn set_bridge(&self, cfg: BridgeConfig) -> Result<()> {
        let mut slot = self.inner.bridge.lock();
        if let Some(b) = slot.as_ref() {
            if *b.config() == cfg {
                return Ok(());
            }
            return Err(Error::Config(format!(
                "this runtime already uses bridge {} ({}/{}); restart it to change the bridge",
                b.config().name,
                b.config().gateway,
                b.config().prefix
            )));
        }
        *slot = Some(Arc::new(Bridge::ensure(cfg, &self.inner.names.veth_prefix)?));
        Ok(())
    }

    /// The bridge, made with the default name and subnet if none was set.
    pub fn bridge(&self) -> Result<Arc<Bridge>> {
        let mut slot = self.inner.bridge.lock();
        if let Some(b) = slot.as_ref() {
            return Ok(b.clone());
        }
        let names = &self.inner.names;
        let cfg = BridgeConfig::parse(&names.bridge, &names.default_subnet)?;
        let b = Arc::new(Bridge::ensure(cfg, &names.veth_prefix)?);
        *slot = Some(b.clone());
        Ok(b)
    }

    /// The names this instance uses on the host.
    pub fn names(&self) -> &InstanceNames {
        &self.inner.names
    }

    /// The cgroup layout in use.
    pub fn cgroup_layout(&self) -> &CgroupLayout {
        &self.inner.layout
    }

    /// Counters (pending teardowns...).
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Inodes of every network namespace this instance created (for leak checks).
    pub fn netns_created(&self) -> Vec<u64> {
        self.inner.netns_seen.lock().clone()
    }

    /// The compiled seccomp profile for these options, compiled on first use only.
    pub fn seccomp(&self, opts: SeccompOptions) -> Result<Arc<CompiledSeccomp>> {
        let mut cache = self.inner.seccomp.lock();
        if let Some(c) = cache.get(&opts) {
            return Ok(c.clone());
        }
        let c = Arc::new(seccomp::compile(opts)?);
        cache.insert(opts, c.clone());
        Ok(c)
    }

    /// The device program for `limits` when sandbox cgroups live on a real cgroup2 hierarchy
    /// (pure v2), loaded on first use and shared; `None` on v1 devices or a fake root.
    pub(crate) fn device_program(&self, limits: &crate::spec::Limits) -> Result<Option<Arc<OwnedFd>>> {
        let CgroupLayout::V2 { root } = &self.inner.layout else { return Ok(None) };
        if !crate::devices::is_cgroup2(root) {
            return Ok(None);
        }
        let rules = limits.device_rules();
        let mut cache = self.inner.device_programs.lock();
        if let Some((_, p)) = cache.iter().find(|(r, _)| *r == rules) {
            return Ok(Some(p.clone()));
        }
        let p = Arc::new(crate::devices::load(&rules)?);
        cache.push((rules, p.clone()));
        Ok(Some(p))
    }

    /// Waits until every finished sandbox has been torn down, or the timeout passes. Returns
    /// whether everything was torn down.
    pub fn wait_teardowns(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.inner.counters.pending_teardowns.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The cold path: builds every part on demand, then starts the workload.
    pub fn start(&self, spec: &SandboxSpec, io: StdioFds) -> Result<Sandbox> {
        let t0 = Instant::now();
        let mut part = self.build_part(&spec.profile, Some(&spec.rootfs))?;
        part.timings.pooled = false;
        self.start_on(part, &spec.rootfs, &spec.process, spec.profile.seccomp, io, t0)
    }

    /// Cold path with captured output.
    pub fn run_output(&self, spec: &SandboxSpec) -> Result<Output> {
        capture(|io| self.start(spec, io))
    }

    /// Builds a part: a helper with its shell (and its root, if `rootfs` is given) ready. Its
    /// helper runs at the calling thread's priority: idle for a pool's filler (so that on a busy
    /// machine the starts being served win the CPU over parts prepared for later), normal for a
    /// start that builds on demand.
    pub(crate) fn build_part(&self, profile: &Profile, rootfs: Option<&RootfsConfig>) -> Result<Part> {
        let id = self.inner.new_id("s");
        let cgroup = CgroupPlan::new(&self.inner.layout, &self.inner.names.cgroup_parent, &id, profile.limits.clone());
        let t = Instant::now();
        let (ctrl, child) = self.spawn_helper()?;
        let mut part = Part {
            ctrl: Some(Arc::new(ctrl)),
            child: Some(child),
            cgroup: cgroup.clone(),
            rootfs: None,
            timings: Timings::default(),
            netns: 0,
            pid1: None,
            lease: None,
            refill: None,
            rt: self.inner.clone(),
        };
        self.inner.counters.parts_built.fetch_add(1, Ordering::Relaxed);
        part.timings.stages.push(("spawn_helper".into(), t.elapsed()));
        let ctrl = part.ctrl();
        // Send both requests before reading the first reply: the helper works while we wait.
        // On pure v2 the shared device program travels with the shell request.
        let device_program = self.device_program(&profile.limits)?;
        let fds: Vec<std::os::fd::RawFd> = device_program.iter().map(|p| p.as_raw_fd()).collect();
        proto::send(ctrl.as_fd(), &Request::Shell(ShellPlan { cgroup, hostname: profile.hostname.clone() }), &fds)?;
        if let Some(r) = rootfs {
            proto::send(ctrl.as_fd(), &Request::Root(self.root_plan(r, profile.seccomp)?), &[])?;
        }
        match recv_reply(&ctrl)? {
            Reply::ShellReady { netns, stages, .. } => {
                part.netns = netns;
                self.inner.netns_seen.lock().push(netns);
                part.timings.add(&stages);
            }
            other => return Err(unexpected(other)),
        }
        if profile.network == NetworkMode::Bridge {
            // The helper itself entered the new network namespace, so its pid names it. This
            // runs while the helper builds the root; it is part of the pooled work.
            let t = Instant::now();
            let pid = part.child.as_ref().map(|c| c.id() as i32).ok_or_else(|| Error::Protocol("part has no helper".into()))?;
            let ns = net::open_netns_of(pid)?;
            part.lease = Some(self.bridge()?.attach(ns.as_fd())?);
            part.timings.stages.push(("bridge_veth".into(), t.elapsed()));
        }
        if let Some(r) = rootfs {
            part.take_root(&ctrl, r)?;
        }
        Ok(part)
    }

    fn root_plan(&self, r: &RootfsConfig, seccomp: SeccompOptions) -> Result<RootPlan> {
        Ok(RootPlan {
            rootfs: r.clone(),
            staging: self.inner.names.mount_prefix.clone(),
            seccomp: (*self.seccomp(seccomp)?).clone(),
        })
    }

    /// Takes a built part to a running sandbox. `t0` is when the request arrived.
    pub(crate) fn start_on(
        &self,
        mut part: Part,
        rootfs: &RootfsConfig,
        process: &ProcessConfig,
        seccomp_opts: SeccompOptions,
        io: StdioFds,
        t0: Instant,
    ) -> Result<Sandbox> {
        let ctrl = part.ctrl();
        if part.timings.pooled {
            part.timings.critical_from = part.timings.stages.len();
        }
        if part.rootfs.is_none() {
            proto::send(ctrl.as_fd(), &Request::Root(self.root_plan(rootfs, seccomp_opts)?), &[])?;
            part.take_root(&ctrl, rootfs)?;
        } else if part.rootfs.as_ref() != Some(rootfs) {
            return Err(Error::Config("the pooled part holds a different root filesystem".into()));
        }
        let t = Instant::now();
        let plan = ProcessPlan { process: process.clone() };
        let fds = [io.stdin.as_raw_fd(), io.stdout.as_raw_fd(), io.stderr.as_raw_fd()];
        let (pid, sock) = part.pid1.take().ok_or_else(|| Error::Protocol("part has no parked PID 1".into()))?;
        proto::send(sock.as_fd(), &plan, &fds)?;
        drop(io);
        // PID 1's end is close-on-exec: end-of-file means the workload runs; `tty` carries the
        // controlling end of its terminal; any other message is the reason it could not start.
        let mut terminal = None;
        loop {
            match proto::recv_bytes(sock.as_fd())? {
                None => break,
                Some((b, mut fds)) if b == b"tty" && fds.len() == 1 && process.terminal => terminal = fds.pop(),
                Some((b, _)) => return Err(Error::Helper(String::from_utf8_lossy(&b).into_owned())),
            }
        }
        if process.terminal && terminal.is_none() {
            return Err(Error::Protocol("the workload started without handing back its terminal".into()));
        }
        part.timings.stages.push(("exec".into(), t.elapsed()));
        part.timings.to_exec = t0.elapsed();
        Ok(Sandbox { part, pid, terminal })
    }

    /// Starts a helper process with the control socket at descriptor 3 (see [`crate::spawn`]).
    /// It inherits the calling thread's scheduling policy: idle priority from a pool's filler.
    pub(crate) fn spawn_helper(&self) -> Result<(OwnedFd, HelperChild)> {
        let (mine, theirs) = proto::seqpacket_pair()?;
        let child = crate::spawn::spawn(&self.inner.helper.program, &self.inner.helper.args, &theirs)?;
        drop(theirs);
        Ok((mine, child))
    }
}

impl Inner {
    /// A fresh name for a sandbox's cgroup: `prefix` and a number unique in this instance.
    pub(crate) fn new_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Hands a finished sandbox to the reaper: reap its helper (if any), then remove its
    /// cgroups. Runs inline when the reaper is gone (the runtime is shutting down).
    pub(crate) fn schedule_teardown(&self, child: Option<HelperChild>, cgroup: CgroupPlan) {
        self.schedule_teardown_with(child, cgroup, None)
    }

    /// As [`Inner::schedule_teardown`], also giving back a bridge lease once the processes are gone.
    pub(crate) fn schedule_teardown_with(&self, child: Option<HelperChild>, cgroup: CgroupPlan, lease: Option<Lease>) {
        self.counters.pending_teardowns.fetch_add(1, Ordering::AcqRel);
        let t = Teardown { child, cgroup, lease };
        let tx = self.reaper.lock().clone();
        let inline = |mut t: Teardown, kill: bool| {
            if let Some(c) = t.child.as_mut() {
                if kill {
                    let _ = c.kill();
                }
                let _ = c.wait();
            }
            let _ = t.cgroup.remove(Duration::from_secs(10));
            drop(t.lease.take());
            self.counters.pending_teardowns.fetch_sub(1, Ordering::Release);
        };
        match tx {
            Some(tx) => {
                if let Err(mpsc::SendError(t)) = tx.send(t) {
                    inline(t, false);
                }
            }
            None => inline(t, true),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the channel so the reaper finishes the queue and exits, then make sure nothing
        // of ours is left behind.
        self.reaper.lock().take();
        if let Some(t) = self.reaper_thread.lock().take() {
            let _ = t.join();
        }
        let _ = cgroup::kill_and_remove_all(&self.layout, &self.names.cgroup_parent, Duration::from_secs(10));
        if let Some(b) = self.bridge.lock().take() {
            // every sandbox is gone, so nobody else holds it
            if let Ok(b) = Arc::try_unwrap(b) {
                if let Err(e) = b.delete() {
                    tracing::warn!(error = %e, "bridge not deleted");
                }
            }
        }
    }
}

pub(crate) fn recv_reply(ctrl: &OwnedFd) -> Result<Reply> {
    match proto::recv::<Reply>(ctrl.as_fd())? {
        Some((Reply::Failed(e), _)) => Err(Error::Helper(e)),
        Some((r, _)) => Ok(r),
        None => Err(Error::Helper("the helper exited without a reply; see its messages on stderr".into())),
    }
}

pub(crate) fn unexpected(r: Reply) -> Error {
    Error::Protocol(format!("unexpected reply {r:?}"))
}

/// A helper with some of its sandbox's parts built. Dropping it tears it down off the
/// critical path.
pub(crate) struct Part {
    ctrl: Option<Arc<OwnedFd>>,
    child: Option<HelperChild>,
    cgroup: CgroupPlan,
    pub(crate) rootfs: Option<RootfsConfig>,
    pub(crate) timings: Timings,
    netns: u64,
    /// Host pid of the parked PID 1 and the socket to hand it the workload.
    pid1: Option<(i32, OwnedFd)>,
    /// Its place on the bridge (bridged profiles only).
    lease: Option<Lease>,
    /// For a part taken from a pool: holds the pool's refill back until this part is gone.
    pub(crate) refill: Option<crate::pool::RefillHold>,
    rt: Arc<Inner>,
}

impl Part {
    fn take_root(&mut self, ctrl: &OwnedFd, r: &RootfsConfig) -> Result<()> {
        match proto::recv::<Reply>(ctrl.as_fd())? {
            Some((Reply::RootReady { pid, stages }, mut fds)) if fds.len() == 1 => {
                self.timings.add(&stages);
                self.pid1 = Some((pid, fds.remove(0)));
                self.rootfs = Some(r.clone());
                Ok(())
            }
            Some((Reply::Failed(e), _)) => Err(Error::Helper(e)),
            Some((other, _)) => Err(unexpected(other)),
            None => Err(Error::Helper("the helper exited without a reply; see its messages on stderr".into())),
        }
    }

    fn ctrl(&self) -> Arc<OwnedFd> {
        self.ctrl.clone().expect("control socket present until drop")
    }

    /// Whether the helper is still alive (a pooled part can die, e.g. killed by an operator).
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        // Closing our ends makes a parked PID 1 exit and the helper kill a started one and exit.
        self.pid1.take();
        self.ctrl.take();
        if let Some(child) = self.child.take() {
            self.rt.schedule_teardown_with(Some(child), self.cgroup.clone(), self.lease.take());
        } else {
            drop(self.lease.take());
        }
    }
}

/// A running sandbox.
pub struct Sandbox {
    part: Part,
    pid: i32,
    /// The controlling end of the workload's terminal, when it was given one.
    terminal: Option<OwnedFd>,
}

/// Sends signals to a sandbox from another thread while one waits for it.
#[derive(Clone)]
pub struct Signaller {
    ctrl: Arc<OwnedFd>,
}

impl Signaller {
    /// Relays `sig` to the workload.
    pub fn signal(&self, sig: i32) -> Result<()> {
        proto::send(self.ctrl.as_fd(), &Request::Signal(sig), &[])
    }
}

impl Sandbox {
    /// The controlling end of the workload's pseudo-terminal ([`crate::ProcessConfig::terminal`]),
    /// once: read it for the workload's output, write it for its input.
    pub fn take_terminal(&mut self) -> Option<OwnedFd> {
        self.terminal.take()
    }

    /// The workload's pid in the host PID namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Where the time went.
    pub fn timings(&self) -> &Timings {
        &self.part.timings
    }

    /// The network namespace inode.
    pub fn netns(&self) -> u64 {
        self.part.netns
    }

    /// The sandbox's cgroup directories on the host.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.part.cgroup.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// A handle to send signals while another thread waits.
    pub fn signaller(&self) -> Signaller {
        Signaller { ctrl: self.part.ctrl() }
    }

    /// Relays `sig` to the workload.
    pub fn signal(&self, sig: i32) -> Result<()> {
        self.signaller().signal(sig)
    }

    /// Waits for the workload to end. Teardown continues in the background.
    pub fn wait(self) -> Result<ExitStatus> {
        let ctrl = self.part.ctrl();
        match proto::recv::<Reply>(ctrl.as_fd())? {
            Some((Reply::Exited(s), _)) => Ok(s),
            Some((Reply::Failed(e), _)) => Err(Error::Helper(e)),
            Some((other, _)) => Err(unexpected(other)),
            None => Err(Error::Helper("the helper died before reporting the exit status".into())),
        }
    }

    /// Waits for the workload while relaying the given signals received by this process. The
    /// signals must already be blocked in every thread of the process (block them before
    /// starting threads, see [`block_signals`]).
    pub fn wait_relaying(self, signals: &[i32], tty: Option<&mut crate::tty::Terminal>) -> Result<ExitStatus> {
        let ctrl = self.part.ctrl();
        relay_signals_until_readable(ctrl.as_fd(), signals, tty, |sig| self.signal(sig))?;
        self.wait()
    }
}

/// Waits until `fd` is readable, meanwhile handing each of `signals` this process receives to
/// `relay`. The signals must already be blocked in every thread (see [`block_signals`]); they
/// are read from a signalfd. With a terminal, its data is copied meanwhile, `SIGWINCH` (which
/// must be blocked too) resizes it, and what the workload wrote last is drained at the end.
pub(crate) fn relay_signals_until_readable(
    fd: BorrowedFd<'_>,
    signals: &[i32],
    mut tty: Option<&mut crate::tty::Terminal>,
    mut relay: impl FnMut(i32) -> Result<()>,
) -> Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in signals {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(*s) {
            set.add(sig);
        }
    }
    if tty.is_some() {
        set.add(nix::sys::signal::Signal::SIGWINCH);
    }
    let sfd = nix::sys::signalfd::SignalFd::with_flags(&set, nix::sys::signalfd::SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::sys("signalfd", e))?;
    loop {
        let mut pfds = vec![
            libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: sfd.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        if let Some(t) = &tty {
            pfds.extend(t.poll_fds());
        }
        // SAFETY: poll reads and writes only the array we pass, whose length we give.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if nix::errno::Errno::last() == nix::errno::Errno::EINTR {
                continue;
            }
            return Err(Error::sys("poll", nix::errno::Errno::last()));
        }
        if pfds[1].revents != 0 {
            if let Ok(Some(info)) = sfd.read_signal() {
                match (&tty, info.ssi_signo as i32) {
                    (Some(t), libc::SIGWINCH) => t.resize(),
                    (_, sig) => relay(sig)?,
                }
            }
        }
        if let Some(t) = tty.as_deref_mut() {
            t.pump(&pfds[2..])?;
        }
        if pfds[0].revents != 0 {
            if let Some(t) = tty.as_deref_mut() {
                t.drain();
            }
            return Ok(());
        }
    }
}

/// Blocks `signals` in the calling thread (and in threads it starts later), so that
/// [`Sandbox::wait_relaying`] receives them through a signalfd instead of their default action.
pub fn block_signals(signals: &[i32]) -> Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in signals {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(*s) {
            set.add(sig);
        }
    }
    set.thread_block().map_err(|e| Error::sys("sigprocmask", e))
}

/// Runs `start` with stdout and stderr captured through pipes and an empty stdin.
pub fn capture(start: impl FnOnce(StdioFds) -> Result<Sandbox>) -> Result<Output> {
    // An empty stdin (end of file at once), everything kept, no time limit.
    crate::pool::run_with_input(start, &[], None, usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names derive from the data directory with FNV-1a, and must never change between builds:
    /// a restarted daemon finds what a crashed one left by these names. Pinned values.
    #[test]
    fn instance_names_are_stable() {
        let n = InstanceNames::for_data_dir(Path::new("/nonexistent/thaw-data"));
        assert_eq!(n.cgroup_parent, "thaw-3082c28fa18d");
        assert_eq!(n.bridge, "thawbrc28fa18d");
        assert_eq!(n.mount_prefix, Path::new("/nonexistent/thaw-data/sandbox/mnt"));
    }
}
