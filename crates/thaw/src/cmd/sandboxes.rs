//! The daemon's sandboxes: the `[sandbox]` configuration, pools per image and profile, the
//! sandbox service backend (`thaw run` through the daemon), and deployed functions.
//!
//! A daemon whose configuration has no `[sandbox]` section creates none of this: no runtime (so
//! no cgroup parent, no helper process, no layer store lock), no sandbox socket, no pools.
//!
//! ```toml
//! [sandbox]
//! depth = 2          # ready parts per pool unless a profile says otherwise
//! max_pools = 16     # pools for distinct (image, limits) pairs; least recently used dropped
//! threads = 2        # service threads kept waiting for `thaw run` clients
//! bridge = "10.88.0.1/24"   # subnet of bridged sandboxes (gateway/prefix); derived if unset
//! favor_dynmods = false      # remount cgroup2 with favordynmods (host-wide): see cgroup.rs
//!
//! [sandbox.profiles.small]
//! memory = "64MiB"
//! pids = 64
//! cpus = 0.5
//! depth = 4
//!
//! [[sandbox.images]]   # pooled from the start, before the first request
//! image = "oci:/srv/images/app:v1"
//! profile = "small"
//! ```
//!
//! Images are absolute root directories, OCI layouts (`oci:PATH[:TAG]`) or registry images
//! (`docker://REF`, pulled through this daemon's own mirror into its store, the name resolved
//! again after [`DOCKER_REF_TTL`] so a moved tag is followed). Layers are unpacked into the layer
//! store once and pinned while the daemon runs. Pools for an image are created on its first use
//! and kept at depth. Functions persist as one JSON file each under
//! `<data>/functions/` and are deployed again when the daemon starts.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thaw_sandbox::service::{Backend, BackendError, Overrides, RunRequest, Target};
use thaw_sandbox::{HelperCommand, Output, Pool, PoolConfig, PoolSet, Runtime, RuntimeConfig, Sandbox, SandboxSpec, StdioFds};

/// Ready parts per pool unless configured.
pub const DEFAULT_DEPTH: usize = 2;
/// Pools kept unless configured.
pub const DEFAULT_MAX_POOLS: usize = 16;
/// Largest function payload accepted.
pub const MAX_PAYLOAD: usize = 6 << 20;
/// Most bytes of a function's stdout (and, separately, stderr) kept.
pub const MAX_OUTPUT: usize = 16 << 20;
/// How long a `docker://` name's resolution (manifest, config, unpacked layers) is reused before
/// the mirror is asked again (which answers from its store while the tag is fresh).
pub const DOCKER_REF_TTL: Duration = Duration::from_secs(60);
/// Largest manifest or image config read from the store.
const MAX_JSON_BLOB: u64 = 4 << 20;
/// How long a function invocation may run unless its deployment says otherwise.
pub const DEFAULT_FN_TIMEOUT: Duration = Duration::from_secs(60);

/// `[sandbox]` of the configuration file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSection {
    /// Ready parts per pool.
    pub depth: Option<usize>,
    /// Most pools at once.
    pub max_pools: Option<usize>,
    /// Service threads kept idle.
    pub threads: Option<usize>,
    /// Named profiles.
    pub profiles: BTreeMap<String, ProfileSection>,
    /// Images pooled at start.
    pub images: Vec<ImageSection>,
    /// The bridge subnet of sandboxes with `network = "bridge"`, as the gateway address and
    /// prefix (`10.88.0.1/16`); a /24 derived from the data directory when unset.
    pub bridge: Option<String>,
    /// Remount the cgroup2 hierarchy with `favordynmods` at start, so that moving a process into
    /// a cgroup (every pool refill does) no longer waits for an RCU grace period while blocking
    /// forks, execs and exits host-wide. A host-wide setting, hence opt-in; see
    /// `thaw_sandbox::cgroup::dynmods_favored`.
    pub favor_dynmods: bool,
}

/// `[sandbox.profiles.NAME]`: limits and pool depth.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileSection {
    pub memory: Option<super::Bytes>,
    pub pids: Option<i64>,
    pub cpus: Option<f64>,
    pub hostname: Option<String>,
    pub depth: Option<usize>,
    /// `none` (loopback only) or `bridge`.
    pub network: Option<thaw_sandbox::net::NetworkMode>,
}

/// `[[sandbox.images]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub image: String,
    #[serde(default)]
    pub profile: Option<String>,
}

