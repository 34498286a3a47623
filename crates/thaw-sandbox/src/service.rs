//! The sandbox service: how a client (`thaw run`) has a daemon start a sandbox from its pools.
//!
//! One `SOCK_SEQPACKET` unix socket (`<data>/sandbox.sock` in thaw's daemon), JSON messages, the
//! same framing and descriptor passing as the helper protocol ([`crate::proto`]). A session is one
//! connection and one sandbox:
//!
//! 1. the client sends [`ClientMsg::Run`] with three descriptors attached (its stdin, stdout and
//!    stderr, passed with `SCM_RIGHTS`);
//! 2. the daemon starts the sandbox with exactly those descriptors (so the workload writes
//!    straight to the client's terminal or pipe: no byte of output passes through the daemon) and
//!    answers [`ServerMsg::Started`] with the stages it timed;
//! 3. while the workload runs, the client may send [`ClientMsg::Signal`] (it relays the signals it
//!    receives itself); the daemon delivers them through the helper;
//! 4. the daemon answers [`ServerMsg::Exited`] and closes the session.
//!
//! If the client goes away (end-of-file on the session) before the workload ended, the daemon
//! kills the workload: a sandbox never outlives the command that asked for it.
//!
//! Why a separate socket rather than the HTTP API: descriptors cannot travel over HTTP, and the
//! start of a sandbox is a few hundred microseconds of work that a round trip through an HTTP
//! stack and the async runtime would only slow down. Starting a sandbox blocks (it waits for a
//! helper process), so sessions run on dedicated threads, never on async worker threads: an
//! elastic set of threads all waiting in `accept`, where a thread that takes a connection starts
//! another one when it was the last one idle (so a start never waits for a thread to be made)
//! and leaves when more than the configured number are idle. While a workload runs, its session
//! thread waits for the exit status; signals and end-of-file from all running sessions' clients
//! are read by one relay thread over epoll (registering a socket costs a system call, where a
//! thread per session would cost a thread start in the middle of every sandbox start).
//!
//! Only this user may connect: the socket is created mode 0600, and the peer's credentials are
//! checked again on every connection (root is also accepted).

use crate::error::Error;
use crate::proto;
use crate::runtime::{Sandbox, Signaller, StdioFds, Timings};
use crate::spec::SandboxSpec;
use crate::ExitStatus;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What can go wrong between a client and the daemon's sandbox service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A socket or protocol operation failed.
    #[error(transparent)]
    Sandbox(#[from] Error),
    /// The daemon could not resolve or start the request; its message says why.
    #[error("the daemon could not start the sandbox: {0}")]
    Refused(String),
    /// The daemon went away mid-session.
    #[error("{0}")]
    Lost(String),
}

/// Result alias of this module.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Changes a client asks for on top of the image's (or bundle's) own configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    /// Command and arguments; the image's own when empty.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries appended to the environment.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// User and group ids.
    pub user: Option<(u32, u32)>,
    /// Hostname.
    pub hostname: Option<String>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// Maximum number of tasks.
    pub pids_max: Option<i64>,
    /// CPU limit in thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    /// A profile the daemon's configuration names; its limits apply before the ones above.
    pub profile: Option<String>,
    /// Loopback only, or `eth0` on the daemon's bridge.
    #[serde(default)]
    pub network: Option<crate::net::NetworkMode>,
    /// Give the workload a terminal of its own (see [`crate::ProcessConfig::terminal`]); its
    /// controlling end comes back with the answer. The stdio passed along is then unused.
    #[serde(default)]
    pub terminal: bool,
    /// The terminal's size, (rows, columns).
    #[serde(default)]
    pub terminal_size: Option<(u16, u16)>,
    /// A minimal init as PID 1 (see [`crate::ProcessConfig::init`]).
    #[serde(default)]
    pub init: bool,
}

/// Length of the CPU period a `cpu_millis` limit is expressed in.
pub const CPU_PERIOD_US: u64 = 100_000;

