//! The protocol between the caller (the daemon or `thaw run`) and a sandbox helper process.
//!
//! One `SOCK_SEQPACKET` socket pair per sandbox: the kernel keeps message boundaries, passes file
//! descriptors (the workload's stdio) alongside, and reports end-of-file when either side dies,
//! which is how a helper notices that its owner is gone and tears its sandbox down.
//! Messages are JSON: a few hundred bytes each, and both ends are the same build of thaw.

use crate::cgroup::CgroupPlan;
use crate::error::{Error, Result};
use crate::seccomp::CompiledSeccomp;
use crate::spec::{ProcessConfig, RootfsConfig};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// Largest message accepted. A process config with a large environment fits comfortably.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Caller to helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Build the image-independent part: cgroup with limits, join it, new cgroup, UTS, IPC and
    /// network namespaces, hostname, loopback up.
    Shell(ShellPlan),
    /// Build the per-image part: a mount namespace holding the overlay root, and the future
    /// PID 1 already forked into a new PID namespace with the root switched.
    Root(RootPlan),
    /// Send this signal to the workload.
    Signal(i32),
    /// Start a template runtime (see [`crate::zygote`]): a user namespace with a shifted id
    /// range, idmapped layers, its own mount, PID, network, UTS, IPC and cgroup namespaces, the
    /// root switched, then exec of the interpreter. Three descriptors travel with it: the
    /// template's control socket (installed at descriptor 3 of the interpreter), its stdout and
    /// its stderr.
    Template(Box<TemplatePlan>),
}

/// The plan of a template process.
#[derive(Debug, Serialize, Deserialize)]
pub struct TemplatePlan {
    /// The template's own cgroup (instances are moved out of it into their own).
    pub cgroup: CgroupPlan,
    /// Hostname in the template's UTS namespace.
    pub hostname: String,
    /// Layers and mounts of the template's root.
    pub rootfs: RootfsConfig,
    /// Host directory the template's private tmpfs is mounted on, in its own mount namespace.
    pub staging: PathBuf,
    /// First host id of the user namespace's range: id 0 inside is this id outside.
    pub id_base: u32,
    /// Number of ids mapped.
    pub id_count: u32,
    /// The template's seccomp profile ([`crate::seccomp::compile_template`]).
    pub seccomp: CompiledSeccomp,
    /// Interpreter and arguments (looked up inside the root).
    pub argv: Vec<String>,
    /// Environment of the interpreter.
    pub env: Vec<String>,
    /// Working directory inside the root.
    pub cwd: String,
}

/// The image-independent plan.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShellPlan {
    /// Cgroup directories and limits.
    pub cgroup: CgroupPlan,
    /// Hostname in the new UTS namespace.
    pub hostname: String,
}

/// The per-image plan.
#[derive(Debug, Serialize, Deserialize)]
pub struct RootPlan {
    /// Layers and mounts.
    pub rootfs: RootfsConfig,
    /// Host directory the sandbox's private tmpfs (upper, work and root) is mounted on, inside
    /// the sandbox's own mount namespace only.
    pub staging: PathBuf,
    /// The compiled seccomp profile PID 1 installs before exec. It belongs to the profile, so it
    /// travels ahead of time and the start message stays small.
    pub seccomp: CompiledSeccomp,
}

/// The workload; sent by the caller directly to PID 1 with three descriptors (stdin, stdout,
/// stderr).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProcessPlan {
    /// What to run and as whom.
    pub process: ProcessConfig,
}

/// Helper to caller.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The shell is built.
    ShellReady {
        /// Host pid of the helper (the parked process).
        pid: i32,
        /// Inode of the new network namespace (to check for leaks later).
        netns: u64,
        /// Stage durations in microseconds.
        stages: Vec<(String, u64)>,
    },
    /// The root is built and PID 1 is parked inside it. PID 1's socket travels with this
    /// message: the caller sends the [`ProcessPlan`] and the workload's stdio straight to PID 1,
    /// and end-of-file on that socket means the exec succeeded (PID 1's end is close-on-exec).
    /// The critical path of a start therefore wakes no process but PID 1.
    RootReady {
        /// Host pid of PID 1 (the future workload).
        pid: i32,
        /// Stage durations in microseconds.
        stages: Vec<(String, u64)>,
    },
    /// The template's interpreter runs (exec succeeded).
    TemplateReady {
        /// Host pid of the process supervising the template (the template's parent).
        pid: i32,
        /// Stage durations in microseconds.
        stages: Vec<(String, u64)>,
    },
    /// The workload ended.
    Exited(crate::ExitStatus),
    /// A stage failed; the helper exits after sending this.
    Failed(String),
}