impl SandboxSection {
    /// Checks what can be checked without touching the system.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(subnet) = &self.bridge {
            thaw_sandbox::net::BridgeConfig::parse("thaw", subnet).context("[sandbox] bridge")?;
        }
        for (name, p) in &self.profiles {
            if p.cpus.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
                bail!("[sandbox.profiles.{name}] cpus must be a positive number of CPUs, e.g. 0.5");
            }
            if p.pids.is_some_and(|n| n < 1) {
                bail!("[sandbox.profiles.{name}] pids must be at least 1");
            }
        }
        for img in &self.images {
            if let Some(p) = &img.profile {
                if !self.profiles.contains_key(p) {
                    bail!("[[sandbox.images]] {} names profile {p:?}, which no [sandbox.profiles.{p}] defines", img.image);
                }
            }
            image_path(&img.image).with_context(|| format!("[[sandbox.images]] image {:?}", img.image))?;
        }
        Ok(())
    }

    fn depth(&self) -> usize {
        self.depth.unwrap_or(DEFAULT_DEPTH)
    }
}

/// Applies a profile's limits to a sandbox profile.
fn apply_profile(p: &ProfileSection, to: &mut thaw_sandbox::Profile) {
    if let Some(m) = p.memory {
        to.limits.memory_bytes = Some(m.0.min(i64::MAX as u64) as i64);
    }
    if let Some(n) = p.pids {
        to.limits.pids_max = Some(n);
    }
    if let Some(c) = p.cpus {
        to.limits.cpu_period_us = Some(thaw_sandbox::service::CPU_PERIOD_US);
        to.limits.cpu_quota_us = Some(((c * thaw_sandbox::service::CPU_PERIOD_US as f64) as i64).max(1000));
    }
    if let Some(h) = &p.hostname {
        to.hostname = h.clone();
    }
    if let Some(n) = p.network {
        to.network = n;
    }
}

/// The directory an image name points at: the root directory itself, or the OCI layout (`None`
/// for a `docker://` reference, which names no directory). The daemon does not share the
/// client's working directory, so paths must be absolute.
fn image_path(image: &str) -> anyhow::Result<Option<PathBuf>> {
    if let Some(r) = image.strip_prefix("docker://") {
        r.parse::<thaw_oci::Reference>().with_context(|| format!("{image} is not an image reference"))?;
        return Ok(None);
    }
    let p = if image.starts_with("oci:") { thaw_oci::layout::LayoutRef::parse(image)?.path } else { PathBuf::from(image) };
    if !p.is_absolute() {
        bail!("the daemon needs an absolute path; write {image:?} with an absolute path (or oci:/ABSOLUTE/PATH[:TAG])");
    }
    Ok(Some(p))
}

/// A short stable name of a configuration (FNV-1a of its JSON), to tell pools apart in metrics.
fn short_hash<T: Serialize>(v: &T) -> String {
    let mut h = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut h, &serde_json::to_vec(v).unwrap_or_default());
    format!("{:08x}", std::hash::Hasher::finish(&h) as u32)
}

/// An image resolved to a base spec, with its layers pinned.
struct Resolved {
    spec: SandboxSpec,
    /// `index.json`'s modification time and size for a layout: a re-tagged image is resolved
    /// again.
    stamp: Option<(SystemTime, u64)>,
    /// For a `docker://` name: when to ask the mirror again.
    expires: Option<Instant>,
    _pins: Vec<thaw_store::layers::LayerPin>,
}

/// A deployed function as stored and sent over the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    /// An absolute root directory or `oci:/PATH[:TAG]`.
    pub image: String,
    /// Command functions: the program, run once per invocation with the payload on stdin.
    #[serde(default)]
    pub command: Vec<String>,
    /// Python functions.
    #[serde(default)]
    pub python: Option<PythonDef>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub memory_bytes: Option<i64>,
    #[serde(default)]
    pub pids_max: Option<i64>,
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// Ready sandboxes kept for the function.
    #[serde(default)]
    pub depth: Option<usize>,
    /// Longest run of one invocation in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Loopback only (the default) or `eth0` on the daemon's bridge.
    #[serde(default)]
    pub network: Option<thaw_sandbox::net::NetworkMode>,
    /// User and group ids (the image's `User` when unset).
    #[serde(default)]
    pub user: Option<(u32, u32)>,
}

/// A Python handler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PythonDef {
    /// `module:function`, or `/path/in/image.py:function`.
    pub handler: String,
    /// Modules imported before the handler.
    #[serde(default)]
    pub preload: Vec<String>,
    /// Interpreter: a path inside the image.
    #[serde(default = "default_python")]
    pub interpreter: String,
}

fn default_python() -> String {
    "/usr/bin/python3".into()
}

