//! Template runtimes (zygotes): a language runtime initialised once per function, inside the
//! function's image, and forked per invocation into fresh parts.
//!
//! # The template
//!
//! A [`Template`] is a Python interpreter running thaw's template script (`zygote/template.py`)
//! over the function's image. It imports the preload modules and the handler once, then forks
//! an instance whenever the runtime asks. Its code is untrusted, so the template is confined
//! like a sandbox and more:
//!
//! * **its own user namespace** with a shifted id range: root inside is host uid
//!   `100000 + N·65536` (`N` a host-wide slot, locked under `/run/thaw/idmap` for the template's
//!   life, so two templates — of this or another runtime instance — never share ids). It has
//!   every capability inside that namespace and none on the host;
//! * **idmapped layers**: the helper (host root) clones each layer as a detached mount whose ids
//!   are shifted through the template's user namespace, so files owned by host root appear owned
//!   by the template's root, readable and copy-up-able, while the layer directories on the host
//!   stay untouched and owned by host root;
//! * its own mount (overlay root, `pivot_root`), PID, network (loopback only, whatever the
//!   profile's network: instances get the bridge, the template never does), UTS, IPC and
//!   cgroup namespaces, all owned by its user namespace, and its own cgroup with the profile's
//!   limits;
//! * `no_new_privs` and a seccomp profile ([`crate::seccomp::compile_template`]): the default
//!   profile minus what building an instance needs (`mount`, `umount2`, `pivot_root`, `unshare`
//!   without `CLONE_NEWUSER`);
//! * inside its user namespace, only the capabilities building instances needs (no
//!   `CAP_SYS_PTRACE`, `CAP_MKNOD`, `CAP_NET_RAW`...), and it is non-dumpable, as is every
//!   instance from birth: the function's code in the template cannot open an instance's memory,
//!   descriptors or root through /proc. Instances close every descriptor they inherit but
//!   their own socket. So the template — which sees every invocation start — has no way to
//!   take one invocation's data and hand it to the next.
//!
//! The template keeps, in a hidden 0700 tmpfs at `/.thaw`, the idmapped layers, the mountpoint
//! of its instances' staging tmpfs, and an unmasked procfs and sysfs of its own namespaces: the
//! kernel lets a user namespace mount procfs or sysfs only where one is already fully visible
//! (`mount_too_revealing`). Instances switch root away from all of it; the template itself —
//! the function's own code — can read them.
//!
//! # Instances
//!
//! Forking is cheap; moving a process into a v1 cgroup is not (about 8 ms, an RCU grace
//! period). So instances are made ahead of time, `depth` of them per template, by a background
//! thread:
//!
//! 1. the runtime sends `fork` with a fresh socket; the template forks the *outer* process,
//!    which unshares mount, network, UTS, IPC and PID namespaces, mounts a fresh tmpfs with its
//!    own upper and work directories and an overlay over the same idmapped layers, sets the
//!    hostname and brings loopback up, and says `ready`;
//! 2. the runtime reads the outer process's host pid from the kernel (`SCM_CREDENTIALS`),
//!    creates the instance's cgroup with the profile's limits and writes the pid into it — the
//!    expensive step, off the critical path — and, for a profile with
//!    [`crate::net::NetworkMode::Bridge`], moves the sandbox end of a veth pair on the runtime's
//!    bridge into its network namespace as `eth0`; then it says `go`;
//! 3. the outer process forks the *inner* one, PID 1 of the new PID namespace, born inside the
//!    cgroup. It unshares a cgroup namespace rooted there, mounts /proc, /dev, /sys, masks and
//!    read-only paths and a private /tmp, switches root, applies rlimits, drops capabilities to
//!    the runtime-spec default set, sets `no_new_privs`, installs the default seccomp profile
//!    (mode 2, on top of the template's) and parks, waiting for a payload.
//!
//! [`Template::invoke`] takes a parked instance (or builds one on demand: a miss, which pays the
//! cgroup move), hands it three memfds (the payload as stdin, stdout, stderr), and the inner
//! process reseeds `random` from `os.urandom`, runs the handler, reports its exit code once the
//! output is written — before its own teardown (address space, PID namespace), which costs
//! milliseconds nobody waits for — and exits; if it dies by a signal instead (the memory limit,
//! a timeout), the outer process reports that. The runtime reads the memfds and tears the
//! instance down off the critical path (its cgroup is removed once its processes are gone).
//!
//! Instances of one function share the template's user namespace (and so its id range) and its
//! read-only layers; nothing writable: each has its own upper directory and /tmp (tmpfs), its
//! own mount, PID, network, UTS, IPC and cgroup namespaces and its own cgroup.
//!
//! # Random state
//!
//! `random` is reseeded from `os.urandom` in every instance (CPython also reseeds it after
//! fork). `os.urandom`, `secrets` and `uuid4` read the kernel and need nothing. What cannot be
//! reseeded is the string-hash seed (`PYTHONHASHSEED`): it is fixed when the interpreter starts
//! and every dict and set of the preloaded heap depends on it. thaw draws it from the kernel's
//! random source per template, so it differs between functions and between restarts of one
//! function's template, but **all instances of one template share it** (hash-flooding
//! resistance across instances of one function is that of a single long-lived process).
//!
//! Multi-layer images: an overlay mounted inside a user namespace cannot read
//! `trusted.overlay.opaque`, so the template's overlays are mounted with `userxattr` and honour
//! `user.overlay.opaque`, which thaw's unpacker writes beside the trusted mark. Layers without it
//! (unpacked by other tools, or on a filesystem without user xattrs) would show the lower layers'
//! entries in opaque directories; [`Runtime::template`] looks for such directories and logs a
//! warning naming them. Whiteouts (0/0 character devices) work either way.

