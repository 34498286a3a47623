//! The recorder: runs a container from an image's layers under an OCI runtime and records, with
//! fanotify, every file of the image it opens, executes and reads until it is ready.
//!
//! Order of operations, and why:
//! 1. The process enters a private mount namespace (propagation private), so the overlay mount
//!    below can never leak into the host's namespace: if thaw dies, the mount dies with the
//!    namespace. crun additionally needs `/sys/fs/cgroup/unified` gone on hybrid-cgroup hosts
//!    (it refuses to run while that cgroup2 mount lists controllers); it is unmounted in this
//!    private namespace only.
//! 2. An overlay of the image's layers (topmost first) with a fresh upper directory becomes the
//!    bundle's root. The image inventory (files and bytes per layer) is taken from the layer
//!    directories before anything runs.
//! 3. `runtime create`: the container exists, its init waits before exec'ing the command.
//! 4. fanotify marks the overlay's *filesystem* (`FAN_MARK_FILESYSTEM`). Every overlay mount is its
//!    own superblock, and this one exists only for this container, so a filesystem mark sees
//!    exactly the container's accesses — no PID or cgroup filter is needed, and a process the
//!    container forks or a path it reaches through another mount of the same root is still seen.
//!    (The container's own mount of its root is a bind of this overlay: same superblock.)
//! 5. `runtime start`: the command is exec'ed; from its first exec on, every open is queued.
//! 6. Events are read until the container is ready: its command exits (default), a TCP connect
//!    to a port inside its network namespace succeeds, or a line of its output matches a regex;
//!    a timeout always applies. The queue is then drained.
//! 7. Teardown, also on every error and on SIGINT/SIGTERM/SIGHUP: `runtime delete --force` (kills
//!    every process of the container, removes its cgroups), unmount, remove the work directory.
//!
//! Ports: the container gets its own network namespace (loopback only, brought up by the
//! runtime). `--ready-port` connects to 127.0.0.1:PORT *inside* that namespace from a short-lived
//! thread that joins it (`setns` of a network namespace is per thread), so the container keeps
//! the isolation it would have in production and cannot clash with host ports.
//!
//! Paths: an event carries an open descriptor; its `/proc/self/fd` link names the file relative
//! to the container's root (the container's mounts are not reachable from our root, so the
//! kernel prints the path from the container's own root). A path under our own view of the
//! overlay is stripped of that prefix, so both forms map to the path inside the image.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::fanotify::{EventFFlags, Fanotify, FanotifyEvent, InitFlags, MarkFlags, MaskFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use thaw_record::{FileAccessRecord, FileOp, SCHEMA_VERSION};

use super::layers::{LayerDir, LayerSet, Provider, RealFs};
use super::summary::{Aggregator, FilesSummary, ImageFacts, ReadyBy};
use super::FilesError;

/// The OCI runtime that runs the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Runc,
    Crun,
}

impl Runtime {
    pub fn program(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
        }
    }
}

/// When the container counts as ready.
#[derive(Debug, Clone)]
pub enum Ready {
    /// Its command exits.
    Exit,
    /// A TCP connection to 127.0.0.1:PORT inside its network namespace succeeds.
    Port(u16),
    /// A line of its stdout or stderr matches.
    Log(regex::Regex),
}

impl Ready {
    /// `--ready-log`: a line of output matching `pattern` (Rust regex syntax).
    pub fn log(pattern: &str) -> Result<Ready, FilesError> {
        regex::Regex::new(pattern).map(Ready::Log).map_err(|e| FilesError::BadSpec(format!("bad --ready-log pattern: {e}")))
    }

    fn describe(&self) -> String {
        match self {
            Ready::Exit => "the command to exit".into(),
            Ready::Port(p) => format!("port {p} to accept a connection"),
            Ready::Log(r) => format!("an output line matching {:?}", r.as_str()),
        }
    }
}

/// The container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

impl Default for ProcessSpec {
    fn default() -> Self {
        ProcessSpec {
            args: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
        }
    }
}

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    /// The image as the user named it (written into every record).
    pub image: String,
    /// The image's layer directories, base first.
    pub layers: Vec<LayerDir>,
    pub process: ProcessSpec,
    pub runtime: Runtime,
    pub ready: Ready,
    pub timeout: Duration,
    /// Where the work directory (upper dir, bundle, runtime state) is made; tmpfs is best.
    pub scratch: PathBuf,
}

