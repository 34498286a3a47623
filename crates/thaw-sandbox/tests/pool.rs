//! Pools: what is on the critical path, on-demand builds when a pool is empty, shell-only pools
//! that build the per-image part on request, and dead parts skipped.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;
use thaw_sandbox::{PoolConfig, StdioFds};

#[test]
fn pooled_start_only_execs() {
    let Some(f) = common::Fixture::new("pooled_start_only_execs") else { return };
    let spec = f.spec(&["echo", "pooled"]);
    let pool = f.rt.pool(PoolConfig { profile: spec.profile.clone(), rootfs: Some(spec.rootfs.clone()), depth: 2 });
    assert!(pool.wait_ready(2, Duration::from_secs(20)));
    let out = pool.run_output(None, &spec.process).unwrap();
    assert_eq!(out.stdout, b"pooled\n");
    assert!(out.timings.pooled);
    // Cgroup creation and joining, namespaces and mounts were all done ahead of time.
    assert_eq!(out.timings.critical_stages(), vec!["exec"]);
    assert!(out.timings.stages.iter().any(|(n, _)| n == "cgroup_join"));
    // The pool refills to its depth.
    assert!(pool.wait_ready(2, Duration::from_secs(20)));
    assert_eq!(pool.stats().hits.load(Ordering::Relaxed), 1);
}

#[test]
fn shell_pool_builds_the_root_on_request_without_joining_cgroups() {
    let Some(f) = common::Fixture::new("shell_pool_builds_the_root_on_request_without_joining_cgroups") else { return };
    let spec = f.spec(&["cat", "/etc/hostname"]);
    let pool = f.rt.pool(PoolConfig { profile: spec.profile.clone(), rootfs: None, depth: 1 });
    assert!(pool.wait_ready(1, Duration::from_secs(20)));
    let out = pool.run_output(Some(&spec.rootfs), &spec.process).unwrap();
    assert_eq!(out.stdout, b"thaw\n");
    assert_eq!(out.timings.critical_stages(), vec!["mount_ns_overlay", "pid_ns_fork_mounts_pivot", "exec"]);
    assert!(pool.run_output(None, &spec.process).is_err(), "a shell pool needs a root named per request");
}

#[test]
fn empty_pool_builds_on_demand_and_dead_parts_are_skipped() {
    let Some(f) = common::Fixture::new("empty_pool_builds_on_demand_and_dead_parts_are_skipped") else { return };
    let spec = f.spec(&["true"]);
    let empty = f.rt.pool(PoolConfig { profile: spec.profile.clone(), rootfs: Some(spec.rootfs.clone()), depth: 0 });
    let out = empty.run_output(None, &spec.process).unwrap();
    assert!(out.status.success());
    assert!(!out.timings.pooled);
    assert!(out.timings.critical_stages().contains(&"cgroup_join"));
    assert_eq!(empty.stats().misses.load(Ordering::Relaxed), 1);

    // Kill the parked processes of a full pool: the next start must not fail.
    let pool = f.rt.pool(PoolConfig { profile: spec.profile.clone(), rootfs: Some(spec.rootfs.clone()), depth: 1 });
    assert!(pool.wait_ready(1, Duration::from_secs(20)));
    let parent = &f.rt.names().cgroup_parent;
    for (_, dir) in f.rt.cgroup_layout().dirs(parent, "") {
        for child in std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.path().is_dir()) {
            for pid in thaw_sandbox::cgroup::procs(&child.path()) {
                // SAFETY: SIGKILL to pids listed in this test's own sandbox cgroups.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let sb = pool.start(None, &spec.process, StdioFds::null().unwrap()).unwrap();
    assert!(sb.wait().unwrap().success());
}

#[test]
fn pool_set_creates_one_pool_per_configuration() {
    let Some(f) = common::Fixture::new("pool_set_creates_one_pool_per_configuration") else { return };
    let set = thaw_sandbox::PoolSet::new(&f.rt, 1);
    let spec = f.spec(&["true"]);
    let sb = set.start(&spec, StdioFds::null().unwrap()).unwrap();
    assert!(!sb.timings().pooled, "the first start of a new configuration is built on demand");
    assert!(sb.wait().unwrap().success());
    let pool = set.pool(&spec.profile, &spec.rootfs);
    assert!(pool.wait_ready(1, Duration::from_secs(20)));
    let sb = set.start(&spec, StdioFds::null().unwrap()).unwrap();
    assert!(sb.timings().pooled);
    assert!(sb.wait().unwrap().success());
    let mut other = spec.clone();
    other.profile.limits.pids_max = Some(10);
    set.pool(&other.profile, &other.rootfs);
    assert_eq!(set.len(), 2);
}
