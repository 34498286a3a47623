//! The helper's side of a template: three processes, from host root down to the interpreter.
//!
//! * the **helper** (host root, single-threaded) creates and joins the template's cgroup, forks
//!   `T`, writes `T`'s id maps once `T` has its own user namespace, and hands it the layers as
//!   idmapped mounts (creating an idmapped mount needs privilege over the layers' filesystem,
//!   which only the host side has);
//! * **T** mounts the staging tmpfs while still host root (and steps into it, because the
//!   shifted ids could not walk the host's private directories to reach it), enters the new
//!   user namespace, becomes its root, unshares every other namespace (owned by that user
//!   namespace) and attaches the layers; it forks T2 into the new PID namespace and waits;
//! * **T2**, PID 1 of the template's PID namespace, mounts the overlay root, keeps the layers and
//!   a pristine procfs and sysfs in the hidden `/.thaw`, mounts the rest, switches root, sets
//!   `no_new_privs`, installs the template's seccomp profile and execs the interpreter.
//!
//! Every process from T on holds only the capabilities of the shifted user namespace: none over
//! the host. If T dies, T2 gets SIGKILL (parent-death signal), and with T2 the whole PID
//! namespace, instances included.

use crate::error::{Error, Result};
use crate::proto::{self, TemplatePlan};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Instant;

const NONE: Option<&str> = None;

/// Capabilities (inside the template's user namespace) the interpreter keeps: mounts and
/// namespaces (`CAP_SYS_ADMIN`), loopback (`CAP_NET_ADMIN`), dropping capabilities
/// (`CAP_SETPCAP`), files of the image owned by other users, and the runtime-spec default set
/// its instances keep. Not `CAP_SYS_PTRACE`, `CAP_MKNOD`, `CAP_NET_RAW` and the rest.
const TEMPLATE_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_AUDIT_WRITE,
];
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn mnt(src: Option<&str>, target: &str, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> Result<()> {
    nix::mount::mount(src, target, fstype, flags, data)
        .map_err(|e| Error::sys(format!("mount {} on {target} (type {})", src.unwrap_or("-"), fstype.unwrap_or("-")), e))
}

fn mkdir(p: &str, mode: u32) -> Result<()> {
    nix::unistd::mkdir(p, nix::sys::stat::Mode::from_bits_truncate(mode)).map_err(|e| Error::sys(format!("mkdir {p}"), e))
}

fn micros(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

/// Starts the template described by `plan`; `fds` are its control socket, stdout and stderr.
/// Returns the pid of T (the process the helper supervises) once the interpreter runs.
pub(crate) fn start_template(plan: &TemplatePlan, fds: Vec<OwnedFd>) -> Result<(Pid, Vec<(String, u64)>)> {
    if fds.len() != 3 {
        return Err(Error::Protocol(format!("a template needs 3 descriptors, got {}", fds.len())));
    }
    if plan.rootfs.lowers.is_empty() {
        return Err(Error::Config("a template needs at least one root directory (layer)".into()));
    }
    let mut stages = Vec::new();
    let t = Instant::now();
    plan.cgroup.create()?;
    plan.cgroup.join_self()?;
    stages.push(("cgroup".into(), micros(t)));
    let t = Instant::now();
    let (mine, theirs) = proto::seqpacket_pair()?;
    // SAFETY: the helper is single-threaded (see `crate::helper`), so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork the template", e))? {
        ForkResult::Child => {
            drop(mine);
            let Err(e) = template_outer(plan, &theirs, fds);
            let _ = proto::send_bytes(theirs.as_fd(), e.to_string().as_bytes(), &[]);
            // SAFETY: _exit ends the child without running the helper's destructors.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            drop(fds);
            let guard = KillOnDrop(child);
            match proto::recv_bytes(mine.as_fd())? {
                Some((b, _)) if b == b"userns" => {}
                Some((b, _)) => return Err(Error::Helper(String::from_utf8_lossy(&b).into_owned())),
                None => return Err(Error::Helper("the template process died before creating its user namespace".into())),
            }
            let map = format!("0 {} {}", plan.id_base, plan.id_count);
            for f in ["uid_map", "gid_map"] {
                let p = format!("/proc/{child}/{f}");
                std::fs::write(&p, &map).map_err(|e| Error::io("write", p, e))?;
            }
            let ns_path = format!("/proc/{child}/ns/user");
            let userns: OwnedFd =
                std::fs::File::open(&ns_path).map_err(|e| Error::io("open", ns_path, e))?.into();
            stages.push(("userns".into(), micros(t)));
            let t = Instant::now();
            for l in &plan.rootfs.lowers {
                let fd = idmapped_clone(l, &userns)?;
                proto::send_bytes(mine.as_fd(), b"layer", &[fd.as_raw_fd()])?;
            }
            proto::send_bytes(mine.as_fd(), b"go", &[])?;
            // The socket is close-on-exec in T2: end-of-file means the interpreter runs.
            if let Some((b, _)) = proto::recv_bytes(mine.as_fd())? {
                return Err(Error::Helper(String::from_utf8_lossy(&b).into_owned()));
            }
            stages.push(("idmap_mounts_pivot_exec".into(), micros(t)));
            std::mem::forget(guard);
            Ok((child, stages))
        }
    }
}

/// SIGKILLs and reaps a child unless forgotten: a template that failed half-way must not stay.
struct KillOnDrop(Pid);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(self.0, None);
    }
}