mod setup;

pub(crate) use setup::start_template;

use crate::cgroup::CgroupPlan;
use crate::error::{Error, Result};
use crate::pool::{PoolStats, Stock};
use crate::proto::{self, Reply, Request, TemplatePlan};
use crate::runtime::{Inner, Runtime, Timings};
use crate::spec::{MountEntry, ProcessConfig, Profile, RootfsConfig};
use crate::ExitStatus;
use parking_lot::Mutex;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use crate::spawn::HelperChild;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Descriptor of the template's control socket in the interpreter.
pub const TEMPLATE_CONTROL_FD: RawFd = 3;
/// Host id that root of the first template slot maps to.
pub const ID_BASE: u32 = 100_000;
/// Ids per template user namespace.
pub const ID_COUNT: u32 = 65_536;
/// Number of template slots (host id ranges); the last range ends below 2^32.
pub const ID_SLOTS: u32 = 60_000;
/// Host directory of the slot lock files.
pub const ID_LOCK_DIR: &str = "/run/thaw/idmap";
/// Largest stdout or stderr returned by an invocation; the rest is cut.
pub const MAX_OUTPUT: u64 = 64 << 20;
/// How long the template may take to import its preload modules and handler.
const INIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long building one instance may take before it counts as failed.
const INSTANCE_TIMEOUT: Duration = Duration::from_secs(30);

const SCRIPT: &str = include_str!("zygote/template.py");

/// The language runtime a template runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateRuntime {
    /// CPython.
    Python {
        /// The interpreter, a path inside the image (`/usr/bin/python3`).
        interpreter: String,
        /// Modules imported once by the template.
        preload: Vec<String>,
        /// `module:function`, or `/path/in/image.py:function`. The function is called with the
        /// payload (bytes) and returns bytes, str, None or anything `json.dumps` takes.
        handler: String,
    },
}

/// What a template is made of.
#[derive(Clone, Debug)]
pub struct TemplateConfig {
    /// Limits and namespaces of each instance (and of the template itself).
    pub profile: Profile,
    /// The function's image layers; each instance gets its own upper directory.
    pub rootfs: RootfsConfig,
    /// The runtime to initialise.
    pub runtime: TemplateRuntime,
    /// Environment of the interpreter (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Working directory inside the image.
    pub cwd: String,
    /// User and group ids each instance runs the handler as, in the template's user namespace
    /// (which maps ids 0-65535). A non-root user keeps the instance's capabilities (as
    /// `thaw run` does for a non-root workload); the template itself stays root there.
    pub user: (u32, u32),
    /// Ready forked instances kept.
    pub depth: usize,
}

/// The result of one invocation.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// What the handler returned (or printed).
    pub stdout: Vec<u8>,
    /// What it wrote to stderr (a traceback when it raised).
    pub stderr: Vec<u8>,
    /// How the instance ended.
    pub status: ExitStatus,
    /// Where the time went: the instance's preparation (done ahead of time on a hit), then
    /// `take`, `send`, `run`, `collect`.
    pub timings: Timings,
}

/// A parked instance: its socket, cgroup, bridge lease and the host pid of its outer process.
struct Instance {
    sock: OwnedFd,
    cgroup: Option<CgroupPlan>,
    lease: Option<crate::net::Lease>,
    pid: i32,
    stages: Vec<(String, Duration)>,
    rt: Arc<Inner>,
}