impl Overrides {
    /// Applies the overrides to `spec` (the profile, if any, must have been applied before).
    pub fn apply(&self, spec: &mut SandboxSpec) -> crate::Result<()> {
        if !self.args.is_empty() {
            spec.process.args = self.args.clone();
        }
        if spec.process.args.is_empty() {
            return Err(Error::Config("no command to run: the image names none; give one after `--`".into()));
        }
        spec.process.env.extend(self.env.iter().cloned());
        if let Some(c) = &self.cwd {
            spec.process.cwd = c.clone();
        }
        if let Some((uid, gid)) = self.user {
            spec.process.uid = uid;
            spec.process.gid = gid;
        }
        if let Some(h) = &self.hostname {
            spec.profile.hostname = h.clone();
        }
        if let Some(n) = self.network {
            spec.profile.network = n;
        }
        spec.process.terminal |= self.terminal;
        if self.terminal_size.is_some() {
            spec.process.terminal_size = self.terminal_size;
        }
        spec.process.init |= self.init;
        let l = &mut spec.profile.limits;
        if let Some(m) = self.memory_bytes {
            l.memory_bytes = Some(m);
        }
        if let Some(p) = self.pids_max {
            l.pids_max = Some(p);
        }
        if let Some(c) = self.cpu_millis {
            if c == 0 {
                return Err(Error::Config("a CPU limit must be more than 0".into()));
            }
            l.cpu_period_us = Some(CPU_PERIOD_US);
            l.cpu_quota_us = Some((c * CPU_PERIOD_US / 1000).max(1000) as i64);
        }
        Ok(())
    }
}

/// What to run a sandbox on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A complete spec the client built itself (from an OCI bundle).
    Spec(Box<SandboxSpec>),
    /// An image the daemon resolves: an absolute root directory, or any name its [`Backend`]
    /// understands (thaw's understands `oci:PATH[:TAG]`).
    Image(String),
}

/// A request to start one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The root and its defaults.
    pub target: Target,
    /// What the client changes.
    pub overrides: Overrides,
}

/// Client to daemon.
#[derive(Debug, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Start a sandbox; stdin, stdout and stderr travel with this message.
    Run(Box<RunRequest>),
    /// Deliver this signal to the workload.
    Signal(i32),
}

/// How the start went, as the daemon measured it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartInfo {
    /// The workload's pid on the host.
    pub pid: i32,
    /// Whether the parts came from a pool.
    pub pooled: bool,
    /// Stage name and microseconds, as [`Timings::stages`].
    pub stages: Vec<(String, u64)>,
    /// Index of the first stage on the critical path.
    pub critical_from: usize,
    /// Microseconds from the daemon receiving the request to the workload's exec.
    pub daemon_us: u64,
    /// Of `daemon_us`, microseconds spent resolving the request (image, profile) before the
    /// sandbox start itself.
    pub resolve_us: u64,
}

/// Daemon to client.
#[derive(Debug, Serialize, Deserialize)]
pub enum ServerMsg {
    /// The workload runs.
    Started(StartInfo),
    /// The workload ended.
    Exited(ExitStatus),
    /// The request failed; the session ends.
    Failed(String),
}

/// An error of the daemon's side in resolving or starting a request (any error type: the
/// daemon's resolver is not part of this crate).
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// What the daemon plugs into the server: it turns a request into a running sandbox.
pub trait Backend: Send + Sync + 'static {
    /// Starts the sandbox `req` describes with these descriptors as its stdio. Blocks until the
    /// workload was exec'd (or failed to start). Returns the sandbox and the time spent
    /// resolving the request before starting it.
    fn start(&self, req: RunRequest, io: StdioFds) -> std::result::Result<(Sandbox, Duration), BackendError>;
}

/// Sizing of the server's thread set.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// Threads kept waiting for connections.
    pub idle_threads: usize,
    /// Most sessions (running sandboxes) at once; further clients wait in the listen backlog.
    pub max_sessions: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { idle_threads: 2, max_sessions: 512 }
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Creates the listening socket at `path` (which must not exist), mode 0600. The caller decides
/// what to do with an existing file (a stale socket), and should bind in a directory only it can
/// enter (then move the socket into place), so the socket is never connectable by others, not
/// even between bind and chmod.
pub fn listen(path: &Path) -> Result<OwnedFd> {
    let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
        .map_err(|e| Error::sys("socket(AF_UNIX, SOCK_SEQPACKET)", e))?;
    let addr = UnixAddr::new(path).map_err(|e| Error::sys(format!("socket address {}", path.display()), e))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| Error::sys(format!("bind {}", path.display()), e))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| Error::io("chmod 0600", path, e))?;
    let backlog = socket::Backlog::new(128).map_err(|e| Error::sys("listen backlog", e))?;
    socket::listen(&fd, backlog).map_err(|e| Error::sys(format!("listen {}", path.display()), e))?;
    Ok(fd)
}