/// The on-disk form: versioned, so a later thaw knows what it reads.
#[derive(Serialize, Deserialize)]
struct FunctionFile {
    format: String,
    version: u32,
    function: FunctionDef,
}

const FUNCTION_FORMAT: &str = "thaw-function";
const FUNCTION_VERSION: u32 = 1;

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn valid_module(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 200
        && m.split('.').all(|p| {
            let mut c = p.chars();
            c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        })
}

impl FunctionDef {
    /// Checks the definition; the messages name the flag to fix.
    pub fn validate(&self) -> Result<(), FnError> {
        let bad = |m: String| Err(FnError::Invalid(m));
        if !valid_name(&self.name) {
            return bad(format!("function name {:?}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", self.name));
        }
        if let Err(e) = image_path(&self.image) {
            return bad(format!("--image: {e:#}"));
        }
        match &self.python {
            Some(p) => {
                if !self.command.is_empty() {
                    return bad("a python function runs its handler; drop the command after `--`".into());
                }
                let (m, f) = p.handler.rsplit_once(':').unwrap_or(("", ""));
                let file = m.starts_with('/') && m.ends_with(".py") && !m.contains("/../") && !m.contains('\n');
                if !(valid_module(m) || file) || !valid_module(f) || f.contains('.') {
                    return bad(format!("--handler {:?}: write module:function or /path/in/image.py:function, e.g. app.main:handle", p.handler));
                }
                if !p.interpreter.starts_with('/') {
                    return bad(format!("--interpreter {:?}: give its absolute path inside the image, e.g. /usr/bin/python3", p.interpreter));
                }
                if let Some(x) = p.preload.iter().find(|m| !valid_module(m)) {
                    return bad(format!("--preload {x:?} is not a module name"));
                }
            }
            None if self.command.is_empty() => {
                return bad("name the command after `--`, or give --runtime python with --handler".into());
            }
            None => {}
        }
        if self.depth.is_some_and(|d| d > 64) {
            return bad("--depth at most 64".into());
        }
        Ok(())
    }

    fn overrides(&self) -> Overrides {
        // A python function runs no command of its own (the template does); the placeholder
        // only satisfies the check that a sandbox has something to run.
        let args = if self.python.is_some() { vec!["true".into()] } else { self.command.clone() };
        Overrides {
            args,
            env: self.env.clone(),
            memory_bytes: self.memory_bytes,
            pids_max: self.pids_max,
            cpu_millis: self.cpu_millis,
            network: self.network,
            user: self.user,
            ..Default::default()
        }
    }
}

/// Errors of function operations, by what the API answers.
#[derive(Debug, thiserror::Error)]
pub enum FnError {
    #[error("no function named {0:?} is deployed; see `thaw fn list`")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

/// A deployed function.
struct Function {
    def: FunctionDef,
    engine: Engine,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// How a function's invocations run.
enum Engine {
    /// A command per invocation, in a sandbox from the function's own pool.
    Command { pool: Pool, process: thaw_sandbox::ProcessConfig },
    /// A forked instance of the function's template (a Python interpreter that imported the
    /// preload modules and the handler once).
    Template(thaw_sandbox::Template),
}

impl Engine {
    fn stats(&self) -> &thaw_sandbox::PoolStats {
        match self {
            Engine::Command { pool, .. } => pool.stats(),
            Engine::Template(t) => t.stats(),
        }
    }

    fn ready(&self) -> usize {
        match self {
            Engine::Command { pool, .. } => pool.ready(),
            Engine::Template(t) => t.ready(),
        }
    }

    /// False once a template has died (killed, or out of memory in its cgroup): every
    /// invocation would fail until it is started again.
    fn alive(&self) -> bool {
        match self {
            Engine::Command { .. } => true,
            Engine::Template(t) => t.is_alive(),
        }
    }

