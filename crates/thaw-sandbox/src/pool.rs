//! Pools of pre-created parts.
//!
//! A pool is made for a [`Profile`] (the image-independent parts: cgroup with its limits, network,
//! UTS, IPC and cgroup namespaces, and a parked process already inside all of them) and,
//! optionally, a root filesystem (the per-image part: a mount namespace holding the overlay root,
//! with the future PID 1 forked into a new PID namespace and the root switched). A background
//! thread keeps `depth` parts ready. Each part is used by exactly one sandbox; when it ends, the
//! runtime's reaper tears it down off the critical path.
//!
//! A request takes a ready part and only sends it the process config: the critical path is one
//! message to the parked process, seccomp and capability setup in PID 1, and exec. When the pool
//! is empty the part is built on demand, the same way a cold start builds it. Nothing on the
//! critical path of a pooled start writes `cgroup.procs`.

use crate::error::Result;
use crate::runtime::{Output, Part, Runtime, Sandbox, StdioFds};
use crate::spec::{ProcessConfig, Profile, RootfsConfig};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a pool holds.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Image-independent parts.
    pub profile: Profile,
    /// Per-image part; `None` pools only shells and builds the root on demand.
    pub rootfs: Option<RootfsConfig>,
    /// How many ready parts to keep.
    pub depth: usize,
}

/// Counters of a pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Starts served by a ready part.
    pub hits: AtomicU64,
    /// Starts that found the pool empty and built their part on demand.
    pub misses: AtomicU64,
    /// Parts built in the background.
    pub built: AtomicU64,
    /// Background builds that failed.
    pub build_failures: AtomicU64,
    /// Wall-clock microseconds the background thread spent building parts.
    pub build_wall_us: AtomicU64,
}

/// Items kept ready at a depth by a background thread, taken one at a time: the parts of a
/// [`Pool`] and the parked instances of a template (`zygote`). One filling loop for both.
pub(crate) struct Stock<T> {
    state: Mutex<StockState<T>>,
    cond: Condvar,
    depth: usize,
    pub(crate) stats: PoolStats,
}

struct StockState<T> {
    ready: VecDeque<T>,
    stop: bool,
    /// Items taken with [`Stock::take_held`] whose use has not ended yet.
    in_flight: usize,
    /// When the oldest hold in force began; `None` when nothing holds the filler back.
    held_since: Option<Instant>,
}

/// The longest a refill waits for the sandboxes it replaces to end.
pub(crate) const REFILL_HOLD: Duration = Duration::from_millis(10);

impl<T> Stock<T> {
    pub(crate) fn new(depth: usize) -> Stock<T> {
        Stock {
            state: Mutex::new(StockState { ready: VecDeque::new(), stop: false, in_flight: 0, held_since: None }),
            cond: Condvar::new(),
            depth,
            stats: PoolStats::default(),
        }
    }