/// How often `runtime start` is checked for its exit while events are read.
const START_POLL: Duration = Duration::from_millis(2);
/// How often `--ready-port` tries to connect.
const PORT_PROBE: Duration = Duration::from_millis(20);
/// Longest output line kept for `--ready-log` matching; longer lines are matched in pieces.
const MAX_LOG_LINE: usize = 64 << 10;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Records one container start. Container output is copied to `echo`; every record goes to
/// `sink` as it is made. Needs root, the runtime on PATH, and a single-threaded caller.
pub fn record(
    spec: &RecordSpec,
    sink: &mut dyn FnMut(&FileAccessRecord) -> io::Result<()>,
    echo: &mut dyn Write,
) -> Result<FilesSummary, FilesError> {
    if spec.process.args.is_empty() {
        return Err(FilesError::BadSpec("no command: the image has none, give one after `--`".into()));
    }
    if spec.layers.is_empty() {
        return Err(FilesError::BadSpec("the image has no layers".into()));
    }
    // Signals first (before any child exists), so a Ctrl-C reaches the poll loop and the
    // teardown runs. Children get a clean mask: std's Command resets it in the child.
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        sigs.add(s);
    }
    sigs.thread_block().map_err(FilesError::sys("blocking signals"))?;
    let sigfd = SignalFd::with_flags(&sigs, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(FilesError::sys("signalfd"))?;
    let mut stages = Stages::new();
    enter_private_mount_namespace(spec.runtime == Runtime::Crun)?;
    // The container's init is orphaned when `runtime create` exits; as a subreaper we become
    // its parent and can collect its exit status.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(FilesError::Io { what: "becoming a child subreaper".into(), source: io::Error::last_os_error() });
    }

    let set = LayerSet::from_base_first(spec.layers.clone());
    let inv = set.inventory(&RealFs).map_err(FilesError::io("listing the image's layers"))?;
    let facts = ImageFacts {
        image: spec.image.clone(),
        command: spec.process.args.clone(),
        runtime: spec.runtime.program().into(),
        layers: set.layers.iter().zip(&inv.per_layer).rev().map(|(l, c)| (l.id.clone(), c.files, c.bytes)).collect(),
        total_files: inv.total.files,
        total_bytes: inv.total.bytes,
    };

    stages.mark("namespace_inventory");
    reap_stale(&spec.scratch);
    let tag = format!("thaw-trace-{}-{}", std::process::id(), SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0));
    let dir = spec.scratch.join(&tag);
    std::fs::create_dir(&dir).map_err(FilesError::io(format!("creating the work directory {}", dir.display())))?;
    let mut td = Teardown { dir: dir.clone(), mounted: None, container: None, pid: None };
    let (upper, work, rootfs, bundle, state) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"), dir.join("bundle"), dir.join("state"));
    for d in [&upper, &work, &rootfs, &bundle, &state] {
        std::fs::create_dir(d).map_err(FilesError::io(format!("creating {}", d.display())))?;
    }
    mount_overlay(&set, &upper, &work, &rootfs)?;
    stages.mark("overlay_mount");
    td.mounted = Some(rootfs.clone());
    let config = runtime_config(&spec.process, &rootfs, &format!("/{tag}"));
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config).expect("json values serialise"))
        .map_err(FilesError::io("writing the bundle's config.json"))?;

    // 3. create
    let prog = spec.runtime.program();
    let pidfile = dir.join("pid");
    let mut child = Command::new(prog)
        .arg("--root")
        .arg(&state)
        .arg("create")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--pid-file")
        .arg(&pidfile)
        .arg(&tag)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FilesError::io(format!("running {prog} (is it installed?)")))?;
    let mut out = child.stdout.take().map(OwnedFd::from);
    let mut err = child.stderr.take().map(OwnedFd::from);
    let status = child.wait().map_err(FilesError::io(format!("waiting for {prog} create")))?;
    td.container = Some((prog, state.clone(), tag.clone()));
    for fd in [&out, &err].into_iter().flatten() {
        set_nonblocking(fd)?;
    }
    if !status.success() {
        let mut text = String::new();
        for fd in [&mut out, &mut err] {
            if let Some(f) = fd.take() {
                text.push_str(&String::from_utf8_lossy(&read_available(&f)));
            }
        }
        return Err(FilesError::Runtime { runtime: prog.into(), step: "create", status: status.to_string(), stderr: text.trim().to_string() });
    }
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| FilesError::BadSpec(format!("{prog} create wrote no pid to {}", pidfile.display())))?;
    td.pid = Some(pid);
    let pidfd = pidfd_open(pid)?;
    let netns = match spec.ready {
        Ready::Port(_) => Some(File::open(format!("/proc/{pid}/ns/net")).map_err(FilesError::io("opening the container's network namespace"))?),
        _ => None,
    };

    stages.mark("runtime_create");
    // 4. mark, before the command runs. No FAN_MODIFY / FAN_CLOSE_WRITE: writes land in the
    // upper directory and never cost a layer read; a file the container creates or rewrites is
    // still seen through its FAN_OPEN and reported as the container's (or as its layer's, when
    // a layer provided the original that was copied up).
    let fan = Fanotify::init(
        InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK | InitFlags::FAN_UNLIMITED_QUEUE,
        EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
    )
    .map_err(FilesError::sys("fanotify_init (needs root and a kernel with fanotify)"))?;
    fan.mark(
        MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
        MaskFlags::FAN_OPEN | MaskFlags::FAN_OPEN_EXEC | MaskFlags::FAN_ACCESS | MaskFlags::FAN_CLOSE_NOWRITE,
        None,
        Some(&rootfs),
    )
    .map_err(FilesError::sys("fanotify_mark of the container's root filesystem"))?;

    // 5. start. `runtime start` is not waited for here: events are read (and timestamped)
    // while it runs, since the command is exec'ed before it returns.
    stages.mark("fanotify_mark");
    let started_us = now_us();
    let t0 = Instant::now();
    let mut starter = Some(
        Command::new(prog)
            .arg("--root")
            .arg(&state)
            .arg("start")
            .arg(&tag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(FilesError::io(format!("running {prog} start")))?,
    );
    let start_failed = |c: std::process::Child| -> Result<(), FilesError> {
        let o = c.wait_with_output().map_err(FilesError::io(format!("waiting for {prog} start")))?;
        if o.status.success() {
            return Ok(());
        }
        Err(FilesError::Runtime {
            runtime: prog.into(),
            step: "start",
            status: o.status.to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        })
    };

    // 6. read until ready
    let mut rec = Recorder {
        image: spec.image.clone(),
        set: &set,
        prefix: rootfs.clone(),
        me: std::process::id() as i32,
        agg: Aggregator::new(Some(started_us)),
        cache: HashMap::new(),
        sink,
    };
    let mut lines = [Vec::new(), Vec::new()];
    let mut next_probe = Instant::now();
    let deadline = t0 + spec.timeout;
    let ready = loop {
        rec.drain(&fan)?;
        if let Some(c) = starter.as_mut() {
            if c.try_wait().map_err(FilesError::io(format!("waiting for {prog} start")))?.is_some() {
                start_failed(starter.take().expect("checked just above"))?;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(FilesError::Timeout { timeout: spec.timeout, waiting_for: spec.ready.describe() });
        }
        if let (Ready::Port(port), Some(ns)) = (&spec.ready, &netns) {
            if now >= next_probe {
                if port_open(ns, *port) {
                    break ReadyBy::Port { port: *port };
                }
                next_probe = now + PORT_PROBE;
            }
        }
        let mut wait = deadline - now;
        if matches!(spec.ready, Ready::Port(_)) {
            wait = wait.min(next_probe.saturating_duration_since(now));
        }
        if starter.is_some() {
            wait = wait.min(START_POLL);
        }
        let fan_fd = fan.as_fd();
        let mut fds = vec![
            PollFd::new(fan_fd, PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
        ];
        let pipes: Vec<(usize, &OwnedFd)> = [&out, &err].into_iter().enumerate().filter_map(|(i, f)| f.as_ref().map(|f| (i, f))).collect();
        for (_, f) in &pipes {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        }
        let ms = PollTimeout::try_from(wait.as_millis().clamp(1, 60_000) as u64 as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(FilesError::Sys { what: "poll".into(), source: e }),
        }
        let hit = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        if hit(1) {
            return Err(FilesError::Interrupted);
        }
        let mut closed = Vec::new();
        let mut matched = None;
        for (k, (which, f)) in pipes.iter().enumerate() {
            if !hit(3 + k) {
                continue;
            }
            let (data, eof) = read_chunk(f);
            let _ = echo.write_all(&data);
            if let Ready::Log(re) = &spec.ready {
                if matched.is_none() {
                    matched = feed_lines(&mut lines[*which], &data, eof, re);
                }
            }
            if eof {
                closed.push(*which);
            }
        }
        let exited = hit(2);
        for w in closed {
            if w == 0 { out = None } else { err = None }
        }
        if let Some(line) = matched {
            break ReadyBy::Log { line };
        }
        if exited {
            let (code, signal) = reap(pid);
            td.pid = None;
            match spec.ready {
                Ready::Exit => break ReadyBy::Exit { code, signal },
                _ => {
                    return Err(FilesError::ExitedEarly { status: describe_exit(code, signal), waiting_for: spec.ready.describe() });
                }
            }
        }
    };
    let duration_us = t0.elapsed().as_micros() as u64;
    stages.mark("start_to_ready");
    if let Some(c) = starter.take() {
        start_failed(c)?;
        stages.mark("runtime_start_exit");
    }
    // Everything the container did before it was ready is queued by now.
    rec.drain(&fan)?;
    for f in [&out, &err].into_iter().flatten() {
        let _ = echo.write_all(&read_available(f));
    }
    // Closing a fanotify group waits for an SRCU grace period (about 10 ms here) while the
    // kernel destroys its marks; let that overlap with the runtime's delete below.
    let closer = std::thread::spawn(move || drop(fan));
    let mut summary = rec.agg.finish(Some(&facts), ready, duration_us);
    stages.mark("drain");
    drop(td);
    let _ = closer.join();
    stages.mark("teardown");
    summary.stages_us = stages.done;
    Ok(summary)
}

/// Wall time of each step of a recording, for `--timings`.
struct Stages {
    last: Instant,
    done: Vec<(String, u64)>,
}

impl Stages {
    fn new() -> Stages {
        Stages { last: Instant::now(), done: Vec::new() }
    }

    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.done.push((name.to_string(), (now - self.last).as_micros() as u64));
        self.last = now;
    }
}

fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "status unknown".into(),
    }
}