impl Instance {
    /// SIGKILLs every process in the instance's cgroup (a timeout, or a broken instance).
    /// Only called after the move into it; by pids read from the cgroup, never by a pid kept
    /// from earlier, which may have been reused by then.
    fn kill(&self) {
        if let Some(c) = &self.cgroup {
            for (_, d) in &c.dirs {
                for pid in crate::cgroup::procs(d) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // The socket closes right after this (a field): that ends a parked instance, and one
        // that ran has exited already. The reaper removes the cgroup once it is empty.
        if let Some(c) = self.cgroup.take() {
            self.rt.schedule_teardown_with(None, c, self.lease.take());
        }
    }
}

struct Shared {
    rt: Runtime,
    cfg: TemplateConfig,
    ctrl: OwnedFd,
    stock: Stock<Instance>,
}

/// A running template and its pool of parked instances. Dropping it stops the template and
/// every instance.
pub struct Template {
    shared: Arc<Shared>,
    filler: Option<std::thread::JoinHandle<()>>,
    helper: Mutex<Option<(HelperChild, OwnedFd)>>,
    cgroup: CgroupPlan,
    pid: i32,
    id_base: u32,
    log: Arc<Mutex<Vec<u8>>>,
    _slot: fs::File,
}

/// Locks the first free id slot; the lock lives as long as the returned file.
fn lock_id_slot() -> Result<(u32, fs::File)> {
    fs::create_dir_all(ID_LOCK_DIR).map_err(|e| Error::io("create directory", ID_LOCK_DIR, e))?;
    for n in 0..ID_SLOTS {
        let p = Path::new(ID_LOCK_DIR).join(format!("{n}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io("open", &p, e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok((ID_BASE + n * ID_COUNT, f));
        }
    }
    Err(Error::Config(format!("all {ID_SLOTS} template id ranges are in use; stop some templates")))
}

/// The mount plan an instance replays on its new root, in the order of
/// [`crate::rootfs::finish_and_pivot`].
fn mount_ops(r: &RootfsConfig) -> Vec<serde_json::Value> {
    let mut ops = Vec::new();
    for m in &r.mounts {
        let o = crate::rootfs::parse_options(&m.options);
        let bind = m.typ == "bind" || o.flags.contains(nix::mount::MsFlags::MS_BIND);
        let (typ, src, data) = if m.typ == "cgroup" || m.typ == "cgroup2" {
            ("cgroup2".to_string(), "cgroup2".to_string(), None)
        } else {
            let data = o.data.join(",");
            let src = if m.source.is_empty() { m.typ.clone() } else { m.source.clone() };
            (m.typ.clone(), src, if data.is_empty() { None } else { Some(data) })
        };
        ops.push(serde_json::json!({
            "op": "mount", "dst": m.destination, "src": src, "type": typ, "data": data,
            "flags": o.flags.bits(), "bind": bind, "propagation": o.propagation.bits(),
        }));
    }
    ops.extend(r.masked_paths.iter().map(|p| serde_json::json!({"op": "mask", "path": p})));
    ops.extend(r.readonly_paths.iter().map(|p| serde_json::json!({"op": "readonly", "path": p})));
    if r.readonly {
        ops.push(serde_json::json!({"op": "readonly_root"}));
    }
    ops
}

/// The template's root: the configured one plus a private tmpfs on /tmp unless one is there.
fn template_rootfs(r: &RootfsConfig) -> RootfsConfig {
    let mut r = r.clone();
    if !r.mounts.iter().any(|m| m.destination.trim_end_matches('/') == "/tmp") {
        r.mounts.push(MountEntry {
            destination: "/tmp".into(),
            typ: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["nosuid".into(), "nodev".into(), "mode=1777".into(), format!("size={}", r.upper_size_bytes)],
        });
    }
    r
}

/// Most directories [`opaque_dirs_hiding_entries`] reports.
const OPAQUE_REPORT_LIMIT: usize = 8;

/// Directories of `lowers` (topmost first) marked opaque with `trusted.overlay.opaque` but not
/// with `user.overlay.opaque`, above another layer: an overlay mounted in a user namespace reads
/// only the user mark, so the entries below show through in templates. thaw's unpacker writes
/// both; layers unpacked by other tools, or on filesystems without user xattrs, may lack it.
/// At most [`OPAQUE_REPORT_LIMIT`].
fn opaque_dirs_hiding_entries(lowers: &[PathBuf]) -> Vec<PathBuf> {
    fn marked(p: &Path, name: &std::ffi::CStr) -> bool {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
        let mut b = [0u8; 4];
        // SAFETY: lgetxattr reads the NUL-terminated path and name and writes at most the
        // length we pass into the buffer we own.
        let n = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), b.as_mut_ptr().cast(), b.len()) };
        n == 1 && b[0] == b'y'
    }
    fn opaque(p: &Path) -> bool {
        marked(p, c"trusted.overlay.opaque") && !marked(p, c"user.overlay.opaque")
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if out.len() >= OPAQUE_REPORT_LIMIT {
                return;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                if opaque(&p) {
                    out.push(p.clone());
                }
                walk(&p, out);
            }
        }
    }
    let mut out = Vec::new();
    // The bottom layer has nothing below it to hide.
    for l in lowers.iter().take(lowers.len().saturating_sub(1)) {
        walk(l, &mut out);
    }
    out
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // getrandom never fails for 4 bytes once the pool is initialised; zero is still a valid seed.
    // SAFETY: getrandom writes at most the length we pass into the buffer we own.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    u32::from_ne_bytes(b)
}

fn set_passcred(fd: &OwnedFd) -> Result<()> {
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::PassCred, &true).map_err(|e| Error::sys("SO_PASSCRED", e))
}

/// Waits up to `timeout` for `fd` to be readable. Returns false on timeout.
fn wait_readable(fd: &OwnedFd, timeout: Option<Duration>) -> Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
        };
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes the one pollfd we pass.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINTR {
            return Err(Error::sys("poll", nix::errno::Errno::last()));
        }
    }
}

/// Receives one message and the sender's host pid (the socket has `SO_PASSCRED`).
fn recv_with_pid(fd: &OwnedFd) -> Result<Option<(Vec<u8>, i32)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; 64 << 10];
    let mut cmsg = nix::cmsg_space!(libc::ucred);
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => {
                if m.bytes == 0 {
                    return Ok(None);
                }
                let mut pid = 0;
                for c in m.cmsgs().map_err(|e| Error::sys("reading control messages", e))? {
                    if let ControlMessageOwned::ScmCredentials(cr) = c {
                        pid = cr.pid();
                    }
                }
                let n = m.bytes;
                return Ok(Some((buf[..n].to_vec(), pid)));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECONNRESET) => return Ok(None),
            Err(e) => return Err(Error::sys("receiving from a template instance", e)),
        }
    }
}