/// Whether a sandbox service answers at `path` (used to tell a live socket from a stale file).
pub fn is_served(path: &Path) -> bool {
    matches!(Client::connect(path), Ok(Some(_)))
}

struct Counts {
    idle: usize,
    total: usize,
}

/// A running session as the relay sees it.
struct Watch {
    conn: Arc<OwnedFd>,
    sig: Signaller,
}

/// Token of the stop pipe in the relay's epoll set (session ids start at 1).
const STOP_TOKEN: u64 = 0;

struct Shared {
    listener: OwnedFd,
    stop_r: OwnedFd,
    backend: Arc<dyn Backend>,
    cfg: ServerConfig,
    counts: Mutex<Counts>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    sessions: Mutex<HashMap<u64, Signaller>>,
    /// Every open connection, so stopping can cut them (a thread blocked reading one wakes up).
    conns: Mutex<HashMap<u64, Arc<OwnedFd>>>,
    /// The relay's epoll set (running sessions' sockets, and the stop pipe).
    epoll: OwnedFd,
    /// Running sessions the relay watches, by epoll token.
    watched: Mutex<HashMap<u64, Watch>>,
    next_session: AtomicU64,
    served: AtomicU64,
    failed: AtomicU64,
    stopping: AtomicBool,
}

/// A running sandbox service. Dropping it (or [`Server::stop`]) stops accepting, kills the
/// sandboxes of open sessions and waits for its threads.
pub struct Server {
    shared: Arc<Shared>,
    stop_w: Option<OwnedFd>,
    relay: Option<std::thread::JoinHandle<()>>,
}

/// Counters of a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Sessions open now.
    pub active: usize,
    /// Sandboxes started.
    pub served: u64,
    /// Requests that failed to start.
    pub failed: u64,
    /// Threads now.
    pub threads: usize,
}

