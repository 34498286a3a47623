//! Bridged networking: a veth pair from a thaw bridge into a sandbox's network namespace.
//!
//! A sandbox's network namespace starts with only `lo` (brought up by the helper), which is
//! thaw's default: loopback only, no route anywhere. A profile may instead ask for a bridge: thaw
//! then keeps one Linux bridge per daemon instance, holding the subnet's gateway address, and
//! gives each sandbox a veth pair whose host end is a port of the bridge and whose other end is
//! `eth0` inside the sandbox, with an address from the subnet and a default route via the
//! gateway. Sandboxes on one bridge reach each other and the host's addresses; reaching further
//! needs forwarding and NAT on the host, which thaw leaves to the host's firewall configuration
//! (as CNI's bridge plugin does without its masquerade option).
//!
//! Everything is done with rtnetlink requests (the `rtnetlink` crate), never by running `ip`:
//! host-side requests from a short-lived thread, in-sandbox requests from a thread that joined
//! the sandbox's network namespace with `setns` — joining a *network* namespace is allowed in a
//! multithreaded process, unlike a mount namespace — so the caller may be the daemon itself. A
//! fresh thread is used even for host-side requests so that no request ever runs inside (or
//! blocks) the caller's own async runtime.
//!
//! Lifetimes: the kernel deletes both ends of a veth pair when the namespace holding one end is
//! destroyed, but a [`Lease`] also deletes its host end when dropped, so that its address is
//! never handed to a new sandbox while the old interface may still be on the bridge. Interface
//! names carry the instance's prefix, so a restarted daemon removes what a crashed one left
//! ([`remove_links_with_prefix`]) and never touches another instance's.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::TryStreamExt;
use parking_lot::Mutex;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name a sandbox sees its bridged interface under.
pub const SANDBOX_INTERFACE: &str = "eth0";

/// Linux interface names are at most 15 bytes (IFNAMSIZ minus the terminating NUL).
pub const MAX_INTERFACE_NAME: usize = 15;

/// The network a sandbox gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only `lo`: nothing outside the sandbox is reachable, and nothing reaches in.
    #[default]
    #[serde(alias = "none")]
    Loopback,
    /// `lo` plus `eth0` on the runtime's bridge (see [`crate::RuntimeConfig`]).
    Bridge,
}

impl std::str::FromStr for NetworkMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<NetworkMode> {
        match s {
            "none" | "loopback" => Ok(NetworkMode::Loopback),
            "bridge" => Ok(NetworkMode::Bridge),
            other => Err(Error::Config(format!(
                "network {other:?} is not one thaw knows: use none (loopback only) or bridge"
            ))),
        }
    }
}

/// A bridge and its IPv4 subnet, given as the gateway's address with the prefix length
/// (`10.88.0.1/16`): the bridge holds the gateway address, sandboxes get the others.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BridgeConfig {
    /// The bridge interface's name.
    pub name: String,
    /// The bridge's own address, the sandboxes' default gateway.
    pub gateway: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
}