/// A message from the template side that is not what the protocol expects at this point.
fn template_error(what: &str, msg: &[u8]) -> Error {
    match serde_json::from_slice::<serde_json::Value>(msg) {
        Ok(v) if v.get("error").is_some() => {
            Error::Helper(format!("{what}: {}", v["error"].as_str().unwrap_or_default().trim_end()))
        }
        _ => Error::Protocol(format!("{what}: unexpected message {:?}", String::from_utf8_lossy(msg))),
    }
}

/// The exit status an instance reports: `{"code": n}` or `{"signal": n}`. The sender runs the
/// function's code, so anything else is an error, never a panic.
fn parse_status(m: &[u8]) -> Result<ExitStatus> {
    let v: serde_json::Value = serde_json::from_slice(m).map_err(|_| template_error("invocation", m))?;
    let num = |k: &str| v.get(k).and_then(|c| c.as_i64()).and_then(|c| i32::try_from(c).ok());
    match (num("code"), num("signal")) {
        (Some(c), _) => Ok(ExitStatus::Code(c)),
        (_, Some(s)) if s > 0 => Ok(ExitStatus::Signal(s)),
        _ => Err(template_error("invocation", m)),
    }
}

fn memfd(name: &std::ffi::CStr) -> Result<fs::File> {
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::sys("memfd_create", nix::errno::Errno::last()));
    }
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { fs::File::from_raw_fd(fd) })
}

fn read_capped(f: &fs::File) -> Vec<u8> {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0).min(MAX_OUTPUT) as usize;
    let mut v = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match f.read_at(&mut v[done..], done as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    v.truncate(done);
    v
}

impl Runtime {
    /// Starts a template for `cfg` and begins keeping `cfg.depth` instances ready. Returns once
    /// the template has imported its preload modules and handler; an import error is returned
    /// here, with the interpreter's traceback.
    pub fn template(&self, cfg: TemplateConfig) -> Result<Template> {
        let TemplateRuntime::Python { interpreter, preload, handler } = &cfg.runtime;
        let opaque = opaque_dirs_hiding_entries(&cfg.rootfs.lowers);
        if !opaque.is_empty() {
            tracing::warn!(
                handler = %handler,
                dirs = ?opaque,
                "opaque directories of the image lack user.overlay.opaque, which an overlay in a user namespace needs (it ignores trusted.overlay.opaque): entries of lower layers show through in them; unpack the layers with thaw (which writes both marks) or flatten them"
            );
        }
        let (id_base, slot) = lock_id_slot()?;
        let rootfs = template_rootfs(&cfg.rootfs);
        let mut env = cfg.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        if !env.iter().any(|e| e.starts_with("PYTHONHASHSEED=")) {
            // 0 would turn hash randomisation off.
            env.push(format!("PYTHONHASHSEED={}", random_u32() % 4_294_967_295 + 1));
        }
        let id = self.inner.new_id("t");
        let cgroup = CgroupPlan::new(&self.inner.layout, &self.inner.names.cgroup_parent, &id, cfg.profile.limits.clone());
        let plan = TemplatePlan {
            cgroup: cgroup.clone(),
            hostname: cfg.profile.hostname.clone(),
            rootfs: rootfs.clone(),
            staging: self.inner.names.mount_prefix.clone(),
            id_base,
            id_count: ID_COUNT,
            seccomp: crate::seccomp::compile_template(cfg.profile.seccomp)?,
            argv: vec![interpreter.clone(), "-B".into(), "-s".into(), "-c".into(), SCRIPT.into()],
            env,
            cwd: cfg.cwd.clone(),
        };
        let (ours, theirs) = proto::seqpacket_pair()?;
        set_passcred(&ours)?;
        let (log_r, log_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::Builder::new()
            .name("thaw-template-log".into())
            .spawn(move || {
                // Keeps the last 64 KiB the template (or an instance before its stdio is set)
                // wrote, for error messages; all of it also goes to the trace log (debug).
                let mut f = fs::File::from(log_r);
                let mut buf = [0u8; 8192];
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    tracing::debug!(output = %String::from_utf8_lossy(&buf[..n]), "template output");
                    let mut l = log2.lock();
                    l.extend_from_slice(&buf[..n]);
                    let excess = l.len().saturating_sub(64 << 10);
                    l.drain(..excess);
                }
            })
            .map_err(|e| Error::io("spawn thread", "thaw-template-log", e))?;
        let (hctrl, child) = self.spawn_helper()?;
        self.inner.counters.parts_built.fetch_add(1, Ordering::Relaxed);
        let mut template = Template {
            shared: Arc::new(Shared {
                rt: self.clone(),
                cfg: TemplateConfig { rootfs, ..cfg.clone() },
                ctrl: ours,
                stock: Stock::new(cfg.depth),
            }),
            filler: None,
            helper: Mutex::new(Some((child, hctrl))),
            cgroup,
            pid: 0,
            id_base,
            log,
            _slot: slot,
        };
        let hctrl = template.helper.lock().as_ref().map(|(_, c)| c.try_clone()).expect("set above");
        let hctrl = hctrl.map_err(|e| Error::io("duplicate", "helper socket", e))?;
        let fds = [theirs.as_raw_fd(), log_w.as_raw_fd(), log_w.as_raw_fd()];
        proto::send(hctrl.as_fd(), &Request::Template(Box::new(plan)), &fds)?;
        drop(theirs);
        drop(log_w);
        let reply = crate::runtime::recv_reply(&hctrl);
        // Only the template's own copy may stay open: its closing is what stops the helper.
        drop(hctrl);
        match reply {
            Ok(Reply::TemplateReady { .. }) => {}
            Ok(other) => return Err(crate::runtime::unexpected(other)),
            Err(e) => return Err(template.with_log(e)),
        }
        let config = serde_json::json!({
            "preload": preload,
            "handler": handler,
            "lowers": (0..cfg.rootfs.lowers.len()).map(|i| format!("/.thaw/l/{i}")).collect::<Vec<_>>(),
            "upper_size": cfg.rootfs.upper_size_bytes,
            "hostname": cfg.profile.hostname,
            "ops": mount_ops(&template.shared.cfg.rootfs),
            "seccomp": self.seccomp(cfg.profile.seccomp)?.programs,
            "caps": instance_caps()?,
            "last_cap": caps::all().iter().map(|c| c.index()).max().unwrap_or(40),
            "rlimits": instance_rlimits()?,
            "cwd": cfg.cwd,
            "uid": cfg.user.0,
            "gid": cfg.user.1,
            "syscalls": {"pivot_root": libc::SYS_pivot_root, "capset": libc::SYS_capset, "seccomp": libc::SYS_seccomp},
        });
        let ctrl = &template.shared.ctrl;
        proto::send(ctrl.as_fd(), &config, &[])?;
        if !wait_readable(ctrl, Some(INIT_TIMEOUT))? {
            return Err(Error::Helper(format!("the template did not finish importing within {INIT_TIMEOUT:?}")));
        }
        match recv_with_pid(ctrl)? {
            Some((msg, pid)) => match serde_json::from_slice::<serde_json::Value>(&msg) {
                Ok(v) if v.get("ok").is_some() => template.pid = pid,
                Ok(v) if v.get("error").is_some() => {
                    return Err(Error::Config(format!(
                        "the template for handler {handler} failed to initialise (preload {preload:?}); fix the image or the module list. The interpreter said:\n{}",
                        v["error"].as_str().unwrap_or_default().trim_end()
                    )))
                }
                _ => return Err(template_error("template start", &msg)),
            },
            None => {
                let e = Error::Helper(format!("the template interpreter {interpreter} exited during start-up"));
                return Err(template.with_log(e));
            }
        }
        let s2 = template.shared.clone();
        template.filler = Some(
            std::thread::Builder::new()
                .name("thaw-template-filler".into())
                .spawn(move || fill(&s2))
                .map_err(|e| Error::io("spawn thread", "thaw-template-filler", e))?,
        );
        Ok(template)
    }
}