    fn invoke(&self, payload: &[u8], timeout: Duration) -> thaw_sandbox::Result<Output> {
        match self {
            Engine::Command { pool, process } => {
                thaw_sandbox::pool::run_with_input(|io| pool.start(None, process, io), payload, Some(timeout), MAX_OUTPUT)
            }
            Engine::Template(t) => {
                let i = t.invoke(payload, Some(timeout))?;
                Ok(Output { status: i.status, stdout: i.stdout, stderr: i.stderr, timings: i.timings })
            }
        }
    }
}

/// What `GET /v1/functions` lists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub image: String,
    pub kind: String,
    pub depth: usize,
    pub ready: usize,
    pub invocations: u64,
    pub failures: u64,
    /// Host pid of a Python function's template interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_pid: Option<i32>,
}

/// One invocation's result.
pub struct Invocation {
    pub output: Output,
    pub total: Duration,
}

/// Everything a daemon with sandboxes holds.
pub struct Host {
    rt: Runtime,
    /// The daemon's mirror, for `docker://` images.
    registry: thaw_registry::Registry,
    /// The daemon's async runtime: pulls run there while a service thread waits.
    tokio: tokio::runtime::Handle,
    pools: PoolSet,
    layers: thaw_store::layers::LayerStore,
    cfg: SandboxSection,
    images: Mutex<HashMap<String, Arc<Resolved>>>,
    functions: Mutex<BTreeMap<String, Arc<Function>>>,
    /// Held while a dead template is replaced, so concurrent invocations start one, not many.
    restart: Mutex<()>,
    /// Templates started again after they died.
    template_restarts: AtomicU64,
    fn_dir: PathBuf,
}

impl Host {
    /// Opens the runtime (which kills and removes whatever a previous daemon of this data
    /// directory left behind), the layer store, restores deployed functions and starts the
    /// configured pools. Blocking.
    pub fn open(data: &Path, cfg: SandboxSection, registry: thaw_registry::Registry, tokio: tokio::runtime::Handle) -> anyhow::Result<Host> {
        let exe = std::env::current_exe().context("locating the thaw executable for the sandbox helper")?;
        let rt = Runtime::new(RuntimeConfig {
            data_dir: data.to_path_buf(),
            helper: HelperCommand { program: exe, args: vec!["run".into(), "--sandbox-helper".into()] },
            cgroup_layout: None,
        })
        .context("opening the sandbox runtime")?;
        if let Some(subnet) = &cfg.bridge {
            let b = thaw_sandbox::net::BridgeConfig::parse(&rt.names().bridge, subnet).context("[sandbox] bridge")?;
            rt.set_bridge(b).context("setting up the sandbox bridge")?;
        }
        if cfg.favor_dynmods {
            match thaw_sandbox::cgroup::set_favor_dynmods(true) {
                Ok(true) => tracing::info!("remounted cgroup2 with favordynmods ([sandbox] favor_dynmods)"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "[sandbox] favor_dynmods could not be applied; cgroup moves keep waiting for RCU grace periods"),
            }
        } else if thaw_sandbox::cgroup::dynmods_favored().ok().flatten() == Some(false) {
            tracing::info!("cgroup moves wait for RCU grace periods and block forks meanwhile; `favor_dynmods = true` in [sandbox] remounts cgroup2 with favordynmods (host-wide) to avoid it");
        }
        let layers = thaw_store::layers::LayerStore::open(data).context("opening the layer store")?;
        let pools = PoolSet::with_limit(&rt, cfg.depth(), cfg.max_pools.unwrap_or(DEFAULT_MAX_POOLS));
        let host = Host {
            rt,
            registry,
            tokio,
            pools,
            layers,
            cfg,
            images: Mutex::new(HashMap::new()),
            functions: Mutex::new(BTreeMap::new()),
            restart: Mutex::new(()),
            template_restarts: AtomicU64::new(0),
            fn_dir: data.join("functions"),
        };
        host.restore_functions();
        for img in host.cfg.images.clone() {
            let req = RunRequest {
                target: Target::Image(img.image.clone()),
                overrides: Overrides { args: vec!["true".into()], profile: img.profile.clone(), ..Default::default() },
            };
            match host.resolve_request(&req) {
                Ok((spec, depth, label)) => {
                    host.pools.pool_with(&spec.profile, &spec.rootfs, depth, &label);
                }
                Err(e) => tracing::warn!(image = %img.image, error = %format!("{e:#}"), "cannot pool this configured image"),
            }
        }
        Ok(host)
    }

    /// The runtime (for tests of the daemon's names and counters).
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    fn image(&self, name: &str) -> anyhow::Result<Arc<Resolved>> {
        let Some(path) = image_path(name)? else { return self.registry_image(name) };
        let stamp = if name.starts_with("oci:") {
            let md = std::fs::metadata(path.join("index.json")).with_context(|| format!("{name}: no OCI layout (index.json) at {}", path.display()))?;
            Some((md.modified()?, md.len()))
        } else {
            if !path.is_dir() {
                bail!("{name} is neither a directory nor an image name (oci:PATH[:TAG])");
            }
            None
        };
        if let Some(r) = self.images.lock().get(name).filter(|r| r.stamp == stamp) {
            return Ok(r.clone());
        }
        // Unpacking may take a while: not under the lock (the layer store itself makes
        // concurrent requests for one layer wait for a single unpack).
        let (spec, pins) = if stamp.is_some() {
            super::run::spec_from_layout(&self.layers, name)?
        } else {
            (SandboxSpec::for_rootfs(&path, vec![]), Vec::new())
        };
        let r = Arc::new(Resolved { spec, stamp, expires: None, _pins: pins });
        self.images.lock().insert(name.to_string(), r.clone());
        Ok(r)
    }

