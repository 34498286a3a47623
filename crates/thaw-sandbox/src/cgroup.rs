//! Cgroups on a hybrid layout (v1 controllers plus a cgroup2 mount) and on pure cgroup v2.
//!
//! Every function takes the hierarchy roots as paths, so the writers are tested against a fake
//! cgroup root directory (the machine this was written on runs the hybrid layout and cannot boot
//! into pure v2; the v2 writer's only real-kernel coverage is in CI machines that run v2).
//!
//! Layout of names: `<root>/<parent>/<sandbox>` in every hierarchy, where `<parent>` is
//! `thaw-<hash of the data directory>`. Clean-up after a crash therefore only needs the parent name.

use crate::error::{Error, Result};
use crate::spec::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// v1 controllers thaw puts a sandbox in (each is a separate hierarchy on the hybrid layout).
pub const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "pids", "devices"];

/// Where the cgroup hierarchies are mounted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupLayout {
    /// v1 controllers, each at its own mount, and optionally the cgroup2 mount of the hybrid layout.
    Hybrid {
        /// Controller name to the root of its hierarchy (co-mounted controllers share a path).
        v1: BTreeMap<String, PathBuf>,
        /// The cgroup2 mount, if any (`/sys/fs/cgroup/unified`).
        unified: Option<PathBuf>,
    },
    /// Pure cgroup v2 at this root.
    V2 {
        /// The cgroup2 mount.
        root: PathBuf,
    },
}

impl CgroupLayout {
    /// Reads the layout of the calling process's mount namespace.
    pub fn detect() -> Result<Self> {
        let text = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
        Self::from_mountinfo(&text)
    }

    /// Parses `/proc/self/mountinfo`. Only mounts of a hierarchy's root (`root` field `/`) count.
    pub fn from_mountinfo(text: &str) -> Result<Self> {
        let mut v1 = BTreeMap::new();
        let mut v2: Option<PathBuf> = None;
        for line in text.lines() {
            let Some(m) = MountInfoLine::parse(line) else { continue };
            if m.root != "/" {
                continue;
            }
            match m.fstype {
                "cgroup2" => {
                    v2.get_or_insert_with(|| PathBuf::from(unescape_mountinfo(m.mount_point)));
                }
                "cgroup" => {
                    for opt in m.super_options.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            v1.entry(opt.to_string())
                                .or_insert_with(|| PathBuf::from(unescape_mountinfo(m.mount_point)));
                        }
                    }
                }
                _ => {}
            }
        }
        if !v1.is_empty() {
            return Ok(CgroupLayout::Hybrid { v1, unified: v2 });
        }
        match v2 {
            Some(root) => Ok(CgroupLayout::V2 { root }),
            None => Err(Error::Cgroup(
                "no cgroup hierarchy is mounted; mount cgroup2 at /sys/fs/cgroup".into(),
            )),
        }
    }

    /// The directory of `<parent>/<name>` in every hierarchy this layout uses (`name` empty: the
    /// parent itself). Co-mounted v1 controllers appear once.
    pub fn dirs(&self, parent: &str, name: &str) -> Vec<(HierarchyKind, PathBuf)> {
        let join = |root: &Path| {
            let p = root.join(parent);
            if name.is_empty() {
                p
            } else {
                p.join(name)
            }
        };
        match self {
            CgroupLayout::Hybrid { v1, unified } => {
                let mut out: Vec<(HierarchyKind, PathBuf)> = Vec::new();
                for (ctrl, root) in v1 {
                    let dir = join(root);
                    if !out.iter().any(|(_, d)| d == &dir) {
                        out.push((HierarchyKind::V1(ctrl.clone()), dir));
                    }
                }
                if let Some(u) = unified {
                    out.push((HierarchyKind::Unified, join(u)));
                }
                out
            }
            CgroupLayout::V2 { root } => vec![(HierarchyKind::V2, join(root))],
        }
    }
}

/// Which kind of hierarchy a cgroup directory lives in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HierarchyKind {
    /// A v1 hierarchy holding this controller (and maybe others co-mounted).
    V1(String),
    /// The cgroup2 mount of the hybrid layout: membership only, no limits (its controllers are
    /// bound to v1 hierarchies).
    Unified,
    /// Pure cgroup v2: membership and limits.
    V2,
}

struct MountInfoLine<'a> {
    root: &'a str,
    mount_point: &'a str,
    fstype: &'a str,
    super_options: &'a str,
}