impl BridgeConfig {
    /// Parses `ADDRESS/PREFIX` for a bridge called `name`.
    pub fn parse(name: &str, subnet: &str) -> Result<BridgeConfig> {
        let bad = |why: &str| {
            Error::Config(format!("bridge subnet {subnet:?}: {why}; write it as the gateway address and prefix, e.g. 10.88.0.1/16"))
        };
        let (addr, prefix) = subnet
            .split_once('/')
            .ok_or_else(|| bad("no prefix length"))?;
        let gateway: Ipv4Addr = addr
            .trim()
            .parse()
            .map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .trim()
            .parse()
            .map_err(|_| bad("the prefix length is not a number"))?;
        let cfg = BridgeConfig {
            name: name.to_string(),
            gateway,
            prefix,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the name and that the subnet leaves room for sandboxes.
    pub fn validate(&self) -> Result<()> {
        check_interface_name(&self.name)?;
        if !(8..=30).contains(&self.prefix) {
            return Err(Error::Config(format!(
                "bridge subnet prefix /{} is out of range: use /8 to /30",
                self.prefix
            )));
        }
        let pool = AddressPool::new(self.gateway, self.prefix);
        if self.gateway == pool.network() || self.gateway == pool.broadcast() {
            return Err(Error::Config(format!(
                "bridge gateway {} is the network or broadcast address of {}/{}; use a host address such as {}",
                self.gateway,
                pool.network(),
                self.prefix,
                Ipv4Addr::from(u32::from(pool.network()) + 1)
            )));
        }
        Ok(())
    }
}

fn check_interface_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "interface name {name:?} is invalid: use 1 to {MAX_INTERFACE_NAME} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The free host addresses of a subnet, handed out round-robin so a released address is reused
/// as late as possible.
#[derive(Debug)]
pub struct AddressPool {
    network: u32,
    /// Number of addresses in the subnet (including network and broadcast).
    size: u32,
    gateway: u32,
    used: Vec<u64>,
    cursor: u32,
    in_use: u32,
}

impl AddressPool {
    /// The pool of `gateway/prefix` (prefix 8..=30; the gateway itself is never handed out).
    pub fn new(gateway: Ipv4Addr, prefix: u8) -> AddressPool {
        let prefix = prefix.clamp(8, 30);
        let mask = u32::MAX << (32 - prefix);
        let size = 1u32 << (32 - prefix);
        AddressPool {
            network: u32::from(gateway) & mask,
            size,
            gateway: u32::from(gateway),
            used: vec![0; size.div_ceil(64) as usize],
            cursor: 1,
            in_use: 0,
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + (self.size - 1))
    }

    /// Addresses a sandbox can get: all but network, broadcast and gateway.
    pub fn capacity(&self) -> u32 {
        self.size - 3
    }

    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    fn is_used(&self, off: u32) -> bool {
        self.used[(off / 64) as usize] & (1 << (off % 64)) != 0
    }

    fn set(&mut self, off: u32, v: bool) {
        let w = &mut self.used[(off / 64) as usize];
        if v {
            *w |= 1 << (off % 64);
        } else {
            *w &= !(1 << (off % 64));
        }
    }

    /// Takes a free address; `None` when every host address is in use.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let hosts = self.size - 2; // offsets 1..=size-2
        for i in 0..hosts {
            let off = 1 + (self.cursor - 1 + i) % hosts;
            if self.network + off == self.gateway || self.is_used(off) {
                continue;
            }
            self.set(off, true);
            self.in_use += 1;
            self.cursor = 1 + off % hosts;
            return Some(Ipv4Addr::from(self.network + off));
        }
        None
    }

    /// Gives `addr` back; addresses outside the pool or not in use are ignored.
    pub fn release(&mut self, addr: Ipv4Addr) {
        let a = u32::from(addr);
        if a <= self.network || a >= self.network + self.size - 1 {
            return;
        }
        let off = a - self.network;
        if self.is_used(off) {
            self.set(off, false);
            self.in_use -= 1;
        }
    }
}

/// Runs netlink requests on a fresh thread, optionally inside the network namespace `netns`.
fn netlink<T, F, Fut>(what: &str, netns: Option<BorrowedFd<'_>>, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = std::result::Result<T, Error>>,
{
    let netns = dup_netns(what, netns)?;
    on_netlink_thread(what, move |rt| {
        if let Some(fd) = netns {
            join_netns(what, fd.as_fd())?;
        }
        rt.block_on(with_connection(what, f))
    })
}

/// Runs `host` in this network namespace, then `inside` in `netns`, on one fresh thread and
/// event loop (one thread start, not two), each on a netlink socket of its own: a socket talks
/// to the namespace it was opened in.
fn netlink_host_then_inside<F1, Fut1, F2, Fut2>(what: &str, netns: BorrowedFd<'_>, host: F1, inside: F2) -> Result<()>
where
    F1: FnOnce(Handle) -> Fut1 + Send,
    Fut1: Future<Output = std::result::Result<(), Error>>,
    F2: FnOnce(Handle) -> Fut2 + Send,
    Fut2: Future<Output = std::result::Result<(), Error>>,
{
    let netns = dup_netns(what, Some(netns))?;
    on_netlink_thread(what, move |rt| {
        rt.block_on(with_connection(what, host))?;
        if let Some(fd) = netns {
            join_netns(what, fd.as_fd())?;
        }
        rt.block_on(with_connection(what, inside))
    })
}

fn dup_netns(what: &str, netns: Option<BorrowedFd<'_>>) -> Result<Option<OwnedFd>> {
    netns
        .map(|fd| fd.try_clone_to_owned().map_err(|e| Error::Net(format!("{what}: duplicate namespace descriptor: {e}"))))
        .transpose()
}

fn join_netns(what: &str, fd: BorrowedFd<'_>) -> Result<()> {
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::sys(format!("{what}: setns into the sandbox's network namespace"), e))
}

/// A short-lived thread with a single-threaded event loop. A thread of its own because joining
/// a network namespace changes the calling thread, which must not be one the caller reuses.
fn on_netlink_thread<T: Send>(what: &str, body: impl FnOnce(&tokio::runtime::Runtime) -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| Error::Net(format!("{what}: start an event loop: {e}")))?;
            body(&rt)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Net(format!("{what}: the netlink thread panicked"))))
    })
}