/// Turns fanotify events into records.
struct Recorder<'a> {
    image: String,
    set: &'a LayerSet,
    prefix: PathBuf,
    me: i32,
    agg: Aggregator,
    /// Path -> providing layer id (None: written by the container). Which layer provides a
    /// path depends only on the read-only lower layers, so the answer never changes.
    cache: HashMap<PathBuf, Option<String>>,
    sink: &'a mut dyn FnMut(&FileAccessRecord) -> io::Result<()>,
}

const OPS: [(MaskFlags, FileOp); 4] = [
    (MaskFlags::FAN_OPEN, FileOp::Open),
    (MaskFlags::FAN_OPEN_EXEC, FileOp::OpenExec),
    (MaskFlags::FAN_ACCESS, FileOp::Access),
    (MaskFlags::FAN_CLOSE_NOWRITE, FileOp::Close),
];

impl Recorder<'_> {
    /// Reads every queued event.
    fn drain(&mut self, fan: &Fanotify) -> Result<(), FilesError> {
        loop {
            match fan.read_events() {
                Ok(evs) if evs.is_empty() => return Ok(()),
                Ok(evs) => {
                    for e in evs {
                        self.event(e)?;
                    }
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(FilesError::Sys { what: "reading fanotify events".into(), source: e }),
            }
        }
    }

    fn event(&mut self, e: FanotifyEvent) -> Result<(), FilesError> {
        self.agg.events += 1;
        let mask = e.mask();
        if mask.contains(MaskFlags::FAN_Q_OVERFLOW) {
            self.agg.overflows += 1;
            return Ok(());
        }
        let Some(fd) = e.fd() else {
            self.agg.unmapped += 1;
            return Ok(());
        };
        if e.pid() == self.me {
            return Ok(());
        }
        let Some(path) = fd_path(fd.as_raw_fd(), &self.prefix) else {
            self.agg.unmapped += 1;
            return Ok(());
        };
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open for the lifetime of `e`; `st` is a valid, writable stat buffer.
        let size = if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0 { st.st_size.max(0) as u64 } else { 0 };
        let layer = match self.cache.get(&path) {
            Some(l) => l.clone(),
            None => {
                let l = match self.set.locate(&RealFs, &path).map_err(FilesError::io(format!("looking up {} in the layers", path.display())))? {
                    Provider::Layer(i) => Some(self.set.layers[i].id.clone()),
                    Provider::Container => None,
                };
                self.cache.insert(path.clone(), l.clone());
                l
            }
        };
        let ts_us = now_us();
        let path_s = path.to_string_lossy().into_owned();
        for (flag, op) in OPS {
            if !mask.contains(flag) {
                continue;
            }
            let r = FileAccessRecord {
                v: SCHEMA_VERSION,
                ts_us,
                image: self.image.clone(),
                path: path_s.clone(),
                op,
                size,
                layer: layer.clone(),
                pid: u32::try_from(e.pid()).ok(),
            };
            self.agg.add(&r);
            (self.sink)(&r).map_err(FilesError::io("writing a file-access record"))?;
        }
        Ok(())
    }
}

