//! The sandbox service end to end against real sandboxes (a `PoolSet` backend): output goes
//! straight to the client's descriptors, exit codes and signals are relayed, a client that dies
//! takes its sandbox with it; pool sets stay within their cap; functions get their input.

mod common;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thaw_sandbox::pool::run_with_input;
use thaw_sandbox::service::{self, Backend, BackendError, Overrides, RunRequest, Server, ServerConfig, Target};
use thaw_sandbox::{ExitStatus, PoolSet, Sandbox, SandboxSpec, StdioFds};

struct Pools {
    set: PoolSet,
    base: SandboxSpec,
}

impl Backend for Pools {
    fn start(&self, req: RunRequest, io: StdioFds) -> Result<(Sandbox, Duration), BackendError> {
        let mut spec = match req.target {
            Target::Spec(s) => *s,
            Target::Image(_) => self.base.clone(),
        };
        req.overrides.apply(&mut spec)?;
        Ok((self.set.start(&spec, io)?, Duration::ZERO))
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).unwrap();
    s
}

fn serve(f: &common::Fixture) -> (Server, std::path::PathBuf) {
    let path = f.path().join("sandbox.sock");
    let backend = Pools { set: PoolSet::new(&f.rt, 1), base: f.spec(&["true"]) };
    let srv = Server::start(service::listen(&path).unwrap(), Arc::new(backend), ServerConfig::default()).unwrap();
    (srv, path)
}

fn request(args: &[&str]) -> RunRequest {
    RunRequest {
        target: Target::Image("base".into()),
        overrides: Overrides { args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() },
    }
}

fn run(path: &std::path::Path, args: &[&str]) -> (service::Session, OwnedFd) {
    let (r, w) = pipe();
    let io = StdioFds { stdin: std::fs::File::open("/dev/null").unwrap().into(), stdout: w.try_clone().unwrap(), stderr: w };
    let s = service::Client::connect(path).unwrap().unwrap().start(&request(args), io).unwrap();
    (s, r)
}

#[test]
fn output_reaches_the_clients_descriptor_and_the_exit_code_returns() {
    let Some(f) = common::Fixture::new("output_reaches_the_clients_descriptor_and_the_exit_code_returns") else { return };
    let (srv, path) = serve(&f);
    let (s, r) = run(&path, &["sh", "-c", "echo hello from $(hostname); exit 7"]);
    assert!(!s.info().stages.is_empty());
    assert_eq!(s.wait().unwrap(), ExitStatus::Code(7));
    assert_eq!(read_all(r), "hello from thaw\n");
    // The second start of the same configuration comes from the pool.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, r) = run(&path, &["echo", "again"]);
        let pooled = s.info().pooled;
        assert_eq!(s.wait().unwrap(), ExitStatus::Code(0));
        assert_eq!(read_all(r), "again\n");
        if pooled {
            break;
        }
        assert!(Instant::now() < deadline, "no start came from the pool");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(srv.stats().served >= 2);
}

#[test]
fn signals_are_relayed_and_a_dead_client_kills_its_sandbox() {
    let Some(f) = common::Fixture::new("signals_are_relayed_and_a_dead_client_kills_its_sandbox") else { return };
    let (srv, path) = serve(&f);
    let (s, r) = run(&path, &["sh", "-c", "trap 'echo term; exit 4' TERM; echo ready; while true; do sleep 0.02; done"]);
    let mut rf = std::fs::File::from(r);
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut rf, &mut buf).unwrap();
    s.signal(libc::SIGTERM).unwrap();
    assert_eq!(s.wait().unwrap(), ExitStatus::Code(4));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut rf, &mut rest).unwrap();
    assert_eq!(rest, "term\n");

    let (s, r) = run(&path, &["sh", "-c", "echo ready; sleep 100"]);
    let pid = s.info().pid;
    let mut rf = std::fs::File::from(r);
    std::io::Read::read_exact(&mut rf, &mut buf).unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(s); // the client goes away without a word
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| !st.contains(") Z ")) {
        assert!(Instant::now() < deadline, "the sandbox of a vanished client still runs");
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.stats().active > 0 {
        assert!(Instant::now() < deadline, "the session did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_pool_set_drops_its_least_recently_used_pool_at_the_cap() {
    let Some(f) = common::Fixture::new("a_pool_set_drops_its_least_recently_used_pool_at_the_cap") else { return };
    let set = PoolSet::with_limit(&f.rt, 1, 2);
    let spec = f.spec(&["true"]);
    let mut a = spec.profile.clone();
    a.hostname = "a".into();
    let mut b = spec.profile.clone();
    b.hostname = "b".into();
    let mut c = spec.profile.clone();
    c.hostname = "c".into();
    set.pool_with(&a, &spec.rootfs, 1, "a");
    set.pool_with(&b, &spec.rootfs, 1, "b");
    set.pool_with(&a, &spec.rootfs, 1, "a"); // a is now the most recent
    set.pool_with(&c, &spec.rootfs, 1, "c");
    let labels: Vec<String> = set.pools().into_iter().map(|(l, _)| l).collect();
    assert_eq!(labels, ["a", "c"]);
}

#[test]
fn run_with_input_feeds_stdin_bounds_output_and_times_out() {
    let Some(f) = common::Fixture::new("run_with_input_feeds_stdin_bounds_output_and_times_out") else { return };
    let spec = f.spec(&["sh", "-c", "tr a-z A-Z; echo err >&2"]);
    let out = run_with_input(|io| f.rt.start(&spec, io), b"payload", None, 1 << 20).unwrap();
    assert_eq!(out.stdout, b"PAYLOAD");
    assert_eq!(out.stderr, b"err\n");
    assert!(out.status.success());
    let big = f.spec(&["sh", "-c", "yes | head -c 100000"]);
    let out = run_with_input(|io| f.rt.start(&big, io), b"", None, 1000).unwrap();
    assert_eq!(out.stdout.len(), 1000, "output is capped");
    assert!(out.status.success(), "and the workload was never blocked: {:?}", out.status);
    let slow = f.spec(&["sleep", "30"]);
    let t = Instant::now();
    let out = run_with_input(|io| f.rt.start(&slow, io), b"", Some(Duration::from_millis(300)), 1000).unwrap();
    assert_eq!(out.status, ExitStatus::Signal(libc::SIGKILL));
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn stopping_the_server_kills_running_sandboxes() {
    let Some(f) = common::Fixture::new("stopping_the_server_kills_running_sandboxes") else { return };
    let (srv, path) = serve(&f);
    let (s, r) = run(&path, &["sh", "-c", "echo ready; exec sleep 1000"]);
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::from(r), &mut buf).unwrap();
    let t = Instant::now();
    srv.stop();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(s.wait().unwrap(), ExitStatus::Signal(libc::SIGKILL));
}
