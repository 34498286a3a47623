//! Template runtimes (zygotes): a Python template over a Debian python3 root filesystem (cached
//! on /dev/shm) stacked on a busybox root, instances forked from it per invocation.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};
use thaw_sandbox::testsupport;
use thaw_sandbox::{ExitStatus, RootfsConfig, Template, TemplateConfig, TemplateRuntime};

/// A runtime, a busybox root, the cached python root and a layer with the test's handlers.
struct Zfx {
    f: common::Fixture,
    layers: Vec<PathBuf>,
}

/// A preloaded module that spies from the template: a thread that tries to open the memory,
/// environment and stdin of every instance it can see (PID 1 of a nested PID namespace), and a
/// pipe left open for instances to inherit.
const SPY: &str = r#"
import os, threading, time
seen = {}
pipe_r, pipe_w = os.pipe()

def _instances():
    for p in os.listdir("/proc"):
        try:
            nspid = [l for l in open("/proc/%s/status" % p) if l.startswith("NSpid:")][0].split()
        except (OSError, IndexError):
            continue
        if len(nspid) == 3 and nspid[2] == "1":
            yield p

def _watch():
    while True:
        for p in _instances():
            for what in ("mem", "environ", "fd/0"):
                path = "/proc/%s/%s" % (p, what)
                try:
                    open(path, "rb").close()
                    seen[path] = "opened"
                except OSError as e:
                    seen.setdefault(path, e.strerror)
        time.sleep(0.005)

threading.Thread(target=_watch, daemon=True).start()
"#;

const HANDLERS: &str = r#"
import json, os, random, sys

def echo(payload):
    return {"got": json.loads(payload), "pid": os.getpid()}

def facts(payload):
    ns = {n: os.readlink("/proc/self/ns/" + n) for n in ("net", "uts", "ipc", "mnt", "pid", "cgroup", "user")}
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    seen = sorted(os.listdir("/tmp")) + (["marker"] if os.path.exists("/marker") else [])
    with open("/marker", "w") as f:
        f.write("x")
    with open("/tmp/t", "w") as f:
        f.write("x")
    # Copy-up of a file a layer holds as host root: works only through the idmapped layers.
    with open("/etc/hostname", "a") as f:
        f.write("changed by an instance\n")
    import time
    time.sleep(float(payload or b"0"))
    return {"ns": ns, "pid": os.getpid(), "seen": seen, "random": random.random(),
            "seccomp": status["Seccomp"].strip(), "nnp": status["NoNewPrivs"].strip(),
            "capeff": status["CapEff"].strip(), "uid": status["Uid"].split(),
            "cgroup": open("/proc/self/cgroup").read(), "hash": hash("thaw")}

def who(payload):
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    with open("/tmp/mine", "w") as f:
        f.write("x")
    try:
        open("/etc/hostname", "a").close()
        root_writable = True
    except PermissionError:
        root_writable = False
    return {"uid": status["Uid"].split(), "gid": status["Gid"].split(), "groups": status["Groups"].split(),
            "capeff": status["CapEff"].strip(), "tmp_owner": os.stat("/tmp/mine").st_uid,
            "root_writable": root_writable}

def boom(payload):
    raise ValueError("boom " + payload.decode())

def hog(payload):
    blocks = []
    for _ in range(int(payload)):
        blocks.append(bytearray(1 << 20))
    return "survived"

def spied(payload):
    import spy
    inherited = []
    for fd in (spy.pipe_r, spy.pipe_w):
        try:
            os.fstat(fd)
            inherited.append(fd)
        except OSError:
            pass
    return {"seen": spy.seen, "inherited": inherited}

def net(payload):
    import socket
    host, port = payload.decode().split()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        got = s.recv(100).decode()
    return {"links": sorted(os.listdir("/sys/class/net")), "got": got}

def fds(payload):
    os.execv("/bin/ls", ["ls", "/proc/self/fd"])

def slow(payload):
    import time
    time.sleep(float(payload))
    return "slept"
"#;