/// The path inside the image of an event's descriptor, or `None` when it has none.
fn fd_path(fd: i32, prefix: &Path) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    image_path(&link, prefix)
}

/// Normalises a descriptor's link target to a path inside the image: strips our own mount
/// point of the overlay and the kernel's ` (deleted)` suffix.
pub(crate) fn image_path(link: &Path, prefix: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = link.as_os_str().as_bytes();
    let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
    let p = Path::new(std::ffi::OsStr::from_bytes(bytes));
    if !p.is_absolute() {
        return None; // pipes, sockets, anonymous inodes
    }
    Some(match p.strip_prefix(prefix) {
        Ok(rest) => Path::new("/").join(rest),
        Err(_) => p.to_path_buf(),
    })
}

/// Appends output to the current line buffers and returns the first complete line matching.
fn feed_lines(buf: &mut Vec<u8>, data: &[u8], eof: bool, re: &regex::Regex) -> Option<String> {
    let mut found = None;
    for &b in data {
        if b == b'\n' || buf.len() >= MAX_LOG_LINE {
            let line = String::from_utf8_lossy(buf).into_owned();
            buf.clear();
            if b != b'\n' {
                buf.push(b);
            }
            if found.is_none() && re.is_match(&line) {
                found = Some(line);
            }
        } else {
            buf.push(b);
        }
    }
    if eof && !buf.is_empty() && found.is_none() {
        let line = String::from_utf8_lossy(buf).into_owned();
        buf.clear();
        if re.is_match(&line) {
            found = Some(line);
        }
    }
    found
}