/// Opens a netlink connection in the calling thread's network namespace and runs `f` on it.
async fn with_connection<T, F, Fut>(what: &str, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = std::result::Result<T, Error>>,
{
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Net(format!("{what}: open a netlink socket: {e}")))?;
    let task = tokio::spawn(conn);
    let out = f(handle).await;
    task.abort();
    out
}

fn nl_err(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |e| Error::Net(format!("{what}: {e}"))
}

async fn link_index(handle: &Handle, name: &str) -> std::result::Result<Option<u32>, Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        // the kernel answers a lookup of a missing name with ENODEV
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(Error::Net(format!("look up interface {name}: {e}"))),
    }
}

/// Whether an interface called `name` exists in the caller's network namespace.
pub fn link_exists(name: &str) -> Result<bool> {
    let name = name.to_string();
    netlink("look up an interface", None, |h| async move {
        Ok(link_index(&h, &name).await?.is_some())
    })
}

/// How many interfaces of the caller's network namespace have names starting with `prefix`,
/// read from sysfs (no netlink request).
pub fn host_links_with_prefix(prefix: &str) -> usize {
    std::fs::read_dir("/sys/class/net").map_or(0, |d| {
        d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count()
    })
}

/// Deletes every interface whose name starts with `prefix` (what a crashed instance left) and
/// returns how many there were.
pub fn remove_links_with_prefix(prefix: &str) -> Result<usize> {
    if prefix.is_empty() {
        return Err(Error::Config(
            "refusing to delete interfaces with an empty name prefix".into(),
        ));
    }
    let prefix = prefix.to_string();
    netlink("remove leftover interfaces", None, |h| async move {
        let mut doomed = Vec::new();
        let mut links = h.link().get().execute();
        while let Some(msg) = links.try_next().await.map_err(nl_err("list interfaces"))? {
            let name = msg.attributes.iter().find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if name.is_some_and(|n| n.starts_with(&prefix)) {
                doomed.push(msg.header.index);
            }
        }
        let mut n = 0;
        for idx in doomed {
            match h.link().del(idx).execute().await {
                Ok(()) => n += 1,
                // deleting one end of a veth pair deletes the other: it may already be gone
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(Error::Net(format!("delete interface {idx}: {e}"))),
            }
        }
        Ok(n)
    })
}

/// One thaw bridge: created (or adopted) on [`Bridge::ensure`], deleted on [`Bridge::delete`].
#[derive(Debug)]
pub struct Bridge {
    cfg: BridgeConfig,
    index: u32,
    if_prefix: String,
    serial: AtomicU64,
    pool: Arc<Mutex<AddressPool>>,
}

