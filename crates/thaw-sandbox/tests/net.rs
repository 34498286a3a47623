//! Bridged networking against the real kernel: a thaw bridge, two network namespaces attached
//! to it, TCP between host and sandbox and between sandboxes, routes, and clean-up.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use thaw_sandbox::net::{self, Bridge, BridgeConfig};

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root, and CI runs as root");
    }
    eprintln!("skipping {test}: needs root");
    false
}

/// A process holding a fresh network namespace; killed by PID on drop.
struct NetnsHolder {
    child: Child,
    fd: OwnedFd,
}

impl NetnsHolder {
    fn new() -> NetnsHolder {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) runs");
        let pid = child.id() as i32;
        // wait until the child has unshared: its namespace differs from ours
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"));
            if theirs.as_ref().is_ok_and(|t| *t != ours) {
                // and has exec'd sleep (so the namespace is the final one)
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "sleep" {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "unshare never entered a new network namespace"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let fd = net::open_netns_of(pid).unwrap();
        NetnsHolder { child, fd }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ns(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for NetnsHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` on a thread that joined the network namespace `ns`.
fn in_netns<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> T {
    let fd = ns.try_clone_to_owned().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

fn names() -> (String, String, u8) {
    let pid = std::process::id();
    (
        format!("thtb{:x}", pid & 0xffff),
        format!("tt{:x}", pid & 0xffff),
        (pid % 200) as u8 + 20,
    )
}

fn connect_and_read(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The default route of a namespace, read from its /proc view: (interface, gateway).
fn default_route(pid: u32) -> Option<(String, Ipv4Addr)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap();
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" {
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            Some((f[0].to_string(), Ipv4Addr::from(gw.swap_bytes())))
        } else {
            None
        }
    })
}

#[test]
fn sandboxes_on_a_bridge_reach_the_host_and_each_other_and_leave_nothing_behind() {
    if !root_or_skip("sandboxes_on_a_bridge_reach_the_host_and_each_other_and_leave_nothing_behind")
    {
        return;
    }
    let (bridge_name, prefix, octet) = names();
    let cfg = BridgeConfig::parse(&bridge_name, &format!("10.231.{octet}.1/24")).unwrap();
    let bridge = Bridge::ensure(cfg.clone(), &prefix).unwrap();
    // adopting an existing bridge works too (a restarted daemon)
    let again = Bridge::ensure(cfg.clone(), &prefix).unwrap();
    drop(again);
    assert!(net::link_exists(&bridge_name).unwrap());

    let (a, b) = (NetnsHolder::new(), NetnsHolder::new());
    let la = bridge.attach(a.ns()).unwrap();
    let lb = bridge.attach(b.ns()).unwrap();
    assert_ne!(la.address(), lb.address());
    assert_ne!(la.address(), cfg.gateway);
    assert_eq!(bridge.leased(), 2);
    assert!(net::link_exists(la.host_interface()).unwrap());
    // eth0 inside, not on the host's side
    assert_eq!(
        default_route(a.pid()),
        Some(("eth0".to_string(), cfg.gateway))
    );
    assert_eq!(
        default_route(b.pid()),
        Some(("eth0".to_string(), cfg.gateway))
    );

    // a server in sandbox A, reached from the host and from sandbox B
    let listener = in_netns(a.ns(), || TcpListener::bind((la.address(), 0)).unwrap());
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"from a").unwrap();
        }
    });
    let target = SocketAddr::from((la.address(), port));
    assert_eq!(connect_and_read(target), "from a", "host to sandbox");
    assert_eq!(
        in_netns(b.ns(), || connect_and_read(target)),
        "from a",
        "sandbox to sandbox"
    );
    server.join().unwrap();

    // a server on the host's bridge address, reached from sandbox B
    let host = TcpListener::bind((cfg.gateway, 0)).unwrap();
    let hport = host.local_addr().unwrap().port();
    let hs = std::thread::spawn(move || {
        let (mut s, _) = host.accept().unwrap();
        s.write_all(b"from host").unwrap();
    });
    assert_eq!(
        in_netns(b.ns(), || connect_and_read(SocketAddr::from((
            cfg.gateway,
            hport
        )))),
        "from host"
    );
    hs.join().unwrap();

    // dropping a lease deletes its veth pair and frees the address
    let a_if = la.host_interface().to_string();
    drop(la);
    assert!(!net::link_exists(&a_if).unwrap());
    assert_eq!(bridge.leased(), 1);
    assert!(
        !std::fs::read_to_string(format!("/proc/{}/net/dev", a.pid()))
            .unwrap()
            .contains("eth0")
    );

    // a crash leaves a veth behind; the prefix sweep removes it
    let c = NetnsHolder::new();
    let lc = bridge.attach(c.ns()).unwrap();
    let c_if = lc.host_interface().to_string();
    std::mem::forget(lc);
    assert!(net::link_exists(&c_if).unwrap());
    drop(lb);
    assert_eq!(net::remove_links_with_prefix(&prefix).unwrap(), 1);
    assert!(!net::link_exists(&c_if).unwrap());

    bridge.delete().unwrap();
    assert!(!net::link_exists(&bridge_name).unwrap());
    drop((a, b, c));
}

#[test]
fn a_full_subnet_is_a_clear_error() {
    if !root_or_skip("a_full_subnet_is_a_clear_error") {
        return;
    }
    let (name, prefix, octet) = names();
    let name = format!("{name}f");
    let prefix = format!("{prefix}f");
    // a /30 has two host addresses: the gateway and one sandbox
    let cfg = BridgeConfig::parse(&name, &format!("10.232.{octet}.1/30")).unwrap();
    let bridge = Bridge::ensure(cfg, &prefix).unwrap();
    let (a, b) = (NetnsHolder::new(), NetnsHolder::new());
    let la = bridge.attach(a.ns()).unwrap();
    let err = bridge.attach(b.ns()).unwrap_err().to_string();
    assert!(
        err.contains("no free address") && err.contains("larger subnet"),
        "{err}"
    );
    drop(la);
    let lb = bridge
        .attach(b.ns())
        .expect("the freed address is handed out again");
    drop(lb);
    bridge.delete().unwrap();
    assert_eq!(net::remove_links_with_prefix(&prefix).unwrap(), 0);
}

mod common;

/// A tiny HTTP server on `addr` answering every request with `body`; stops after `n` requests.
fn http_once(addr: Ipv4Addr, body: &'static str, n: usize) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind((addr, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, h)
}

/// Sandboxes with the bridge profile, cold and pooled, get eth0 with distinct addresses and a
/// default route, reach a server on the host's bridge address, and leave no veth pair and no
/// bridge behind once they and the runtime are gone. Loopback-only sandboxes of the same
/// runtime still see no eth0.
#[test]
fn bridged_sandboxes_reach_the_host_and_clean_up() {
    let Some(fx) = common::Fixture::new("bridged_sandboxes_reach_the_host_and_clean_up") else {
        return;
    };
    let names = fx.rt.names().clone();
    let bridge = fx.rt.bridge().unwrap();
    let gw = bridge.config().gateway;
    let (port, server) = http_once(gw, "hello from the host", 3);
    let url = format!("http://{gw}:{port}/");

    let mut spec = fx.spec(&[
        "/bin/busybox",
        "sh",
        "-c",
        &format!("cat /proc/net/route; /bin/busybox wget -q -O - {url}"),
    ]);
    spec.profile.network = thaw_sandbox::net::NetworkMode::Bridge;
    let out = fx.rt.run_output(&spec).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello from the host"), "{stdout}");
    let gw_hex = format!("{:08X}", u32::from(gw).swap_bytes());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("eth0\t00000000\t") && l.contains(&gw_hex)),
        "no default route via {gw}: {stdout}"
    );
    assert!(
        out.timings.stages.iter().any(|(s, _)| s == "bridge_veth"),
        "{:?}",
        out.timings.stages
    );

    // pooled: two sandboxes at once have distinct addresses
    let pool = fx.rt.pool(thaw_sandbox::PoolConfig {
        profile: spec.profile.clone(),
        rootfs: Some(spec.rootfs.clone()),
        depth: 2,
    });
    assert!(pool.wait_ready(2, Duration::from_secs(30)));
    let addr_of = |o: thaw_sandbox::Output| {
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(o.status.success(), "{s}");
        s
    };
    let show = thaw_sandbox::ProcessConfig {
        args: vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            format!("/bin/busybox ip -4 addr show eth0; /bin/busybox wget -q -O - {url}"),
        ],
        ..spec.process.clone()
    };
    let a = addr_of(pool.run_output(Some(&spec.rootfs), &show).unwrap());
    let b = addr_of(pool.run_output(Some(&spec.rootfs), &show).unwrap());
    let inet = |s: &str| {
        s.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .map(str::to_string)
    };
    assert!(inet(&a).is_some() && inet(&a) != inet(&b), "{a}\n{b}");
    assert!(a.contains("hello from the host") && b.contains("hello from the host"));
    server.join().unwrap();

    // loopback-only in the same runtime: no eth0
    let lo = fx
        .rt
        .run_output(&fx.spec(&["/bin/busybox", "cat", "/proc/net/dev"]))
        .unwrap();
    assert!(!String::from_utf8_lossy(&lo.stdout).contains("eth0"));

    drop(pool);
    drop(bridge);
    let bridge_name = names.bridge.clone();
    let Fixture { rt, dir: _dir, .. } = fx;
    drop(rt);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while net::host_links_with_prefix(&names.veth_prefix) > 0
        || net::link_exists(&bridge_name).unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "veth pairs or the bridge outlived the runtime"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

use common::Fixture;