    /// The filler thread's loop: keeps `depth` items ready with `build` until [`Stock::stop`],
    /// at idle CPU priority (the thread forks and execs helpers, and yields to everything else),
    /// backing off after failures. `what` names the item in the warning of a failed build.
    pub(crate) fn fill(&self, what: &str, mut build: impl FnMut() -> Result<T>) {
        crate::helper::set_idle_priority(true);
        let mut backoff = Duration::from_millis(10);
        loop {
            {
                let mut st = self.state.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    if st.ready.len() >= self.depth {
                        self.cond.wait(&mut st);
                        continue;
                    }
                    match st.held_since.map(|t| t + REFILL_HOLD) {
                        Some(until) if Instant::now() < until => {
                            self.cond.wait_until(&mut st, until);
                        }
                        _ => break,
                    }
                }
                // This build answers the holds in force; a later take starts a new one.
                st.held_since = None;
            }
            let t = Instant::now();
            match build() {
                Ok(item) => {
                    self.stats.built.fetch_add(1, Ordering::Relaxed);
                    self.stats.build_wall_us.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    let mut st = self.state.lock();
                    if st.stop {
                        return;
                    }
                    st.ready.push_back(item);
                    self.cond.notify_all();
                    backoff = Duration::from_millis(10);
                }
                Err(e) => {
                    self.stats.build_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "building {what} failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Takes the oldest ready item (waking the filler to replace it at once). Template
    /// instances use this: holding their refill back as pools do was tried and did not pay
    /// (`cargo bench -p thaw-sandbox --bench zygote`: fork median 0.94 against 0.81 ms,
    /// 172 against 180 invocations/s one at a time).
    pub(crate) fn take(&self) -> Option<T> {
        let mut st = self.state.lock();
        let item = st.ready.pop_front();
        self.cond.notify_all();
        item
    }

    /// Takes the oldest ready item and holds its replacement back until [`Stock::release`] or
    /// [`REFILL_HOLD`] after the first held take, whichever comes first.
    ///
    /// Why: building a part on the same cores while a sandbox starts and runs slows that
    /// sandbox down. The build's helper does namespace, cgroup and mount work in the kernel at
    /// idle priority, and a normal-priority start or exit that needs the same kernel locks
    /// then waits for an idle task that gets no CPU. Measured through the daemon on 2 cores:
    /// `echo hi` took 2.3-3.0 ms with the refill racing it and (see BENCHMARKS.md) less with
    /// it held. Short sandboxes get their replacement built when they end; long ones after the
    /// hold; under sustained load the filler still builds at least once per hold.
    pub(crate) fn take_held(&self) -> Option<T> {
        let mut st = self.state.lock();
        let item = st.ready.pop_front()?;
        st.in_flight += 1;
        st.held_since.get_or_insert_with(Instant::now);
        Some(item)
    }

    /// Ends one hold of [`Stock::take_held`].
    pub(crate) fn release(&self) {
        let mut st = self.state.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            st.held_since = None;
        }
        self.cond.notify_all();
    }

    pub(crate) fn ready(&self) -> usize {
        self.state.lock().ready.len()
    }

    /// Waits until at least `n` items are ready (capped at the depth), up to `timeout`.
    pub(crate) fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        let n = n.min(self.depth);
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock();
        while st.ready.len() < n {
            if self.cond.wait_until(&mut st, deadline).timed_out() {
                return st.ready.len() >= n;
            }
        }
        true
    }

    /// Stops the filler (it returns from [`Stock::fill`] at its next check).
    pub(crate) fn stop(&self) {
        self.state.lock().stop = true;
        self.cond.notify_all();
    }

    /// Drops every ready item.
    pub(crate) fn clear(&self) {
        let drained: Vec<T> = self.state.lock().ready.drain(..).collect();
        drop(drained);
    }
}

struct Shared {
    rt: Runtime,
    cfg: PoolConfig,
    stock: Stock<Part>,
}

/// Kept by a part taken from a pool; dropping it (with the part) ends the hold on its refill.
pub(crate) struct RefillHold(Arc<Shared>);

impl Drop for RefillHold {
    fn drop(&mut self) {
        self.0.stock.release();
    }
}

/// A pool of parts for one profile (and optionally one root filesystem).
pub struct Pool {
    shared: Arc<Shared>,
    filler: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    /// Creates a pool and starts filling it in the background.
    pub fn pool(&self, cfg: PoolConfig) -> Pool {
        let shared = Arc::new(Shared {
            rt: self.clone(),
            stock: Stock::new(cfg.depth),
            cfg,
        });
        let s2 = shared.clone();
        let filler = std::thread::Builder::new()
            .name("thaw-pool-filler".into())
            .spawn(move || fill(&s2))
            .expect("spawning the pool filler thread");
        Pool { shared, filler: Some(filler) }
    }
}

fn fill(s: &Shared) {
    s.stock.fill("a pooled sandbox part", || {
        let mut part = s.rt.build_part(&s.cfg.profile, s.cfg.rootfs.as_ref())?;
        part.timings.pooled = true;
        Ok(part)
    });
}

impl Pool {
    /// Parts ready now.
    pub fn ready(&self) -> usize {
        self.shared.stock.ready()
    }

    /// Waits until at least `n` parts are ready (capped at the depth), up to `timeout`.
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        self.shared.stock.wait_ready(n, timeout)
    }