impl Server {
    /// Serves `listener` (from [`listen`]) with `backend`.
    pub fn start(listener: OwnedFd, backend: Arc<dyn Backend>, cfg: ServerConfig) -> Result<Server> {
        let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
        let cfg = ServerConfig { idle_threads: cfg.idle_threads.max(1), max_sessions: cfg.max_sessions.max(1) };
        // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(Error::sys("epoll_create1", nix::errno::Errno::last()).into());
        }
        // SAFETY: the kernel just returned this new descriptor to us.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        epoll_ctl(&epoll, libc::EPOLL_CTL_ADD, stop_r.as_raw_fd(), STOP_TOKEN)?;
        let shared = Arc::new(Shared {
            listener,
            stop_r,
            backend,
            cfg,
            counts: Mutex::new(Counts { idle: 0, total: 0 }),
            threads: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            epoll,
            watched: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let s2 = shared.clone();
        let relay = std::thread::Builder::new()
            .name("thaw-sandbox-relay".into())
            .spawn(move || relay(&s2))
            .map_err(|e| Error::io("spawn thread", "thaw-sandbox-relay", e))?;
        let server = Server { shared: shared.clone(), stop_w: Some(stop_w), relay: Some(relay) };
        for _ in 0..cfg.idle_threads {
            spawn_worker(&shared)?;
        }
        Ok(server)
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        let c = self.shared.counts.lock();
        ServerStats {
            active: self.shared.sessions.lock().len(),
            served: self.shared.served.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            threads: c.total,
        }
    }

    /// Stops: no new sessions, open sessions' sandboxes killed, threads joined.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(w) = self.stop_w.take() else { return };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The byte is never read: the pipe stays readable, so every waiting thread sees it.
        let _ = nix::unistd::write(&w, b"x");
        for sig in self.shared.sessions.lock().values() {
            let _ = sig.signal(libc::SIGKILL);
        }
        // Reading ends: a thread waiting for a request wakes up; answers can still go out, so a
        // client learns how its workload ended (killed just above).
        for c in self.shared.conns.lock().values() {
            let _ = socket::shutdown(c.as_raw_fd(), socket::Shutdown::Read);
        }
        loop {
            let batch: Vec<_> = std::mem::take(&mut *self.shared.threads.lock());
            if batch.is_empty() {
                break;
            }
            for t in batch {
                let _ = t.join();
            }
        }
        if let Some(r) = self.relay.take() {
            let _ = r.join();
        }
        drop(w);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn_worker(shared: &Arc<Shared>) -> Result<()> {
    {
        let mut c = shared.counts.lock();
        c.idle += 1;
        c.total += 1;
    }
    let s = shared.clone();
    let spawned = std::thread::Builder::new().name("thaw-sandbox-svc".into()).spawn(move || worker(&s));
    match spawned {
        Ok(h) => {
            let mut threads = shared.threads.lock();
            threads.retain(|t| !t.is_finished());
            threads.push(h);
            Ok(())
        }
        Err(e) => {
            let mut c = shared.counts.lock();
            c.idle -= 1;
            c.total -= 1;
            Err(Error::io("spawn thread", "thaw-sandbox-svc", e).into())
        }
    }
}

/// Waits until `fd` is readable or the server stops; false when stopping.
fn wait_readable(s: &Shared) -> bool {
    loop {
        let mut pfds = [
            libc::pollfd { fd: s.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: s.stop_r.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: poll reads and writes only the array we pass, whose length we give.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if nix::errno::Errno::last() == nix::errno::Errno::EINTR {
                continue;
            }
            return false;
        }
        if pfds[1].revents != 0 || s.stopping.load(Ordering::SeqCst) {
            return false;
        }
        if pfds[0].revents != 0 {
            return true;
        }
    }
}

fn worker(s: &Arc<Shared>) {
    loop {
        if !wait_readable(s) {
            break;
        }
        // Every waiting thread wakes; one wins, the others see EAGAIN (the listener is
        // non-blocking) and wait again. The accepted socket is blocking.
        let fd = match socket::accept4(s.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a sandbox service connection failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // SAFETY: accept4 just returned this descriptor; nothing else owns it.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        let spawn_more = {
            let mut c = s.counts.lock();
            c.idle -= 1;
            c.idle == 0 && c.total < s.cfg.max_sessions
        };
        if spawn_more && !s.stopping.load(Ordering::SeqCst) {
            if let Err(e) = spawn_worker(s) {
                tracing::warn!(error = %e, "cannot add a sandbox service thread");
            }
        }
        let id = s.next_session.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(conn);
        s.conns.lock().insert(id, conn.clone());
        if s.stopping.load(Ordering::SeqCst) {
            let _ = socket::shutdown(conn.as_raw_fd(), socket::Shutdown::Read);
        }
        session(s, id, conn);
        s.conns.lock().remove(&id);
        let mut c = s.counts.lock();
        if c.idle >= s.cfg.idle_threads {
            c.total -= 1;
            return;
        }
        c.idle += 1;
    }
    let mut c = s.counts.lock();
    c.idle -= 1;
    c.total -= 1;
}

fn epoll_ctl(epoll: &OwnedFd, op: libc::c_int, fd: RawFd, token: u64) -> Result<()> {
    // Level-triggered: a message left unread is reported again.
    let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: token };
    // SAFETY: epoll_ctl reads the event struct we pass (ignored for EPOLL_CTL_DEL) and touches
    // no other memory; both descriptors are open for the duration of the call.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) } != 0 {
        return Err(Error::sys("epoll_ctl", nix::errno::Errno::last()).into());
    }
    Ok(())
}

/// Reads what the clients of running sessions send: signals to deliver, or end-of-file, on
/// which the client's sandbox is killed (a sandbox never outlives its client).
fn relay(s: &Shared) {
    // SAFETY: epoll_event is plain old data; all-zero is a valid value.
    let mut events: [libc::epoll_event; 32] = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: epoll_wait writes at most `len` events into the array we own.
        let n = unsafe { libc::epoll_wait(s.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as libc::c_int, -1) };
        if n < 0 {
            if nix::errno::Errno::last() == nix::errno::Errno::EINTR {
                continue;
            }
            tracing::error!(errno = %nix::errno::Errno::last(), "the sandbox service relay stopped");
            return;
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == STOP_TOKEN {
                return;
            }
            let Some((conn, sig)) = s.watched.lock().get(&token).map(|w| (w.conn.clone(), w.sig.clone())) else { continue };
            // Readable: a message or end-of-file is there, so this does not block.
            match proto::recv::<ClientMsg>(conn.as_fd()) {
                Ok(Some((ClientMsg::Signal(n), _))) => {
                    let _ = sig.signal(n);
                }
                Ok(Some((ClientMsg::Run(_), _))) => {}
                Ok(None) | Err(_) => {
                    // Still watched means the workload still runs (the session stops watching
                    // before it answers): the client is gone, and so goes its sandbox.
                    if s.watched.lock().remove(&token).is_some() {
                        let _ = epoll_ctl(&s.epoll, libc::EPOLL_CTL_DEL, conn.as_raw_fd(), token);
                        let _ = sig.signal(libc::SIGKILL);
                    }
                }
            }
        }
    }
}

