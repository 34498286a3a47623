//! Shared fixture of the integration tests: a runtime over a tmpfs data directory and a busybox
//! root filesystem, both removed at the end of the test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use thaw_sandbox::testsupport;
use thaw_sandbox::{HelperCommand, Runtime, RuntimeConfig, SandboxSpec};

pub struct Fixture {
    pub rt: Runtime,
    pub rootfs: PathBuf,
    pub dir: tempfile::TempDir,
}

pub fn helper() -> HelperCommand {
    HelperCommand { program: env!("CARGO_BIN_EXE_thaw-sandbox-helper").into(), args: vec![] }
}

impl Fixture {
    /// `None` when the test must be skipped (not root...); see `require_privileges`.
    pub fn new(test: &str) -> Option<Self> {
        if !testsupport::require_privileges(test) {
            return None;
        }
        let dir = testsupport::tmpfs_dir("thaw-sbx-").unwrap();
        let rootfs = dir.path().join("rootfs");
        testsupport::busybox_rootfs(&rootfs).unwrap();
        let rt = Runtime::new(RuntimeConfig {
            data_dir: dir.path().join("data"),
            helper: helper(),
            cgroup_layout: None,
        })
        .unwrap();
        Some(Fixture { rt, rootfs, dir })
    }

    pub fn spec(&self, args: &[&str]) -> SandboxSpec {
        SandboxSpec::for_rootfs(&self.rootfs, args.iter().map(|s| s.to_string()).collect())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