impl Bridge {
    /// Makes sure the bridge exists with the gateway address and is up. `if_prefix` starts the
    /// names of the host ends of sandbox veth pairs (at most 7 bytes, so a serial number fits).
    pub fn ensure(cfg: BridgeConfig, if_prefix: &str) -> Result<Bridge> {
        cfg.validate()?;
        check_interface_name(if_prefix)?;
        if if_prefix.len() > 7 {
            return Err(Error::Config(format!(
                "veth name prefix {if_prefix:?} is longer than 7 bytes"
            )));
        }
        let c = cfg.clone();
        let index = netlink("set up the bridge", None, |h| async move {
            if link_index(&h, &c.name).await?.is_none() {
                h.link()
                    .add(LinkBridge::new(&c.name).build())
                    .execute()
                    .await
                    .map_err(nl_err(format!("create bridge {}", c.name)))?;
            }
            let idx = link_index(&h, &c.name).await?.ok_or_else(|| {
                Error::Net(format!("bridge {} vanished after it was created", c.name))
            })?;
            h.address()
                .add(idx, IpAddr::V4(c.gateway), c.prefix)
                .replace()
                .execute()
                .await
                .map_err(nl_err(format!(
                    "give bridge {} the address {}/{}",
                    c.name, c.gateway, c.prefix
                )))?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(nl_err(format!("bring bridge {} up", c.name)))?;
            Ok(idx)
        })?;
        let pool = AddressPool::new(cfg.gateway, cfg.prefix);
        Ok(Bridge {
            cfg,
            index,
            if_prefix: if_prefix.to_string(),
            serial: AtomicU64::new(0),
            pool: Arc::new(Mutex::new(pool)),
        })
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    /// Addresses currently leased to sandboxes.
    pub fn leased(&self) -> u32 {
        self.pool.lock().in_use()
    }

    /// Connects the network namespace `netns` to the bridge: a veth pair whose host end joins the
    /// bridge and whose other end becomes `eth0` in the namespace, with a fresh address and a
    /// default route via the gateway.
    pub fn attach(&self, netns: BorrowedFd<'_>) -> Result<Lease> {
        let addr = self.pool.lock().allocate().ok_or_else(|| {
            Error::Net(format!(
                "bridge {} has no free address left in {}/{}; use a larger subnet",
                self.cfg.name, self.cfg.gateway, self.cfg.prefix
            ))
        })?;
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let host_if = format!("{}{:x}", self.if_prefix, serial % (1 << 32));
        // The peer is created under a second unique name and renamed to eth0 only inside the
        // sandbox's namespace: the host may have an eth0 of its own.
        let peer_if = format!("{}{:x}p", self.if_prefix, serial % (1 << 28));
        let lease = Lease {
            pool: self.pool.clone(),
            addr,
            host_if: host_if.clone(),
            prefix: self.cfg.prefix,
        };
        let (bridge, raw_ns) = (self.index, netns.as_raw_fd());
        let (hi, pi) = (host_if.clone(), peer_if.clone());
        let (gateway, prefix) = (self.cfg.gateway, self.cfg.prefix);
        let host = |h: Handle| async move {
            h.link()
                .add(LinkVeth::new(&hi, &pi).build())
                .execute()
                .await
                .map_err(nl_err(format!("create veth pair {hi}/{pi}")))?;
            let peer = link_index(&h, &pi)
                .await?
                .ok_or_else(|| Error::Net(format!("veth peer {pi} vanished")))?;
            h.link()
                .set(LinkUnspec::new_with_index(peer).setns_by_fd(raw_ns).build())
                .execute()
                .await
                .map_err(nl_err(format!(
                    "move {pi} into the sandbox's network namespace"
                )))?;
            let host = link_index(&h, &hi)
                .await?
                .ok_or_else(|| Error::Net(format!("veth {hi} vanished")))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(host)
                        .controller(bridge)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!("add {hi} to the bridge")))?;
            Ok(())
        };
        let inside = |h: Handle| async move {
            let idx = link_index(&h, &peer_if).await?.ok_or_else(|| {
                Error::Net(format!("{peer_if} is not in the sandbox's namespace"))
            })?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .name(SANDBOX_INTERFACE.to_string())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!("rename {peer_if} to {SANDBOX_INTERFACE}")))?;
            h.address()
                .add(idx, IpAddr::V4(addr), prefix)
                .execute()
                .await
                .map_err(nl_err(format!(
                    "give {SANDBOX_INTERFACE} the address {addr}/{prefix}"
                )))?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(nl_err(format!("bring {SANDBOX_INTERFACE} up")))?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(gateway)
                        .output_interface(idx)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!("add a default route via {gateway}")))?;
            Ok(())
        };
        netlink_host_then_inside("attach a sandbox to the bridge", netns, host, inside)?;
        Ok(lease)
    }

    /// Deletes the bridge (its ports go with it).
    pub fn delete(self) -> Result<()> {
        let (name, idx) = (self.cfg.name.clone(), self.index);
        netlink("delete the bridge", None, |h| async move {
            match h.link().del(idx).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
                Err(e) => Err(Error::Net(format!("delete bridge {name}: {e}"))),
            }
        })
    }
}

/// One sandbox's place on a bridge. Dropping it deletes the veth pair (if the sandbox's namespace
/// has not already taken it down) and returns the address.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Mutex<AddressPool>>,
    addr: Ipv4Addr,
    prefix: u8,
    host_if: String,
}