    /// A `docker://REF` image: pulled through the daemon's mirror (a no-op for what the store
    /// has), then its layers unpacked from the store. Blocking; never call on an async worker.
    fn registry_image(&self, name: &str) -> anyhow::Result<Arc<Resolved>> {
        if let Some(r) = self.images.lock().get(name).filter(|r| r.expires.is_some_and(|t| Instant::now() < t)) {
            return Ok(r.clone());
        }
        let rest = name.strip_prefix("docker://").unwrap_or(name);
        let reference: thaw_oci::Reference = rest.parse().with_context(|| format!("{name} is not an image reference"))?;
        let summary = self
            .tokio
            .block_on(self.registry.pull(&reference, None, |_| {}))
            .map_err(|e| anyhow::anyhow!("pulling {rest} through this daemon's mirror: {}", e.message))?;
        let store = self.registry.store();
        let digest: thaw_oci::Digest = summary.digest.parse()?;
        let manifest = thaw_oci::Manifest::parse(&read_blob(store, &digest)?, None).with_context(|| format!("the manifest of {rest}"))?;
        let config_digest = manifest.config.as_ref().map(|c| c.digest.clone()).with_context(|| format!("{rest}: the manifest names no config"))?;
        let config = read_blob(store, &config_digest)?;
        let layers = thaw_oci::layout::layers_of(&digest, &manifest, &config, &format!("{config_digest} of {rest}"))?;
        let pins = layers
            .iter()
            .map(|l| self.layers.ensure(&l.diff_id, &thaw_store::layers::BlobSource { store, digest: l.descriptor.digest.clone() }))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("unpacking the layers of {rest}"))?;
        let spec = super::run::spec_from_config(&pins, &config)?;
        let r = Arc::new(Resolved { spec, stamp: None, expires: Some(Instant::now() + DOCKER_REF_TTL), _pins: pins });
        self.images.lock().insert(name.to_string(), r.clone());
        Ok(r)
    }

    /// Turns a request into the spec to start, the depth of its pool and the pool's label.
    fn resolve_request(&self, req: &RunRequest) -> anyhow::Result<(SandboxSpec, usize, String)> {
        let (mut spec, what) = match &req.target {
            Target::Spec(s) => {
                let root = s.rootfs.lowers.first().map(|p| p.display().to_string()).unwrap_or_default();
                ((**s).clone(), format!("bundle:{root}"))
            }
            Target::Image(name) => (self.image(name)?.spec.clone(), name.clone()),
        };
        let mut depth = self.cfg.depth();
        let mut profile_name = "default".to_string();
        if let Some(p) = &req.overrides.profile {
            let prof = self.cfg.profiles.get(p).with_context(|| format!("no profile {p:?} in this daemon's [sandbox.profiles]"))?;
            apply_profile(prof, &mut spec.profile);
            depth = prof.depth.unwrap_or(depth);
            profile_name = p.clone();
        }
        let before = spec.profile.clone();
        req.overrides.apply(&mut spec)?;
        if spec.profile != before || (req.overrides.profile.is_none() && spec.profile != thaw_sandbox::Profile::default()) {
            profile_name = format!("custom-{}", short_hash(&spec.profile));
        }
        Ok((spec, depth, format!("{what} [{profile_name}]")))
    }

    fn restore_functions(&self) {
        let Ok(rd) = std::fs::read_dir(&self.fn_dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let def = std::fs::read(&p)
                .map_err(anyhow::Error::from)
                .and_then(|b| read_function_file(&b))
                .with_context(|| format!("reading {}", p.display()));
            match def.map_err(FnError::from).and_then(|d| self.install(d)) {
                Ok(name) => tracing::info!(function = %name, "restored function"),
                Err(e) => tracing::warn!(file = %p.display(), error = %e, "cannot restore this function; fix or remove the file"),
            }
        }
    }

