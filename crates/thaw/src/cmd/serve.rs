//! `thaw serve`: the node daemon — the registry mirror on TCP and the local API on a unix socket.
//!
//! Settings come from three places, later ones winning: built-in defaults, the TOML config file,
//! then flags. With nothing at all it serves on 127.0.0.1:5000 from the default data directory and
//! mirrors Docker Hub.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use thaw_registry::{RegistryConfig, UpstreamConfig};

use super::api;

/// Default listen address: loopback only, the registry's conventional port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on (e.g. 0.0.0.0:5000, or a bridge address VMs reach).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM). With --tls-key, the registry speaks HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Directory for the request trace (requests.jsonl, rotated).
    #[arg(long)]
    pub trace_dir: Option<PathBuf>,
    /// Print the bound address as `listening <addr>` on stdout once serving (for scripts and tests).
    #[arg(long)]
    pub print_address: bool,
}

/// Flags shared by every command that touches the store.
#[derive(Debug, Args, Clone, Default)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, env = "THAW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (store, metadata, trace secret). Default: /var/lib/thaw as root, else
    /// $XDG_DATA_HOME/thaw or ~/.local/share/thaw.
    #[arg(long, env = "THAW_DATA")]
    pub data: Option<PathBuf>,
    /// Upstream registry to mirror, `URL` or `NAME=URL` (repeatable; replaces the configured
    /// upstreams; the first is the default). NAME is what clients write, e.g. docker.io.
    #[arg(long = "upstream", value_name = "[NAME=]URL")]
    pub upstreams: Vec<String>,
    /// Mirror nothing: serve only local repositories (a standalone registry).
    #[arg(long, conflicts_with = "upstreams")]
    pub standalone: bool,
    /// Path of the daemon's local API socket. Default: <data>/api.sock (or, when that is too long
    /// for a unix socket, one in a private per-user directory: $XDG_RUNTIME_DIR/thaw, /run/thaw
    /// as root, else /tmp/thaw-<uid>).
    #[arg(long, env = "THAW_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Store capacity, e.g. 20GiB (unbounded when not set).
    #[arg(long)]
    pub capacity: Option<super::Bytes>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    serve: ServeSection,
    store: StoreSection,
    registry: Option<RegistryConfig>,
    /// Present (even empty) when the daemon hosts sandboxes; a mirror-only daemon has none.
    sandbox: Option<super::sandboxes::SandboxSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServeSection {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    socket: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StoreSection {
    capacity: Option<super::Bytes>,
    policy: Option<String>,
    /// How long an upload may sit idle (no chunk received) before the daemon deletes
    /// it, e.g. "1h". A client that vanished mid-push otherwise leaves its partial blob on disk
    /// for good.
    #[serde(deserialize_with = "opt_duration")]
    upload_ttl: Option<Duration>,
}

/// Default idle time after which an abandoned upload is removed.
pub const DEFAULT_UPLOAD_TTL: Duration = Duration::from_secs(3600);

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?} ({e}); write e.g. \"30m\" or \"1h\"")))
}

/// Everything resolved: what the daemon (or a command running without one) uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub socket: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub store: thaw_store::StoreConfig,
    pub registry: RegistryConfig,
    /// Idle time after which the daemon deletes an unfinished upload (`[store] upload_ttl`).
    pub upload_ttl: Duration,
    /// `[sandbox]`, when the daemon hosts sandboxes.
    pub sandbox: Option<super::sandboxes::SandboxSection>,
}

pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/thaw");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("thaw");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/share/thaw")
}

/// The API socket for a data directory: `<data>/api.sock`, or `<runtime dir>/<hash>.sock` when
/// that path would not fit a unix socket address (108 bytes). See [`api::runtime_dir`] for the
/// runtime directory and why it must be private.
pub fn default_socket(data: &Path) -> PathBuf {
    socket_for(data, "api.sock", "")
}

