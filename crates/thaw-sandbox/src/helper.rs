//! The helper process: the single-threaded process that builds one sandbox and supervises it.
//!
//! Why a separate process: joining or creating a mount namespace (`setns`/`unshare` with
//! `CLONE_NEWNS`) fails in a multithreaded process, and forking from a multithreaded process
//! (the daemon runs tokio) leaves the child with whatever locks other threads held. So the
//! caller starts the helper with fork+exec (`std::process::Command`, safe from any thread), and
//! every namespace, mount and cgroup operation happens here, in a process that never has a
//! second thread. The helper is either the `thaw-sandbox-helper` binary or `thaw` re-executed in
//! helper mode; both call [`main`].
//!
//! Life of a helper (each step is one request on the control socket, descriptor 3):
//!
//! 1. `Shell`: join the sandbox's cgroup (the slow step on cgroup v1), then unshare the cgroup,
//!    UTS, IPC and network namespaces; set the hostname and bring loopback up. The helper is
//!    now the *parked process* of a pooled shell.
//! 2. `Root`: unshare a mount namespace, mount the overlay root on a private tmpfs, unshare a PID
//!    namespace and fork the future PID 1, which mounts /proc and the rest, masks paths and
//!    switches root, then waits.
//! 3. The helper hands PID 1's socket to the caller and supervises: it relays signals and
//!    reports the exit status. The caller sends the process config and stdio straight to PID 1,
//!    which drops privileges and execs the workload (its seccomp profile went on in step 2).
//!
//! Steps 1 and 2 are what the pools do ahead of time; a cold start sends all three at once.
//! A helper can instead start a template runtime (`Template`, see [`crate::zygote`]) and
//! supervise it.
//! Nothing after step 1 writes `cgroup.procs`: PID 1 is born inside the cgroup.

use crate::error::{Error, Result};
use crate::proto::{self, ProcessPlan, Reply, Request, RootPlan, ShellPlan};
use crate::ExitStatus;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// Descriptor the control socket is installed at in the helper.
pub const CONTROL_FD: RawFd = 3;

/// Entry point of a helper process. Never returns.
pub fn main() -> ! {
    // SAFETY: the caller installed the control socket at CONTROL_FD before exec and nothing in
    // this process has taken ownership of it yet.
    let ctrl = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let _ = nix::fcntl::fcntl(ctrl.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let code = match serve(ctrl.as_fd()) {
        Ok(()) => 0,
        Err(e) => {
            let _ = proto::send(ctrl.as_fd(), &Reply::Failed(e.to_string()), &[]);
            1
        }
    };
    std::process::exit(code)
}

struct Parked {
    pid: Pid,
    sock: OwnedFd,
}

fn micros(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

fn serve(ctrl: BorrowedFd<'_>) -> Result<()> {
    let mut shell_done = false;
    loop {
        let Some((req, fds)) = proto::recv::<Request>(ctrl)? else {
            // The owner is gone before a root was built (a pool being drained): just exit.
            return Ok(());
        };
        match req {
            Request::Shell(plan) if !shell_done => {
                let stages = shell(&plan, fds.first().map(|f| f.as_fd()))?;
                shell_done = true;
                let netns = std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
                proto::send(ctrl, &Reply::ShellReady { pid: std::process::id() as i32, netns, stages }, &[])?;
            }
            Request::Root(plan) if shell_done => {
                let (p, stages) = root(&plan, ctrl)?;
                proto::send(ctrl, &Reply::RootReady { pid: p.pid.as_raw(), stages }, &[p.sock.as_raw_fd()])?;
                let pid = p.pid;
                // Our copy goes: from now on only the caller and PID 1 hold the socket, so the
                // caller closing it (a drained pool) makes PID 1 exit.
                drop(p.sock);
                // Parked: sleeping costs nothing, and the exit report is on the critical path
                // of the sandbox's end, so supervise at normal priority.
                set_idle_priority(false);
                return supervise(ctrl, pid);
            }
            Request::Template(plan) if !shell_done => {
                let (pid, stages) = crate::zygote::start_template(&plan, fds)?;
                proto::send(ctrl, &Reply::TemplateReady { pid: pid.as_raw(), stages }, &[])?;
                set_idle_priority(false);
                return supervise(ctrl, pid);
            }
            Request::Signal(_) => {}
            other => return Err(Error::Protocol(format!("unexpected request {other:?} in this state"))),
        }
    }
}

fn shell(plan: &ShellPlan, device_program: Option<BorrowedFd<'_>>) -> Result<Vec<(String, u64)>> {
    let mut stages = Vec::new();
    let t = Instant::now();
    plan.cgroup.create_with(device_program)?;
    stages.push(("cgroup_create".into(), micros(t)));
    let t = Instant::now();
    plan.cgroup.join_self()?;
    stages.push(("cgroup_join".into(), micros(t)));
    let t = Instant::now();
    let flags = CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET;
    nix::sched::unshare(flags).map_err(|e| Error::sys("unshare(cgroup, uts, ipc, net)", e))?;
    stages.push(("unshare_net_uts_ipc_cgroup".into(), micros(t)));
    let t = Instant::now();
    nix::unistd::sethostname(&plan.hostname).map_err(|e| Error::sys("sethostname", e))?;
    loopback_up()?;
    stages.push(("hostname_loopback".into(), micros(t)));
    Ok(stages)
}

/// Brings `lo` up in the current network namespace (it starts down).
pub fn loopback_up() -> Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let s = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| Error::sys("socket for loopback", e))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own; the union member we
    // touch (flags) is the one these requests use.
    unsafe {
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(Error::sys("SIOCGIFFLAGS lo", nix::errno::Errno::last()));
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(Error::sys("SIOCSIFFLAGS lo", nix::errno::Errno::last()));
        }
    }
    Ok(())
}