/// Capability numbers instances keep: the runtime-spec default.
fn instance_caps() -> Result<Vec<u8>> {
    Ok(crate::process::cap_set(&ProcessConfig::default().capabilities.bounding)?.iter().map(|c| c.index()).collect())
}

/// `[resource, soft, hard]` of the default process config's rlimits.
fn instance_rlimits() -> Result<Vec<(u32, u64, u64)>> {
    ProcessConfig::default()
        .rlimits
        .iter()
        .map(|r| Ok((crate::process::rlimit_resource(&r.resource)? as u32, r.soft, r.hard)))
        .collect()
}

fn fill(s: &Shared) {
    s.stock.fill("a template instance", || make_instance(s, true));
}

/// Forks one instance and parks it in its own cgroup. `background`: a pool refill, built at
/// `SCHED_IDLE` so it yields the CPU to invocations being served (as pooled parts do); the
/// parked processes are put back to the normal policy before anyone runs in them.
fn make_instance(s: &Shared, background: bool) -> Result<Instance> {
    let rt = &s.rt.inner;
    let t = Instant::now();
    let (a, b) = proto::seqpacket_pair()?;
    set_passcred(&a)?;
    let request: &[u8] = if background { b"fork-idle" } else { b"fork" };
    proto::send_bytes(s.ctrl.as_fd(), request, &[b.as_raw_fd()]).map_err(|e| {
        Error::Helper(format!("the template process is gone ({e}); start a new template (see Template::is_alive)"))
    })?;
    drop(b);
    let mut inst = Instance { sock: a, cgroup: None, lease: None, pid: 0, stages: Vec::new(), rt: rt.clone() };
    let step = |inst: &Instance, what: &str| -> Result<Vec<u8>> {
        if !wait_readable(&inst.sock, Some(INSTANCE_TIMEOUT))? {
            inst.kill();
            return Err(Error::Helper(format!("{what}: no answer within {INSTANCE_TIMEOUT:?}")));
        }
        match proto::recv_bytes(inst.sock.as_fd())? {
            Some((m, _)) => Ok(m),
            None => Err(Error::Helper(format!("{what}: the instance died (is the template gone?)"))),
        }
    };
    if !wait_readable(&inst.sock, Some(INSTANCE_TIMEOUT))? {
        return Err(Error::Helper("forking an instance: the template did not answer".into()));
    }
    match recv_with_pid(&inst.sock)? {
        Some((m, pid)) if m == b"ready" && pid > 0 => inst.pid = pid,
        Some((m, _)) => return Err(template_error("forking an instance", &m)),
        None => return Err(Error::Helper("forking an instance: the template closed the instance socket".into())),
    }
    inst.stages.push(("fork_unshare_overlay".into(), t.elapsed()));
    // The pid is the kernel's word, not the template's: a process may name another pid in
    // SCM_CREDENTIALS only with CAP_SYS_ADMIN over its PID namespace, which the template has —
    // but then only a pid of its own PID namespace, all of whose processes live in the
    // template's user namespace. No host process can be moved (or later killed) this way.
    let t = Instant::now();
    let cgroup = CgroupPlan::new(&rt.layout, &rt.names.cgroup_parent, &rt.new_id("z"), s.cfg.profile.limits.clone());
    inst.cgroup = Some(cgroup.clone());
    let device_program = s.rt.device_program(&s.cfg.profile.limits)?;
    cgroup.create_with(device_program.as_deref().map(|p| p.as_fd()))?;
    for (_, d) in &cgroup.dirs {
        crate::cgroup::write_file(&d.join("cgroup.procs"), &inst.pid.to_string())?;
    }
    inst.stages.push(("cgroup_move".into(), t.elapsed()));
    if s.cfg.profile.network == crate::net::NetworkMode::Bridge {
        // The outer process already has the instance's network namespace; the inner one
        // inherits it with eth0 in place.
        let t = Instant::now();
        let ns = crate::net::open_netns_of(inst.pid)?;
        inst.lease = Some(s.rt.bridge()?.attach(ns.as_fd())?);
        inst.stages.push(("bridge_veth".into(), t.elapsed()));
    }
    let t = Instant::now();
    proto::send_bytes(inst.sock.as_fd(), b"go", &[])?;
    let m = step(&inst, "parking an instance")?;
    if m != b"parked" {
        return Err(template_error("parking an instance", &m));
    }
    if background {
        // Unprivileged processes cannot leave SCHED_IDLE by themselves; the runtime can.
        let normal = libc::sched_param { sched_priority: 0 };
        for pid in crate::cgroup::procs(&cgroup.dirs[0].1) {
            // SAFETY: sched_setscheduler reads the parameter struct we pass.
            if unsafe { libc::sched_setscheduler(pid, libc::SCHED_OTHER, &normal) } != 0
                && nix::errno::Errno::last() != nix::errno::Errno::ESRCH
            {
                return Err(Error::sys(format!("restoring the scheduling policy of instance process {pid}"), nix::errno::Errno::last()));
            }
        }
    }
    inst.stages.push(("pid_ns_root_seccomp".into(), t.elapsed()));
    Ok(inst)
}