/// The sandbox service socket for a data directory: `<data>/sandbox.sock`, with the same
/// fallback as [`default_socket`] (`<runtime dir>/<hash>-sandbox.sock`). Clients (`thaw run`)
/// find it from the data directory alone.
pub fn default_sandbox_socket(data: &Path) -> PathBuf {
    socket_for(data, "sandbox.sock", "-sandbox")
}

fn socket_for(data: &Path, name: &str, suffix: &str) -> PathBuf {
    let p = data.join(name);
    if p.as_os_str().len() < 100 {
        return p;
    }
    // FNV-1a rather than std's DefaultHasher, whose algorithm may change between Rust releases:
    // a daemon and a client built by different toolchains must agree on the name.
    let mut h = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut h, std::os::unix::ffi::OsStrExt::as_bytes(data.as_os_str()));
    let h = std::hash::Hasher::finish(&h);
    api::runtime_dir().join(format!("{h:016x}{suffix}.sock"))
}

/// Parses `--upstream` values: `URL` or `NAME=URL`.
pub fn parse_upstream_flag(s: &str) -> anyhow::Result<UpstreamConfig> {
    let (name, url) = match s.split_once('=') {
        Some((n, u)) if !n.contains('/') => (Some(n), u),
        _ => (None, s),
    };
    let mut up = UpstreamConfig::from_url(url).map_err(anyhow::Error::msg)?;
    if let Some(n) = name {
        up.name = n.to_string();
    }
    Ok(up)
}