fn peer_allowed(conn: &OwnedFd) -> bool {
    match socket::getsockopt(conn, socket::sockopt::PeerCredentials) {
        Ok(cred) => cred.uid() == euid() || cred.uid() == 0,
        Err(_) => false,
    }
}

/// How long a client may take to send its request after connecting; a connection that says
/// nothing must not hold a thread for good.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn set_recv_timeout(conn: &OwnedFd, t: Option<Duration>) {
    let tv = nix::sys::time::TimeVal::from(match t {
        Some(t) => libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: t.subsec_micros() as libc::suseconds_t },
        None => libc::timeval { tv_sec: 0, tv_usec: 0 },
    });
    let _ = socket::setsockopt(conn, socket::sockopt::ReceiveTimeout, &tv);
}

fn session(s: &Shared, id: u64, conn: Arc<OwnedFd>) {
    let fail = |conn: &OwnedFd, msg: String| {
        s.failed.fetch_add(1, Ordering::Relaxed);
        let _ = proto::send(conn.as_fd(), &ServerMsg::Failed(msg), &[]);
    };
    if !peer_allowed(&conn) {
        fail(&conn, "this sandbox service only serves the user it runs as".into());
        return;
    }
    set_recv_timeout(&conn, Some(REQUEST_TIMEOUT));
    let first = proto::recv::<ClientMsg>(conn.as_fd());
    // From here on the socket waits as long as the workload runs.
    set_recv_timeout(&conn, None);
    let (req, mut fds) = match first {
        Ok(Some((ClientMsg::Run(r), fds))) => (*r, fds),
        Ok(Some((ClientMsg::Signal(_), _))) => return fail(&conn, "expected a run request first".into()),
        Ok(None) => return,
        Err(e) => return fail(&conn, e.to_string()),
    };
    if fds.len() != 3 {
        return fail(&conn, format!("a run request carries 3 descriptors (stdin, stdout, stderr), got {}", fds.len()));
    }
    let t0 = Instant::now();
    let stderr = fds.pop().expect("three descriptors");
    let stdout = fds.pop().expect("three descriptors");
    let stdin = fds.pop().expect("three descriptors");
    let (mut sb, resolve) = match s.backend.start(req, StdioFds { stdin, stdout, stderr }) {
        Ok(x) => x,
        Err(e) => return fail(&conn, error_chain(&*e)),
    };
    s.served.fetch_add(1, Ordering::Relaxed);
    let info = start_info(&sb, t0.elapsed(), resolve);
    let sig = sb.signaller();
    // The workload's terminal, if it has one, goes to the client with the answer; the daemon
    // keeps no copy.
    let terminal = sb.take_terminal();
    let fds: Vec<RawFd> = terminal.iter().map(|t| t.as_raw_fd()).collect();
    let sent = proto::send(conn.as_fd(), &ServerMsg::Started(info), &fds);
    drop(terminal);
    if sent.is_err() {
        // The client is gone already: its sandbox goes too.
        let _ = sig.signal(libc::SIGKILL);
        let _ = sb.wait();
        return;
    }
    s.sessions.lock().insert(id, sig.clone());
    if s.stopping.load(Ordering::SeqCst) {
        let _ = sig.signal(libc::SIGKILL);
    }
    // Signals and the client's death arrive on the session socket while this thread waits for
    // the workload; the relay thread reads them.
    s.watched.lock().insert(id, Watch { conn: conn.clone(), sig: sig.clone() });
    if let Err(e) = epoll_ctl(&s.epoll, libc::EPOLL_CTL_ADD, conn.as_raw_fd(), id) {
        // Without the relay nobody would notice the client dying: refuse rather than leak.
        tracing::warn!(error = %e, "cannot watch a sandbox client; killing its sandbox");
        let _ = sig.signal(libc::SIGKILL);
    }
    let status = sb.wait();
    // Stop watching before answering: the client closing after the answer is not a death.
    if s.watched.lock().remove(&id).is_some() {
        let _ = epoll_ctl(&s.epoll, libc::EPOLL_CTL_DEL, conn.as_raw_fd(), id);
    }
    let msg = match status {
        Ok(st) => ServerMsg::Exited(st),
        Err(e) => ServerMsg::Failed(e.to_string()),
    };
    let _ = proto::send(conn.as_fd(), &msg, &[]);
    s.sessions.lock().remove(&id);
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        cur = c.source();
    }
    msg
}