/// A detached copy of the mount at `path` whose ids are shifted through `userns`: a file owned
/// by host id 0 appears owned by the user namespace's root.
fn idmapped_clone(path: &Path, userns: &OwnedFd) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Config(format!("layer path {} contains a NUL byte", path.display())))?;
    // SAFETY: open_tree reads the NUL-terminated path and returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint)
    };
    if fd < 0 {
        return Err(Error::sys(format!("open_tree {}", path.display()), nix::errno::Errno::last()));
    }
    // SAFETY: the kernel just returned this new descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns.as_raw_fd() as u64 };
    // SAFETY: mount_setattr reads the attribute struct of the size we pass; the empty path
    // with AT_EMPTY_PATH names the descriptor itself.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        let e = nix::errno::Errno::last();
        return Err(Error::Config(format!(
            "cannot make an idmapped mount of layer {} ({e}); template runtimes need a kernel >= 5.12 and a layer filesystem with idmapped mount support (ext4, xfs, btrfs, tmpfs >= 6.3)",
            path.display()
        )));
    }
    Ok(fd)
}

/// T: from host root into the template's user namespace. Returns only on failure.
fn template_outer(plan: &TemplatePlan, sock: &OwnedFd, fds: Vec<OwnedFd>) -> Result<Infallible> {
    // SAFETY: prctl with integer arguments only; closing the helper's control socket, which
    // this process never uses (the runtime must see it close when the helper exits).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::close(crate::helper::CONTROL_FD);
    }
    // Still host root: a private mount namespace for the staging tmpfs, owned by the shifted
    // root, then step into it so no host path needs walking later.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| Error::sys("unshare(CLONE_NEWNS)", e))?;
    mnt(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)?;
    let staging = plan.staging.to_str().ok_or_else(|| Error::Config("staging path is not UTF-8".into()))?;
    let data = format!("size={},mode=0755", plan.rootfs.upper_size_bytes);
    mnt(Some("thaw"), staging, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(&data))?;
    nix::unistd::chdir(staging).map_err(|e| Error::sys(format!("chdir {staging}"), e))?;
    let owner = (Some(Uid::from_raw(plan.id_base)), Some(Gid::from_raw(plan.id_base)));
    for d in [".", "upper", "work", "root", "lower"] {
        if d != "." {
            mkdir(d, 0o755)?;
        }
        nix::unistd::chown(d, owner.0, owner.1).map_err(|e| Error::sys(format!("chown {d}"), e))?;
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| Error::sys("unshare(CLONE_NEWUSER)", e))?;
    proto::send_bytes(sock.as_fd(), b"userns", &[])?;
    let mut layers = Vec::new();
    loop {
        match proto::recv_bytes(sock.as_fd())? {
            Some((b, mut f)) if b == b"layer" && f.len() == 1 => layers.push(f.remove(0)),
            Some((b, _)) if b == b"go" => break,
            _ => return Err(Error::Protocol("the helper went away while handing over the layers".into())),
        }
    }
    nix::unistd::setgroups(&[]).map_err(|e| Error::sys("setgroups in the template's user namespace", e))?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(|e| Error::sys("setresgid 0", e))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(|e| Error::sys("setresuid 0", e))?;
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    nix::sched::unshare(flags).map_err(|e| Error::sys("unshare(mnt, pid, net, uts, ipc, cgroup) in the user namespace", e))?;
    mnt(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)?;
    nix::unistd::sethostname(&plan.hostname).map_err(|e| Error::sys("sethostname", e))?;
    crate::helper::loopback_up()?;
    for (i, fd) in layers.iter().enumerate() {
        let target = format!("lower/{i}");
        mkdir(&target, 0o755)?;
        let c = CString::new(target.clone()).expect("no NUL in a formatted path");
        // SAFETY: move_mount attaches the detached mount behind `fd` at the NUL-terminated
        // path; the empty source path with MOVE_MOUNT_F_EMPTY_PATH names the descriptor.
        let r = unsafe {
            libc::syscall(libc::SYS_move_mount, fd.as_raw_fd(), c"".as_ptr(), libc::AT_FDCWD, c.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
        };
        if r != 0 {
            return Err(Error::sys(format!("attach idmapped layer {i}"), nix::errno::Errno::last()));
        }
    }
    drop(layers);
    // SAFETY: this process is single-threaded (a child of the single-threaded helper).
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork into the template's PID namespace", e))? {
        ForkResult::Child => {
            let Err(e) = template_pid1(plan, fds);
            Err(e)
        }
        ForkResult::Parent { child } => {
            // Only T2 may report now: its copy of the socket closes at exec.
            // SAFETY: closing our own copy of the socket; `sock` is not used afterwards.
            unsafe { libc::close(sock.as_raw_fd()) };
            drop(fds);
            let code = match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, c)) => c,
                Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 1,
            };
            // SAFETY: _exit without the helper's destructors.
            unsafe { libc::_exit(code) }
        }
    }
}