impl Settings {
    pub fn resolve(common: &CommonArgs, serve: Option<&ServeArgs>) -> anyhow::Result<Settings> {
        let file: FileConfig = match &common.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config file {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {} is invalid", p.display()))?
            }
            None => FileConfig::default(),
        };
        let mut registry = file.registry.unwrap_or_default();
        if !common.upstreams.is_empty() {
            registry.upstreams = common.upstreams.iter().map(|s| parse_upstream_flag(s)).collect::<anyhow::Result<_>>()?;
            registry.upstreams[0].default = true;
        } else if common.standalone {
            registry.upstreams.clear();
        } else if registry.upstreams.is_empty() && common.config.is_none() {
            registry.upstreams.push(UpstreamConfig::docker_hub());
        }
        let data = common.data.clone().or(file.serve.data).unwrap_or_else(default_data_dir);
        let data = if data.is_absolute() { data } else { std::env::current_dir()?.join(data) };
        let socket = common.socket.clone().or(file.serve.socket).unwrap_or_else(|| default_socket(&data));
        let listen = serve.and_then(|s| s.listen).or(file.serve.listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let tls = match (serve.and_then(|s| s.tls_cert.clone()).or(file.serve.tls_cert), serve.and_then(|s| s.tls_key.clone()).or(file.serve.tls_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!("TLS needs both a certificate and a key (tls_cert and tls_key)"),
        };
        if let Some(dir) = serve.and_then(|s| s.trace_dir.clone()) {
            registry.trace = Some(thaw_registry::config::TraceConfig { dir, max_bytes: 256 << 20, keep: 8 });
        }
        if !registry.accounts.is_empty() && tls.is_none() && !listen.ip().is_loopback() {
            bail!("accounts send passwords with Basic auth: configure TLS (tls_cert, tls_key) or listen on loopback only");
        }
        registry.validate().map_err(anyhow::Error::msg)?;
        let policy = match file.store.policy.as_deref() {
            Some(p) => p.parse().map_err(|e: thaw_policy::PolicyError| anyhow::anyhow!("[store] policy: {e}"))?,
            None => thaw_policy::PolicySpec::Lru,
        };
        let store = thaw_store::StoreConfig { capacity: common.capacity.or(file.store.capacity).map(|b| b.0), policy };
        let upload_ttl = file.store.upload_ttl.unwrap_or(DEFAULT_UPLOAD_TTL);
        if upload_ttl.is_zero() {
            bail!("[store] upload_ttl must be longer than 0s: every upload in progress would be deleted; write e.g. \"1h\"");
        }
        if let Some(sb) = &file.sandbox {
            sb.validate()?;
        }
        Ok(Settings { listen, data, socket, tls, store, registry, upload_ttl, sandbox: file.sandbox })
    }

    /// Opens the store (taking its lock) and builds the registry over it.
    pub fn open_registry(&self) -> anyhow::Result<thaw_registry::Registry> {
        std::fs::create_dir_all(&self.data).with_context(|| format!("cannot create data directory {}", self.data.display()))?;
        let store = thaw_store::BlobStore::open(&self.data.join("store"), self.store.clone())?;
        let principals = thaw_registry::trace::PrincipalHasher::load_or_create(&self.data.join("trace-secret"))
            .with_context(|| format!("cannot create the trace secret in {}", self.data.display()))?;
        thaw_registry::Registry::new(self.registry.clone(), store, principals).map_err(anyhow::Error::msg)
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&args.common, Some(&args))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("thaw").build()?;
    rt.block_on(serve(settings, args.print_address))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(settings: Settings, print_address: bool) -> anyhow::Result<()> {
    let registry = settings.open_registry()?;
    let tls = match &settings.tls {
        Some((c, k)) => Some(thaw_registry::server::tls_config(c, k).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}; is another registry using that port? choose another with --listen", settings.listen))?;
    let addr = listener.local_addr()?;
    let api_listener = api::bind(&settings.socket)?;
    let sandboxes = start_sandboxes(&settings, &registry).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let upstreams: Vec<String> = settings.registry.upstreams.iter().map(|u| format!("{}={}{}", u.name, u.url, if u.default { " (default)" } else { "" })).collect();
    tracing::info!(
        address = %format!("{scheme}://{addr}"),
        data = %settings.data.display(),
        socket = %settings.socket.display(),
        upstreams = %if upstreams.is_empty() { "none (standalone)".to_string() } else { upstreams.join(", ") },
        "thaw serving"
    );
    if print_address {
        println!("listening {addr}");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_signal = {
        let tx = stop_tx.clone();
        async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            tracing::info!("shutting down");
            let _ = tx.send(true);
        }
    };
    tokio::spawn(stop_signal);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let host = sandboxes.as_ref().map(|(h, _)| h.clone());
    let api_state = Arc::new(api::ApiState { registry: registry.clone(), listen: addr, settings: settings.clone(), sandboxes: host.clone() });
    let api_task = tokio::spawn(api::serve(api_listener, api_state, wait(stop_rx.clone())));
    let expiry_task = tokio::spawn(expire_uploads(registry.store().clone(), settings.upload_ttl, wait(stop_rx.clone())));
    let router = router(registry.clone(), host);
    thaw_registry::server::serve(listener, router, tls, wait(stop_rx)).await?;
    let _ = api_task.await;
    let _ = expiry_task.await;
    let _ = std::fs::remove_file(&settings.socket);
    if let Some((host, server)) = sandboxes {
        // Stopping kills the sandboxes of open sessions and joins threads; dropping the host
        // drains the pools and removes the runtime's cgroups. Both block.
        let sock = default_sandbox_socket(&settings.data);
        tokio::task::spawn_blocking(move || {
            server.stop();
            drop(host);
        })
        .await?;
        let _ = std::fs::remove_file(sock);
    }
    registry.store().flush_access_times()?;
    Ok(())
}

type Sandboxes = (Arc<super::sandboxes::Host>, thaw_sandbox::service::Server);

/// With a `[sandbox]` section: opens the runtime and pools (cleaning what a previous daemon of
/// this data directory left), and serves the sandbox socket from its own threads.
async fn start_sandboxes(settings: &Settings, registry: &thaw_registry::Registry) -> anyhow::Result<Option<Sandboxes>> {
    let Some(cfg) = settings.sandbox.clone() else { return Ok(None) };
    let data = settings.data.clone();
    let threads = cfg.threads.unwrap_or(2);
    let (registry, handle) = (registry.clone(), tokio::runtime::Handle::current());
    let host = tokio::task::spawn_blocking(move || super::sandboxes::Host::open(&data, cfg, registry, handle)).await??;
    let host = Arc::new(host);
    let sock = default_sandbox_socket(&settings.data);
    let listener = api::bind_with(&sock, thaw_sandbox::service::is_served, |p| Ok(thaw_sandbox::service::listen(p)?))?;
    let backend: Arc<dyn thaw_sandbox::service::Backend> = host.clone();
    let cfg = thaw_sandbox::service::ServerConfig { idle_threads: threads, ..Default::default() };
    let server = thaw_sandbox::service::Server::start(listener, backend, cfg)?;
    tracing::info!(socket = %sock.display(), cgroup_parent = %host.runtime().names().cgroup_parent, "sandboxes served");
    Ok(Some((host, server)))
}

/// The registry's router, with `/metrics` extended by the sandbox pools' and functions' metrics.
fn router(registry: thaw_registry::Registry, host: Option<Arc<super::sandboxes::Host>>) -> axum::Router {
    let Some(host) = host else { return thaw_registry::server::router(registry) };
    let reg = registry.clone();
    let metrics = move || {
        let (reg, host) = (reg.clone(), host.clone());
        async move {
            let text = reg.render_metrics();
            let body = text.strip_suffix("# EOF\n").unwrap_or(&text);
            let mut resp = axum::response::IntoResponse::into_response(format!("{body}{}# EOF\n", host.metrics()));
            resp.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp
        }
    };
    axum::Router::new().route("/metrics", axum::routing::get(metrics)).fallback_service(thaw_registry::server::router(registry))
}

/// How often to look for abandoned uploads: a quarter of the idle time, so an upload goes at most
/// 25% past its ttl, but never more often than every 100 ms nor less often than every 5 minutes.
fn expiry_period(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(300))
}

/// Deletes uploads idle for longer than `ttl` until `shutdown` resolves. A client that dies in
/// the middle of a push never finishes or cancels its upload, and the store keeps its partial
/// data until someone calls `expire_uploads`.
async fn expire_uploads(store: thaw_store::BlobStore, ttl: Duration, shutdown: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(expiry_period(ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        // It deletes files: keep it off the async workers.
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.expire_uploads(ttl)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot expire abandoned uploads; retrying at the next tick"),
            Err(e) => tracing::warn!(error = %e, "the upload expiry task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_period_follows_the_ttl_within_bounds() {
        assert_eq!(expiry_period(Duration::from_secs(3600)), Duration::from_secs(300));
        assert_eq!(expiry_period(Duration::from_secs(60)), Duration::from_secs(15));
        assert_eq!(expiry_period(Duration::from_millis(10)), Duration::from_millis(100));
    }

    #[test]
    fn upload_ttl_parses_and_defaults() {
        let f: FileConfig = toml::from_str("[store]\nupload_ttl = \"90s\"\n").unwrap();
        assert_eq!(f.store.upload_ttl, Some(Duration::from_secs(90)));
        let f: FileConfig = toml::from_str("").unwrap();
        assert_eq!(f.store.upload_ttl, None);
        let e = toml::from_str::<FileConfig>("[store]\nupload_ttl = \"soon\"\n").unwrap_err().to_string();
        assert!(e.contains("bad duration") && e.contains("1h"), "{e}");
    }

    #[test]
    fn long_data_paths_get_a_short_socket_in_the_runtime_dir() {
        let short = Path::new("/var/lib/thaw");
        assert_eq!(default_socket(short), short.join("api.sock"));
        let long = PathBuf::from(format!("/data/{}", "x".repeat(120)));
        let s = default_socket(&long);
        assert!(s.as_os_str().len() < 108, "{}", s.display());
        assert_eq!(s.parent().unwrap(), api::runtime_dir());
        assert_eq!(s, default_socket(&long), "stable for one data directory");
        assert_ne!(s, default_socket(&long.join("y")), "distinct for another");
    }
}