impl<'a> MountInfoLine<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let (pre, post) = line.split_once(" - ")?;
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 6 || post.len() < 3 {
            return None;
        }
        Some(MountInfoLine { root: pre[3], mount_point: pre[4], fstype: post[0], super_options: post[2] })
    }
}

/// Moving a process into a cgroup takes the kernel's global threadgroup lock for writing, and by
/// default that write waits for an RCU grace period (milliseconds) whenever the lock has been
/// quiet for a while. Every pooled part and template instance pays it off the critical path, but
/// while it is held, forks, execs and exits everywhere on the host wait too — including the
/// starts being served. The cgroup2 mount option `favordynmods` (Linux 6.1+) keeps the lock in
/// the mode where writers do not wait, at a small cost to every fork and exit on the host. It is
/// host-wide, so thaw sets it only when told to (`[sandbox] favor_dynmods`); see BENCHMARKS.md.
///
/// Whether the first cgroup2 hierarchy mounted in this mount namespace has `favordynmods`
/// (`None`: no cgroup2 mount).
pub fn dynmods_favored() -> Result<Option<bool>> {
    Ok(cgroup2_mount()?.map(|(_, opts)| opts.split(',').any(|o| o == "favordynmods")))
}

/// Turns `favordynmods` on or off on the cgroup2 mount (the other options are kept) and returns
/// whether anything changed. Fails with a clear message when there is no cgroup2 mount or the
/// kernel does not know the option.
pub fn set_favor_dynmods(on: bool) -> Result<bool> {
    let (mount_point, opts) = cgroup2_mount()?.ok_or_else(|| {
        Error::Cgroup("favordynmods needs a cgroup2 mount (pure v2, or the hybrid layout's unified mount); none is mounted".into())
    })?;
    let was = opts.split(',').any(|o| o == "favordynmods");
    if was == on {
        return Ok(false);
    }
    let known = fs::read_to_string("/sys/kernel/cgroup/features").unwrap_or_default();
    if on && !known.split_whitespace().any(|f| f == "favordynmods") {
        return Err(Error::Cgroup("this kernel has no favordynmods option (it came with Linux 6.1)".into()));
    }
    // The remount's data replaces the hierarchy's flags, so pass every flag it has now.
    let mut keep: Vec<&str> = opts.split(',').filter(|o| !matches!(*o, "rw" | "ro" | "favordynmods") && !o.is_empty()).collect();
    if on {
        keep.push("favordynmods");
    }
    let data = keep.join(",");
    nix::mount::mount(None::<&str>, mount_point.as_path(), None::<&str>, nix::mount::MsFlags::MS_REMOUNT, Some(data.as_str()))
        .map_err(|e| Error::sys(format!("remount {} with {data:?}", mount_point.display()), e))?;
    Ok(true)
}

/// The first cgroup2 hierarchy root mounted here: its mount point and super options.
fn cgroup2_mount() -> Result<Option<(PathBuf, String)>> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    Ok(text.lines().filter_map(MountInfoLine::parse).find(|m| m.fstype == "cgroup2" && m.root == "/").map(|m| {
        (PathBuf::from(unescape_mountinfo(m.mount_point)), m.super_options.to_string())
    }))
}

/// Undoes the octal escapes (`\040` for a space) the kernel uses in mountinfo paths.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if v <= 255 {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup directories of one sandbox and the limits to write into them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlan {
    /// Parent directories (created if missing, never removed by a sandbox).
    pub parents: Vec<(HierarchyKind, PathBuf)>,
    /// The sandbox's own directories.
    pub dirs: Vec<(HierarchyKind, PathBuf)>,
    /// Limits to write.
    pub limits: Limits,
}

impl CgroupPlan {
    /// The plan for sandbox `name` under `parent`.
    pub fn new(layout: &CgroupLayout, parent: &str, name: &str, limits: Limits) -> Self {
        CgroupPlan { parents: layout.dirs(parent, ""), dirs: layout.dirs(parent, name), limits }
    }

    /// Creates the directories and writes the limits. Existing directories are reused (so a fake
    /// root prepared by a test, or a directory the kernel populated, both work).
    pub fn create(&self) -> Result<()> {
        self.create_with(None)
    }