fn root(plan: &RootPlan, ctrl: BorrowedFd<'_>) -> Result<(Parked, Vec<(String, u64)>)> {
    let mut stages = Vec::new();
    let t = Instant::now();
    let root = crate::rootfs::build_overlay(&plan.staging, &plan.rootfs)?;
    stages.push(("mount_ns_overlay".into(), micros(t)));
    let t = Instant::now();
    nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|e| Error::sys("unshare(CLONE_NEWPID)", e))?;
    let (mine, theirs) = proto::seqpacket_pair()?;
    // SAFETY: this process is single-threaded (see the module documentation), so the child may
    // allocate and use any library code.
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("fork into the new PID namespace", e))? {
        ForkResult::Child => {
            drop(mine);
            let _ = nix::unistd::close(ctrl.as_raw_fd());
            pid1(&root, plan, theirs)
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            match proto::recv_bytes(mine.as_fd())? {
                Some((b, _)) if b == b"ok" => {}
                Some((b, _)) => return Err(Error::Helper(String::from_utf8_lossy(&b).into_owned())),
                None => return Err(Error::Helper("pid 1 of the sandbox died while building its root".into())),
            }
            stages.push(("pid_ns_fork_mounts_pivot".into(), micros(t)));
            Ok((Parked { pid: child, sock: mine }, stages))
        }
    }
}

/// PID 1 of the sandbox, before and up to exec.
fn pid1(root: &std::path::Path, root_plan: &RootPlan, sock: OwnedFd) -> ! {
    // If the helper dies, PID 1 (and with it the whole PID namespace) goes too.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let fail = |sock: &OwnedFd, e: Error| -> ! {
        let _ = proto::send_bytes(sock.as_fd(), e.to_string().as_bytes(), &[]);
        // SAFETY: _exit ends the process without running destructors of the parent's state.
        unsafe { libc::_exit(127) }
    };
    if let Err(e) = crate::rootfs::finish_and_pivot(root, &root_plan.rootfs) {
        fail(&sock, e);
    }
    // The seccomp profile goes on now, while PID 1 still holds CAP_SYS_ADMIN (so without
    // no_new_privs, which is set at exec only when configured): loading it is the costliest
    // step between a request and the workload (see CompiledSeccomp::apply), and for a pooled
    // part this is ahead of time. Everything PID 1 does afterwards (dup2, setrlimit, chdir,
    // prctl, setgroups, setres[ug]id, capset, execve) is allowed by the profile.
    crate::process::reset_ignored_signals();
    if let Err(e) = root_plan.seccomp.apply() {
        fail(&sock, e);
    }
    if let Err(e) = proto::send_bytes(sock.as_fd(), b"ok", &[]) {
        fail(&sock, e);
    }
    set_idle_priority(false);
    let (plan, fds) = match proto::recv::<ProcessPlan>(sock.as_fd()) {
        Ok(Some(x)) => x,
        // SAFETY: as above; the helper is gone or the pool is being drained.
        Ok(None) => unsafe { libc::_exit(0) },
        Err(e) => fail(&sock, e),
    };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    if plan.process.init {
        // SAFETY: PID 1 is single-threaded (forked from the single-threaded helper).
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Parent { child }) => {
                // Our copy of the socket must go: its end-of-file tells the caller the
                // workload's exec happened, and our stdio copies are the workload's alone.
                drop(sock);
                drop(fds);
                mini_init(child)
            }
            Ok(ForkResult::Child) => {}
            Err(e) => fail(&sock, Error::sys("fork the workload under the sandbox's init", e)),
        }
    }
    match crate::process::exec_workload(&plan, fds, sock.as_fd()) {
        Err(e) => fail(&sock, e),
        Ok(never) => match never {},
    }
}

