//! Sandboxes from pre-created parts: rootfs assembly, namespaces, cgroups, seccomp,
//! capabilities, pools.
//!
//! Map of the crate:
//!
//! * [`spec`]: what a sandbox looks like, converted once from an OCI bundle or flags;
//! * [`runtime`]: the caller's side (lives in any process, even a multithreaded daemon): the
//!   cold path, sandbox handles, teardown off the critical path;
//! * [`pool`]: parts built ahead of time, assembled per request;
//! * [`zygote`]: template runtimes (Python) forked per invocation into fresh parts;
//! * [`helper`]: the single-threaded helper process that does every namespace, mount and cgroup
//!   operation (started with fork+exec, never forked from the caller's threads);
//! * [`cgroup`], [`devices`], [`rootfs`], [`seccomp`], [`process`]: the kernel-facing pieces the
//!   helper uses;
//! * [`testsupport`]: busybox root filesystems and a static probe for tests and benchmarks.
//!
//! Architecture invariant: this crate knows nothing about registries, image formats or the
//! store; it takes directories (layers, topmost first) and builds sandboxes over them.

pub mod cgroup;
pub mod devices;
pub mod error;
pub mod helper;
pub mod net;
pub mod pool;
pub mod process;
pub mod proto;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod service;
pub mod spawn;
pub mod spec;
pub mod testsupport;
pub mod tty;
pub mod zygote;

pub use error::{Error, Result};
pub use pool::{Pool, PoolConfig, PoolSet, PoolStats};
pub use runtime::{
    block_signals, HelperCommand, InstanceNames, Output, Runtime, RuntimeConfig, Sandbox, Signaller, StdioFds,
    Timings,
};
pub use spec::{Limits, ProcessConfig, Profile, RootfsConfig, SandboxSpec, SeccompOptions};
pub use zygote::{Invocation, Template, TemplateConfig, TemplateRuntime};

use serde::{Deserialize, Serialize};

/// How a workload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }

    /// The status as a shell reports it: the code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}