/// Reads what a non-blocking pipe has now; `true` when the writers are gone.
fn read_chunk(fd: &OwnedFd) -> (Vec<u8>, bool) {
    let mut buf = vec![0u8; 64 << 10];
    match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
        Ok(0) => (Vec::new(), true),
        Ok(n) => {
            buf.truncate(n);
            (buf, false)
        }
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => (Vec::new(), false),
        Err(_) => (Vec::new(), true),
    }
}

/// Reads everything a non-blocking pipe holds right now (bounded: 1 MiB).
fn read_available(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < (1 << 20) {
        let (d, eof) = read_chunk(fd);
        if d.is_empty() {
            break;
        }
        out.extend_from_slice(&d);
        if eof {
            break;
        }
    }
    out
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), FilesError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(FilesError::sys("fcntl"))?;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK)).map_err(FilesError::sys("fcntl"))?;
    Ok(())
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, FilesError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(FilesError::Io { what: format!("pidfd_open of the container's process {pid}"), source: io::Error::last_os_error() });
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Collects the exit status of the container's init (our child, as subreaper).
fn reap(pid: i32) -> (Option<i32>, Option<i32>) {
    match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, c)) => (Some(c), None),
        Ok(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
        _ => (None, None),
    }
}

/// Whether 127.0.0.1:PORT accepts a connection inside the network namespace `ns`. The socket
/// is made by a thread that joined the namespace (sockets belong to the namespace they were
/// created in); the thread ends right after, so no other code ever runs in that namespace.
fn port_open(ns: &File, port: u16) -> bool {
    std::thread::scope(|s| {
        s.spawn(|| {
            if setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
                return false;
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
        .join()
        .unwrap_or(false)
    })
}

fn threads() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok())
}