/// PID 1 of a sandbox run with `init` (`thaw run --init`): forwards every signal it gets to
/// the workload and reaps whatever is orphaned into it, until the workload ends; then exits
/// with its code, or 128 + the signal that killed it (a PID 1 cannot die of its own signal).
///
/// Why: the kernel delivers a signal to a PID namespace's init only if it has a handler, so a
/// workload that is itself PID 1 ignores SIGTERM and Ctrl-C unless it installs handlers, and
/// nothing reaps the children its children orphan. This process keeps only `CAP_KILL` and runs
/// under the sandbox's seccomp profile and no_new_privs.
fn mini_init(child: Pid) -> ! {
    // SAFETY: prctl with a pointer to a NUL-terminated name we own.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"thaw-init".as_ptr(), 0, 0, 0) };
    let mut all = nix::sys::signal::SigSet::all();
    all.remove(Signal::SIGKILL);
    all.remove(Signal::SIGSTOP);
    let _ = all.thread_block();
    // Only CAP_KILL stays: the command may run as another user, and signalling it needs that
    // (within this PID namespace, the only processes the init can see).
    let kill_only: caps::CapsHashSet = [caps::Capability::CAP_KILL].into_iter().collect();
    for c in caps::all() {
        if c != caps::Capability::CAP_KILL {
            let _ = caps::drop(None, caps::CapSet::Bounding, c);
        }
    }
    let _ = caps::clear(None, caps::CapSet::Ambient);
    let _ = caps::clear(None, caps::CapSet::Inheritable);
    let _ = caps::set(None, caps::CapSet::Effective, &kill_only);
    let _ = caps::set(None, caps::CapSet::Permitted, &kill_only);
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(child, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                // SAFETY: _exit ends the process at once; this fork of the helper must not run
                // the exit handlers it inherited.
                Ok(WaitStatus::Exited(p, code)) if p == child => unsafe { libc::_exit(code) },
                // SAFETY: as above.
                Ok(WaitStatus::Signaled(p, s, _)) if p == child => unsafe { libc::_exit(128 + s as i32) },
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Error::sys("pidfd_open", nix::errno::Errno::last()));
    }
    // SAFETY: the kernel just returned this new descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Switches the calling thread to `SCHED_IDLE` (`idle`) or back to the normal policy. Pool
/// refills build at idle priority; the start of a sandbox and its workload run at normal
/// priority. Failure only costs speed, so it is ignored.
pub fn set_idle_priority(idle: bool) {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
    // SAFETY: sched_setscheduler reads the parameter struct we pass; pid 0 is the caller.
    unsafe { libc::sched_setscheduler(0, policy, &param) };
}

/// Relays signals to PID 1 and reports how it ended. PID 1 may still be parked: if the owner
/// goes away first, PID 1 is killed.
pub(crate) fn supervise(ctrl: BorrowedFd<'_>, pid: Pid) -> Result<()> {
    let pidfd = pidfd_open(pid)?;
    let mut owner_gone = false;
    loop {
        let mut pfds = vec![libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if !owner_gone {
            pfds.push(libc::pollfd { fd: ctrl.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: poll reads and writes only the array we pass, whose length we give.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = nix::errno::Errno::last();
            if e == nix::errno::Errno::EINTR {
                continue;
            }
            return Err(Error::sys("poll", e));
        }
        if pfds[0].revents != 0 {
            let status = match waitpid(pid, None).map_err(|e| Error::sys("waitpid", e))? {
                WaitStatus::Exited(_, c) => ExitStatus::Code(c),
                WaitStatus::Signaled(_, s, _) => ExitStatus::Signal(s as i32),
                other => return Err(Error::Helper(format!("unexpected wait status {other:?}"))),
            };
            proto::send(ctrl, &Reply::Exited(status), &[])?;
            return Ok(());
        }
        if pfds.len() > 1 && pfds[1].revents != 0 {
            match proto::recv::<Request>(ctrl)? {
                Some((Request::Signal(s), _)) => {
                    if let Ok(sig) = Signal::try_from(s) {
                        let _ = nix::sys::signal::kill(pid, sig);
                    }
                }
                Some(_) => {}
                None => {
                    owner_gone = true;
                    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                }
            }
        }
    }
}