    fn install(&self, def: FunctionDef) -> Result<String, FnError> {
        def.validate()?;
        let mut spec = self.image(&def.image)?.spec.clone();
        def.overrides().apply(&mut spec).map_err(|e| FnError::Invalid(e.to_string()))?;
        let depth = def.depth.unwrap_or(self.cfg.depth());
        let engine = match &def.python {
            None => Engine::Command {
                pool: self.rt.pool(PoolConfig { profile: spec.profile.clone(), rootfs: Some(spec.rootfs.clone()), depth }),
                process: spec.process,
            },
            Some(p) => {
                let cfg = thaw_sandbox::TemplateConfig {
                    profile: spec.profile,
                    rootfs: spec.rootfs,
                    runtime: thaw_sandbox::TemplateRuntime::Python {
                        interpreter: p.interpreter.clone(),
                        preload: p.preload.clone(),
                        handler: p.handler.clone(),
                    },
                    env: spec.process.env,
                    cwd: spec.process.cwd,
                    user: (spec.process.uid, spec.process.gid),
                    depth,
                };
                // Blocks until the template imported its modules: an import error fails the
                // deployment with the interpreter's traceback.
                Engine::Template(self.rt.template(cfg).map_err(|e| FnError::Invalid(format!("starting the python template: {e}")))?)
            }
        };
        let name = def.name.clone();
        let f = Arc::new(Function { def, engine, ok: AtomicU64::new(0), failed: AtomicU64::new(0) });
        let old = self.functions.lock().insert(name.clone(), f);
        // The replaced function's pool is torn down outside the lock.
        drop(old);
        Ok(name)
    }

    /// Deploys (or replaces) a function and stores its definition. Blocking.
    pub fn deploy(&self, def: FunctionDef) -> Result<FunctionInfo, FnError> {
        def.validate()?;
        let bytes = serde_json::to_vec_pretty(&FunctionFile {
            format: FUNCTION_FORMAT.into(),
            version: FUNCTION_VERSION,
            function: def.clone(),
        })
        .map_err(anyhow::Error::from)?;
        let name = self.install(def)?;
        write_atomic(&self.fn_dir, &format!("{name}.json"), &bytes)?;
        self.list().into_iter().find(|f| f.name == name).ok_or(FnError::NotFound(name))
    }

    /// Removes a function and its stored definition.
    pub fn remove(&self, name: &str) -> Result<(), FnError> {
        let f = self.functions.lock().remove(name).ok_or_else(|| FnError::NotFound(name.to_string()))?;
        let path = self.fn_dir.join(format!("{name}.json"));
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        drop(f);
        Ok(())
    }

    /// Deployed functions.
    pub fn list(&self) -> Vec<FunctionInfo> {
        self.functions
            .lock()
            .values()
            .map(|f| FunctionInfo {
                name: f.def.name.clone(),
                image: f.def.image.clone(),
                kind: if f.def.python.is_some() { "python".into() } else { "command".into() },
                depth: f.def.depth.unwrap_or(self.cfg.depth()),
                ready: f.engine.ready(),
                invocations: f.ok.load(Ordering::Relaxed),
                failures: f.failed.load(Ordering::Relaxed),
                template_pid: match &f.engine {
                    Engine::Template(t) => Some(t.pid()),
                    Engine::Command { .. } => None,
                },
            })
            .collect()
    }

