//! Template runtimes (zygotes): a Python template over a Debian python3 root filesystem (cached
//! on /dev/shm) stacked on a busybox root, instances forked from it per invocation.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thaw_sandbox::testsupport;
use thaw_sandbox::{ExitStatus, RootfsConfig, Template, TemplateConfig, TemplateRuntime};

/// A runtime, a busybox root, the cached python root and a layer with the test's handlers.
struct Zfx {
    f: common::Fixture,
    layers: Vec<PathBuf>,
}

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
    return {"ns": ns, "pid": os.getpid(), "seen": seen, "random": random.random(),
            "seccomp": status["Seccomp"].strip(), "nnp": status["NoNewPrivs"].strip(),
            "capeff": status["CapEff"].strip(), "uid": status["Uid"].split(),
            "cgroup": open("/proc/self/cgroup").read(), "hash": hash("thaw")}

def boom(payload):
    raise ValueError("boom " + payload.decode())

def hog(payload):
    blocks = []
    for _ in range(int(payload)):
        blocks.append(bytearray(1 << 20))
    return "survived"

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
        let layers = vec![extra, py, f.rootfs.clone()];
        Some(Zfx { f, layers })
    }

    fn config(&self, handler: &str, preload: &[&str], depth: usize) -> TemplateConfig {
        TemplateConfig {
            profile: Default::default(),
            rootfs: RootfsConfig::with_defaults(self.layers.clone()),
            runtime: TemplateRuntime::Python {
                interpreter: "/usr/bin/python3.11".into(),
                preload: preload.iter().map(|s| s.to_string()).collect(),
                handler: handler.into(),
            },
            env: vec!["PYTHONPATH=/app".into()],
            cwd: "/".into(),
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
