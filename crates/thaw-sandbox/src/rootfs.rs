//! Root filesystem assembly: the overlay root, the mounts on it, /dev, masked and read-only
//! paths, and the switch into it. Runs only in single-threaded helper processes, inside the
//! sandbox's own mount namespace, so nothing here is visible on the host.

use crate::error::{Error, Result};
use crate::spec::{MountEntry, RootfsConfig};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

const NONE: Option<&str> = None;

fn mnt(src: Option<&str>, target: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> Result<()> {
    mount(src, target, fstype, flags, data).map_err(|e| {
        Error::sys(
            format!("mount {} on {} (type {}, {flags:?}, {})", src.unwrap_or("-"), target.display(), fstype.unwrap_or("-"), data.unwrap_or("")),
            e,
        )
    })
}

/// Joins `unsafe_path` to `root` resolving every symbolic link as if `root` were `/`, so a link
/// in an image (`/etc -> /host/etc`, `x -> ../../..`) can never lead a mount outside the root.
pub fn secure_join(root: &Path, unsafe_path: &str) -> Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = components(Path::new(unsafe_path));
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&c);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(Error::Config(format!("too many symbolic links resolving {unsafe_path} in the root")));
                }
                let target = fs::read_link(&candidate).map_err(|e| Error::io("read link", &candidate, e))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut more = components(&target);
                more.extend(pending);
                pending = more;
            }
            _ => resolved.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&resolved);
    Ok(out)
}

fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Mount flags and filesystem data from runtime-spec options.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedOptions {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Propagation to apply after mounting.
    pub propagation: MsFlags,
    /// Options passed to the filesystem.
    pub data: Vec<String>,
}

/// Splits runtime-spec mount options into flags, propagation and filesystem data.
pub fn parse_options(options: &[String]) -> ParsedOptions {
    let mut p = ParsedOptions { flags: MsFlags::empty(), propagation: MsFlags::empty(), data: Vec::new() };
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => {
                let base = match o.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                p.propagation = if o.starts_with('r') { base | MsFlags::MS_REC } else { base };
                continue;
            }
            _ => {
                p.data.push(o.clone());
                continue;
            }
        };
        p.flags.insert(set);
        p.flags.remove(clear);
    }
    p
}

/// In a fresh mount namespace: makes every mount private, mounts a tmpfs on `staging` and the
/// overlay root inside it. Returns the root's path. Called by the helper (the parked process).
pub fn build_overlay(staging: &Path, cfg: &RootfsConfig) -> Result<PathBuf> {
    if cfg.lowers.is_empty() {
        return Err(Error::Config("a sandbox needs at least one root directory (layer)".into()));
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| Error::sys("unshare(CLONE_NEWNS)", e))?;
    // Nothing done below may propagate back to the host, nor host changes into the sandbox.
    mnt(NONE, Path::new("/"), NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)?;
    let data = format!("size={},mode=0700", cfg.upper_size_bytes);
    mnt(Some("thaw"), staging, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(&data))?;
    for d in ["upper", "work", "root"] {
        let p = staging.join(d);
        fs::create_dir(&p).map_err(|e| Error::io("create directory", &p, e))?;
    }
    fs::set_permissions(staging.join("upper"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| Error::io("chmod", staging.join("upper"), e))?;
    let mut lower = String::new();
    for (i, l) in cfg.lowers.iter().enumerate() {
        let s = l.to_str().ok_or_else(|| Error::Config(format!("layer path {} is not UTF-8", l.display())))?;
        if s.contains(':') || s.contains(',') {
            return Err(Error::Config(format!("layer path {s} contains ':' or ',', which overlayfs cannot take")));
        }
        if i > 0 {
            lower.push(':');
        }
        lower.push_str(s);
    }
    let root = staging.join("root");
    let opts = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        staging.join("upper").display(),
        staging.join("work").display()
    );
    // `nodev`: a device node shipped in an image layer must never open a host device.
    mnt(Some("overlay"), &root, Some("overlay"), MsFlags::MS_NODEV, Some(&opts))?;
    Ok(root)
}