fn start_info(sb: &Sandbox, daemon: Duration, resolve: Duration) -> StartInfo {
    let t = sb.timings();
    StartInfo {
        pid: sb.pid(),
        pooled: t.pooled,
        stages: t.stages.iter().map(|(n, d)| (n.clone(), d.as_micros() as u64)).collect(),
        critical_from: t.critical_from,
        daemon_us: daemon.as_micros() as u64,
        resolve_us: resolve.as_micros() as u64,
    }
}

/// The client's end of the service.
pub struct Client {
    sock: OwnedFd,
}

impl Client {
    /// Connects to the service at `path`; `None` when nothing serves there (no socket file, or
    /// a stale one).
    pub fn connect(path: &Path) -> Result<Option<Client>> {
        if !path.exists() {
            return Ok(None);
        }
        let sock = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| Error::sys("socket(AF_UNIX, SOCK_SEQPACKET)", e))?;
        let addr = UnixAddr::new(path).map_err(|e| Error::sys(format!("socket address {}", path.display()), e))?;
        match socket::connect(sock.as_raw_fd(), &addr) {
            Ok(()) => Ok(Some(Client { sock })),
            Err(nix::errno::Errno::ECONNREFUSED | nix::errno::Errno::ENOENT | nix::errno::Errno::EPROTOTYPE) => Ok(None),
            Err(e) => Err(Error::sys(format!("connect {}", path.display()), e).into()),
        }
    }

    /// Sends the request with the workload's stdio and waits until it runs.
    pub fn start(self, req: &RunRequest, io: StdioFds) -> Result<Session> {
        let t = Instant::now();
        let fds: [RawFd; 3] = [io.stdin.as_raw_fd(), io.stdout.as_raw_fd(), io.stderr.as_raw_fd()];
        proto::send(self.sock.as_fd(), &ClientMsg::Run(Box::new(req.clone())), &fds)?;
        // The daemon holds its own copies now; ours must go, or a pipe's reader would never see
        // end-of-file from a workload that closed its side.
        drop(io);
        match proto::recv::<ServerMsg>(self.sock.as_fd())? {
            Some((ServerMsg::Started(info), mut fds)) => {
                let terminal = if req.overrides.terminal { fds.pop() } else { None };
                if req.overrides.terminal && terminal.is_none() {
                    return Err(Error::Protocol("the daemon started the sandbox but sent no terminal".into()).into());
                }
                Ok(Session { sock: self.sock, info, round_trip: t.elapsed(), terminal })
            }
            Some((ServerMsg::Failed(e), _)) => Err(ServiceError::Refused(e)),
            Some((other, _)) => Err(Error::Protocol(format!("unexpected answer {other:?} from the sandbox service")).into()),
            None => Err(ServiceError::Lost("the daemon closed the session without an answer; see its log".into())),
        }
    }
}

/// A sandbox started through the service.
pub struct Session {
    sock: OwnedFd,
    info: StartInfo,
    round_trip: Duration,
    terminal: Option<OwnedFd>,
}

impl Session {
    /// The controlling end of the workload's terminal (requested with
    /// [`Overrides::terminal`]), once.
    pub fn take_terminal(&mut self) -> Option<OwnedFd> {
        self.terminal.take()
    }