    /// Counters.
    pub fn stats(&self) -> &PoolStats {
        &self.shared.stock.stats
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.cfg
    }

    /// Takes a live part. Its replacement is held back while it starts and runs (see
    /// [`Stock::take_held`]); the part releases the hold when it is dropped, which is when its
    /// sandbox has ended (or failed to start).
    fn take(&self) -> Option<Part> {
        loop {
            let mut p = self.shared.stock.take_held()?;
            p.refill = Some(RefillHold(self.shared.clone()));
            if p.alive() {
                return Some(p);
            }
            // A dead part (its helper was killed) is dropped, which reaps it.
        }
    }

    /// Starts `process` on a ready part, or on one built on demand when none is ready. `rootfs`
    /// is the pool's own when `None`; a pool without one builds the requested root on the shell.
    pub fn start(&self, rootfs: Option<&RootfsConfig>, process: &ProcessConfig, io: StdioFds) -> Result<Sandbox> {
        let t0 = Instant::now();
        let cfg = &self.shared.cfg;
        let rootfs = match (rootfs, cfg.rootfs.as_ref()) {
            (Some(r), _) => r,
            (None, Some(r)) => r,
            (None, None) => {
                return Err(crate::Error::Config("this pool holds no root filesystem; name one".into()));
            }
        };
        let fits = |p: &Part| p.rootfs.is_none() || p.rootfs.as_ref() == Some(rootfs);
        let part = match self.take() {
            Some(p) if fits(&p) => {
                self.shared.stock.stats.hits.fetch_add(1, Ordering::Relaxed);
                p
            }
            other => {
                drop(other);
                self.shared.stock.stats.misses.fetch_add(1, Ordering::Relaxed);
                let mut p = self.shared.rt.build_part(&cfg.profile, Some(rootfs))?;
                p.timings.pooled = false;
                p
            }
        };
        self.shared.rt.start_on(part, rootfs, process, cfg.profile.seccomp, io, t0)
    }

    /// [`Pool::start`] with captured output.
    pub fn run_output(&self, rootfs: Option<&RootfsConfig>, process: &ProcessConfig) -> Result<Output> {
        crate::runtime::capture(|io| self.start(rootfs, process, io))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stock.stop();
        if let Some(f) = self.filler.take() {
            let _ = f.join();
        }
        // Dropping the ready parts hands them to the reaper.
        self.shared.stock.clear();
    }
}

/// Pools keyed by (profile, root filesystem), created on first use: what a daemon holds to serve
/// `thaw run` requests. The first request for a new image is built on demand while its pool
/// starts filling; later ones find ready parts.
///
/// Every distinct configuration a client asks for gets a pool that holds `depth` parked parts
/// (processes, cgroups, mounts), so the number of pools is capped: past `max_pools`, the pool used
/// least recently is dropped (its ready parts torn down; starts in flight keep theirs).
pub struct PoolSet {
    rt: Runtime,
    depth: usize,
    max_pools: usize,
    /// Looked up by comparing configurations: a daemon has a handful of pools (at most
    /// `max_pools`), so a scan of exact comparisons costs less per request than hashing or
    /// serialising a profile and root into a key, and allocates nothing.
    pools: Mutex<Vec<Entry>>,
    tick: AtomicU64,
}

struct Entry {
    pool: Arc<Pool>,
    label: String,
    last_used: u64,
}

impl PoolSet {
    /// An empty set whose pools keep `depth` parts ready each.
    pub fn new(rt: &Runtime, depth: usize) -> Self {
        Self::with_limit(rt, depth, usize::MAX)
    }

    /// An empty set of at most `max_pools` pools (at least one).
    pub fn with_limit(rt: &Runtime, depth: usize, max_pools: usize) -> Self {
        PoolSet {
            rt: rt.clone(),
            depth,
            max_pools: max_pools.max(1),
            pools: Mutex::new(Vec::new()),
            tick: AtomicU64::new(0),
        }
    }

    /// The pool for this profile and root, created (and starting to fill) if new.
    pub fn pool(&self, profile: &Profile, rootfs: &RootfsConfig) -> Arc<Pool> {
        self.pool_with(profile, rootfs, self.depth, "")
    }