impl Lease {
    /// The sandbox's address.
    pub fn address(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The host end of the veth pair.
    pub fn host_interface(&self) -> &str {
        &self.host_if
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let name = self.host_if.clone();
        let gone = netlink("release a sandbox's veth pair", None, |h| async move {
            match link_index(&h, &name).await? {
                Some(idx) => match h.link().del(idx).execute().await {
                    Ok(()) => Ok(()),
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                        Ok(())
                    }
                    Err(e) => Err(Error::Net(format!("delete {name}: {e}"))),
                },
                None => Ok(()),
            }
        });
        match gone {
            Ok(()) => self.pool.lock().release(self.addr),
            // keep the address out of circulation rather than risk two sandboxes sharing it
            Err(e) => {
                tracing::warn!(error = %e, interface = %self.host_if, "veth pair not deleted; its address stays leased")
            }
        }
    }
}

/// Opens the network namespace of process `pid`.
pub fn open_netns_of(pid: i32) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/net");
    std::fs::File::open(&path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io("open", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_parsed_and_checked() {
        let c = BridgeConfig::parse("thaw0", "10.88.0.1/16").unwrap();
        assert_eq!((c.gateway, c.prefix), (Ipv4Addr::new(10, 88, 0, 1), 16));
        for bad in [
            "10.88.0.1",
            "10.88.0.1/33",
            "10.88.0.1/31",
            "10.88.0.0/16",
            "10.88.255.255/16",
            "x/16",
            "10.88.0.1/x",
        ] {
            assert!(BridgeConfig::parse("thaw0", bad).is_err(), "{bad} accepted");
        }
        for name in ["", "a/b", "sixteen-chars-xx", "..", "a b"] {
            assert!(
                BridgeConfig::parse(name, "10.0.0.1/24").is_err(),
                "{name:?} accepted"
            );
        }
        let e = BridgeConfig::parse("thaw0", "10.88.0.0/16")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.88.0.1"),
            "the error suggests a usable gateway: {e}"
        );
    }

    #[test]
    fn a_pool_hands_out_every_host_address_once_and_never_the_gateway() {
        let mut p = AddressPool::new(Ipv4Addr::new(192, 168, 7, 1), 29); // .0 network, .7 broadcast
        assert_eq!(p.capacity(), 5);
        let mut got: Vec<_> = std::iter::from_fn(|| p.allocate()).collect();
        got.sort();
        let want: Vec<_> = (2..=6).map(|h| Ipv4Addr::new(192, 168, 7, h)).collect();
        assert_eq!(got, want);
        assert_eq!(p.allocate(), None, "full");
        p.release(Ipv4Addr::new(192, 168, 7, 4));
        p.release(Ipv4Addr::new(192, 168, 7, 4)); // twice: ignored
        p.release(Ipv4Addr::new(10, 0, 0, 1)); // foreign: ignored
        assert_eq!(p.in_use(), 4);
        assert_eq!(p.allocate(), Some(Ipv4Addr::new(192, 168, 7, 4)));
    }

    #[test]
    fn released_addresses_are_reused_last() {
        let mut p = AddressPool::new(Ipv4Addr::new(10, 1, 0, 1), 24);
        let a = p.allocate().unwrap();
        p.release(a);
        let b = p.allocate().unwrap();
        assert_ne!(a, b, "round robin moves on");
    }

    proptest::proptest! {
        #[test]
        fn pool_never_double_allocates(ops in proptest::collection::vec(proptest::option::of(0u8..16), 0..200)) {
            let mut p = AddressPool::new(Ipv4Addr::new(10, 9, 8, 17), 28);
            let mut held: Vec<Ipv4Addr> = Vec::new();
            for op in ops {
                match op {
                    None => if let Some(a) = p.allocate() {
                        proptest::prop_assert!(!held.contains(&a));
                        proptest::prop_assert_ne!(a, Ipv4Addr::new(10, 9, 8, 17));
                        held.push(a);
                    } else {
                        proptest::prop_assert_eq!(held.len() as u32, p.capacity());
                    },
                    Some(i) => if !held.is_empty() {
                        let a = held.swap_remove(i as usize % held.len());
                        p.release(a);
                    },
                }
                proptest::prop_assert_eq!(p.in_use() as usize, held.len());
            }
        }
    }
}