    /// What the daemon reported about the start.
    pub fn info(&self) -> &StartInfo {
        &self.info
    }

    /// From sending the request to the daemon's answer, as the client saw it.
    pub fn round_trip(&self) -> Duration {
        self.round_trip
    }

    /// The daemon's timings in the library's terms.
    pub fn timings(&self) -> Timings {
        Timings {
            stages: self.info.stages.iter().map(|(n, us)| (n.clone(), Duration::from_micros(*us))).collect(),
            to_exec: Duration::from_micros(self.info.daemon_us),
            pooled: self.info.pooled,
            critical_from: self.info.critical_from,
        }
    }

    /// Relays `sig` to the workload.
    pub fn signal(&self, sig: i32) -> Result<()> {
        Ok(proto::send(self.sock.as_fd(), &ClientMsg::Signal(sig), &[])?)
    }

    /// Waits for the workload to end.
    pub fn wait(self) -> Result<ExitStatus> {
        read_exit(self.sock.as_fd())
    }

    /// Waits while relaying the given signals received by this process, which must already be
    /// blocked in every thread ([`crate::block_signals`]).
    pub fn wait_relaying(self, signals: &[i32], tty: Option<&mut crate::tty::Terminal>) -> Result<ExitStatus> {
        crate::runtime::relay_signals_until_readable(self.sock.as_fd(), signals, tty, |sig| {
            proto::send(self.sock.as_fd(), &ClientMsg::Signal(sig), &[])
        })?;
        read_exit(self.sock.as_fd())
    }
}

