//! The cgroup v2 device program against the real kernel: this machine's hybrid layout still
//! has a cgroup2 mount (/sys/fs/cgroup/unified), and device programs attach to any cgroup2
//! directory, so the v2 device path is tested here even though pure v2 cannot be booted.

use std::path::PathBuf;
use thaw_sandbox::{cgroup::CgroupLayout, devices, spec::default_device_rules, testsupport};

/// The cgroup2 mount to test in: the unified mount of a hybrid layout, or the root of pure v2.
/// `None` (after saying why) when the test cannot run here; under CI that is a failure.
fn cgroup2_root(test: &str) -> Option<PathBuf> {
    if !testsupport::require_privileges(test) {
        return None;
    }
    match CgroupLayout::detect().unwrap() {
        CgroupLayout::Hybrid { unified: Some(u), .. } => Some(u),
        CgroupLayout::V2 { root } => Some(root),
        CgroupLayout::Hybrid { unified: None, .. } => {
            if std::env::var_os("CI").is_some() {
                panic!("no cgroup2 mount and CI is set");
            }
            eprintln!("skipping {test}: no cgroup2 mount");
            None
        }
    }
}

#[test]
fn device_program_allows_null_and_denies_full() {
    let Some(root) = cgroup2_root("device_program_allows_null_and_denies_full") else { return };
    let dir: PathBuf = root.join(format!("thaw-devtest-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    assert!(devices::is_cgroup2(&dir));
    // The defaults allow 1:3 (null) and 1:7 (full); drop full to see a refusal.
    let mut rules = default_device_rules();
    rules.retain(|r| !(r.major == Some(1) && r.minor == Some(7)));
    devices::attach(&dir, &rules).unwrap();
    let procs = dir.join("cgroup.procs");
    // Each check runs in a shell that first moves itself into the cgroup.
    let try_read = |dev: &str| {
        let o = std::process::Command::new("/bin/busybox")
            .args(["sh", "-c"])
            .arg(format!("echo $$ > {} && exec head -c1 {dev}", procs.display()))
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    assert!(try_read("/dev/null").0, "null is allowed");
    assert!(try_read("/dev/zero").0, "zero is allowed");
    let (ok, err) = try_read("/dev/full");
    assert!(!ok, "full must be refused");
    assert!(err.contains("not permitted"), "{err}");
}

/// One loaded program serves many cgroups (a runtime loads it once per rule set): attached to
/// two cgroups, it enforces the rules in both, and keeps working after its descriptor is gone.
#[test]
fn one_loaded_device_program_serves_two_cgroups() {
    let Some(root) = cgroup2_root("one_loaded_device_program_serves_two_cgroups") else { return };
    struct Rm(Vec<PathBuf>);
    impl Drop for Rm {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let dirs: Vec<PathBuf> = (0..2).map(|i| root.join(format!("thaw-devshare-{}-{i}", std::process::id()))).collect();
    let _rm = Rm(dirs.clone());
    let mut rules = default_device_rules();
    rules.retain(|r| !(r.major == Some(1) && r.minor == Some(7)));
    {
        let prog = devices::load(&rules).unwrap();
        for d in &dirs {
            std::fs::create_dir(d).unwrap();
            devices::attach_program(d, std::os::fd::AsFd::as_fd(&prog)).unwrap();
        }
    }
    for d in &dirs {
        let run = |dev: &str| {
            std::process::Command::new("/bin/busybox")
                .args(["sh", "-c"])
                .arg(format!("echo $$ > {} && exec head -c1 {dev}", d.join("cgroup.procs").display()))
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(run("/dev/null"), "null is allowed in {}", d.display());
        assert!(!run("/dev/full"), "full must be refused in {}", d.display());
    }
}
