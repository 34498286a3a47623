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
    /// Starts `thaw serve` on this data directory; `sandbox` is the `[sandbox]` section's body
    /// (`None`: a mirror-only daemon).
    pub fn daemon(&self, sandbox: Option<&str>) -> thaw_testkit::ThawDaemon {
        self.daemon_with(sandbox, &["--standalone"])
    }

    pub fn daemon_with(&self, sandbox: Option<&str>, args: &[&str]) -> thaw_testkit::ThawDaemon {
        let cfg = self.dir.path().join("thaw.toml");
        let text = match sandbox {
            Some(s) => format!("[sandbox]\n{s}\n"),
            None => String::new(),
        };
        std::fs::write(&cfg, text).unwrap();
        let data = self.data();
        let mut all = args.to_vec();
        all.extend(["--config", cfg.to_str().unwrap(), "--data", data.to_str().unwrap()]);
        thaw_testkit::ThawDaemon::start(std::path::Path::new(THAW), &all)
    }

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

/// `thaw run -t` with `args` before the root: the workload sees a terminal of its sandbox's own
/// devpts (`tty` names it) on stdin, stdout and stderr, sized 80x24 (stdin here is a pipe, so
/// no size to copy), made its controlling terminal; piped input reaches it through the
/// terminal; a Ctrl-C byte typed into it becomes SIGINT for the workload's process group; the
/// exit code comes back.
pub fn check_tty(e: &Env, args: &[&str]) {
    use std::io::{BufRead, Read, Write};
    let script = "test -t 0 && test -t 1 && test -t 2 && echo tty-ok; stty size; tty; \
                  echo ctty=$(cut -d' ' -f7 /proc/self/stat); read line; echo got:$line; \
                  trap 'echo caught-int; exit 7' INT; echo ready; while :; do sleep 0.05; done";
    let mut g = thaw_testkit::ChildGuard(e
        .run()
        .arg("-t")
        .args(args)
        .arg(&e.rootfs)
        .args(["--", "sh", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap());
    let mut stdin = g.0.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    let mut out = std::io::BufReader::new(g.0.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("ready") {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "the terminal closed early: {seen:?}");
        seen.push_str(&l);
    }
    // ETX, the terminal's interrupt character: the line discipline signals the foreground group.
    stdin.write_all(b"\x03").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    seen.push_str(&rest);
    let status = g.0.wait().unwrap();
    let mut err = String::new();
    g.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(7), "output {seen:?}, stderr {err}");
    // The terminal turns each newline into CR LF, and echoes the input (`hello`, `^C`).
    let lines: Vec<&str> = seen.split("\r\n").collect();
    assert!(lines.contains(&"tty-ok") && lines.contains(&"24 80") && lines.contains(&"got:hello"), "{seen:?}");
    assert!(lines.contains(&"/dev/pts/0"), "the terminal is not the sandbox's own: {seen:?}");
    assert!(lines.contains(&"^Ccaught-int"), "{seen:?}");
    let ctty = lines.iter().find_map(|l| l.strip_prefix("ctty=")).unwrap();
    assert_ne!(ctty, "0", "no controlling terminal: {seen:?}");
}