impl Zfx {
    fn new(test: &str) -> Option<Self> {
        let f = common::Fixture::new(test)?;
        let py = testsupport::cached_python_rootfs(test)?;
        let extra = f.path().join("handlers");
        std::fs::create_dir_all(extra.join("app")).unwrap();
        std::fs::write(extra.join("app/handlers.py"), HANDLERS).unwrap();
        std::fs::write(extra.join("app/spy.py"), SPY).unwrap();
        let layers = vec![extra, py, f.rootfs.clone()];
        Some(Zfx { f, layers })
    }

    fn config(&self, handler: &str, preload: &[&str], depth: usize) -> TemplateConfig {
        TemplateConfig {
            profile: Default::default(),
            rootfs: RootfsConfig::with_defaults(self.layers.clone()),
            runtime: TemplateRuntime::Python {
                interpreter: "/usr/bin/python3".into(),
                preload: preload.iter().map(|s| s.to_string()).collect(),
                handler: handler.into(),
            },
            env: vec!["PYTHONPATH=/app".into()],
            cwd: "/".into(),
            user: (0, 0),
            depth,
        }
    }

    fn template(&self, handler: &str, depth: usize) -> Template {
        let t = self.f.rt.template(self.config(handler, &["json", "decimal"], depth)).unwrap();
        assert!(t.wait_ready(depth, Duration::from_secs(30)), "the template never filled its pool");
        t
    }
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

#[test]
fn invoke_returns_the_handlers_json() {
    let Some(z) = Zfx::new("invoke_returns_the_handlers_json") else { return };
    let t = z.template("handlers:echo", 2);
    let inv = t.invoke(br#"{"a": [1, 2]}"#, Some(Duration::from_secs(20))).unwrap();
    assert!(inv.status.success(), "{inv:?} {}", String::from_utf8_lossy(&inv.stderr));
    let v = json(&inv.stdout);
    assert_eq!(v["got"]["a"][1], 2);
    assert_eq!(v["pid"], 1, "the handler runs as PID 1 of its own PID namespace");
    assert!(inv.timings.pooled);
    let critical: Vec<&str> = inv.timings.critical_stages();
    assert_eq!(critical, vec!["take", "send", "run", "collect"]);
    assert!(inv.timings.stages.iter().any(|(n, _)| n == "cgroup_move"));
    assert_eq!(t.stats().hits.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// A function's user: the handler runs as it (ids of the template's user namespace, shifted on
/// the host), with the instance's capabilities kept, unable to write root's files.
#[test]
fn instances_run_the_handler_as_the_configured_user() {
    let Some(z) = Zfx::new("instances_run_the_handler_as_the_configured_user") else { return };
    let cfg = TemplateConfig { user: (1000, 1001), ..z.config("handlers:who", &["json"], 1) };
    let t = z.f.rt.template(cfg).unwrap();
    let inv = t.invoke(b"", Some(Duration::from_secs(20))).unwrap();
    assert!(inv.status.success(), "{inv:?} {}", String::from_utf8_lossy(&inv.stderr));
    let v = json(&inv.stdout);
    assert_eq!(v["uid"], serde_json::json!(["1000", "1000", "1000", "1000"]), "{v}");
    assert_eq!(v["gid"], serde_json::json!(["1001", "1001", "1001", "1001"]), "{v}");
    assert_eq!(v["groups"], serde_json::json!([]), "{v}");
    assert_eq!(v["tmp_owner"], 1000);
    assert_eq!(v["root_writable"], false, "a non-root handler wrote root's /etc/hostname");
    assert_eq!(v["capeff"], format!("{:016x}", (1u64 << 29) | (1 << 5) | (1 << 10)));
    // The template itself stays root of its user namespace (it builds the instances).
    let st = std::fs::read_to_string(format!("/proc/{}/status", t.pid())).unwrap();
    let uid_line = st.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid_line.split_whitespace().nth(1).unwrap(), t.id_base().to_string());
}

fn facts(t: &Template, sleep: &str) -> serde_json::Value {
    let inv = t.invoke(sleep.as_bytes(), Some(Duration::from_secs(20))).unwrap();
    assert!(inv.status.success(), "{inv:?} {}", String::from_utf8_lossy(&inv.stderr));
    json(&inv.stdout)
}

#[test]
fn instances_are_distinct_and_confined() {
    let Some(z) = Zfx::new("instances_are_distinct_and_confined") else { return };
    let t = z.template("handlers:facts", 2);
    // Both alive at once: namespace ids are inode numbers the kernel reuses once freed.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| facts(&t, "1.5"));
        let b = s.spawn(|| facts(&t, "1.5"));
        (a.join().unwrap(), b.join().unwrap())
    });
    for n in ["net", "uts", "ipc", "mnt", "pid", "cgroup"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap().to_string_lossy().into_owned();
        let template = std::fs::read_link(format!("/proc/{}/ns/{n}", t.pid())).unwrap().to_string_lossy().into_owned();
        assert_ne!(a["ns"][n], b["ns"][n], "{n} namespace shared by two instances");
        for v in [&a, &b] {
            assert_ne!(v["ns"][n], host.as_str(), "{n} namespace shared with the host");
            assert_ne!(v["ns"][n], template.as_str(), "{n} namespace shared with the template");
        }
    }
    // The user namespace is the template's, shared by its instances and not the host's.
    assert_eq!(a["ns"]["user"], b["ns"]["user"]);
    let host_user = std::fs::read_link("/proc/self/ns/user").unwrap().to_string_lossy().into_owned();
    assert_ne!(a["ns"]["user"], host_user.as_str());
    for v in [&a, &b] {
        assert_eq!(v["pid"], 1);
        assert_eq!(v["seccomp"], "2");
        assert_eq!(v["nnp"], "1");
        // CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE: the runtime-spec default.
        assert_eq!(v["capeff"], format!("{:016x}", (1u64 << 29) | (1 << 5) | (1 << 10)));
        assert_eq!(v["uid"][0], "0", "root inside the template's user namespace");
        // The cgroup namespace is rooted at the instance's own cgroup.
        assert!(v["cgroup"].as_str().unwrap().lines().all(|l| l.ends_with(":/")), "{}", v["cgroup"]);
    }
    assert_ne!(a["random"], b["random"], "two instances drew the same random number");
    assert_eq!(a["hash"], b["hash"], "instances of one template share the string-hash seed (documented)");
    // A file written by one instance (root, /tmp) is not seen by the next.
    let c = facts(&t, "0");
    assert_eq!(c["seen"], serde_json::json!([]), "an instance saw another's files: {}", c["seen"]);
    assert_eq!(std::fs::read_to_string(z.f.rootfs.join("etc/hostname")).unwrap(), "thaw\n", "an instance wrote into a layer");
    // Another template has its own hash seed and id range.
    let t2 = z.template("handlers:facts", 1);
    assert_ne!(t2.id_base(), t.id_base());
    assert_ne!(facts(&t2, "0")["hash"], a["hash"], "two templates share a string-hash seed");
}

#[test]
fn template_runs_shifted_without_host_privileges() {
    let Some(z) = Zfx::new("template_runs_shifted_without_host_privileges") else { return };
    let t = z.template("handlers:echo", 1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", t.pid())).unwrap();
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap().split_whitespace().collect::<Vec<_>>();
    let base = t.id_base().to_string();
    assert!(t.id_base() >= 100_000);
    assert_eq!(field("Uid:"), vec![base.as_str(); 4], "{status}");
    assert_eq!(field("Gid:"), vec![base.as_str(); 4], "{status}");
    assert_eq!(field("Seccomp:"), vec!["2"]);
    assert_eq!(field("NoNewPrivs:"), vec!["1"]);
    // Its capabilities are those of its own user namespace, which maps nothing of the host's
    // ids but its own range: they confer nothing in the initial user namespace.
    let map = std::fs::read_to_string(format!("/proc/{}/uid_map", t.pid())).unwrap();
    assert_eq!(map.split_whitespace().collect::<Vec<_>>(), vec!["0", base.as_str(), "65536"]);
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/user", t.pid())).unwrap(),
        std::fs::read_link("/proc/self/ns/user").unwrap()
    );
    // Nothing it could do as host root: send a signal to a host process it can see no pid of.
    // (Checked from the host: the kernel refuses a process of another user without CAP_KILL
    // in the initial namespace; the template's process is in a PID namespace of its own.)
    let pidns = std::fs::read_link(format!("/proc/{}/ns/pid", t.pid())).unwrap();
    assert_ne!(pidns, std::fs::read_link("/proc/self/ns/pid").unwrap());
    for d in t.cgroup_dirs() {
        assert!(std::fs::read_to_string(d.join("cgroup.procs")).unwrap().lines().any(|p| p == t.pid().to_string()));
    }
}

#[test]
fn handler_errors_and_timeouts_leave_the_template_serving() {
    let Some(z) = Zfx::new("handler_errors_and_timeouts_leave_the_template_serving") else { return };
    let t = z.template("handlers:boom", 1);
    let inv = t.invoke(b"now", None).unwrap();
    assert_eq!(inv.status, ExitStatus::Code(1));
    let err = String::from_utf8_lossy(&inv.stderr);
    assert!(err.contains("Traceback") && err.contains("ValueError: boom now"), "{err}");
    let t = z.template("handlers:slow", 1);
    let start = Instant::now();
    let inv = t.invoke(b"30", Some(Duration::from_millis(300))).unwrap();
    assert_eq!(inv.status, ExitStatus::Signal(libc::SIGKILL));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&inv.stderr).contains("timeout"));
    let inv = t.invoke(b"0", None).unwrap();
    assert_eq!(inv.stdout, b"slept");
}