fn read_exit(sock: BorrowedFd<'_>) -> Result<ExitStatus> {
    match proto::recv::<ServerMsg>(sock)? {
        Some((ServerMsg::Exited(s), _)) => Ok(s),
        Some((ServerMsg::Failed(e), _)) => Err(ServiceError::Refused(e)),
        Some((other, _)) => Err(Error::Protocol(format!("unexpected answer {other:?} from the sandbox service")).into()),
        None => Err(ServiceError::Lost("the daemon closed the session before the workload ended (did it stop?)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn overrides_apply_in_order_and_refuse_an_empty_command() {
        let mut spec = SandboxSpec::for_rootfs(Path::new("/r"), vec![]);
        spec.process.args.clear();
        let o = Overrides {
            args: vec!["echo".into(), "x".into()],
            env: vec!["A=1".into()],
            cwd: Some("/tmp".into()),
            user: Some((7, 8)),
            hostname: Some("h".into()),
            memory_bytes: Some(1 << 20),
            pids_max: Some(5),
            cpu_millis: Some(500),
            profile: None,
            network: Some(crate::net::NetworkMode::Bridge),
            terminal: true,
            terminal_size: Some((50, 132)),
            init: true,
        };
        o.apply(&mut spec).unwrap();
        assert!(spec.process.terminal && spec.process.init);
        assert_eq!(spec.process.terminal_size, Some((50, 132)));
        assert_eq!(spec.process.args, ["echo", "x"]);
        assert!(spec.process.env.iter().any(|e| e == "A=1"));
        assert_eq!((spec.process.uid, spec.process.gid, spec.process.cwd.as_str()), (7, 8, "/tmp"));
        assert_eq!(spec.profile.hostname, "h");
        assert_eq!(spec.profile.network, crate::net::NetworkMode::Bridge);
        assert_eq!(spec.profile.limits.cpu_quota_us, Some(50_000));
        assert_eq!(spec.profile.limits.cpu_period_us, Some(CPU_PERIOD_US));
        assert_eq!(spec.profile.limits.pids_max, Some(5));

        let mut empty = SandboxSpec::for_rootfs(Path::new("/r"), vec![]);
        empty.process.args.clear();
        let e = Overrides::default().apply(&mut empty).unwrap_err().to_string();
        assert!(e.contains("no command"), "{e}");
        assert!(Overrides { args: vec!["x".into()], cpu_millis: Some(0), ..Default::default() }.apply(&mut empty).is_err());
    }

    struct Refuse;
    impl Backend for Refuse {
        fn start(&self, req: RunRequest, _io: StdioFds) -> std::result::Result<(Sandbox, Duration), BackendError> {
            Err(format!("no image {:?} here", req.target).into())
        }
    }

    fn server(dir: &Path) -> (Server, std::path::PathBuf) {
        let path = dir.join("s.sock");
        let l = listen(&path).unwrap();
        (Server::start(l, Arc::new(Refuse), ServerConfig { idle_threads: 1, max_sessions: 4 }).unwrap(), path)
    }

    #[test]
    fn a_backend_error_reaches_the_client_and_the_socket_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let (srv, path) = server(dir.path());
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert!(is_served(&path));
        let req = RunRequest { target: Target::Image("/nowhere".into()), overrides: Overrides::default() };
        for _ in 0..3 {
            let c = Client::connect(&path).unwrap().unwrap();
            let e = c.start(&req, StdioFds::null().unwrap()).err().unwrap().to_string();
            assert!(e.contains("no image") && e.contains("/nowhere"), "{e}");
        }
        assert_eq!(srv.stats().failed, 3);
        srv.stop();
        assert!(!is_served(&path), "a stopped server no longer answers");
        assert!(Client::connect(&dir.path().join("none.sock")).unwrap().is_none());
    }

    #[test]
    fn garbage_and_missing_descriptors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (srv, path) = server(dir.path());
        let c = Client::connect(&path).unwrap().unwrap();
        proto::send_bytes(c.sock.as_fd(), b"{nope", &[]).unwrap();
        match proto::recv::<ServerMsg>(c.sock.as_fd()).unwrap() {
            Some((ServerMsg::Failed(e), _)) => assert!(e.contains("decoding"), "{e}"),
            other => panic!("{other:?}"),
        }
        let c = Client::connect(&path).unwrap().unwrap();
        let req = RunRequest { target: Target::Image("/x".into()), overrides: Overrides::default() };
        proto::send(c.sock.as_fd(), &ClientMsg::Run(Box::new(req)), &[]).unwrap();
        match proto::recv::<ServerMsg>(c.sock.as_fd()).unwrap() {
            Some((ServerMsg::Failed(e), _)) => assert!(e.contains("3 descriptors"), "{e}"),
            other => panic!("{other:?}"),
        }
        drop(srv);
    }

    #[test]
    fn threads_grow_under_concurrent_clients_and_shrink_back() {
        let dir = tempfile::tempdir().unwrap();
        let (srv, path) = server(dir.path());
        // Connections held open without a request keep their threads busy.
        let held: Vec<Client> = (0..3).map(|_| Client::connect(&path).unwrap().unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while srv.stats().threads < 4 {
            assert!(Instant::now() < deadline, "threads did not grow: {:?}", srv.stats());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(srv.stats().threads <= 4, "capped at max_sessions: {:?}", srv.stats());
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while srv.stats().threads > 1 {
            assert!(Instant::now() < deadline, "threads did not shrink: {:?}", srv.stats());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn stopping_cuts_connections_that_sent_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (srv, path) = server(dir.path());
        let held = Client::connect(&path).unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while srv.stats().threads < 2 {
            assert!(Instant::now() < deadline, "the connection was not taken: {:?}", srv.stats());
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        srv.stop();
        assert!(t.elapsed() < Duration::from_secs(2), "stop waited for a silent client: {:?}", t.elapsed());
        // The client sees the end of the session.
        assert!(proto::recv::<ServerMsg>(held.sock.as_fd()).unwrap().is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (a, c) = proto::seqpacket_pair().unwrap();
            proto::send_bytes(a.as_fd(), &b, &[]).unwrap();
            let _ = proto::recv::<ClientMsg>(c.as_fd());
        }

        #[test]
        fn run_requests_roundtrip(args in proptest::collection::vec("[a-z0-9 ./-]{0,12}", 0..5),
                                  mem in proptest::option::of(1i64..1 << 40), img in "[a-z/:]{1,40}") {
            let req = RunRequest { target: Target::Image(img), overrides: Overrides { args, memory_bytes: mem, ..Default::default() } };
            let (a, c) = proto::seqpacket_pair().unwrap();
            proto::send(a.as_fd(), &ClientMsg::Run(Box::new(req.clone())), &[]).unwrap();
            match proto::recv::<ClientMsg>(c.as_fd()).unwrap() {
                Some((ClientMsg::Run(r), _)) => prop_assert_eq!(*r, req),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
