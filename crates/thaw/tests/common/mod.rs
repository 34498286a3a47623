//! The fixture `thaw run` tests share: a busybox root filesystem and a data directory on tmpfs,
//! removed at the end of the test.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use thaw_sandbox::testsupport;

pub const THAW: &str = env!("CARGO_BIN_EXE_thaw");

pub struct Env {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
}

impl Env {
    /// `None` when the test must be skipped (not root...; see `require_privileges`).
    pub fn new(test: &str) -> Option<Env> {
        if !testsupport::require_privileges(test) {
            return None;
        }
        let dir = testsupport::tmpfs_dir("thaw-cli-sbx-").unwrap();
        let rootfs = dir.path().join("rootfs");
        testsupport::busybox_rootfs(&rootfs).unwrap();
        Some(Env { dir, rootfs })
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `thaw run --data <data>`, whatever THAW_DATA says.
    pub fn run(&self) -> Command {
        let mut c = Command::new(THAW);
        c.arg("run").arg("--data").arg(self.data()).env_remove("THAW_DATA");
        c
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
