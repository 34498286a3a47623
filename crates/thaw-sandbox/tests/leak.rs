//! Leak test: thousands of sandboxes in a row (pooled and cold), then this instance's cgroups,
//! processes, mounts and network namespaces must be back where they started. Teardown is
//! asynchronous (the reaper thread, and the kernel frees namespaces lazily), so the checks poll
//! with a deadline.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};
use thaw_sandbox::{cgroup, PoolConfig, Runtime};

/// Counts of what this instance owns on the host.
#[derive(Debug, PartialEq, Eq)]
struct Owned {
    cgroups: usize,
    processes: usize,
    mounts: usize,
    live_netns: usize,
    helpers: usize,
}

fn owned(rt: &Runtime, created_netns: &HashSet<u64>) -> Owned {
    let parent = &rt.names().cgroup_parent;
    let layout = rt.cgroup_layout();
    let cgroups = cgroup::count_children(layout, parent);
    let processes = layout
        .dirs(parent, "")
        .iter()
        .flat_map(|(_, p)| std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(|p| cgroup::procs(&p).len())
        .sum();
    // Sandbox mounts live in private mount namespaces; none may show up in the host's table.
    let prefix = rt.names().mount_prefix.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&prefix)).count();
    let mut live_netns = 0;
    let mut helpers = 0;
    let helper = env!("CARGO_BIN_EXE_thaw-sandbox-helper");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            if created_netns.contains(&std::os::unix::fs::MetadataExt::ino(&m)) {
                live_netns += 1;
            }
        }
        // Only this test's helpers (our children): other test binaries run their own at the
        // same time from the same executable.
        let ours = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse::<u32>().ok()))
            == Some(std::process::id());
        if ours && std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy() == helper).unwrap_or(false) {
            helpers += 1;
        }
    }
    Owned { cgroups, processes, mounts, live_netns, helpers }
}

#[test]
fn thousands_of_sandboxes_leave_nothing_behind() {
    let Some(f) = common::Fixture::new("thousands_of_sandboxes_leave_nothing_behind") else { return };
    let start = owned(&f.rt, &HashSet::new());
    assert_eq!(start, Owned { cgroups: 0, processes: 0, mounts: 0, live_netns: 0, helpers: 0 });
    let spec = f.spec(&["true"]);
    let t = Instant::now();
    let mut n = 0;
    {
        let pool = f.rt.pool(PoolConfig { profile: spec.profile.clone(), rootfs: Some(spec.rootfs.clone()), depth: 4 });
        // Pooled starts, then cold ones; stop early rather than run past the time budget.
        while n < 2000 && t.elapsed() < Duration::from_secs(40) {
            let out = pool.run_output(None, &spec.process).unwrap();
            assert!(out.status.success());
            n += 1;
        }
        while n < 2300 && t.elapsed() < Duration::from_secs(55) {
            let out = f.rt.run_output(&spec).unwrap();
            assert!(out.status.success());
            n += 1;
        }
        eprintln!("ran {n} sandboxes in {:?} (pool hits {})", t.elapsed(), pool.stats().hits.load(std::sync::atomic::Ordering::Relaxed));
    }
    assert!(n >= 300, "too few sandboxes ran in the time budget: {n}");
    // Inode numbers of freed namespaces are reused, so count creations, not distinct numbers.
    assert!(f.rt.netns_created().len() >= n, "every sandbox has its own network namespace");
    let created: HashSet<u64> = f.rt.netns_created().into_iter().collect();
    assert!(f.rt.wait_teardowns(Duration::from_secs(20)), "teardowns still pending");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = owned(&f.rt, &created);
        if now == start {
            break;
        }
        assert!(Instant::now() < deadline, "leaked after {n} sandboxes: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(f.rt.counters().failed_teardowns.load(std::sync::atomic::Ordering::Relaxed), 0);
}
