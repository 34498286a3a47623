//! Sandboxes through the daemon, with the real binary: `thaw run` using a `thaw serve`'s pools
//! (stdout straight to the client's descriptor, exit codes and signals relayed, a killed client
//! takes its sandbox along), a mirror-only daemon that makes no pools, functions (deploy,
//! invoke, list, rm, restored after a restart), a leak check after many runs, and a restart
//! after kill -9 that removes what the dead daemon left.
//!
//! These need root, cgroups, overlayfs and busybox-static (see `require_privileges`).

mod common;

use common::{text, Env, THAW};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use thaw_sandbox::cgroup::{self, CgroupLayout};
use thaw_sandbox::{testsupport, InstanceNames};
use thaw_testkit::{http_get, metric_value, ChildGuard as Guard};

impl Env {
    fn func(&self, sub: &str) -> Command {
        let mut c = Command::new(THAW);
        c.args(["fn", sub, "--data-dir"]).arg(self.data()).env_remove("THAW_DATA").env_remove("THAW_SOCKET").env_remove("THAW_CONFIG");
        c
    }

    fn names(&self) -> InstanceNames {
        InstanceNames::for_data_dir(&self.data())
    }

    /// Pids in the daemon instance's sandbox cgroups (all hierarchies, deduplicated).
    fn sandbox_pids(&self) -> BTreeSet<i32> {
        let layout = CgroupLayout::detect().unwrap();
        let mut pids = BTreeSet::new();
        for (_, dir) in layout.dirs(&self.names().cgroup_parent, "") {
            for child in std::fs::read_dir(&dir).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
                pids.extend(cgroup::procs(&child.path()));
            }
        }
        pids
    }

    fn sandbox_cgroups(&self) -> usize {
        cgroup::count_children(&CgroupLayout::detect().unwrap(), &self.names().cgroup_parent)
    }
}

/// `GET /v1/status` on the daemon's API socket (plain HTTP/1.1 over the unix socket).
fn status(e: &Env) -> serde_json::Value {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(e.data().join("api.sock")).unwrap();
    write!(s, "GET /v1/status HTTP/1.1\r\nHost: thaw\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {out}"))
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "status {:?}, stderr: {}", o.status, text(&o.stderr));
    text(&o.stdout)
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| text(&b).replace('\0', " ")).unwrap_or_default()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn children_of(pid: u32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            // The ppid is the second field after the parenthesised command name.
            let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
            if after.split(' ').nth(1).and_then(|x| x.parse::<u32>().ok()) == Some(pid) {
                v.push(p);
            }
        }
    }
    v
}