impl Template {
    /// Runs the handler on `payload` in a fresh instance and waits for it. With a `timeout`,
    /// an instance still running after it is killed (status `Signal(SIGKILL)`, a note on stderr).
    pub fn invoke(&self, payload: &[u8], timeout: Option<Duration>) -> Result<Invocation> {
        let t0 = Instant::now();
        let s = &self.shared;
        let taken = s.stock.take();
        let hit = taken.is_some();
        let inst = match taken {
            Some(i) => {
                s.stock.stats.hits.fetch_add(1, Ordering::Relaxed);
                i
            }
            None => {
                s.stock.stats.misses.fetch_add(1, Ordering::Relaxed);
                make_instance(s, false)?
            }
        };
        let mut timings = Timings { pooled: hit, ..Timings::default() };
        timings.stages = inst.stages.clone();
        timings.critical_from = if hit { timings.stages.len() } else { 0 };
        timings.stages.push(("take".into(), t0.elapsed()));
        let t = Instant::now();
        let mut stdin = memfd(c"thaw-stdin")?;
        std::io::Write::write_all(&mut stdin, payload).map_err(|e| Error::io("write", "payload memfd", e))?;
        std::io::Seek::rewind(&mut stdin).map_err(|e| Error::io("seek", "payload memfd", e))?;
        let stdout = memfd(c"thaw-stdout")?;
        let stderr = memfd(c"thaw-stderr")?;
        proto::send_bytes(inst.sock.as_fd(), b"run", &[stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()])?;
        drop(stdin);
        timings.stages.push(("send".into(), t.elapsed()));
        timings.to_exec = t0.elapsed();
        let t = Instant::now();
        let mut timed_out = false;
        if !wait_readable(&inst.sock, timeout)? {
            timed_out = true;
            inst.kill();
        }
        let status = match proto::recv_bytes(inst.sock.as_fd())? {
            None => ExitStatus::Signal(libc::SIGKILL),
            Some((m, _)) => parse_status(&m)?,
        };
        timings.stages.push(("run".into(), t.elapsed()));
        let t = Instant::now();
        let out = read_capped(&stdout);
        let mut err = read_capped(&stderr);
        if timed_out {
            err.extend_from_slice(format!("thaw: the instance ran past its timeout of {timeout:?} and was killed\n").as_bytes());
        }
        drop(inst);
        timings.stages.push(("collect".into(), t.elapsed()));
        Ok(Invocation { stdout: out, stderr: err, status, timings })
    }

