//! The last steps before the workload runs, in its own process: stdio, rlimits, working
//! directory, user and groups, capabilities, `no_new_privs`, exec. The seccomp profile is
//! already installed by then (see `helper::pid1`).

use crate::error::{Error, Result};
use crate::proto::ProcessPlan;
use caps::{CapSet, Capability, CapsHashSet};
use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Parses capability names (`CAP_KILL`) into a set.
pub fn cap_set(names: &[String]) -> Result<CapsHashSet> {
    names
        .iter()
        .map(|n| Capability::from_str(n).map_err(|_| Error::Config(format!("unknown capability {n}"))))
        .collect()
}

pub(crate) fn rlimit_resource(name: &str) -> Result<libc::__rlimit_resource_t> {
    Ok(match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        other => return Err(Error::Config(format!("unknown rlimit {other}"))),
    })
}

/// Finds `prog` in the `PATH` of `env` (or the default path), inside the current root.
pub fn resolve_program(prog: &str, env: &[String]) -> Result<PathBuf> {
    if prog.contains('/') {
        return Ok(PathBuf::from(prog));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(prog);
        if let Ok(m) = std::fs::metadata(&cand) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(cand);
            }
        }
    }
    Err(Error::Config(format!("executable {prog:?} not found in the sandbox's PATH ({path})")))
}

/// Puts every signal the calling process ignores back to its default action. Ignored signals
/// stay ignored across exec, and the helper is a Rust program, which ignores `SIGPIPE`: without
/// this a workload would get `EPIPE` where it expects to die of `SIGPIPE` (`yes | head -1`).
pub fn reset_ignored_signals() {
    for sig in 1..libc::SIGRTMAX() {
        // SAFETY: an all-zero sigaction is a valid value; sigaction with a null new action only
        // writes the current one into ours; signal() with SIG_DFL installs no handler code.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

pub(crate) fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| Error::Config(format!("{what} {s:?} contains a NUL byte"))))
        .collect()
}

/// Opens a pseudo-terminal pair in the sandbox's own devpts (its /dev/ptmx): the controlling
/// end, and the terminal end opened through it (`TIOCGPTPEER`, so no path lookup in /dev/pts
/// can be raced), sized `size`.
fn open_terminal(size: Option<(u16, u16)>) -> Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Config(
                "the process asks for a terminal but the sandbox has no /dev/ptmx: mount devpts at /dev/pts, with /dev a tmpfs (thaw's default mounts do; a bundle's config.json must list them)".into(),
            ),
            _ => Error::io("open", "/dev/ptmx in the sandbox", e),
        })?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int we own; TIOCGPTPEER takes open flags and returns a new
    // descriptor; TIOCSWINSZ reads one winsize we own.
    unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(Error::sys("unlock the pseudo-terminal", nix::errno::Errno::last()));
        }
        let fd = libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(Error::sys("open the terminal end of the pseudo-terminal", nix::errno::Errno::last()));
        }
        let slave = OwnedFd::from_raw_fd(fd);
        if let Some((rows, cols)) = size {
            let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
        Ok((master, slave))
    }
}

