//! Starting helper processes with `posix_spawn`, the control socket at descriptor 3.
//!
//! Why not `std::process::Command`: placing a descriptor at a fixed number needs a `pre_exec`
//! closure there (stable Rust has no descriptor mapping), and with one `Command` falls back to
//! `fork`, which copies the caller's page tables while holding its memory map locked. In the
//! daemon (a large, multithreaded process) that took 0.3-0.6 ms per helper, and the pool's
//! background refill then stalled the page faults and `mmap` calls of the thread starting a
//! sandbox at the same moment. glibc's `posix_spawn` shares the address space until the exec
//! (`CLONE_VM | CLONE_VFORK`) and its file actions do the descriptor placement.
//!
//! The child gets an empty signal mask (the caller may block signals it relays), stdin and
//! stdout on /dev/null, stderr shared with the caller, and the calling thread's scheduling
//! policy (so helpers started by a pool's idle-priority filler run at idle priority too).
//! Ignored signals are left alone here: a Rust helper ignores `SIGPIPE` again as it starts
//! anyway, so the sandbox's PID 1 resets them before any workload runs
//! ([`crate::process::reset_ignored_signals`]).

use crate::error::{Error, Result};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A helper process this process started; reaped with [`HelperChild::wait`] (or by
/// [`HelperChild::try_wait`] seeing it exited).
#[derive(Debug)]
pub struct HelperChild {
    pid: libc::pid_t,
    /// Set once reaped, so a second wait or a kill never reaches a reused pid.
    status: Option<i32>,
}

fn cstring(s: &OsStr, what: &str) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::Config(format!("{what} {s:?} contains a NUL byte")))
}

/// Converts a non-zero `posix_spawn*` result (an errno value, not -1) into an error.
fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::sys(what.to_string(), nix::errno::Errno::from_raw(rc)))
    }
}

/// Owns the attribute and file-action objects so every exit path destroys them.
struct SpawnObjects {
    attr: libc::posix_spawnattr_t,
    actions: libc::posix_spawn_file_actions_t,
}

impl Drop for SpawnObjects {
    fn drop(&mut self) {
        // SAFETY: both were initialised by the constructor in spawn() before this value existed.
        unsafe {
            libc::posix_spawnattr_destroy(&mut self.attr);
            libc::posix_spawn_file_actions_destroy(&mut self.actions);
        }
    }
}

/// Starts `program` with `args`, the current environment and `control` at descriptor 3.
pub fn spawn(program: &Path, args: &[String], control: &OwnedFd) -> Result<HelperChild> {
    let prog = cstring(program.as_os_str(), "helper program")?;
    let mut argv_c = vec![prog.clone()];
    for a in args {
        argv_c.push(cstring(OsStr::new(a), "helper argument")?);
    }
    let mut envp_c = Vec::new();
    for (k, v) in std::env::vars_os() {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        if let Ok(c) = CString::new(kv) {
            envp_c.push(c);
        }
    }
    let mut argv: Vec<*mut libc::c_char> = argv_c.iter().map(|c| c.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = envp_c.iter().map(|c| c.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());
    let devnull = c"/dev/null";

    // SAFETY: the init functions fill the zeroed objects, which SpawnObjects then destroys; all
    // pointers passed below (argv, envp, paths) point into CStrings that outlive the call.
    unsafe {
        let mut o = SpawnObjects { attr: std::mem::zeroed(), actions: std::mem::zeroed() };
        check(libc::posix_spawnattr_init(&mut o.attr), "posix_spawnattr_init")?;
        if libc::posix_spawn_file_actions_init(&mut o.actions) != 0 {
            libc::posix_spawnattr_destroy(&mut o.attr);
            return Err(Error::sys("posix_spawn_file_actions_init", nix::errno::Errno::last()));
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        check(libc::posix_spawnattr_setsigmask(&mut o.attr, &empty), "posix_spawnattr_setsigmask")?;
        check(libc::posix_spawnattr_setflags(&mut o.attr, libc::POSIX_SPAWN_SETSIGMASK as libc::c_short), "posix_spawnattr_setflags")?;
        // dup2 onto the same number clears close-on-exec (POSIX 2017, glibc 2.29+), so a control
        // socket that already is descriptor 3 still reaches the helper.
        check(
            libc::posix_spawn_file_actions_adddup2(&mut o.actions, control.as_raw_fd(), crate::helper::CONTROL_FD),
            "posix_spawn_file_actions_adddup2",
        )?;
        check(libc::posix_spawn_file_actions_addopen(&mut o.actions, 0, devnull.as_ptr(), libc::O_RDONLY, 0), "posix_spawn_file_actions_addopen")?;
        check(libc::posix_spawn_file_actions_addopen(&mut o.actions, 1, devnull.as_ptr(), libc::O_WRONLY, 0), "posix_spawn_file_actions_addopen")?;
        let mut pid: libc::pid_t = 0;
        let rc = libc::posix_spawn(&mut pid, prog.as_ptr(), &o.actions, &o.attr, argv.as_ptr(), envp.as_ptr());
        if rc != 0 {
            return Err(Error::io("start sandbox helper", program, std::io::Error::from_raw_os_error(rc)));
        }
        Ok(HelperChild { pid, status: None })
    }
}

impl HelperChild {
    /// The helper's pid.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    fn reap(&mut self, flags: libc::c_int) -> std::io::Result<Option<i32>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut status = 0;
        loop {
            // SAFETY: waitpid writes the status into the integer we own.
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            if r == self.pid {
                self.status = Some(status);
                return Ok(Some(status));
            }
            if r == 0 {
                return Ok(None);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The raw wait status if the helper has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> std::io::Result<Option<i32>> {
        self.reap(libc::WNOHANG)
    }

    /// Waits for the helper to exit and reaps it; returns the raw wait status.
    pub fn wait(&mut self) -> std::io::Result<i32> {
        self.reap(0).map(|s| s.unwrap_or(0))
    }

    /// Sends `SIGKILL` unless the helper was reaped already.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill takes a pid and a signal number; the pid is our unreaped child, so it
        // cannot have been reused.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