#[test]
fn memory_limit_kills_the_hog_and_the_template_survives() {
    let Some(z) = Zfx::new("memory_limit_kills_the_hog_and_the_template_survives") else { return };
    let mut cfg = z.config("handlers:hog", &[], 1);
    cfg.profile.limits.memory_bytes = Some(96 << 20);
    let t = z.f.rt.template(cfg).unwrap();
    let inv = t.invoke(b"400", Some(Duration::from_secs(30))).unwrap();
    assert_eq!(inv.status, ExitStatus::Signal(libc::SIGKILL), "{}", String::from_utf8_lossy(&inv.stderr));
    let inv = t.invoke(b"4", Some(Duration::from_secs(30))).unwrap();
    assert_eq!(inv.stdout, b"survived", "{}", String::from_utf8_lossy(&inv.stderr));
    assert!(std::fs::metadata(format!("/proc/{}", t.pid())).is_ok(), "the template died");
}

#[test]
fn missing_preload_module_is_a_clear_error() {
    let Some(z) = Zfx::new("missing_preload_module_is_a_clear_error") else { return };
    let e = z.f.rt.template(z.config("handlers:echo", &["json", "no_such_module_here"], 1)).err().expect("template started");
    let msg = e.to_string();
    assert!(msg.contains("no_such_module_here") && msg.contains("ModuleNotFoundError"), "{msg}");
    let e = z.f.rt.template(z.config("handlers:nope", &[], 1)).err().expect("template started");
    assert!(e.to_string().contains("nope"), "{e}");
    let mut cfg = z.config("handlers:echo", &[], 1);
    cfg.runtime = TemplateRuntime::Python { interpreter: "/usr/bin/no-python".into(), preload: vec![], handler: "handlers:echo".into() };
    let e = z.f.rt.template(cfg).err().expect("template started");
    assert!(e.to_string().contains("no-python"), "{e}");
}