/// Sends one message with optional descriptors.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> Result<()> {
    let buf = serde_json::to_vec(msg).map_err(|e| Error::Protocol(format!("encoding: {e}")))?;
    if buf.len() > MAX_MESSAGE {
        return Err(Error::Protocol(format!("message of {} bytes exceeds {MAX_MESSAGE}", buf.len())));
    }
    send_bytes(sock, &buf, fds)
}

/// Sends raw bytes with optional descriptors.
pub fn send_bytes(sock: BorrowedFd<'_>, buf: &[u8], fds: &[RawFd]) -> Result<()> {
    let iov = [IoSlice::new(buf)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("sending to the sandbox helper", e)),
        }
    }
}

/// Receives raw bytes and descriptors; `None` at end-of-file (the peer is gone).
pub fn recv_bytes(sock: BorrowedFd<'_>) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    // Peek at the length first (on a seqpacket socket MSG_TRUNC reports the whole message's
    // length), so a small message does not cost a zeroed 256 KiB buffer on the start path.
    let want = loop {
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECONNRESET) => return Ok(None),
            Err(e) => return Err(Error::sys("receiving from the sandbox helper", e)),
        }
    };
    if want > MAX_MESSAGE {
        return Err(Error::Protocol(format!("message of {want} bytes exceeds {MAX_MESSAGE}")));
    }
    let mut buf = vec![0u8; want.max(1)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC) {
            Ok(m) => {
                let mut fds = Vec::new();
                for c in m.cmsgs().map_err(|e| Error::sys("reading control messages", e))? {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        // SAFETY: the kernel just installed these descriptors in our table for
                        // this message; nothing else owns them.
                        fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
                if m.flags.contains(MsgFlags::MSG_CTRUNC) || m.bytes > want.max(1) {
                    return Err(Error::Protocol("message truncated".into()));
                }
                break (m.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECONNRESET) => return Ok(None),
            Err(e) => return Err(Error::sys("receiving from the sandbox helper", e)),
        }
    };
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

/// Receives and decodes one message; `None` at end-of-file.
pub fn recv<T: DeserializeOwned>(sock: BorrowedFd<'_>) -> Result<Option<(T, Vec<OwnedFd>)>> {
    match recv_bytes(sock)? {
        None => Ok(None),
        Some((buf, fds)) => {
            let v = serde_json::from_slice(&buf).map_err(|e| Error::Protocol(format!("decoding: {e}")))?;
            Ok(Some((v, fds)))
        }
    }
}

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Error::sys("socketpair", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn roundtrip_with_descriptor_and_eof() {
        let (a, b) = seqpacket_pair().unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        send(a.as_fd(), &Request::Signal(15), &[devnull.as_raw_fd()]).unwrap();
        let (m, fds): (Request, _) = recv(b.as_fd()).unwrap().unwrap();
        assert!(matches!(m, Request::Signal(15)));
        assert_eq!(fds.len(), 1);
        drop(a);
        assert!(recv::<Request>(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn large_and_empty_messages() {
        let (a, b) = seqpacket_pair().unwrap();
        let big = vec![b'x'; 100_000];
        send_bytes(a.as_fd(), &big, &[]).unwrap();
        assert_eq!(recv_bytes(b.as_fd()).unwrap().unwrap().0, big);
        send_bytes(a.as_fd(), &[], &[]).unwrap();
        send_bytes(a.as_fd(), b"next", &[]).unwrap();
        // An empty message without descriptors reads as end-of-file; the next one is intact.
        assert!(recv_bytes(b.as_fd()).unwrap().is_none());
        assert_eq!(recv_bytes(b.as_fd()).unwrap().unwrap().0, b"next");
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let (a, b) = seqpacket_pair().unwrap();
        send_bytes(a.as_fd(), b"{not json", &[]).unwrap();
        let e = recv::<Request>(b.as_fd()).unwrap_err();
        assert!(e.to_string().contains("decoding"), "{e}");
    }
}