#[test]
fn run_through_the_daemon_relays_output_exit_code_and_timings() {
    let Some(e) = Env::new("run_through_the_daemon_relays_output_exit_code_and_timings") else { return };
    let d = e.daemon(Some("depth = 1"));
    let o = e.run().arg("--timings").arg(&e.rootfs).args(["--", "sh", "-c", "echo hi; cat /proc/self/cgroup; exit 3"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "stderr: {}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("hi\n"), "{out}");
    let err = text(&o.stderr);
    assert!(err.contains("through the daemon") && err.contains("client_daemon_trip") && err.contains("daemon_request_to_exec"), "{err}");
    // The sandbox ran in the daemon's instance, not in a cold-path instance of its own.
    assert!(!e.data().join("run").exists() || std::fs::read_dir(e.data().join("run")).unwrap().count() == 0);
    // Later starts of the same image come from the pool: only exec is on the critical path.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = e.run().arg("--timings").arg(&e.rootfs).args(["--", "echo", "pooled"]).output().unwrap();
        assert_eq!(ok(&o), "pooled\n");
        if text(&o.stderr).contains("pooled parts") {
            assert!(text(&o.stderr).contains("(ahead of time)"), "{}", text(&o.stderr));
            break;
        }
        assert!(Instant::now() < deadline, "no start came from a pool: {}", text(&o.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = http_get(d.addr, "/metrics");
    assert!(metric_value(&m, "thaw_sandbox_pool_hits_total") >= 1.0, "{m}");
    assert!(metric_value(&m, "thaw_sandbox_pool_misses_total") >= 1.0, "{m}");
    assert!(m.contains("thaw_sandbox_pool_ready{pool=\""), "{m}");
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
    let st = status(&e);
    let pools = st["sandbox"]["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{st}");
    assert!(pools[0]["pool"].as_str().unwrap().ends_with("[default]"), "{st}");
    assert!(pools[0]["hits"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["sandbox"]["cgroup_parent"], e.names().cgroup_parent.as_str());
    // An error of the daemon reaches the client.
    let o = e.run().arg(&e.rootfs).args(["--", "no-such-program"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("not found in the sandbox's PATH"), "{}", text(&o.stderr));
    let o = e.run().args(["--profile", "nope"]).arg(&e.rootfs).args(["--", "true"]).output().unwrap();
    assert!(text(&o.stderr).contains("no profile \"nope\""), "{}", text(&o.stderr));
}

#[test]
fn tty_through_the_daemon() {
    let Some(e) = Env::new("tty_through_the_daemon") else { return };
    let _d = e.daemon(Some("depth = 1"));
    common::check_tty(&e, &[]);
    // The workload's SIGPIPE is at its default action (helpers are Rust programs, which ignore
    // it): `yes` dies of it when `head` goes, and the pipeline ends.
    let o = e.run().arg(&e.rootfs).args(["--", "sh", "-c", "yes | head -1; grep SigIgn /proc/self/status"]).output().unwrap();
    let out = ok(&o);
    let ign = u64::from_str_radix(out.lines().last().unwrap().rsplit('\t').next().unwrap().trim(), 16).unwrap();
    assert_eq!(ign & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
}

/// The `pids.max` of a process's cgroup, read on the host (v1 `pids` hierarchy, else cgroup2).
fn pids_max_of(pid: i32) -> String {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let (root, rel) = cg
        .lines()
        .find_map(|l| l.split_once(":pids:").map(|(_, p)| ("/sys/fs/cgroup/pids", p.to_string())))
        .or_else(|| cg.lines().find_map(|l| l.strip_prefix("0::").map(|p| ("/sys/fs/cgroup", p.to_string()))))
        .unwrap();
    std::fs::read_to_string(format!("{root}{rel}/pids.max")).unwrap().trim().to_string()
}

/// Runs `args` through the daemon until it prints `ready`, then returns the client and the
/// sandboxed process whose command line starts with `marker`.
fn start_marked(e: &Env, flags: &[&str], script: &str, marker: &str) -> (Guard, i32, String) {
    let child = e.run().args(flags).arg(&e.rootfs).args(["--", "sh", "-c", script]).stdout(Stdio::piped()).spawn().unwrap();
    let mut g = Guard(child);
    let mut out = String::new();
    let mut byte = [0u8; 1];
    while !out.ends_with("ready\n") {
        assert_eq!(g.0.stdout.as_mut().unwrap().read(&mut byte).unwrap(), 1, "the workload ended early: {out}");
        out.push(byte[0] as char);
    }
    // `ready` comes just before the shell execs the marked program.
    let mut found = None;
    wait_until("the marked workload runs in the daemon's cgroups", Duration::from_secs(10), || {
        found = e.sandbox_pids().into_iter().find(|p| cmdline(*p).starts_with(marker));
        found.is_some()
    });
    (g, found.expect("found above"), out)
}

#[test]
fn profiles_and_limits_apply_through_the_daemon() {
    let Some(e) = Env::new("profiles_and_limits_apply_through_the_daemon") else { return };
    let _d = e.daemon(Some("depth = 1\n[sandbox.profiles.small]\npids = 21\nhostname = \"small\"\ndepth = 2\n"));
    let (_g, pid, out) = start_marked(&e, &["--profile", "small"], "hostname; echo ready; exec sleep 1000", "sleep 1000");
    assert_eq!(out, "small\nready\n");
    assert_eq!(pids_max_of(pid), "21");
    let (_g, pid, out) = start_marked(&e, &["--pids", "33", "-u", "1000:1000", "-e", "X=y", "-w", "/tmp"], "id -u; echo $X; pwd; echo ready; exec sleep 1001", "sleep 1001");
    assert_eq!(out, "1000\ny\n/tmp\nready\n");
    assert_eq!(pids_max_of(pid), "33");
}

#[test]
fn signals_are_relayed_and_a_killed_client_kills_its_sandbox() {
    let Some(e) = Env::new("signals_are_relayed_and_a_killed_client_kills_its_sandbox") else { return };
    let _d = e.daemon(Some("depth = 1"));
    let child = e
        .run()
        .arg(&e.rootfs)
        .args(["--", "sh", "-c", "trap 'echo got-term; exit 5' TERM; echo ready; while true; do sleep 0.05; done"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = Guard(child);
    let mut stdout = g.0.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    stdout.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    // SAFETY: kill with the pid of our own unreaped child and a valid signal number.
    assert_eq!(unsafe { libc::kill(g.0.id() as i32, libc::SIGTERM) }, 0);
    let status = g.0.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(status.code(), Some(5));

    // A signal that kills the workload comes back as the shell's 128 + n: here the kernel's
    // SIGKILL of a process over its memory limit. (The workload is PID 1 of its namespace, which
    // no signal from inside can kill.)
    let o = e.run().args(["--memory", "16m"]).arg(&e.rootfs).args(["--", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]).output().unwrap();
    assert_eq!(o.status.code(), Some(128 + 9), "{}", text(&o.stderr));

    let (mut g, sleeper, _) = start_marked(&e, &[], "echo ready; exec sleep 1000", "sleep 1000");
    g.0.kill().unwrap();
    g.0.wait().unwrap();
    wait_until("the vanished client's sandbox is killed", Duration::from_secs(10), || !alive(sleeper));
}

#[test]
fn a_mirror_only_daemon_makes_no_pools_and_run_goes_cold() {
    let Some(e) = Env::new("a_mirror_only_daemon_makes_no_pools_and_run_goes_cold") else { return };
    let d = e.daemon(None);
    let pid = d.child.as_ref().unwrap().id();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!e.data().join("sandbox.sock").exists(), "a mirror-only daemon has no sandbox socket");
    let layout = CgroupLayout::detect().unwrap();
    for (_, dir) in layout.dirs(&e.names().cgroup_parent, "") {
        assert!(!dir.exists(), "a mirror-only daemon created {}", dir.display());
    }
    assert!(children_of(pid).is_empty(), "a mirror-only daemon started helper processes: {:?}", children_of(pid));
    assert!(!e.data().join("sandbox").exists(), "no sandbox runtime state");
    let m = http_get(d.addr, "/metrics");
    assert!(!m.contains("thaw_sandbox_"), "{m}");
    assert!(status(&e)["sandbox"].is_null());
    // thaw run still works: the cold path.
    let o = e.run().arg("--timings").arg(&e.rootfs).args(["--", "echo", "cold"]).output().unwrap();
    assert_eq!(ok(&o), "cold\n");
    assert!(text(&o.stderr).contains("cold path"), "{}", text(&o.stderr));
    // Functions need sandboxes: a clear error.
    let o = e.func("list").output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("[sandbox]"), "{}", text(&o.stderr));
}

#[test]
fn functions_deploy_invoke_list_rm_and_survive_a_restart() {
    let Some(e) = Env::new("functions_deploy_invoke_list_rm_and_survive_a_restart") else { return };
    let mut d = e.daemon(Some("depth = 1"));
    let root = e.rootfs.to_str().unwrap();
    let o = e.func("deploy").args(["upper", "--image", root, "--depth", "2", "--pids", "16", "--", "tr", "a-z", "A-Z"]).output().unwrap();
    assert!(ok(&o).contains("deployed upper"));
    let o = e.func("deploy").args(["fails", "--image", root, "--", "sh", "-c", "cat >&2; exit 3"]).output().unwrap();
    ok(&o);
    // A function's user, kept across the restart below.
    ok(&e.func("deploy").args(["whoami", "--image", root, "-u", "1234:4321", "--", "sh", "-c", "echo $(id -u):$(id -g)"]).output().unwrap());
    assert_eq!(ok(&e.func("invoke").args(["whoami", "--data", ""]).output().unwrap()), "1234:4321\n");
    let o = e.func("invoke").args(["upper", "--data", "hello"]).output().unwrap();
    assert_eq!(ok(&o), "HELLO");
    // Payload on stdin, and --timings.
    let mut c = e.func("invoke").args(["upper", "--timings"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), b"from stdin").unwrap();
    drop(c.stdin.take());
    let o = c.wait_with_output().unwrap();
    assert_eq!(ok(&o), "FROM STDIN");
    assert!(text(&o.stderr).contains("request_to_exec") && text(&o.stderr).contains("client_daemon_trip"), "{}", text(&o.stderr));
    let o = e.func("invoke").args(["fails", "--data", "oops"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(text(&o.stderr), "oops");
    let o = e.func("list").arg("--json").output().unwrap();
    let list: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fails", "upper", "whoami"]);
    assert_eq!(list[1]["depth"], 2);
    assert_eq!(list[1]["invocations"], 2);
    let m = http_get(d.addr, "/metrics");
    assert!(m.contains("thaw_function_invocations_total{function=\"upper\",outcome=\"ok\"} 2"), "{m}");
    assert!(m.contains("thaw_function_invocations_total{function=\"fails\",outcome=\"failed\"} 1"), "{m}");
    assert!(m.contains("pool=\"fn:upper\""), "{m}");
    // An invocation past the deployment's timeout is killed: the shell's 128 + SIGKILL.
    ok(&e.func("deploy").args(["slow", "--image", root, "--timeout", "300ms", "--", "sleep", "30"]).output().unwrap());
    let t = Instant::now();
    let o = e.func("invoke").args(["slow", "--data", ""]).output().unwrap();
    assert_eq!(o.status.code(), Some(128 + 9), "{}", text(&o.stderr));
    assert!(t.elapsed() < Duration::from_secs(10));
    ok(&e.func("rm").arg("slow").output().unwrap());
    // Bad definitions are refused with the reason.
    let o = e.func("deploy").args(["../evil", "--image", root, "--", "true"]).output().unwrap();
    assert!(!o.status.success() && text(&o.stderr).contains("function name"), "{}", text(&o.stderr));

    // A restart restores the deployments.
    d.stop();
    let d = e.daemon(Some("depth = 1"));
    let o = e.func("invoke").args(["upper", "--data", "again"]).output().unwrap();
    assert_eq!(ok(&o), "AGAIN");
    assert_eq!(ok(&e.func("invoke").args(["whoami", "--data", ""]).output().unwrap()), "1234:4321\n");
    let o = e.func("rm").arg("upper").output().unwrap();
    ok(&o);
    assert!(!e.data().join("functions/upper.json").exists());
    let o = e.func("invoke").args(["upper", "--data", "x"]).output().unwrap();
    assert!(!o.status.success() && text(&o.stderr).contains("no function named \"upper\""), "{}", text(&o.stderr));
    let o = e.func("list").output().unwrap();
    let out = ok(&o);
    assert!(out.contains("fails") && !out.contains("upper"), "{out}");
    drop(d);
}

/// Thousands of starts through the daemon's sandbox socket (and some through the CLI), then
/// everything that daemon instance owns is back where it was with a full pool: processes in its
/// cgroups, its cgroups, its helpers, its open descriptors, sandbox mounts visible on the host
/// (none: they live in private mount namespaces) and the network namespaces its sandboxes held.
#[test]
fn many_runs_through_the_daemon_leak_nothing() {
    use thaw_sandbox::service::{Client, Overrides, RunRequest, Target};
    let Some(e) = Env::new("many_runs_through_the_daemon_leak_nothing") else { return };
    let d = e.daemon(Some("depth = 2"));
    let pid = d.child.as_ref().unwrap().id();
    // Warm up: the pool exists and is full.
    ok(&e.run().arg(&e.rootfs).args(["--", "true"]).output().unwrap());
    let full = || {
        let m = http_get(d.addr, "/metrics");
        metric_value(&m, "thaw_sandbox_pool_ready") >= 2.0 && metric_value(&m, "thaw_sandbox_pending_teardowns") == 0.0
    };
    wait_until("the pool is full", Duration::from_secs(30), full);
    let prefix = e.names().mount_prefix.display().to_string();
    let host_mounts = || std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&prefix)).count();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let host_netns = std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    // Network namespaces held by processes of this instance: its sandboxes' and pooled parts'.
    let netns = || -> BTreeSet<u64> {
        let mut pids: Vec<i32> = e.sandbox_pids().into_iter().collect();
        pids.extend(children_of(pid));
        pids.iter()
            .filter_map(|p| std::fs::metadata(format!("/proc/{p}/ns/net")).ok())
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .filter(|&i| i != host_netns)
            .collect()
    };
    let snapshot = || (e.sandbox_pids().len(), e.sandbox_cgroups(), children_of(pid).len(), fds(), host_mounts(), netns().len());
    let before = snapshot();
    assert_eq!(before.4, 0, "sandbox mounts show up in the host's mount table");
    assert_eq!(before.5, 2, "each pooled part holds its own network namespace");
    for i in 0..20 {
        let o = e.run().arg(&e.rootfs).args(["--", "sh", "-c", &format!("echo {i}")]).output().unwrap();
        assert_eq!(ok(&o), format!("{i}\n"));
    }
    let sock = e.data().join("sandbox.sock");
    let req = RunRequest {
        target: Target::Image(e.rootfs.display().to_string()),
        overrides: Overrides { args: vec!["true".into()], ..Default::default() },
    };
    let (t, mut n) = (Instant::now(), 0);
    while n < 2000 && t.elapsed() < Duration::from_secs(60) {
        let s = Client::connect(&sock).unwrap().unwrap().start(&req, thaw_sandbox::StdioFds::null().unwrap()).unwrap();
        assert!(s.wait().unwrap().success());
        n += 1;
    }
    eprintln!("{n} starts through the socket in {:?}", t.elapsed());
    assert!(n >= 1000, "too few starts in the time budget: {n}");
    wait_until("processes, cgroups, helpers, descriptors, mounts and namespaces return to the full pool's", Duration::from_secs(30), || {
        full() && snapshot() == before
    });
    let m = http_get(d.addr, "/metrics");
    assert_eq!(metric_value(&m, "thaw_sandbox_failed_teardowns_total"), 0.0);
    assert!(metric_value(&m, "thaw_sandbox_pool_hits_total") + metric_value(&m, "thaw_sandbox_pool_misses_total") >= (n + 20) as f64, "{m}");
}

#[test]
fn a_restart_after_kill_9_removes_what_the_dead_daemon_left() {
    let Some(e) = Env::new("a_restart_after_kill_9_removes_what_the_dead_daemon_left") else { return };
    let mut d = e.daemon(Some("depth = 2"));
    let child = e.run().arg(&e.rootfs).args(["--", "sh", "-c", "echo ready; exec sleep 1000"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut g = Guard(child);
    let mut buf = [0u8; 6];
    g.0.stdout.as_mut().unwrap().read_exact(&mut buf).unwrap();
    wait_until("the pool is full", Duration::from_secs(30), || metric_value(&http_get(d.addr, "/metrics"), "thaw_sandbox_pool_ready") >= 2.0);
    let old: BTreeSet<i32> = e.sandbox_pids();
    assert!(old.len() >= 3, "a running sandbox and two parked parts: {old:?}");
    let mut daemon = d.child.take().unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    drop(g);
    assert!(e.data().join("sandbox.sock").exists(), "kill -9 leaves the socket file behind");
    let d2 = e.daemon(Some("depth = 1"));
    wait_until("nothing of the dead daemon survives the restart", Duration::from_secs(20), || old.iter().all(|p| !alive(*p)));
    let o = e.run().arg(&e.rootfs).args(["--", "echo", "after"]).output().unwrap();
    assert_eq!(ok(&o), "after\n");
    drop(d2);
    drop(d);
}

#[test]
fn python_functions_run_forked_from_their_template() {
    let Some(e) = Env::new("python_functions_run_forked_from_their_template") else { return };
    let Some(py) = testsupport::cached_python_rootfs("python_functions_run_forked_from_their_template") else { return };
    let mut d = e.daemon(Some("depth = 1"));
    let image = py.to_str().unwrap();
    // A handler from the standard library, so the image needs nothing of ours: bytes in, bytes out.
    let deploy = |name: &str, handler: &str, preload: &str| {
        e.func("deploy").args([name, "--image", image, "--runtime", "python", "--handler", handler, "--preload", preload, "--depth", "2"]).output().unwrap()
    };
    let o = deploy("b64", "base64:b64encode", "json,decimal");
    assert!(ok(&o).contains("deployed b64 (python, depth 2)"));
    let o = e.func("invoke").args(["b64", "--data", "hello", "--timings"]).output().unwrap();
    assert_eq!(ok(&o), "aGVsbG8=");
    assert!(text(&o.stderr).contains("request_to_exec"), "{}", text(&o.stderr));
    // A handler that raises: non-zero status, the traceback on stderr.
    ok(&deploy("parse", "json:loads", ""));
    let o = e.func("invoke").args(["parse", "--data", "{not json"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("JSONDecodeError"), "{}", text(&o.stderr));
    // A module that does not exist fails the deployment, with the interpreter's words.
    let o = deploy("broken", "base64:b64encode", "no_such_module_here");
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no_such_module_here"), "{}", text(&o.stderr));
    let o = e.func("list").arg("--json").output().unwrap();
    let list: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["kind"], "python");
    // Templates come back after a restart.
    d.stop();
    let d = e.daemon(Some("depth = 1"));
    let o = e.func("invoke").args(["b64", "--data", "again"]).output().unwrap();
    assert_eq!(ok(&o), "YWdhaW4=");
    // A template that dies (killed here; out of memory in real life) is started again by the
    // next invocation, which then succeeds.
    let o = e.func("list").arg("--json").output().unwrap();
    let list: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let templates: Vec<i32> = list.as_array().unwrap().iter().map(|f| f["template_pid"].as_i64().unwrap() as i32).collect();
    assert_eq!(templates.len(), 2, "{list}");
    assert!(templates.iter().all(|p| alive(*p) && cmdline(*p).contains("python")), "{templates:?}");
    for pid in &templates {
        assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    }
    wait_until("the templates to die", Duration::from_secs(10), || templates.iter().all(|p| !alive(*p)));
    let o = e.func("invoke").args(["b64", "--data", "third"]).output().unwrap();
    assert_eq!(ok(&o), "dGhpcmQ=");
    let m = http_get(d.addr, "/metrics");
    assert_eq!(metric_value(&m, "thaw_function_template_restarts_total"), 1.0, "{m}");
    let o = e.func("invoke").args(["parse", "--data", "[1]"]).output().unwrap();
    assert_eq!(ok(&o), "[1]");
    assert_eq!(metric_value(&http_get(d.addr, "/metrics"), "thaw_function_template_restarts_total"), 2.0);
    // A function's user: the handler runs as it. os.stat of /proc/self gives the process's
    // own uid and gid (fields 4 and 5 of the stat result, returned as a JSON list).
    let o = e.func("deploy").args(["who", "--image", image, "--runtime", "python", "--handler", "os:stat", "-u", "1000:1000"]).output().unwrap();
    ok(&o);
    let st: serde_json::Value = serde_json::from_str(&ok(&e.func("invoke").args(["who", "--data", "/proc/self"]).output().unwrap())).unwrap();
    assert_eq!((st[4].as_u64(), st[5].as_u64()), (Some(1000), Some(1000)), "{st}");
}

/// An OCI layout at `<dir>/layout` with the busybox root as its only layer, tagged v1, whose
/// command prints `$WHO` (= `layout`) in /etc.
fn busybox_layout(e: &Env) -> String {
    let tar = Command::new("tar").arg("-C").arg(&e.rootfs).args(["-cf", "-", "."]).output().unwrap();
    assert!(tar.status.success());
    let layout = e.dir.path().join("layout");
    let mut w = thaw_oci::layout::LayoutWriter::create(&layout).unwrap();
    let layers = vec![(tar.stdout.clone(), thaw_oci::Digest::sha256_of(&tar.stdout), "application/vnd.oci.image.layer.v1.tar")];
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "WHO=layout"], "Cmd": ["sh", "-c", "echo $WHO"], "WorkingDir": "/etc"},
        "rootfs": {"type": "layers", "diff_ids": [thaw_oci::Digest::sha256_of(&tar.stdout).to_string()]}
    });
    w.add_image("v1", &layers, config).unwrap();
    format!("oci:{}:v1", layout.display())
}

#[test]
fn registry_images_are_pulled_through_the_daemons_mirror_and_run() {
    let test = "registry_images_are_pulled_through_the_daemons_mirror_and_run";
    if !thaw_testkit::have("docker-registry", test) || !thaw_testkit::have("skopeo", test) {
        return;
    }
    let Some(e) = Env::new(test) else { return };
    let up = thaw_testkit::DockerRegistry::start();
    thaw_testkit::skopeo_copy(&busybox_layout(&e), &format!("docker://{}/library/bb:v1", up.addr));
    let upstream = format!("docker.io={}", up.url());
    let d = e.daemon_with(Some("depth = 1"), &["--upstream", &upstream]);
    let o = e.run().args(["docker://docker.io/library/bb:v1"]).output().unwrap();
    assert_eq!(ok(&o), "layout\n");
    let m = http_get(d.addr, "/metrics");
    assert!(metric_value(&m, "thaw_upstream_bytes_total") > 0.0, "the image came through the mirror: {m}");
    let o = e.run().args(["docker://docker.io/library/bb:v1", "--", "pwd"]).output().unwrap();
    assert_eq!(ok(&o), "/etc\n");
    let o = e.func("deploy").args(["reg", "--image", "docker://docker.io/library/bb:v1", "--", "cat"]).output().unwrap();
    ok(&o);
    let o = e.func("invoke").args(["reg", "--data", "through the mirror"]).output().unwrap();
    assert_eq!(ok(&o), "through the mirror");
    // Without a daemon, the cold path says where such images can run.
    drop(d);
    let o = e.run().args(["docker://docker.io/library/bb:v1"]).output().unwrap();
    assert!(!o.status.success() && text(&o.stderr).contains("[sandbox]"), "{}", text(&o.stderr));
    let o = e.run().args(["docker://Not A Reference"]).output().unwrap();
    assert!(!o.status.success() && text(&o.stderr).contains("not an image reference"), "{}", text(&o.stderr));
}

#[test]
fn layouts_bundles_and_configured_images_through_the_daemon() {
    let Some(e) = Env::new("layouts_bundles_and_configured_images_through_the_daemon") else { return };
    let image = busybox_layout(&e);
    // Configured images are pooled before the first request.
    let d = e.daemon(Some(&format!("depth = 1\n[[sandbox.images]]\nimage = \"{image}\"\n")));
    wait_until("the configured image is pooled", Duration::from_secs(30), || metric_value(&http_get(d.addr, "/metrics"), "thaw_sandbox_pool_ready") >= 1.0);
    let o = e.run().arg("--timings").arg(&image).output().unwrap();
    assert_eq!(ok(&o), "layout\n");
    assert!(text(&o.stderr).contains("pooled parts"), "the first start was not pooled: {}", text(&o.stderr));
    // A relative layout path is made absolute by the client.
    let o = e.run().current_dir(e.dir.path()).args(["oci:layout:v1", "--", "pwd"]).output().unwrap();
    assert_eq!(ok(&o), "/etc\n");
    // The daemon holds the layer store: the cold path says what to do instead.
    let o = e.run().arg("--cold").arg(&image).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("run without --cold"), "{}", text(&o.stderr));
    // A bundle is read by the client and run by the daemon.
    let bundle = e.bundle();
    let o = e.run().arg("--timings").arg("--bundle").arg(&bundle).output().unwrap();
    assert_eq!(ok(&o), "bundled\nreadonly\n");
    assert!(text(&o.stderr).contains("through the daemon"), "{}", text(&o.stderr));
}

/// A one-shot HTTP server on `ip`, answering `body` to `n` requests.
fn http_server(ip: std::net::Ipv4Addr, body: &'static str, n: usize) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::Write;
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    (port, h)
}

/// `--network bridge` gives the sandbox eth0 on a bridge with a route to the host, both on the
/// cold path (a bridge of the run's own instance, gone when it ends) and through the daemon
/// (the `[sandbox] bridge` subnet, kept while the daemon runs, deleted when it stops); without
/// the flag the sandbox has loopback only. A bad value is a clear error.
#[test]
fn bridge_networking_cold_and_through_the_daemon() {
    let Some(e) = Env::new("bridge_networking_cold_and_through_the_daemon") else { return };
    let fetch = |gw: std::net::Ipv4Addr, port: u16| format!("cat /proc/net/route; wget -q -O - http://{gw}:{port}/");
    let bridges = || {
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("thawbr"))
            .collect::<BTreeSet<_>>()
    };
    let at_start = bridges();

    // cold: the instance's default bridge; find its gateway from inside the sandbox's route
    let o = e.run().args(["--cold", "--network", "bridge"]).arg(&e.rootfs).args(["--", "cat", "/proc/net/route"]).output().unwrap();
    let routes = ok(&o);
    let gw_hex = routes.lines().find(|l| l.starts_with("eth0\t00000000\t")).unwrap_or_else(|| panic!("no default route: {routes}")).split('\t').nth(2).unwrap().to_string();
    let gw = std::net::Ipv4Addr::from(u32::from_str_radix(&gw_hex, 16).unwrap().swap_bytes());
    assert!(gw.octets()[0] == 10, "{gw}");
    // the cold run's bridge (and its veth pair) went with it
    assert!(bridges().is_subset(&at_start), "a cold run left its bridge: {:?}", bridges());
    let o = e.run().args(["--cold"]).arg(&e.rootfs).args(["--", "cat", "/proc/net/dev"]).output().unwrap();
    assert!(!ok(&o).contains("eth0"), "loopback only without --network");

    // through the daemon, with a configured subnet
    let octet = (std::process::id() % 200) as u8 + 20;
    let d = e.daemon(Some(&format!("depth = 1\nbridge = \"10.233.{octet}.1/24\"")));
    let gw = std::net::Ipv4Addr::new(10, 233, octet, 1);
    let (port, server) = http_server(gw, "reached the host", 2);
    for _ in 0..2 {
        let o = e.run().args(["--network", "bridge"]).arg(&e.rootfs).args(["--", "sh", "-c", &fetch(gw, port)]).output().unwrap();
        let out = ok(&o);
        assert!(out.contains("reached the host"), "{out}");
    }
    server.join().unwrap();
    // a function deployed with --network bridge gets eth0 on the same bridge
    let root = e.rootfs.to_str().unwrap();
    let o = e.func("deploy").args(["netfn", "--image", root, "--network", "bridge", "--", "cat", "/proc/net/route"]).output().unwrap();
    ok(&o);
    let o = e.func("invoke").args(["netfn", "--data", ""]).output().unwrap();
    let gw_hex = format!("{:08X}", u32::from(gw).swap_bytes());
    assert!(ok(&o).lines().any(|l| l.starts_with("eth0\t00000000\t") && l.contains(&gw_hex)), "{}", text(&o.stdout));
    let bridge = e.names().bridge;
    assert!(Path::new("/sys/class/net").join(&bridge).exists(), "the daemon's bridge {bridge}");
    let o = e.run().args(["--network", "wifi"]).arg(&e.rootfs).args(["--", "true"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("none") && text(&o.stderr).contains("bridge"), "{}", text(&o.stderr));
    drop(d);
    wait_until("the daemon's bridge to go", Duration::from_secs(10), || !Path::new("/sys/class/net").join(&bridge).exists());
    assert!(bridges().is_subset(&at_start), "{:?}", bridges());
}