#[test]
fn empty_pool_forks_on_demand_and_counts_a_miss() {
    let Some(z) = Zfx::new("empty_pool_forks_on_demand_and_counts_a_miss") else { return };
    let t = z.f.rt.template(z.config("handlers:echo", &[], 0)).unwrap();
    let inv = t.invoke(b"[1]", None).unwrap();
    assert_eq!(json(&inv.stdout)["got"], serde_json::json!([1]));
    assert!(!inv.timings.pooled);
    assert!(inv.timings.critical_stages().contains(&"cgroup_move"));
    assert_eq!(t.stats().misses.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(t.ready(), 0);
}

/// Everything of the runtime instance on the host: cgroups below its parent, processes of
/// the template's id range, mounts under its prefix.
fn owned(z: &Zfx, base: u32) -> (usize, usize, usize) {
    let rt = &z.f.rt;
    let cgroups = thaw_sandbox::cgroup::count_children(rt.cgroup_layout(), &rt.names().cgroup_parent);
    let mut procs = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(st) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let uid = st.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|u| u.split_whitespace().next().map(String::from));
        if uid.as_deref() == Some(base.to_string().as_str()) {
            procs += 1;
        }
    }
    let prefix = rt.names().mount_prefix.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&prefix)).count();
    (cgroups, procs, mounts)
}