    /// [`CgroupPlan::create`], attaching `device_program` (loaded by [`crate::devices::load`]
    /// for these limits' rules) on a real cgroup2 hierarchy instead of loading one.
    pub fn create_with(&self, device_program: Option<std::os::fd::BorrowedFd<'_>>) -> Result<()> {
        for (kind, p) in &self.parents {
            mkdir_existing_ok(p)?;
            if *kind == HierarchyKind::V2 {
                enable_v2_controllers(p)?;
            }
        }
        for (kind, dir) in &self.dirs {
            mkdir_existing_ok(dir)?;
            match kind {
                HierarchyKind::V1(ctrl) => write_v1_limits(ctrl, dir, &self.limits)?,
                HierarchyKind::V2 => {
                    write_v2_limits(dir, &self.limits)?;
                    if crate::devices::is_cgroup2(dir) {
                        match device_program {
                            Some(p) => crate::devices::attach_program(dir, p)?,
                            None => crate::devices::attach(dir, &self.limits.device_rules())?,
                        }
                    }
                }
                HierarchyKind::Unified => {}
            }
        }
        Ok(())
    }

    /// Moves the calling process into every directory of the plan. This is the expensive step
    /// on v1 (the kernel waits for an RCU grace period per hierarchy), which is why pooled
    /// shells do it ahead of time.
    pub fn join_self(&self) -> Result<()> {
        for (_, dir) in &self.dirs {
            write_file(&dir.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }

    /// Removes the sandbox's directories, waiting up to `timeout` for the kernel to let go of
    /// the last task. Directories already gone are fine.
    pub fn remove(&self, timeout: Duration) -> Result<()> {
        for (_, dir) in &self.dirs {
            remove_dir_waiting(dir, timeout)?;
        }
        Ok(())
    }
}

fn mkdir_existing_ok(p: &Path) -> Result<()> {
    match fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(p).map_err(|e| Error::io("create cgroup", p, e))
        }
        Err(e) => Err(Error::io("create cgroup", p, e)),
    }
}

/// Writes an existing control file. Never creates it: a misspelt file name is an error against
/// the kernel and against a fake root alike.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io("open cgroup file", path, e))?;
    f.write_all(value.as_bytes()).map_err(|e| Error::io("write cgroup file", path, e))
}

fn write_if_present(path: &Path, value: &str) -> Result<()> {
    if path.exists() {
        write_file(path, value)
    } else {
        Ok(())
    }
}