/// Turns the calling process into the workload. Returns only on failure. The seccomp profile is
/// already installed (by PID 1, ahead of time): nothing done here is a call it refuses. With a
/// terminal, its controlling end is sent on `report` (PID 1's socket to the caller) first.
pub fn exec_workload(plan: &ProcessPlan, stdio: Vec<OwnedFd>, report: BorrowedFd<'_>) -> Result<Infallible> {
    let p = &plan.process;
    // A session of its own: no controlling terminal of the host reaches the workload.
    nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    if stdio.len() != 3 {
        return Err(Error::Protocol(format!("expected 3 stdio descriptors, got {}", stdio.len())));
    }
    let terminal = if p.terminal { Some(open_terminal(p.terminal_size)?) } else { None };
    for (i, given) in stdio.iter().enumerate() {
        let fd = match &terminal {
            Some((_, slave)) => slave.as_raw_fd(),
            None => given.as_raw_fd(),
        };
        nix::unistd::dup2(fd, i as i32).map_err(|e| Error::sys(format!("dup2 to {i}"), e))?;
    }
    drop(stdio);
    if let Some((master, slave)) = terminal {
        drop(slave);
        // SAFETY: TIOCSCTTY takes an integer argument (0: never steal) and touches no memory.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(Error::sys("make the pseudo-terminal the controlling terminal", nix::errno::Errno::last()));
        }
        crate::proto::send_bytes(report, b"tty", &[master.as_raw_fd()])?;
    }
    for r in &p.rlimits {
        let res = rlimit_resource(&r.resource)?;
        let lim = libc::rlimit { rlim_cur: r.soft, rlim_max: r.hard };
        // SAFETY: setrlimit reads the struct we pass by pointer and nothing else.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(Error::sys(format!("setrlimit {}", r.resource), nix::errno::Errno::last()));
        }
    }
    if p.args.is_empty() {
        return Err(Error::Config("no program to run".into()));
    }
    let program = resolve_program(&p.args[0], &p.env)?;
    let c_prog = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Config("program path contains a NUL byte".into()))?;
    let c_args = cstrings(&p.args, "argument")?;
    let c_env = cstrings(&p.env, "environment entry")?;

    let bounding = cap_set(&p.capabilities.bounding)?;
    let effective = cap_set(&p.capabilities.effective)?;
    let permitted = cap_set(&p.capabilities.permitted)?;
    let inheritable = cap_set(&p.capabilities.inheritable)?;
    let ambient = cap_set(&p.capabilities.ambient)?;

    nix::unistd::chdir(p.cwd.as_str()).map_err(|e| Error::sys(format!("chdir {} in the sandbox", p.cwd), e))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(Error::sys("prctl(PR_SET_KEEPCAPS)", nix::errno::Errno::last()));
    }
    for c in caps::all() {
        if !bounding.contains(&c) {
            caps::drop(None, CapSet::Bounding, c).map_err(|e| Error::Config(format!("dropping {c} from the bounding set: {e}")))?;
        }
    }
    let gids: Vec<nix::unistd::Gid> = p.additional_gids.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&gids).map_err(|e| Error::sys("setgroups", e))?;
    let gid = nix::unistd::Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| Error::sys(format!("setresgid {}", p.gid), e))?;
    let uid = nix::unistd::Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| Error::sys(format!("setresuid {}", p.uid), e))?;
    let ce = |what: &str, e: caps::errors::CapsError| Error::Config(format!("setting the {what} capabilities: {e}"));
    // Order matters to capset(2): inheritable while CAP_SETPCAP is still effective, then
    // effective (a subset of the still-full permitted set), then permitted (which must keep
    // containing effective).
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(|e| ce("inheritable", e))?;
    caps::set(None, CapSet::Effective, &effective).map_err(|e| ce("effective", e))?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(|e| ce("permitted", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| ce("ambient", e))?;
    for c in &ambient {
        caps::raise(None, CapSet::Ambient, *c).map_err(|e| ce("ambient", e))?;
    }
    if p.no_new_privs {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Error::sys("prctl(PR_SET_NO_NEW_PRIVS)", nix::errno::Errno::last()));
        }
    }
    // Only stdin, stdout and stderr reach the workload; the helper's sockets are close-on-exec
    // already, this catches anything else.
    // SAFETY: close_range with the CLOEXEC flag only marks descriptors; it frees no memory.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    let e = nix::unistd::execve(&c_prog, &c_args, &c_env).unwrap_err();
    Err(Error::sys(format!("exec {}", program.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_parse_and_unknown_fails() {
        let s = cap_set(&["CAP_KILL".into(), "CAP_SYS_ADMIN".into()]).unwrap();
        assert!(s.contains(&Capability::CAP_SYS_ADMIN));
        assert!(cap_set(&["CAP_NOPE".into()]).is_err());
    }

    #[test]
    fn rlimits_by_name() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE").unwrap(), libc::RLIMIT_NOFILE);
        assert!(rlimit_resource("RLIMIT_X").is_err());
    }

    #[test]
    fn program_lookup_uses_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(resolve_program("sh", &env).unwrap(), PathBuf::from("/bin/sh"));
        assert_eq!(resolve_program("./x", &env).unwrap(), PathBuf::from("./x"));
        assert!(resolve_program("no-such-program-here", &env).is_err());
    }
}
