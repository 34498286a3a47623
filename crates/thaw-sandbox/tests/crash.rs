//! Crash clean-up: a runtime that dies without tearing down leaves a sandbox running; the next
//! runtime on the same data directory kills and removes it, and never touches other instances.

mod common;

use std::time::{Duration, Instant};
use thaw_sandbox::Runtime;

#[test]
fn restart_cleans_what_a_dead_instance_left() {
    let Some(f) = common::Fixture::new("restart_cleans_what_a_dead_instance_left") else { return };
    let data = f.path().join("crashy");
    let cfg = || thaw_sandbox::RuntimeConfig { data_dir: data.clone(), helper: common::helper(), cgroup_layout: None };
    let rt = Runtime::new(cfg()).unwrap();
    let spec = f.spec(&["sleep", "100"]);
    let sb = rt.start(&spec, thaw_sandbox::StdioFds::null().unwrap()).unwrap();
    let pid = sb.pid();
    let dirs = sb.cgroup_dirs();
    // A second instance on the same data directory is refused while the first lives.
    let e = Runtime::new(cfg()).err().expect("second instance must be refused").to_string();
    assert!(e.contains("in use"), "{e}");
    // Simulate a crash: the sandbox handle and runtime are forgotten, not dropped, so nothing
    // is torn down, and the workload stays alive in its cgroup.
    std::mem::forget(sb);
    let names = rt.names().clone();
    // Release the lock the way a dying process would (its descriptors close) without running
    // the runtime's clean-up: close every descriptor of the lock file by forgetting the runtime
    // after closing the lock through /proc.
    let lock = data.join("sandbox/lock");
    std::mem::forget(rt);
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(e.path()).map(|p| p == lock).unwrap_or(false) {
            let fd: i32 = e.file_name().to_string_lossy().parse().unwrap();
            // SAFETY: closing a descriptor owned by the forgotten runtime; nothing uses it again.
            unsafe { libc::close(fd) };
        }
    }
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(dirs.iter().all(|d| d.exists()));
    let rt2 = Runtime::new(cfg()).unwrap();
    assert_eq!(rt2.names(), &names);
    // The workload is gone (a zombie at most until its helper, our child, is reaped) and so are
    // its cgroups.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dirs.iter().any(|d| d.exists()) {
        assert!(Instant::now() < deadline, "cgroups of the dead instance still exist");
        std::thread::sleep(Duration::from_millis(20));
    }
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "workload survived: {state}");
}