    /// What `/v1/status` shows: the pools (label, depth, ready, hits, misses) and functions.
    pub fn status(&self) -> serde_json::Value {
        let pools: Vec<serde_json::Value> = self
            .pools
            .pools()
            .iter()
            .map(|(label, p)| {
                let s = p.stats();
                serde_json::json!({
                    "pool": label,
                    "depth": p.config().depth,
                    "ready": p.ready(),
                    "hits": s.hits.load(Ordering::Relaxed),
                    "misses": s.misses.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "cgroup_parent": self.rt.names().cgroup_parent,
            "pools": pools,
            "functions": self.list(),
        })
    }

    /// Runs one invocation with `payload` on stdin. Blocking.
    pub fn invoke(&self, name: &str, payload: &[u8]) -> Result<Invocation, FnError> {
        let t = Instant::now();
        let f = self.live_function(name)?;
        let timeout = f.def.timeout_ms.map(Duration::from_millis).unwrap_or(DEFAULT_FN_TIMEOUT);
        match f.engine.invoke(payload, timeout) {
            Ok(output) => {
                let c = if output.status.success() { &f.ok } else { &f.failed };
                c.fetch_add(1, Ordering::Relaxed);
                Ok(Invocation { output, total: t.elapsed() })
            }
            Err(e) => {
                f.failed.fetch_add(1, Ordering::Relaxed);
                Err(FnError::Failed(anyhow::Error::new(e).context(format!("invoking {name}"))))
            }
        }
    }

    /// The function called `name`, its template started again first if it died. Invocations
    /// that arrive while that happens wait for the one restart rather than starting their own.
    fn live_function(&self, name: &str) -> Result<Arc<Function>, FnError> {
        let get = || self.functions.lock().get(name).cloned().ok_or_else(|| FnError::NotFound(name.to_string()));
        let f = get()?;
        if f.engine.alive() {
            return Ok(f);
        }
        let _one = self.restart.lock();
        let current = get()?;
        if !Arc::ptr_eq(&current, &f) {
            return Ok(current); // replaced meanwhile: by a restart, or a new deployment
        }
        tracing::warn!(function = %name, "the function's template died; starting it again");
        self.install(f.def.clone())?;
        self.template_restarts.fetch_add(1, Ordering::Relaxed);
        let fresh = get()?;
        // the function's counters go on where they were (they are Prometheus counters)
        fresh.ok.fetch_add(f.ok.load(Ordering::Relaxed), Ordering::Relaxed);
        fresh.failed.fetch_add(f.failed.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(fresh)
    }

    /// Prometheus text (OpenMetrics) for the pools and functions, without the `# EOF` line.
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        // Family name -> (type, samples); OpenMetrics wants each family's samples together.
        let mut fam: BTreeMap<&'static str, Family> = BTreeMap::new();
        let mut add = |name: &'static str, kind: &'static str, labels: String, v: u64| {
            fam.entry(name).or_insert((kind, Vec::new())).1.push((labels, v));
        };
        let fns: Vec<Arc<Function>> = self.functions.lock().values().cloned().collect();
        let pools = self.pools.pools();
        let all = pools
            .iter()
            .map(|(label, p)| (label.clone(), p.stats(), p.ready()))
            .chain(fns.iter().map(|f| (format!("fn:{}", f.def.name), f.engine.stats(), f.engine.ready())));
        for (label, s, ready) in all {
            let l = format!("pool=\"{}\"", escape(&label));
            add("thaw_sandbox_pool_hits", "counter", l.clone(), s.hits.load(Ordering::Relaxed));
            add("thaw_sandbox_pool_misses", "counter", l.clone(), s.misses.load(Ordering::Relaxed));
            add("thaw_sandbox_pool_builds", "counter", l.clone(), s.built.load(Ordering::Relaxed));
            add("thaw_sandbox_pool_build_failures", "counter", l.clone(), s.build_failures.load(Ordering::Relaxed));
            add("thaw_sandbox_pool_build_microseconds", "counter", l.clone(), s.build_wall_us.load(Ordering::Relaxed));
            add("thaw_sandbox_pool_ready", "gauge", l, ready as u64);
        }
        for f in &fns {
            let n = escape(&f.def.name);
            add("thaw_function_invocations", "counter", format!("function=\"{n}\",outcome=\"ok\""), f.ok.load(Ordering::Relaxed));
            add("thaw_function_invocations", "counter", format!("function=\"{n}\",outcome=\"failed\""), f.failed.load(Ordering::Relaxed));
        }
        add("thaw_function_template_restarts", "counter", String::new(), self.template_restarts.load(Ordering::Relaxed));
        let c = self.rt.counters();
        add("thaw_sandbox_parts_built", "counter", String::new(), c.parts_built.load(Ordering::Relaxed));
        add("thaw_sandbox_pending_teardowns", "gauge", String::new(), c.pending_teardowns.load(Ordering::Relaxed) as u64);
        add("thaw_sandbox_failed_teardowns", "counter", String::new(), c.failed_teardowns.load(Ordering::Relaxed) as u64);
        let mut out = String::new();
        for (name, (kind, samples)) in fam {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let suffix = if kind == "counter" { "_total" } else { "" };
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name}{suffix} {v}");
                } else {
                    let _ = writeln!(out, "{name}{suffix}{{{labels}}} {v}");
                }
            }
        }
        out
    }
}