/// Polls until `owned` is `want`, or fails after a deadline (teardown is asynchronous).
fn settle(z: &Zfx, base: u32, want: (usize, usize, usize), when: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = owned(z, base);
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{when}: (cgroups, processes, mounts) {now:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hundreds_of_invocations_then_drop_leave_nothing_behind() {
    let Some(z) = Zfx::new("hundreds_of_invocations_then_drop_leave_nothing_behind") else { return };
    let depth = 3;
    let t = z.template("handlers:echo", depth);
    let base = t.id_base();
    let start = Instant::now();
    let mut n = 0;
    while n < 300 && start.elapsed() < Duration::from_secs(8) {
        let inv = t.invoke(format!("{n}").as_bytes(), Some(Duration::from_secs(20))).unwrap();
        assert!(inv.status.success(), "{}", String::from_utf8_lossy(&inv.stderr));
        n += 1;
    }
    assert!(n >= 100, "too few invocations in the time budget: {n}");
    assert!(t.wait_ready(depth, Duration::from_secs(30)));
    // Only the template (its outer process and interpreter, in the template's cgroup) and the
    // parked instances (outer and inner process each, one cgroup each) remain; a cgroup is a
    // directory in each hierarchy.
    let hierarchies = z.f.rt.cgroup_layout().dirs("p", "c").len();
    settle(&z, base, ((1 + depth) * hierarchies, 2 + 2 * depth, 0), &format!("after {n} invocations"));
    drop(t);
    assert!(z.f.rt.wait_teardowns(Duration::from_secs(20)), "teardowns still pending");
    settle(&z, base, (0, 0, 0), "after drop");
    assert_eq!(z.f.rt.counters().failed_teardowns.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_dead_template_is_reported_and_fails_invocations_clearly() {
    let Some(z) = Zfx::new("a_dead_template_is_reported_and_fails_invocations_clearly") else { return };
    let t = z.f.rt.template(z.config("handlers:echo", &[], 0)).unwrap();
    assert!(t.is_alive());
    // SAFETY: SIGKILL to the template's interpreter, a process this test started.
    unsafe { libc::kill(t.pid(), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.is_alive() {
        assert!(Instant::now() < deadline, "the template still counts as alive");
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = t.invoke(b"1", None).unwrap_err().to_string();
    assert!(e.contains("template"), "{e}");
}

#[test]
fn a_program_the_handler_execs_gets_only_stdio() {
    let Some(z) = Zfx::new("a_program_the_handler_execs_gets_only_stdio") else { return };
    let t = z.template("handlers:fds", 1);
    let inv = t.invoke(b"", None).unwrap();
    assert!(inv.status.success(), "{}", String::from_utf8_lossy(&inv.stderr));
    // 0, 1, 2 and the directory ls itself opens to list them.
    assert_eq!(String::from_utf8_lossy(&inv.stdout).split_whitespace().collect::<Vec<_>>(), ["0", "1", "2", "3"]);
}

#[test]
fn the_template_cannot_read_instances_nor_hand_them_a_channel() {
    let Some(z) = Zfx::new("the_template_cannot_read_instances_nor_hand_them_a_channel") else { return };
    let t = z.f.rt.template(z.config("handlers:spied", &["spy"], 2)).unwrap();
    assert!(t.wait_ready(2, Duration::from_secs(30)));
    // The first instances were forked before the spy saw any; later ones carry what it saw.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        assert!(t.invoke(b"", None).unwrap().status.success());
    }
    assert!(t.wait_ready(2, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        assert!(t.invoke(b"", None).unwrap().status.success());
    }
    assert!(t.wait_ready(2, Duration::from_secs(30)));
    let inv = t.invoke(b"", None).unwrap();
    let v = json(&inv.stdout);
    let seen = v["seen"].as_object().unwrap();
    assert!(seen.keys().any(|k| k.ends_with("/mem")), "the spy saw no instance, the check proves nothing: {v}");
    for (path, what) in seen {
        assert_ne!(what, "opened", "the template opened {path}");
    }
    assert_eq!(v["inherited"], serde_json::json!([]), "an instance inherited the template's pipe");
}

#[test]
fn bridged_instances_reach_the_host_through_the_runtimes_bridge() {
    let Some(z) = Zfx::new("bridged_instances_reach_the_host_through_the_runtimes_bridge") else { return };
    let mut cfg = z.config("handlers:net", &[], 1);
    cfg.profile.network = thaw_sandbox::net::NetworkMode::Bridge;
    let t = z.f.rt.template(cfg).unwrap();
    let gateway = z.f.rt.bridge().unwrap().config().gateway;
    let listener = std::net::TcpListener::bind((gateway, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut c, b"hello from the host").unwrap();
    });
    let inv = t.invoke(format!("{gateway} {port}").as_bytes(), Some(Duration::from_secs(30))).unwrap();
    assert!(inv.status.success(), "{}", String::from_utf8_lossy(&inv.stderr));
    let v = json(&inv.stdout);
    assert_eq!(v["got"], "hello from the host");
    assert_eq!(v["links"], serde_json::json!(["eth0", "lo"]));
    assert!(inv.timings.stages.iter().any(|(n, _)| n == "bridge_veth"));
    server.join().unwrap();
    // Once the used instance is torn down, only the refilled, parked one holds a lease.
    assert!(t.wait_ready(1, Duration::from_secs(30)));
    assert!(z.f.rt.wait_teardowns(Duration::from_secs(20)));
    assert_eq!(z.f.rt.bridge().unwrap().leased(), 1, "the parked instance holds the only lease");
    drop(t);
    assert!(z.f.rt.wait_teardowns(Duration::from_secs(20)));
    assert_eq!(z.f.rt.bridge().unwrap().leased(), 0, "a lease outlived its instance");
}

/// A directory made opaque by an upper layer hides the lower layer's entries inside a template
/// too: the layers carry `user.overlay.opaque` (as thaw's unpacker writes it) and the template's
/// overlays are mounted with `userxattr`. A whiteout hides a lower file as well.
#[test]
fn opaque_directories_and_whiteouts_of_upper_layers_hold_in_templates() {
    let Some(z) = Zfx::new("opaque_directories_and_whiteouts_of_upper_layers_hold_in_templates") else { return };
    let (top, bottom) = (z.f.path().join("l-top"), z.f.path().join("l-bottom"));
    std::fs::create_dir_all(top.join("data")).unwrap();
    std::fs::create_dir_all(bottom.join("data")).unwrap();
    std::fs::write(bottom.join("data/old"), "from the bottom layer").unwrap();
    std::fs::write(bottom.join("gone"), "deleted by the top layer").unwrap();
    std::fs::write(top.join("data/new"), "from the top layer").unwrap();
    for (name, value) in [(c"trusted.overlay.opaque", b"y"), (c"user.overlay.opaque", b"y")] {
        let c = std::ffi::CString::new(top.join("data").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: lsetxattr reads the NUL-terminated path, name and the one-byte value.
        let r = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), 1, 0) };
        assert_eq!(r, 0, "set {name:?}: {}", std::io::Error::last_os_error());
    }
    nix::sys::stat::mknod(&top.join("gone"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0).unwrap();
    std::fs::create_dir_all(z.f.path().join("handlers/app2")).unwrap();
    std::fs::write(
        z.f.path().join("handlers/app2/layered.py"),
        "import os\ndef ls(payload):\n    return {'data': sorted(os.listdir('/data')), 'gone': os.path.exists('/gone')}\n",
    )
    .unwrap();
    let mut layers = vec![z.f.path().join("handlers"), top, bottom];
    layers.extend(z.layers.iter().skip(1).cloned());
    let mut cfg = z.config("layered:ls", &["json"], 1);
    cfg.rootfs = RootfsConfig::with_defaults(layers);
    cfg.env = vec!["PYTHONPATH=/app2".into()];
    let t = z.f.rt.template(cfg).unwrap();
    let inv = t.invoke(b"", Some(Duration::from_secs(20))).unwrap();
    assert!(inv.status.success(), "{}", String::from_utf8_lossy(&inv.stderr));
    let v = json(&inv.stdout);
    assert_eq!(v["data"], serde_json::json!(["new"]), "the opaque directory let the lower entries through");
    assert_eq!(v["gone"], false, "the whiteout did not hide the lower file");
}