/// Standard device nodes: (name, major, minor).
const DEVICES: &[(&str, u64, u64)] =
    &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

/// Mounts everything on the root, in PID 1 of the new PID namespace (so /proc shows it), then
/// masks, makes read-only, and switches root. Afterwards the host's filesystem is unreachable.
pub fn finish_and_pivot(root: &Path, cfg: &RootfsConfig) -> Result<()> {
    for m in &cfg.mounts {
        mount_entry(root, m)?;
        if m.destination == "/dev" {
            populate_dev(root, cfg)?;
        }
    }
    for p in &cfg.masked_paths {
        mask(root, p)?;
    }
    for p in &cfg.readonly_paths {
        make_readonly(root, p)?;
    }
    if cfg.readonly {
        mnt(NONE, root, NONE, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV, NONE)?;
    }
    pivot(root)
}

fn mount_entry(root: &Path, m: &MountEntry) -> Result<()> {
    let dest = secure_join(root, &m.destination)?;
    let opts = parse_options(&m.options);
    let is_bind = m.typ == "bind" || opts.flags.contains(MsFlags::MS_BIND);
    if is_bind {
        let src = Path::new(&m.source);
        let meta = fs::metadata(src).map_err(|e| Error::io("bind mount source", src, e))?;
        make_mount_point(&dest, meta.is_dir())?;
        let rec = opts.flags & MsFlags::MS_REC;
        mnt(Some(&m.source), &dest, NONE, MsFlags::MS_BIND | rec, NONE)?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            mnt(NONE, &dest, NONE, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra, NONE)?;
        }
    } else {
        make_mount_point(&dest, true)?;
        let data = opts.data.join(",");
        let data = if data.is_empty() { None } else { Some(data.as_str()) };
        if m.typ == "cgroup" || m.typ == "cgroup2" {
            // The hybrid layout's v1 hierarchies cannot be shown namespaced without one mount
            // per controller; the cgroup2 mount, seen through the sandbox's cgroup namespace,
            // shows the sandbox's own cgroup as its root and nothing of the host.
            mnt(Some("cgroup2"), &dest, Some("cgroup2"), opts.flags, NONE)?;
        } else {
            mnt(Some(if m.source.is_empty() { &m.typ } else { &m.source }), &dest, Some(&m.typ), opts.flags, data)?;
        }
    }
    if !opts.propagation.is_empty() {
        mnt(NONE, &dest, NONE, opts.propagation, NONE)?;
    }
    Ok(())
}

fn make_mount_point(dest: &Path, dir: bool) -> Result<()> {
    if dir {
        fs::create_dir_all(dest).map_err(|e| Error::io("create mount point", dest, e))
    } else {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("create mount point", parent, e))?;
        }
        if !dest.exists() {
            fs::File::create(dest).map_err(|e| Error::io("create mount point", dest, e))?;
        }
        Ok(())
    }
}

fn populate_dev(root: &Path, cfg: &RootfsConfig) -> Result<()> {
    let dev = root.join("dev");
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        match mknod(&p, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), nix::sys::stat::makedev(*major, *minor)) {
            Ok(()) => {}
            // Inside a user namespace (template runtimes) no device node can be created: bind
            // the host's node instead, as rootless container runtimes do.
            Err(nix::errno::Errno::EPERM) => {
                fs::File::create(&p).map_err(|e| Error::io("create mount point", &p, e))?;
                mnt(Some(&format!("/dev/{name}")), &p, NONE, MsFlags::MS_BIND, NONE)?;
            }
            Err(e) => return Err(Error::sys(format!("mknod {}", p.display()), e)),
        }
    }
    for d in &cfg.devices {
        let p = secure_join(root, &d.path)?;
        if !p.starts_with(&dev) {
            return Err(Error::Config(format!("device {} must be under /dev", d.path)));
        }
        let kind = match d.kind {
            'b' => SFlag::S_IFBLK,
            'c' => SFlag::S_IFCHR,
            'p' => SFlag::S_IFIFO,
            k => return Err(Error::Config(format!("device {} has unknown type {k:?}", d.path))),
        };
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
        }
        let _ = fs::remove_file(&p);
        mknod(&p, kind, Mode::from_bits_truncate(d.mode), nix::sys::stat::makedev(d.major as u64, d.minor as u64))
            .map_err(|e| Error::sys(format!("mknod {}", p.display()), e))?;
    }
    for (name, target) in DEV_LINKS {
        let p = dev.join(name);
        std::os::unix::fs::symlink(target, &p).map_err(|e| Error::io("symlink", &p, e))?;
    }
    Ok(())
}

