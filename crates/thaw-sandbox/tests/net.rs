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
