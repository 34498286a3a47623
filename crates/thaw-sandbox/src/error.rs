//! The one error type of the crate. Messages are lowercase and say what to do next.

use std::path::PathBuf;

/// Everything that can go wrong while building, running or tearing down a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation on the host failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"create directory"`, `"write"`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {errno} (is thaw running as root on a kernel with namespaces, overlayfs and seccomp?)")]
    Sys {
        /// What was being done, with its arguments.
        what: String,
        /// The error number the kernel returned.
        errno: nix::errno::Errno,
    },
    /// The sandbox configuration (an OCI `config.json` or command-line flags) cannot be honoured.
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    /// The seccomp profile could not be compiled into a BPF program.
    #[error("compiling the seccomp profile failed: {0}")]
    Seccomp(String),
    /// The helper process and the caller disagree about the protocol (a bug, or the helper died).
    #[error("sandbox helper protocol: {0}")]
    Protocol(String),
    /// The helper process reported a failure while building or starting the sandbox.
    #[error("building the sandbox failed in the helper: {0}")]
    Helper(String),
    /// Another live thaw instance holds the data directory.
    #[error("data directory {0} is in use by another thaw instance; stop it or pick another data directory")]
    Locked(PathBuf),
    /// The cgroup hierarchy is not what thaw understands.
    #[error("cgroups: {0}")]
    Cgroup(String),
    /// Bridged networking could not be set up (a netlink request failed, or the subnet is full).
    #[error("sandbox network: {0}")]
    Net(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    pub(crate) fn sys(what: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::Sys { what: what.into(), errno }
    }
}