/// Hides a path: directories get an empty read-only tmpfs, files the host's /dev/null (reads
/// return nothing). Missing paths need no mask.
fn mask(root: &Path, path: &str) -> Result<()> {
    let p = secure_join(root, path)?;
    let Ok(meta) = fs::metadata(&p) else { return Ok(()) };
    if meta.is_dir() {
        mnt(Some("tmpfs"), &p, Some("tmpfs"), MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("size=0"))
    } else {
        mnt(Some("/dev/null"), &p, NONE, MsFlags::MS_BIND, NONE)
    }
}

fn make_readonly(root: &Path, path: &str) -> Result<()> {
    let p = secure_join(root, path)?;
    if fs::symlink_metadata(&p).is_err() {
        return Ok(());
    }
    mnt(Some(p.as_os_str().to_str().unwrap_or_default()), &p, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE)?;
    mnt(
        NONE,
        &p,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
}

/// `pivot_root(".", ".")`: the old root ends up stacked on the new one and is detached right
/// away, so no path leads back to the host (unlike chroot, which a process with CAP_SYS_CHROOT
/// can escape by chrooting deeper and walking up).
fn pivot(root: &Path) -> Result<()> {
    nix::unistd::chdir(root).map_err(|e| Error::sys(format!("chdir {}", root.display()), e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| Error::sys("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| Error::sys("detaching the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e))?;
    Ok(())
}

/// Whether `joined` names something inside `root`: below it component by component, with no
/// `..` left that could climb out. Used by the property test of [`secure_join`].
#[doc(hidden)]
pub fn stays_inside(root: &Path, joined: &Path) -> bool {
    joined.starts_with(root) && !joined.components().any(|c| c == Component::ParentDir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secure_join_keeps_links_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("etc-link")).unwrap();
        std::os::unix::fs::symlink("../../../../..", r.join("a/up")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(secure_join(r, "/etc-link/passwd").unwrap(), r.join("etc/passwd"));
        assert_eq!(secure_join(r, "/a/up/x").unwrap(), r.join("x"));
        assert_eq!(secure_join(r, "../../proc").unwrap(), r.join("proc"));
        assert_eq!(secure_join(r, "/a/b/../b/c").unwrap(), r.join("a/b/c"));
        assert!(secure_join(r, "/loop/x").is_err());
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o: Vec<String> = ["nosuid", "ro", "mode=755", "rbind", "rprivate", "size=65536k", "rw"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = parse_options(&o);
        assert!(p.flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(!p.flags.contains(MsFlags::MS_RDONLY), "a later rw clears ro");
        assert_eq!(p.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(p.data, vec!["mode=755", "size=65536k"]);
    }

    proptest! {
        /// Whatever the requested path and whatever links exist, the joined path is in the root.
        #[test]
        fn secure_join_never_leaves_root(path in "[a-z./]{0,30}", link in "[a-z./]{0,20}") {
            let d = tempfile::tempdir().unwrap();
            let r = d.path();
            fs::create_dir_all(r.join("a")).unwrap();
            let _ = std::os::unix::fs::symlink(&link, r.join("a/l"));
            if let Ok(j) = secure_join(r, &format!("a/l/{path}")) {
                prop_assert!(stays_inside(r, &j), "{} escaped {}", j.display(), r.display());
            }
            if let Ok(j) = secure_join(r, &path) {
                prop_assert!(stays_inside(r, &j));
            }
        }
    }
}
