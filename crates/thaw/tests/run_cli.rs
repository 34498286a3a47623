//! `thaw run` end to end: root directories, OCI bundles, OCI layout images, exit codes,
//! signal relay, timings, and clean-up after a killed `thaw run`.
//!
//! These need root, cgroups, overlayfs and busybox-static (see `require_privileges`).

mod common;

use common::{text, Env};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use thaw_testkit::ChildGuard as Guard;

fn check(o: &Output) -> String {
    text(&o.stdout)
}

#[test]
fn rootfs_dir_echo_exit_code_and_timings() {
    let Some(e) = Env::new("rootfs_dir_echo_exit_code_and_timings") else { return };
    let o = e.run().arg("--cold").arg("--timings").arg(&e.rootfs).args(["--", "sh", "-c", "echo hi; exit 3"]).output().unwrap();
    assert_eq!(check(&o), "hi\n", "stderr: {}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(3));
    let err = text(&o.stderr);
    for stage in ["cgroup_join", "mount_ns_overlay", "pid_ns_fork_mounts_pivot", "exec", "request_to_exec", "total_to_exit"] {
        assert!(err.contains(stage), "timings lack {stage}: {err}");
    }
    // The invocation's instance directory is gone afterwards.
    assert_eq!(std::fs::read_dir(e.data().join("run")).unwrap().count(), 0);
}

#[test]
fn flags_set_limits_user_env_and_cwd() {
    let Some(e) = Env::new("flags_set_limits_user_env_and_cwd") else { return };
    let o = e
        .run()
        .args(["--pids", "33", "--memory", "64m", "--hostname", "box", "-u", "1000:1000", "-e", "GREETING=hello", "-w", "/tmp"])
        .arg(&e.rootfs)
        .args(["--", "sh", "-c", "id -u; id -g; hostname; echo $GREETING; pwd; cat /sys/fs/cgroup/pids.max 2>/dev/null || true"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = check(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..5], ["1000", "1000", "box", "hello", "/tmp"], "{out}");
}

#[test]
fn tty_gives_the_workload_a_controlling_terminal() {
    let Some(e) = Env::new("tty_gives_the_workload_a_controlling_terminal") else { return };
    common::check_tty(&e, &["--cold"]);
    // A bundle whose process asks for a terminal gets one without -t; with noNewPrivileges
    // false the seccomp profile is still installed, and no_new_privs stays off.
    let bundle = e.bundle();
    let cfg = bundle.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["process"]["terminal"] = true.into();
    v["process"]["noNewPrivileges"] = false.into();
    v["process"]["args"] = serde_json::json!(["sh", "-c", "test -t 1 && echo tty; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status"]);
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
    // Without a devpts in its mounts, the bundle cannot have a terminal: said so.
    let o = e.run().arg("--bundle").arg(&bundle).stdin(Stdio::null()).output().unwrap();
    assert!(!o.status.success() && text(&o.stderr).contains("mount devpts at /dev/pts"), "{}", text(&o.stderr));
    let mounts = v["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}));
    mounts.push(serde_json::json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}));
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = e.run().arg("--bundle").arg(&bundle).stdin(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = check(&o).replace('\r', "");
    assert!(out.contains("tty\n") && out.contains("NoNewPrivs:\t0") && out.contains("Seccomp:\t2"), "{out}");
}

#[test]
fn runs_an_oci_bundle() {
    let Some(e) = Env::new("runs_an_oci_bundle") else { return };
    let bundle = e.bundle();
    let o = e.run().arg("--bundle").arg(&bundle).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(check(&o), "bundled\nreadonly\n");
}

#[test]
fn runs_an_oci_layout_image_with_whiteouts() {
    let Some(e) = Env::new("runs_an_oci_layout_image_with_whiteouts") else { return };
    let tar_of = |dir: &Path| -> Vec<u8> {
        let o = Command::new("tar").arg("-C").arg(dir).args(["-cf", "-", "."]).output().unwrap();
        assert!(o.status.success());
        o.stdout
    };
    let base = tar_of(&e.rootfs);
    let top_dir = e.dir.path().join("top");
    std::fs::create_dir_all(top_dir.join("etc")).unwrap();
    std::fs::create_dir_all(top_dir.join("bin")).unwrap();
    std::fs::write(top_dir.join("etc/motd"), "from the top layer\n").unwrap();
    std::fs::write(top_dir.join("bin/.wh.vi"), "").unwrap();
    let top = tar_of(&top_dir);
    let layout = e.dir.path().join("layout");
    let mut w = thaw_oci::layout::LayoutWriter::create(&layout).unwrap();
    let media = "application/vnd.oci.image.layer.v1.tar";
    let layers = vec![
        (base.clone(), thaw_oci::Digest::sha256_of(&base), media),
        (top.clone(), thaw_oci::Digest::sha256_of(&top), media),
    ];
    let config = serde_json::json!({"config": {"Env": ["PATH=/bin", "WHO=image"], "Cmd": ["sh", "-c", "cat /etc/motd; ls /bin/vi 2>&1; echo $WHO"], "WorkingDir": "/etc"}});
    w.add_image("v1", &layers, config).unwrap();
    let image = format!("oci:{}:v1", layout.display());
    let o = e.run().arg(&image).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = check(&o);
    assert!(out.starts_with("from the top layer\n"), "{out}");
    assert!(out.contains("No such file"), "whiteout not applied: {out}");
    assert!(out.ends_with("image\n"), "{out}");
    // A command after `--` replaces the image's.
    let o = e.run().arg(&image).args(["--", "pwd"]).output().unwrap();
    assert_eq!(check(&o), "/etc\n");
}

#[test]
fn relays_signals_to_the_workload() {
    let Some(e) = Env::new("relays_signals_to_the_workload") else { return };
    let child = e
        .run()
        .arg(&e.rootfs)
        .args(["--", "sh", "-c", "trap 'echo got-term; exit 5' TERM; echo ready; while true; do sleep 0.05; done"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = Guard(child);
    let mut stdout = g.0.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    // SAFETY: kill with the pid of our own unreaped child and a valid signal number.
    assert_eq!(unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) }, 0);
    let status = g.0.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(status.code(), Some(5));
}

/// `--init`: a command without signal handlers still dies of a relayed SIGTERM (it is not PID
/// 1; the init forwards the signal and exits 128 + 15), and orphans are reaped.
#[test]
fn init_forwards_signals_to_a_command_without_handlers() {
    let Some(e) = Env::new("init_forwards_signals_to_a_command_without_handlers") else { return };
    for daemon in [false, true] {
        let _d = daemon.then(|| e.daemon(Some("depth = 1")));
        let o = e.run().arg("--init").arg(&e.rootfs).args(["--", "sh", "-c", "cat /proc/1/comm; echo $$; (sleep 0.1 &); sleep 0.3; ps -o stat= | grep -c Z"]).output().unwrap();
        let out = check(&o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..2], ["thaw-init", "2"], "{out} {}", text(&o.stderr));
        assert_eq!(lines[2], "0", "an orphan was left a zombie: {out}");
        // As another user: the init must still be allowed to signal it.
        let child = e.run().args(["--init", "-u", "1000:1000"]).arg(&e.rootfs).args(["--", "sh", "-c", "echo ready; exec sleep 30"]).stdout(Stdio::piped()).spawn().unwrap();
        let mut g = Guard(child);
        let mut buf = [0u8; 6];
        std::io::Read::read_exact(g.0.stdout.as_mut().unwrap(), &mut buf).unwrap();
        // `sleep` has no SIGTERM handler; as PID 1 it would ignore the signal.
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: kill with the pid of our own unreaped child and a valid signal number.
        assert_eq!(unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) }, 0);
        let t = Instant::now();
        assert_eq!(g.0.wait().unwrap().code(), Some(128 + 15), "daemon: {daemon}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}

#[test]
fn next_run_cleans_up_after_a_killed_run() {
    let Some(e) = Env::new("next_run_cleans_up_after_a_killed_run") else { return };
    let child = e.run().arg(&e.rootfs).args(["--", "sh", "-c", "echo ready; sleep 100"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut g = Guard(child);
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(g.0.stdout.as_mut().unwrap(), &mut buf).unwrap();
    let instances: Vec<PathBuf> = std::fs::read_dir(e.data().join("run")).unwrap().flatten().map(|d| d.path()).collect();
    assert_eq!(instances.len(), 1);
    let names = thaw_sandbox::InstanceNames::for_data_dir(&instances[0]);
    let cg = Path::new("/sys/fs/cgroup/pids").join(&names.cgroup_parent);
    assert!(cg.exists(), "the running instance has no cgroup parent");
    // A crash: SIGKILL gives thaw no chance to clean up.
    g.0.kill().unwrap();
    g.0.wait().unwrap();
    let o = e.run().arg(&e.rootfs).args(["--", "true"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while cg.exists() || instances[0].exists() {
        assert!(Instant::now() < deadline, "the killed run's cgroups or directory survived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn helpful_errors() {
    let Some(e) = Env::new("helpful_errors") else { return };
    let o = e.run().arg(e.dir.path().join("missing")).args(["--", "true"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("neither a directory nor an image"), "{}", text(&o.stderr));
    let o = e.run().arg(&e.rootfs).args(["--", "no-such-program"]).output().unwrap();
    assert!(text(&o.stderr).contains("not found in the sandbox's PATH"), "{}", text(&o.stderr));
}