/// A metric family: its type and its samples (labels, value).
type Family = (&'static str, Vec<(String, u64)>);

/// A manifest or config from the blob store, bounded.
fn read_blob(store: &thaw_store::BlobStore, digest: &thaw_oci::Digest) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let h = store.get(digest)?.with_context(|| format!("{digest} is not in the store"))?;
    let mut v = Vec::new();
    h.try_clone_file()?.take(MAX_JSON_BLOB + 1).read_to_end(&mut v)?;
    if v.len() as u64 > MAX_JSON_BLOB {
        bail!("{digest} is larger than {MAX_JSON_BLOB} bytes; not a manifest or config thaw reads");
    }
    Ok(v)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn read_function_file(b: &[u8]) -> anyhow::Result<FunctionDef> {
    let f: FunctionFile = serde_json::from_slice(b).context("not a thaw function file")?;
    if f.format != FUNCTION_FORMAT || f.version != FUNCTION_VERSION {
        bail!("format {:?} version {} is not {FUNCTION_FORMAT:?} version {FUNCTION_VERSION} (written by another thaw?)", f.format, f.version);
    }
    Ok(f.function)
}

/// Writes `dir/name` so that a crash leaves the old file or the new one, never a torn one.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {} into place", tmp.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl Backend for Host {
    fn start(&self, req: RunRequest, io: StdioFds) -> Result<(Sandbox, Duration), BackendError> {
        let t = Instant::now();
        let (spec, depth, label) = self.resolve_request(&req)?;
        let resolve = t.elapsed();
        let pool = self.pools.pool_with(&spec.profile, &spec.rootfs, depth, &label);
        let sb = pool.start(None, &spec.process, io)?;
        Ok((sb, resolve))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> FunctionDef {
        FunctionDef {
            name: "hello".into(),
            image: "/srv/root".into(),
            command: vec!["cat".into()],
            python: None,
            env: vec![],
            memory_bytes: None,
            pids_max: None,
            cpu_millis: None,
            depth: None,
            timeout_ms: None,
            network: None,
            user: None,
        }
    }

    #[test]
    fn function_definitions_are_checked() {
        assert!(def().validate().is_ok());
        for bad in ["", "../x", "a/b", ".hidden", &"x".repeat(64)] {
            assert!(FunctionDef { name: bad.into(), ..def() }.validate().is_err(), "{bad:?} accepted");
        }
        assert!(FunctionDef { image: "relative/dir".into(), ..def() }.validate().is_err());
        assert!(FunctionDef { command: vec![], ..def() }.validate().is_err());
        let py = |handler: &str, preload: &[&str]| FunctionDef {
            command: vec![],
            python: Some(PythonDef { handler: handler.into(), preload: preload.iter().map(|s| s.to_string()).collect(), interpreter: "/usr/bin/python3".into() }),
            ..def()
        };
        assert!(py("app.main:handle", &["json", "email.mime"]).validate().is_ok());
        assert!(py("/srv/app.py:handle", &[]).validate().is_ok());
        for h in ["app", "app:", ":f", "app:f.g", "a-b:f", "app:f; import os", "rel/app.py:f", "/a/../b.py:f"] {
            assert!(py(h, &[]).validate().is_err(), "{h:?} accepted");
        }
        assert!(py("app:f", &["os; x"]).validate().is_err());
    }

    #[test]
    fn function_files_are_versioned() {
        let b = serde_json::to_vec(&FunctionFile { format: FUNCTION_FORMAT.into(), version: 1, function: def() }).unwrap();
        assert_eq!(read_function_file(&b).unwrap(), def());
        let b = serde_json::to_vec(&FunctionFile { format: FUNCTION_FORMAT.into(), version: 2, function: def() }).unwrap();
        assert!(read_function_file(&b).unwrap_err().to_string().contains("version 2"));
        assert!(read_function_file(b"{}").is_err());
    }

    #[test]
    fn config_sections_parse_and_validate() {
        let s: SandboxSection = toml::from_str(
            "depth = 3\n[profiles.small]\nmemory = \"64MiB\"\npids = 10\ncpus = 0.5\n[[images]]\nimage = \"oci:/x:y\"\nprofile = \"small\"\n",
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.depth(), 3);
        let mut p = thaw_sandbox::Profile::default();
        apply_profile(&s.profiles["small"], &mut p);
        assert_eq!(p.limits.memory_bytes, Some(64 << 20));
        assert_eq!(p.limits.cpu_quota_us, Some(50_000));
        // Sizes mean what they mean on the command line: bare letters binary, plain numbers bytes.
        for (text, want) in [("\"64m\"", 64 << 20), ("\"1GB\"", 1_000_000_000), ("4096", 4096)] {
            let s: SandboxSection = toml::from_str(&format!("[profiles.p]\nmemory = {text}\n")).unwrap();
            assert_eq!(s.profiles["p"].memory, Some(super::super::Bytes(want)), "{text}");
        }
        let err = toml::from_str::<SandboxSection>("[profiles.p]\nmemory = \"64 parsecs\"\n").unwrap_err().to_string();
        assert!(err.contains("not a byte size"), "{err}");
        let bad: SandboxSection = toml::from_str("[[images]]\nimage = \"/x\"\nprofile = \"nope\"\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("nope"));
        let bad: SandboxSection = toml::from_str("[[images]]\nimage = \"rel\"\n").unwrap();
        assert!(format!("{:#}", bad.validate().unwrap_err()).contains("absolute"));
        let bad: SandboxSection = toml::from_str("[profiles.x]\ncpus = 0.0\n").unwrap();
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<SandboxSection>("bogus = 1\n").is_err());
    }
}