    /// Counters of the instance pool (hits, misses, built...).
    pub fn stats(&self) -> &PoolStats {
        &self.shared.stock.stats
    }

    /// Instances parked now.
    pub fn ready(&self) -> usize {
        self.shared.stock.ready()
    }

    /// Waits until at least `n` instances are parked (capped at the depth), up to `timeout`.
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        self.shared.stock.wait_ready(n, timeout)
    }

    /// Whether the template still runs. A dead template (killed, or out of memory in its
    /// cgroup) fails every invocation; drop it and start a new one.
    pub fn is_alive(&self) -> bool {
        matches!(self.helper.lock().as_mut().map(|(c, _)| c.try_wait()), Some(Ok(None)))
            && std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    /// Host pid of the template's interpreter.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Host id that root in the template's user namespace maps to.
    pub fn id_base(&self) -> u32 {
        self.id_base
    }

    /// The template's own cgroup directories.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroup.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The configuration (with the template's /tmp added to the root's mounts).
    pub fn config(&self) -> &TemplateConfig {
        &self.shared.cfg
    }

    /// Adds what the template printed to an error about its start.
    fn with_log(&self, e: Error) -> Error {
        // Give the log thread a moment to drain what the dying process wrote.
        std::thread::sleep(Duration::from_millis(20));
        let l = self.log.lock();
        if l.is_empty() {
            e
        } else {
            Error::Helper(format!("{e}; the template wrote: {}", String::from_utf8_lossy(&l).trim_end()))
        }
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        // Closing the helper's socket makes it SIGKILL the template's outer process; the
        // interpreter (PID 1 of the template's PID namespace) follows by its parent-death
        // signal, and with it every instance, all being inside that PID namespace. First, so a
        // filler waiting on a template that stopped answering is released at once.
        if let Some((child, hctrl)) = self.helper.lock().take() {
            drop(hctrl);
            self.shared.rt.inner.schedule_teardown(Some(child), self.cgroup.clone());
        }
        self.shared.stock.stop();
        if let Some(f) = self.filler.take() {
            let _ = f.join();
        }
        self.shared.stock.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_plan_follows_the_root_config() {
        let mut r = RootfsConfig::with_defaults(vec!["/l".into()]);
        r.readonly = true;
        let ops = mount_ops(&template_rootfs(&r));
        let mount = |dst: &str| ops.iter().find(|o| o["op"] == "mount" && o["dst"] == dst).cloned();
        let proc_ = mount("/proc").expect("/proc mounted");
        assert_eq!(proc_["type"], "proc");
        assert_eq!(proc_["bind"], false);
        let cg = mount("/sys/fs/cgroup").expect("cgroup mounted");
        assert_eq!((cg["type"].as_str(), cg["src"].as_str()), (Some("cgroup2"), Some("cgroup2")));
        let sys = mount("/sys").unwrap();
        assert_ne!(sys["flags"].as_u64().unwrap() & nix::mount::MsFlags::MS_RDONLY.bits(), 0, "/sys read-only");
        let tmp = mount("/tmp").expect("a private /tmp");
        assert!(tmp["data"].as_str().unwrap().contains("mode=1777"));
        assert!(ops.iter().any(|o| o["op"] == "mask" && o["path"] == "/proc/kcore"));
        assert!(ops.iter().any(|o| o["op"] == "readonly" && o["path"] == "/proc/sysrq-trigger"));
        assert_eq!(ops.last().unwrap()["op"], "readonly_root");
        // Mounts first, in order, then masks, then read-only paths.
        let first_mask = ops.iter().position(|o| o["op"] == "mask").unwrap();
        assert!(ops[..first_mask].iter().all(|o| o["op"] == "mount"));
        // A configured /tmp is kept, not doubled.
        let twice = template_rootfs(&template_rootfs(&r));
        assert_eq!(twice.mounts.iter().filter(|m| m.destination == "/tmp").count(), 1);
    }

    #[test]
    fn template_errors_carry_the_interpreters_text() {
        let e = template_error("parking an instance", br#"{"error": "mount proc: EPERM\n"}"#);
        assert_eq!(e.to_string(), "building the sandbox failed in the helper: parking an instance: mount proc: EPERM");
        let e = template_error("forking", b"garbage");
        assert!(e.to_string().contains("unexpected message \"garbage\""), "{e}");
    }

    #[test]
    fn opaque_directories_above_another_layer_are_found() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI must run the tests as root");
            eprintln!("skipping opaque_directories_above_another_layer_are_found: trusted xattrs need root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (top, bottom) = (d.path().join("top"), d.path().join("bottom"));
        for p in [top.join("a/opaque"), top.join("a/plain"), bottom.join("b/opaque-at-the-bottom")] {
            fs::create_dir_all(p).unwrap();
        }
        let mark = |p: &Path| {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: lsetxattr reads the NUL-terminated path, name and the one-byte value.
            let r = unsafe { libc::lsetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };
            assert_eq!(r, 0, "setting trusted.overlay.opaque on {}", p.display());
        };
        mark(&top.join("a/opaque"));
        mark(&bottom.join("b/opaque-at-the-bottom"));
        assert_eq!(opaque_dirs_hiding_entries(&[top.clone(), bottom.clone()]), vec![top.join("a/opaque")]);
        // with the user mark too (as thaw's unpacker writes it), the overlay honours it
        let c = std::ffi::CString::new(top.join("a/opaque").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: lsetxattr reads the NUL-terminated path, name and the one-byte value.
        let r = unsafe { libc::lsetxattr(c.as_ptr(), c"user.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        if r == 0 {
            assert!(opaque_dirs_hiding_entries(&[top.clone(), bottom.clone()]).is_empty());
        }
        assert!(opaque_dirs_hiding_entries(&[top]).is_empty(), "a single layer hides nothing");
    }

    #[test]
    fn status_messages() {
        assert_eq!(parse_status(br#"{"code": 3}"#).unwrap(), ExitStatus::Code(3));
        assert_eq!(parse_status(br#"{"signal": 9}"#).unwrap(), ExitStatus::Signal(9));
        assert!(parse_status(br#"{"signal": -1}"#).is_err());
        assert!(parse_status(br#"{"code": 99999999999}"#).is_err());
        assert!(parse_status(br#"{"error": "mount failed"}"#).unwrap_err().to_string().contains("mount failed"));
    }

    proptest::proptest! {
        /// Whatever an instance sends, reading it is an answer or an error, never a panic.
        #[test]
        fn status_parser_never_panics(m in proptest::collection::vec(proptest::num::u8::ANY, 0..64), n: i64) {
            let _ = parse_status(&m);
            let _ = parse_status(format!("{{\"code\": {n}}}").as_bytes());
            let _ = parse_status(format!("{{\"signal\": {n}}}").as_bytes());
            let _ = template_error("x", &m);
        }
    }

    /// The template's `secure_join` (Python, run by instances on the image's untrusted
    /// symbolic links) agrees with [`crate::rootfs::secure_join`] on hostile trees.
    #[test]
    fn python_secure_join_agrees_with_rust() {
        use proptest::strategy::{Strategy, ValueTree};
        let Some((python, _)) = crate::testsupport::debian_python() else {
            assert!(std::env::var_os("CI").is_none(), "CI must install python3 (Debian's)");
            eprintln!("skipping python_secure_join_agrees_with_rust: no Debian python3");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let component = proptest::sample::select(vec!["a", "b", "..", ".", "l", "m", "etc", ""]);
        let path = proptest::collection::vec(component, 0..6).prop_map(|v| v.join("/"));
        let mut cases = Vec::new();
        for i in 0..300 {
            let root = dir.path().join(format!("r{i}"));
            fs::create_dir_all(root.join("a/b")).unwrap();
            let t1 = path.new_tree(&mut runner).unwrap().current();
            let t2 = path.new_tree(&mut runner).unwrap().current();
            let abs = if i % 2 == 0 { format!("/{t1}") } else { t1 };
            let _ = std::os::unix::fs::symlink(&abs, root.join("a/l"));
            let _ = std::os::unix::fs::symlink(&t2, root.join("m"));
            for p in [path.new_tree(&mut runner).unwrap().current(), "a/l/b".into(), "m/../a/l".into(), "/../../etc".into()] {
                cases.push((root.clone(), p));
            }
        }
        let input: Vec<(String, String)> = cases.iter().map(|(r, p)| (r.to_string_lossy().into_owned(), p.clone())).collect();
        let code = r#"
import json, sys
ns = {"__name__": "thaw_template"}
exec(sys.stdin.read(), ns)
out = []
for r, p in json.loads(sys.argv[1]):
    try:
        out.append(ns["secure_join"](r, p))
    except OSError:
        out.append(None)
print(json.dumps(out))
"#;
        let mut child = std::process::Command::new(python)
            .args(["-I", "-c", code, &serde_json::to_string(&input).unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), SCRIPT.as_bytes()).unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let got: Vec<Option<String>> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got.len(), cases.len());
        for ((root, p), py) in cases.iter().zip(got) {
            let rust = crate::rootfs::secure_join(root, p).ok().map(|j| j.to_string_lossy().into_owned());
            assert_eq!(py, rust, "secure_join({}, {p:?})", root.display());
            if let Some(j) = py {
                assert!(crate::rootfs::stays_inside(root, Path::new(&j)), "{j} escaped {}", root.display());
            }
        }
    }

    #[test]
    fn id_ranges_do_not_overlap_and_fit_in_32_bits() {
        assert!(ID_BASE as u64 + ID_SLOTS as u64 * ID_COUNT as u64 <= u32::MAX as u64);
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI must run the tests as root");
            eprintln!("skipping id_ranges_do_not_overlap_and_fit_in_32_bits: not root ({ID_LOCK_DIR} is root's)");
            return;
        }
        let (a, fa) = lock_id_slot().unwrap();
        let (b, _fb) = lock_id_slot().unwrap();
        assert_ne!(a, b);
        assert_eq!((a.max(b) - ID_BASE) % ID_COUNT, 0);
        drop(fa);
    }
}