/// cgroup v1 limits for the controller `ctrl` in `dir`.
pub fn write_v1_limits(ctrl: &str, dir: &Path, l: &Limits) -> Result<()> {
    match ctrl {
        "memory" => {
            if let Some(m) = l.memory_bytes {
                // memsw must stay >= limit, and the limit must be lowered first when shrinking;
                // a fresh cgroup has both unlimited, so limit first, then memsw.
                write_file(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                let swap = l.memory_swap_bytes.unwrap_or(m);
                // memsw files exist only with swap accounting enabled in the kernel.
                write_if_present(&dir.join("memory.memsw.limit_in_bytes"), &swap.to_string())?;
            }
        }
        "cpu" => {
            if let Some(p) = l.cpu_period_us {
                write_file(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
            }
            if let Some(q) = l.cpu_quota_us {
                write_file(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
            }
            if let Some(s) = l.cpu_shares {
                write_file(&dir.join("cpu.shares"), &s.to_string())?;
            }
        }
        "pids" => {
            if let Some(p) = l.pids_max {
                let v = if p <= 0 { "max".to_string() } else { p.to_string() };
                write_file(&dir.join("pids.max"), &v)?;
            }
        }
        "devices" => {
            // Deny everything, then allow the standard devices, then the configured rules, in
            // order, as the runtime spec describes.
            for rule in crate::spec::default_device_rules().iter().chain(l.devices.iter()) {
                let file = if rule.allow { "devices.allow" } else { "devices.deny" };
                write_file(&dir.join(file), &rule.v1_line())?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Turns on the controllers thaw needs for the children of a v2 `parent`.
fn enable_v2_controllers(parent: &Path) -> Result<()> {
    let available = fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    for c in ["memory", "cpu", "pids"] {
        if available.split_whitespace().any(|a| a == c) {
            write_file(&parent.join("cgroup.subtree_control"), &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// Converts v1 CPU shares (2..=262144) to v2 weight (1..=10000), the mapping runc and crun use.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// cgroup v2 limits in `dir`.
///
/// Device rules are not files on v2: [`CgroupPlan::create`] attaches them as an eBPF program
/// (see [`crate::devices`]) when the directory is on a real cgroup2 filesystem.
pub fn write_v2_limits(dir: &Path, l: &Limits) -> Result<()> {
    if let Some(m) = l.memory_bytes {
        write_file(&dir.join("memory.max"), &m.to_string())?;
        // OCI swap is memory+swap; v2 counts swap alone.
        let swap = l.memory_swap_bytes.map_or(0, |s| (s - m).max(0));
        write_if_present(&dir.join("memory.swap.max"), &swap.to_string())?;
    }
    if l.cpu_quota_us.is_some() || l.cpu_period_us.is_some() {
        let period = l.cpu_period_us.unwrap_or(100_000);
        let quota = match l.cpu_quota_us {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".to_string(),
        };
        write_file(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
    }
    if let Some(s) = l.cpu_shares {
        write_file(&dir.join("cpu.weight"), &shares_to_weight(s).to_string())?;
    }
    if let Some(p) = l.pids_max {
        let v = if p <= 0 { "max".to_string() } else { p.to_string() };
        write_file(&dir.join("pids.max"), &v)?;
    }
    Ok(())
}

/// Process ids listed in a cgroup directory's `cgroup.procs` (empty if it is gone).
pub fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn remove_dir_waiting(dir: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io("remove cgroup", dir, e)),
        }
    }
}

/// Kills every process in the cgroups below `parent` (in every hierarchy) and removes them,
/// then the parent. Used on start to clean what a crashed instance with the same data directory
/// left, and on shutdown. Returns how many processes were killed.
pub fn kill_and_remove_all(layout: &CgroupLayout, parent: &str, timeout: Duration) -> Result<usize> {
    let mut killed = 0;
    let parents = layout.dirs(parent, "");
    let children = |p: &Path| -> Vec<PathBuf> {
        fs::read_dir(p)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + timeout;
    for round in 0.. {
        let mut alive = 0;
        for (_, p) in &parents {
            for child in children(p).into_iter().chain(std::iter::once(p.clone())) {
                for pid in procs(&child) {
                    alive += 1;
                    // SIGKILL of a pid read from our own cgroup: the process cannot have been
                    // reused by an unrelated program while it is still listed there.
                    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).is_ok()
                        && round == 0
                    {
                        killed += 1;
                    }
                }
            }
        }
        if alive == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (_, p) in &parents {
        for child in children(p) {
            remove_dir_waiting(&child, deadline.saturating_duration_since(Instant::now()))?;
        }
        remove_dir_waiting(p, deadline.saturating_duration_since(Instant::now()))?;
    }
    Ok(killed)
}

/// Number of sandbox cgroups (directories) below `parent`, summed over hierarchies.
pub fn count_children(layout: &CgroupLayout, parent: &str) -> usize {
    layout
        .dirs(parent, "")
        .iter()
        .map(|(_, p)| fs::read_dir(p).map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).count()).unwrap_or(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
32 25 0:30 / /sys/fs/cgroup/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
33 25 0:31 / /sys/fs/cgroup/devices rw,nosuid shared:17 - cgroup cgroup rw,devices
34 25 0:31 /inner /mnt/devbind rw,nosuid shared:17 - cgroup cgroup rw,devices
";

    #[test]
    fn parses_hybrid_layout() {
        let l = CgroupLayout::from_mountinfo(HYBRID).unwrap();
        let CgroupLayout::Hybrid { v1, unified } = &l else { panic!("{l:?}") };
        assert_eq!(unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(v1["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(v1["devices"], Path::new("/sys/fs/cgroup/devices"));
        let dirs = l.dirs("thaw-x", "s1");
        assert_eq!(dirs.len(), 5);
        assert!(dirs.contains(&(HierarchyKind::Unified, "/sys/fs/cgroup/unified/thaw-x/s1".into())));
    }

    #[test]
    fn parses_pure_v2_and_escapes() {
        let text = "26 1 0:24 / /sys/fs/my\\040cg rw - cgroup2 cgroup2 rw\n";
        let l = CgroupLayout::from_mountinfo(text).unwrap();
        assert_eq!(l, CgroupLayout::V2 { root: "/sys/fs/my cg".into() });
        assert!(CgroupLayout::from_mountinfo("garbage\n1 2 3\n").is_err());
    }

    /// A fake v2 root: the test plays the kernel by creating the interface files, so a writer
    /// that names a file wrongly fails.
    fn fake_v2(root: &Path, parent: &str, name: &str) {
        let p = root.join(parent);
        fs::create_dir_all(p.join(name)).unwrap();
        fs::write(p.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        fs::write(p.join("cgroup.subtree_control"), "").unwrap();
        for f in ["memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "pids.max", "cgroup.procs"] {
            fs::write(p.join(name).join(f), "").unwrap();
        }
    }

    #[test]
    fn v2_writer_against_fake_root() {
        let root = tempfile::tempdir().unwrap();
        fake_v2(root.path(), "thaw-t", "s1");
        let layout = CgroupLayout::V2 { root: root.path().into() };
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            memory_swap_bytes: Some(96 << 20),
            cpu_quota_us: Some(50_000),
            cpu_period_us: Some(100_000),
            cpu_shares: Some(1024),
            pids_max: Some(32),
            devices: vec![],
        };
        let plan = CgroupPlan::new(&layout, "thaw-t", "s1", limits);
        plan.create().unwrap();
        let rd = |f: &str| fs::read_to_string(root.path().join("thaw-t/s1").join(f)).unwrap();
        assert_eq!(rd("memory.max"), (64u64 << 20).to_string());
        assert_eq!(rd("memory.swap.max"), (32u64 << 20).to_string());
        assert_eq!(rd("cpu.max"), "50000 100000");
        assert_eq!(rd("cpu.weight"), "39");
        assert_eq!(rd("pids.max"), "32");
        // The last controller written wins in a plain file; the kernel accumulates. Either way
        // the writer must have touched subtree_control with a `+` entry.
        let sc = fs::read_to_string(root.path().join("thaw-t/cgroup.subtree_control")).unwrap();
        assert!(sc.starts_with('+'), "{sc:?}");
        plan.join_self().unwrap();
        assert_eq!(rd("cgroup.procs"), "0");
    }

    #[test]
    fn v2_writer_reports_missing_interface_files() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("thaw-t/s1")).unwrap();
        let layout = CgroupLayout::V2 { root: root.path().into() };
        let limits = Limits { pids_max: Some(3), ..Limits::default() };
        let e = CgroupPlan::new(&layout, "thaw-t", "s1", limits).create().unwrap_err();
        assert!(e.to_string().contains("pids.max"), "{e}");
    }

    #[test]
    fn v1_writer_against_fake_root() {
        let root = tempfile::tempdir().unwrap();
        let mut v1 = BTreeMap::new();
        for c in V1_CONTROLLERS {
            let d = root.path().join(c).join("thaw-t/s1");
            fs::create_dir_all(&d).unwrap();
            for f in [
                "memory.limit_in_bytes",
                "cpu.cfs_period_us",
                "cpu.cfs_quota_us",
                "cpu.shares",
                "pids.max",
                "devices.allow",
                "devices.deny",
            ] {
                fs::write(d.join(f), "").unwrap();
            }
            v1.insert(c.to_string(), root.path().join(c));
        }
        let layout = CgroupLayout::Hybrid { v1, unified: None };
        let limits = Limits { memory_bytes: Some(1 << 20), pids_max: Some(0), cpu_shares: Some(512), ..Limits::default() };
        CgroupPlan::new(&layout, "thaw-t", "s1", limits).create().unwrap();
        let rd = |c: &str, f: &str| fs::read_to_string(root.path().join(c).join("thaw-t/s1").join(f)).unwrap();
        assert_eq!(rd("memory", "memory.limit_in_bytes"), "1048576");
        assert_eq!(rd("pids", "pids.max"), "max");
        assert_eq!(rd("cpu", "cpu.shares"), "512");
        // The last allow rule written is the pseudo-terminal range.
        assert_eq!(rd("devices", "devices.allow"), "c 136:* rwm");
        assert_eq!(rd("devices", "devices.deny"), "a");
    }

    #[test]
    fn shares_to_weight_bounds() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    proptest! {
        #[test]
        fn mountinfo_parser_never_panics(s in "\\PC{0,300}") {
            let _ = CgroupLayout::from_mountinfo(&s);
            let _ = unescape_mountinfo(&s);
        }

        #[test]
        fn unescape_roundtrips_escaped_bytes(s in "[a-z \\t\\n\\\\]{0,40}") {
            let escaped: String = s.chars().map(|c| match c {
                ' ' => "\\040".to_string(), '\t' => "\\011".to_string(),
                '\n' => "\\012".to_string(), '\\' => "\\134".to_string(), c => c.to_string(),
            }).collect();
            prop_assert_eq!(unescape_mountinfo(&escaped), s);
        }
    }
}
