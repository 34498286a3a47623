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

impl Env {
    /// An OCI runtime bundle around the busybox root: hostname `bundled`, a read-only root, a
    /// command that prints the hostname and whether `/` is writable, /proc and a /tmp tmpfs,
    /// pid, mount and network namespaces, a pids limit.
    pub fn bundle(&self) -> PathBuf {
        let bundle = self.dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        std::os::unix::fs::symlink(&self.rootfs, bundle.join("rootfs")).unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "bundled",
            "process": {"args": ["sh", "-c", "hostname; touch /x 2>/dev/null && echo writable || echo readonly"],
                        "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "env": ["PATH=/bin"], "noNewPrivileges": true},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}],
                      "resources": {"pids": {"limit": 16}}}
        });
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
        bundle
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