fn enter_private_mount_namespace(drop_unified: bool) -> Result<(), FilesError> {
    if threads() != Some(1) {
        return Err(FilesError::Threaded);
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(FilesError::sys("unshare of the mount namespace (needs root)"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(FilesError::sys("making the mount namespace private"))?;
    if drop_unified {
        match umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(FilesError::Sys { what: "unmounting /sys/fs/cgroup/unified for crun".into(), source: e }),
        }
    }
    Ok(())
}

fn mount_overlay(set: &LayerSet, upper: &Path, work: &Path, target: &Path) -> Result<(), FilesError> {
    let mut lowers = Vec::new();
    for l in &set.layers {
        let s = l.dir.to_str().filter(|s| !s.contains([',', ':', '\\'])).ok_or_else(|| {
            FilesError::BadSpec(format!("layer directory {} has a character overlayfs options cannot carry (, : \\ or non-utf-8)", l.dir.display()))
        })?;
        lowers.push(s);
    }
    for p in [upper, work] {
        if p.to_str().is_none_or(|s| s.contains([',', ':', '\\'])) {
            return Err(FilesError::BadSpec(format!("work directory {} has a character overlayfs options cannot carry; pick another scratch directory", p.display())));
        }
    }
    let data = format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), upper.display(), work.display());
    mount(Some("overlay"), target, Some("overlay"), MsFlags::MS_NODEV, Some(data.as_str()))
        .map_err(FilesError::sys(format!("mounting the overlay root ({} layers) at {}", lowers.len(), target.display())))
}