/// T2: PID 1 of the template's PID namespace; builds the root and execs the interpreter.
fn template_pid1(plan: &TemplatePlan, fds: Vec<OwnedFd>) -> Result<Infallible> {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let lowers: Vec<String> = (0..plan.rootfs.lowers.len()).map(|i| format!("lower/{i}")).collect();
    // userxattr: inside a user namespace overlayfs cannot use trusted.* xattrs; with it, it
    // honours the user.overlay.opaque marks thaw's unpacker writes beside the trusted ones.
    let opts = format!("lowerdir={},upperdir=upper,workdir=work,userxattr", lowers.join(":"));
    mnt(Some("overlay"), "root", Some("overlay"), MsFlags::MS_NODEV, Some(&opts))?;
    // The hidden area instances are built from: the layers (an instance mounts its own overlay
    // over them), a mountpoint for its staging tmpfs, and a procfs and sysfs without masks,
    // which the kernel wants to see before it lets a user namespace mount new ones
    // (mount_too_revealing). Instances switch root away from it; only the template sees it.
    mkdir("root/.thaw", 0o700)?;
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt(Some("thaw"), "root/.thaw", Some("tmpfs"), hidden, Some("size=64k,mode=0700"))?;
    for d in ["root/.thaw/l", "root/.thaw/inst", "root/.thaw/proc", "root/.thaw/sys"] {
        mkdir(d, 0o700)?;
    }
    for (i, l) in lowers.iter().enumerate() {
        let target = format!("root/.thaw/l/{i}");
        mkdir(&target, 0o755)?;
        mnt(Some(l), &target, NONE, MsFlags::MS_MOVE, NONE)?;
    }
    mnt(Some("proc"), "root/.thaw/proc", Some("proc"), hidden, NONE)?;
    mnt(Some("sysfs"), "root/.thaw/sys", Some("sysfs"), hidden | MsFlags::MS_RDONLY, NONE)?;
    crate::rootfs::finish_and_pivot(Path::new("root"), &plan.rootfs)?;
    nix::unistd::chdir(plan.cwd.as_str()).map_err(|e| Error::sys(format!("chdir {} in the template", plan.cwd), e))?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // The received descriptors are all above 3 (the helper's 0..3 were open when they
    // arrived); /dev/null may land on 3, so it is installed and closed before the control
    // socket takes descriptor 3.
    let null: OwnedFd = std::fs::File::open("/dev/null").map_err(|e| Error::io("open", "/dev/null", e))?.into();
    for (fd, to) in [(null.as_raw_fd(), 0), (fds[1].as_raw_fd(), 1), (fds[2].as_raw_fd(), 2)] {
        nix::unistd::dup2(fd, to).map_err(|e| Error::sys(format!("dup2 to {to}"), e))?;
    }
    drop(null);
    nix::unistd::dup2(fds[0].as_raw_fd(), crate::zygote::TEMPLATE_CONTROL_FD).map_err(|e| Error::sys("dup2 template control", e))?;
    drop(fds);
    let program = crate::process::resolve_program(&plan.argv[0], &plan.env)?;
    let c_prog = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Config("interpreter path contains a NUL byte".into()))?;
    let c_args = crate::process::cstrings(&plan.argv, "argument")?;
    let c_env = crate::process::cstrings(&plan.env, "environment entry")?;
    // The interpreter (root of the user namespace) gets only what building instances needs:
    // in particular no CAP_SYS_PTRACE, so the function's code in the template cannot read the
    // memory or descriptors of instances (which make themselves non-dumpable), and so cannot
    // carry one invocation's data into the next.
    for c in caps::all() {
        if !TEMPLATE_CAPS.contains(&c) {
            caps::drop(None, caps::CapSet::Bounding, c)
                .map_err(|e| Error::Config(format!("dropping {c} from the template's bounding set: {e}")))?;
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::sys("prctl(PR_SET_NO_NEW_PRIVS)", nix::errno::Errno::last()));
    }
    plan.seccomp.apply()?;
    // SAFETY: close_range with the CLOEXEC flag only marks descriptors; it frees no memory.
    unsafe { libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    let e = nix::unistd::execve(&c_prog, &c_args, &c_env).unwrap_err();
    Err(Error::sys(format!("exec the template interpreter {}", program.display()), e))
}