    /// The pool for this profile and root, created with `depth` and named `label` (for metrics)
    /// if new; an existing pool keeps its depth and label.
    pub fn pool_with(&self, profile: &Profile, rootfs: &RootfsConfig, depth: usize, label: &str) -> Arc<Pool> {
        // The depth is part of the identity: a profile that asks for no pool must not share a
        // pooled one.
        let same = |e: &Entry| {
            let c = e.pool.config();
            c.depth == depth && c.rootfs.as_ref() == Some(rootfs) && c.profile == *profile
        };
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut evicted = None;
        let pool = {
            let mut pools = self.pools.lock();
            match pools.iter_mut().find(|e| same(e)) {
                Some(e) => {
                    e.last_used = now;
                    e.pool.clone()
                }
                None => {
                    if pools.len() >= self.max_pools {
                        if let Some(i) = pools.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) {
                            evicted = Some(pools.swap_remove(i));
                        }
                    }
                    let pool = Arc::new(self.rt.pool(PoolConfig { profile: profile.clone(), rootfs: Some(rootfs.clone()), depth }));
                    pools.push(Entry { pool: pool.clone(), label: label.to_string(), last_used: now });
                    pool
                }
            }
        };
        // Dropping a pool joins its filler thread, which may be in the middle of a build: not
        // under the lock, and not on this request's critical path either.
        if let Some(e) = evicted {
            tracing::info!(pool = %e.label, "dropping the least recently used sandbox pool (max_pools reached)");
            let dropper = std::thread::Builder::new().name("thaw-pool-drop".into()).spawn(move || drop(e));
            if let Err(err) = dropper {
                tracing::warn!(error = %err, "no thread to drop a pool in the background; dropping it here");
            }
        }
        pool
    }

    /// Starts a sandbox from the matching pool.
    pub fn start(&self, spec: &crate::SandboxSpec, io: StdioFds) -> Result<Sandbox> {
        self.pool(&spec.profile, &spec.rootfs).start(None, &spec.process, io)
    }

    /// Every pool with its label.
    pub fn pools(&self) -> Vec<(String, Arc<Pool>)> {
        let mut v: Vec<(String, Arc<Pool>)> = self.pools.lock().iter().map(|e| (e.label.clone(), e.pool.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Number of pools.
    pub fn len(&self) -> usize {
        self.pools.lock().len()
    }

    /// Whether no pool exists yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs a sandbox with `input` on its stdin and its stdout and stderr captured (each up to
/// `max_output` bytes; the rest is read and dropped, so the workload never blocks on a full
/// pipe). With a `timeout`, the workload is killed when it runs longer, and its status is the
/// signal. This is how a function is invoked with its payload.
pub fn run_with_input(
    start: impl FnOnce(StdioFds) -> Result<Sandbox>,
    input: &[u8],
    timeout: Option<Duration>,
    max_output: usize,
) -> Result<Output> {
    use std::io::{Read, Write};
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| crate::Error::sys("pipe", e));
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let reader = |fd: std::os::fd::OwnedFd| {
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(fd);
            let mut v = Vec::new();
            let mut buf = [0u8; 16 << 10];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => return v,
                    Ok(n) => {
                        let room = max_output.saturating_sub(v.len());
                        v.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
        })
    };
    let ro = reader(out_r);
    let re = reader(err_r);
    let sb = start(StdioFds { stdin: in_r, stdout: out_w, stderr: err_w })?;
    // A workload that does not read its stdin must not block us: write from a thread, and a
    // closed pipe (EPIPE; the daemon ignores SIGPIPE) just ends the writing.
    let payload = input.to_vec();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::from(in_w);
        let _ = f.write_all(&payload);
    });
    let timings = sb.timings().clone();
    let killer = timeout.map(|t| {
        let sig = sb.signaller();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(t) {
                let _ = sig.signal(libc::SIGKILL);
            }
        });
        (tx, h)
    });
    let status = sb.wait();
    if let Some((tx, h)) = killer {
        drop(tx);
        let _ = h.join();
    }
    let status = status?;
    let _ = writer.join();
    let stdout = ro.join().unwrap_or_default();
    let stderr = re.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr, timings })
}