/// The OCI runtime configuration: the runtime-spec defaults of `runc spec` (namespaces, masked
/// and read-only paths, the usual mounts) with Docker's default capability set.
fn runtime_config(p: &ProcessSpec, rootfs: &Path, cgroup: &str) -> serde_json::Value {
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": p.uid, "gid": p.gid},
            "args": p.args,
            "env": p.env,
            "cwd": p.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "thaw-trace",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroup,
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Cleans up after recorders that died without running their teardown (kill -9): work
/// directories `thaw-trace-<pid>-<n>` in `scratch` whose pid no longer exists. Their container
/// is deleted through the runtime state it left (runc's or crun's); their overlay mount lived
/// only in the dead recorder's private mount namespace, which vanishes with the container's last
/// process, so here the directory is plain — checked anyway: a directory whose `rootfs` is a
/// mount point in our namespace is left alone. Returns how many were removed.
pub fn reap_stale(scratch: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut removed = 0;
    for e in std::fs::read_dir(scratch).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("thaw-trace-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // A recorder that is alive (or a reused pid) is left alone: at worst, clean-up waits.
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        let state = dir.join("state");
        if state.join(&name).exists() {
            for prog in [Runtime::Runc.program(), Runtime::Crun.program()] {
                force_delete(prog, &state, &name);
            }
        }
        let dev = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.dev()).ok();
        let rootfs = dir.join("rootfs");
        if rootfs.exists() && dev(&rootfs) != dev(&dir) {
            continue;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// `runtime delete --force`: kills every process of the container, removes its cgroups and state.
fn force_delete(prog: &str, state: &Path, id: &str) {
    let _ = Command::new(prog)
        .arg("--root")
        .arg(state)
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes everything a recording made, in order: the container (every process, its cgroups,
/// the runtime's state), the overlay mount, the work directory.
struct Teardown {
    dir: PathBuf,
    mounted: Option<PathBuf>,
    container: Option<(&'static str, PathBuf, String)>,
    /// The container's init, while not yet reaped.
    pid: Option<i32>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some((prog, state, id)) = self.container.take() {
            force_delete(prog, &state, &id);
        }
        if let Some(pid) = self.pid.take() {
            // `delete --force` SIGKILLed it; collect it so no zombie is left while we live.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                    _ => break,
                }
            }
        }
        let mut unmounted = true;
        if let Some(m) = self.mounted.take() {
            unmounted = umount2(&m, MntFlags::MNT_DETACH).is_ok();
        }
        // Never delete through a mount that is still there: that would write whiteouts, or
        // worse, reach a lower directory if the mount were a bind.
        if unmounted {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_paths_map_into_the_image() {
        let pre = Path::new("/dev/shm/thaw-trace-1-2/rootfs");
        assert_eq!(image_path(Path::new("/data/a.txt"), pre).unwrap(), Path::new("/data/a.txt"));
        assert_eq!(image_path(Path::new("/dev/shm/thaw-trace-1-2/rootfs/bin/sh"), pre).unwrap(), Path::new("/bin/sh"));
        assert_eq!(image_path(Path::new("/tmp/x (deleted)"), pre).unwrap(), Path::new("/tmp/x"));
        assert_eq!(image_path(Path::new("pipe:[123]"), pre), None);
        assert_eq!(image_path(Path::new("anon_inode:[eventfd]"), pre), None);
    }

    #[test]
    fn log_lines_match_across_chunks_and_at_eof() {
        let re = regex::Regex::new("^ready on [0-9]+$").unwrap();
        let mut buf = Vec::new();
        assert_eq!(feed_lines(&mut buf, b"starting\nready o", false, &re), None);
        assert_eq!(feed_lines(&mut buf, b"n 80", false, &re), None);
        assert_eq!(feed_lines(&mut buf, b"80\nmore\n", false, &re).as_deref(), Some("ready on 8080"));
        let mut buf = Vec::new();
        assert_eq!(feed_lines(&mut buf, b"x\nready on 1", true, &re).as_deref(), Some("ready on 1"), "an unterminated last line counts at eof");
        // an endless line is matched in bounded pieces, never buffered whole
        let mut buf = Vec::new();
        let long = vec![b'a'; MAX_LOG_LINE * 3];
        assert_eq!(feed_lines(&mut buf, &long, false, &re), None);
        assert!(buf.len() <= MAX_LOG_LINE);
    }

    #[test]
    fn stale_work_directories_of_dead_recorders_are_removed() {
        let scratch = tempfile::tempdir().unwrap();
        // A pid that existed and is gone now.
        let mut c = Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        let stale = scratch.path().join(format!("thaw-trace-{dead}-7"));
        let live = scratch.path().join(format!("thaw-trace-{}-7", std::process::id()));
        let other = scratch.path().join("thaw-trace-notapid-1");
        for d in [&stale, &live, &other] {
            std::fs::create_dir_all(d.join("rootfs")).unwrap();
            std::fs::create_dir_all(d.join("upper/etc")).unwrap();
        }
        assert_eq!(reap_stale(scratch.path()), 1);
        assert!(!stale.exists(), "a dead recorder's directory is removed");
        assert!(live.exists(), "a live recorder's directory is left alone");
        assert!(other.exists(), "names thaw did not make are left alone");
    }

    #[test]
    fn runtime_config_carries_the_process() {
        let p = ProcessSpec { args: vec!["cat".into(), "/a".into()], uid: 5, gid: 6, ..Default::default() };
        let c = runtime_config(&p, Path::new("/r"), "/thaw-trace-x");
        assert_eq!(c["process"]["args"][1], "/a");
        assert_eq!(c["process"]["user"]["uid"], 5);
        assert_eq!(c["root"]["path"], "/r");
        assert_eq!(c["linux"]["cgroupsPath"], "/thaw-trace-x");
        let ns: Vec<&str> = c["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(ns.contains(&"network") && ns.contains(&"pid") && ns.contains(&"mount"));
    }
}
