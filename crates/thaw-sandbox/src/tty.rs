//! The caller's side of an interactive sandbox (`thaw run -t`).
//!
//! The sandbox's PID 1 opens the pseudo-terminal pair in the sandbox's own devpts, so the
//! workload's terminal has a name it can see (`tty` prints `/dev/pts/0`), and makes it the
//! workload's stdin, stdout, stderr and controlling terminal (see
//! [`crate::ProcessConfig::terminal`]). The controlling end comes back to the caller with the
//! start. [`Terminal`] copies bytes between it and the caller's own stdin and stdout, with the
//! caller's terminal in raw mode so that keys like Ctrl-C reach the sandbox's line discipline as
//! bytes (which then signals the sandbox's foreground process group, as on any terminal), and
//! follows the caller's window size on `SIGWINCH`.

use crate::error::{Error, Result};
use nix::sys::termios::{self, SetArg, Termios};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The controlling end of a sandbox's terminal and, while this exists, the caller's terminal
/// in raw mode.
pub struct Terminal {
    master: OwnedFd,
    /// The caller's stdin settings to restore, when stdin is a terminal.
    saved: Option<Termios>,
    /// Whether the caller's stdin still has data to copy.
    stdin_open: bool,
}

fn winsize_of(fd: RawFd) -> Option<libc::winsize> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some(ws)
}

/// The size to give the sandbox's terminal as (rows, columns): the caller's terminal's (stdout's,
/// else stdin's), or 24x80 when neither is a terminal (the kernel's default would be 0x0, which
/// programs that lay out text divide by).
pub fn caller_size() -> (u16, u16) {
    winsize_of(1).or_else(|| winsize_of(0)).map(|w| (w.ws_row, w.ws_col)).unwrap_or((24, 80))
}

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

impl Terminal {
    /// Takes over the controlling end of a sandbox's terminal, and puts the caller's stdin in
    /// raw mode when it is a terminal (restored on drop).
    pub fn attach(master: OwnedFd) -> Result<Terminal> {
        let mut t = Terminal { master, saved: None, stdin_open: true };
        // SAFETY: descriptor 0 is open for the life of the process; we only borrow it.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        if is_tty(0) {
            let saved = termios::tcgetattr(stdin).map_err(|e| Error::sys("reading the terminal's settings", e))?;
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(stdin, SetArg::TCSANOW, &raw).map_err(|e| Error::sys("raw mode on the terminal", e))?;
            t.saved = Some(saved);
        }
        Ok(t)
    }

    /// Follows the caller's terminal size (on `SIGWINCH`).
    pub fn resize(&self) {
        if let Some(ws) = winsize_of(1).or_else(|| winsize_of(0)) {
            // SAFETY: TIOCSWINSZ reads one winsize we own.
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
    }

    /// Descriptors to poll while the workload runs: the controlling end and the caller's stdin
    /// (while open).
    pub(crate) fn poll_fds(&self) -> Vec<libc::pollfd> {
        let mut v = vec![libc::pollfd { fd: self.master.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if self.stdin_open {
            v.push(libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 });
        }
        v
    }

    /// Copies what `poll` found ready (`ready` as returned for [`Terminal::poll_fds`]).
    pub(crate) fn pump(&mut self, ready: &[libc::pollfd]) -> Result<()> {
        let mut buf = [0u8; 16 * 1024];
        if ready.first().is_some_and(|p| p.revents & libc::POLLIN != 0) {
            // EIO: every terminal end in the sandbox is closed; the rest comes with the drain.
            if let Ok(n) = nix::unistd::read(self.master.as_raw_fd(), &mut buf) {
                write_all(1, &buf[..n])?;
            }
        }
        if let Some(p) = ready.get(1) {
            if p.revents != 0 {
                match nix::unistd::read(0, &mut buf) {
                    Ok(0) | Err(_) => {
                        // The caller's input ended (a pipe or file): pass that on as the
                        // terminal's end-of-file character, as typing it would.
                        self.stdin_open = false;
                        let eof = termios::tcgetattr(self.master.as_fd())
                            .map(|t| t.control_chars[libc::VEOF])
                            .unwrap_or(4);
                        let _ = write_all(self.master.as_raw_fd(), &[eof]);
                    }
                    Ok(n) => write_all(self.master.as_raw_fd(), &buf[..n])?,
                }
            }
        }
        Ok(())
    }

    /// After the workload ended: copies what it wrote and the caller has not read yet, until
    /// no terminal end is open in the sandbox any more (or 200 ms pass without data).
    pub(crate) fn drain(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let mut p = [libc::pollfd { fd: self.master.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: poll reads and writes only the array we pass.
            if unsafe { libc::poll(p.as_mut_ptr(), 1, 200) } <= 0 {
                return;
            }
            match nix::unistd::read(self.master.as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 => {
                    if write_all(1, &buf[..n]).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: descriptor 0 is open for the life of the process; we only borrow it.
            let stdin = unsafe { BorrowedFd::borrow_raw(0) };
            let _ = termios::tcsetattr(stdin, SetArg::TCSAFLUSH, saved);
        }
    }
}

fn write_all(fd: RawFd, mut b: &[u8]) -> Result<()> {
    // SAFETY: callers pass descriptor 1 (open for the life of the process) or the controlling
    // end this Terminal owns, which outlives the call.
    let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
    while !b.is_empty() {
        match nix::unistd::write(bfd, b) {
            Ok(n) => b = &b[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let mut p = [libc::pollfd { fd, events: libc::POLLOUT, revents: 0 }];
                // SAFETY: poll reads and writes only the array we pass.
                unsafe { libc::poll(p.as_mut_ptr(), 1, -1) };
            }
            Err(e) => return Err(Error::sys("copying terminal data", e)),
        }
    }
    Ok(())
}
