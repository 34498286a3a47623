//! Test support shared by thaw's integration tests: real peers (docker-registry, skopeo) and an in-process thaw, all on ephemeral
//! 127.0.0.1 ports, every child process killed by PID when its guard drops.

pub mod fake_upstream;


use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use thaw_registry::{Registry, RegistryConfig};

/// Whether a peer binary is installed. Missing in CI is a failure; elsewhere the test is skipped
/// with a message (see the README's testing section).
pub fn have(bin: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{test} needs `{bin}`, which CI must install (.ci/run)");
        }
        eprintln!("skipping {test}: `{bin}` is not installed");
    }
    found
}

/// Kills its child by PID on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_http(url: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{url}: the server exited early with {status}");
        }
        if let Ok(s) = std::net::TcpStream::connect(url.trim_start_matches("http://").split('/').next().unwrap()) {
            drop(s);
            return;
        }
        assert!(Instant::now() < deadline, "{url} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real distribution registry (Debian's docker-registry) on an ephemeral loopback port.
pub struct DockerRegistry {
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    _child: ChildGuard,
}

impl DockerRegistry {
    pub fn start() -> DockerRegistry {
        Self::start_with("")
    }

    /// `extra` is appended to the YAML config (e.g. a `proxy:` section).
    pub fn start_with(extra: &str) -> DockerRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
            dir.path().join("data").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let url = format!("http://127.0.0.1:{port}/v2/");
        wait_http(&url, &mut child);
        DockerRegistry { addr: format!("127.0.0.1:{port}").parse().unwrap(), _dir: dir, _child: ChildGuard(child) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// thaw's registry, in process, on an ephemeral port, with its own runtime thread.
pub struct Thaw {
    pub addr: SocketAddr,
    pub registry: Registry,
    pub data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Thaw {
    pub fn start(cfg: RegistryConfig) -> Thaw {
        Self::start_with_store(cfg, thaw_store::StoreConfig::default())
    }

    pub fn start_with_store(cfg: RegistryConfig, store_cfg: thaw_store::StoreConfig) -> Thaw {
        let data = tempfile::Builder::new().prefix("thaw-test").tempdir_in(shm()).unwrap();
        Self::start_in(cfg, store_cfg, data)
    }

    /// Stops this registry and starts a new one on the same store (a daemon restart), with
    /// `cfg`, on a new port.
    pub fn restart(mut self, cfg: RegistryConfig) -> Thaw {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let placeholder = tempfile::Builder::new().prefix("thaw-test").tempdir_in(shm()).unwrap();
        let data = std::mem::replace(&mut self.data, placeholder);
        // Closes the store: its lock and database go with the last handle.
        drop(self);
        Self::start_in(cfg, thaw_store::StoreConfig::default(), data)
    }

    fn start_in(cfg: RegistryConfig, store_cfg: thaw_store::StoreConfig, data: tempfile::TempDir) -> Thaw {
        let store = thaw_store::BlobStore::open(&data.path().join("store"), store_cfg).unwrap();
        let principals = thaw_registry::trace::PrincipalHasher::with_secret([1; 32]);
        let registry = Registry::new(cfg, store, principals).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let reg = registry.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let router = thaw_registry::server::router(reg);
                thaw_registry::server::serve(listener, router, None, async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        Thaw { addr, registry, data, stop: Some(tx), thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.registry.render_metrics(), name)
    }
}

impl Drop for Thaw {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sums every sample of a metric (all label sets) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// tmpfs for unpack- and write-heavy tests (the ext4 disk here is slow and erratic).
pub fn shm() -> PathBuf {
    let p = PathBuf::from("/dev/shm");
    if p.is_dir() { p } else { std::env::temp_dir() }
}

/// A generated OCI image layout: gzip-compressed tar layers, each holding one file of
/// pseudo-random bytes of the given size.
pub struct TestImage {
    pub dir: tempfile::TempDir,
    pub manifest_digest: String,
    pub layer_digests: Vec<String>,
    pub config_digest: String,
    pub total_bytes: u64,
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn write_blob(dir: &Path, data: &[u8]) -> String {
    let d = sha(data);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    d
}

/// Deterministic filler bytes (xorshift), so images differ by seed and compress poorly.
pub fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl TestImage {
    pub fn build(seed: u64, layer_sizes: &[usize]) -> TestImage {
        let dir = tempfile::Builder::new().prefix("thaw-img").tempdir_in(shm()).unwrap();
        let root = dir.path();
        std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut total = 0u64;
        for (i, size) in layer_sizes.iter().enumerate() {
            let mut b = tar::Builder::new(Vec::new());
            let data = filler(seed * 1000 + i as u64, *size);
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, format!("layer{i}/data.bin"), data.as_slice()).unwrap();
            let tar = b.into_inner().unwrap();
            diff_ids.push(sha(&tar));
            // gzip, as registries store layers (skopeo would compress an uncompressed layer on
            // push, changing its digest).
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &tar).unwrap();
            let gz = gz.finish().unwrap();
            let d = write_blob(root, &gz);
            total += gz.len() as u64;
            layers.push(serde_json::json!({"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":d,"size":gz.len()}));
        }
        let config = serde_json::json!({
            "architecture":"amd64","os":"linux",
            "config":{"Cmd":["/bin/sh"]},
            "rootfs":{"type":"layers","diff_ids":diff_ids}
        });
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = write_blob(root, &config_bytes);
        total += config_bytes.len() as u64;
        let manifest = serde_json::json!({
            "schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":config_digest,"size":config_bytes.len()},
            "layers":layers
        });
        let mb = serde_json::to_vec(&manifest).unwrap();
        let md = write_blob(root, &mb);
        let index = serde_json::json!({
            "schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":md,"size":mb.len(),
                          "annotations":{"org.opencontainers.image.ref.name":"latest"}}]
        });
        std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        TestImage {
            dir,
            manifest_digest: md,
            layer_digests: layers.iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect(),
            config_digest,
            total_bytes: total,
        }
    }

    pub fn oci_ref(&self) -> String {
        format!("oci:{}:latest", self.dir.path().display())
    }

    pub fn blob(&self, digest: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join("blobs/sha256").join(&digest[7..])).unwrap()
    }
}

/// Runs skopeo with TLS verification off (every registry in the tests is plain HTTP on loopback).
pub fn skopeo(args: &[&str]) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args(["--tmpdir", tmp.path().to_str().unwrap()])
        .args(args)
        .output()
        .expect("run skopeo");
    if !out.status.success() {
        panic!("skopeo {:?} failed: {}", args, String::from_utf8_lossy(&out.stderr));
    }
    out
}

pub fn skopeo_copy(src: &str, dst: &str) {
    skopeo(&["copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--quiet", src, dst]);
}

/// Upstream config for a registry at `url`, named `name`, default when `default`.
pub fn upstream(name: &str, url: &str, default: bool) -> thaw_registry::UpstreamConfig {
    let mut u = thaw_registry::UpstreamConfig::from_url(url).unwrap();
    u.name = name.to_string();
    u.default = default;
    u
}

/// A `thaw serve` child process (the real binary), stopped with SIGTERM by PID on drop.
pub struct ThawDaemon {
    pub addr: SocketAddr,
    pub child: Option<Child>,
}

impl ThawDaemon {
    /// Starts `bin serve --listen 127.0.0.1:0 --print-address <args>` and waits for its address.
    pub fn start(bin: &Path, args: &[&str]) -> ThawDaemon {
        use std::io::BufRead;
        let mut child = Command::new(bin)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--print-address"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start thaw serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = match line.trim().strip_prefix("listening ") {
            Some(a) => a.parse().unwrap(),
            None => {
                let _ = child.kill();
                panic!("thaw serve did not print its address (got {line:?})");
            }
        };
        ThawDaemon { addr, child: Some(child) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ThawDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

/// Fetches a URL with a plain HTTP/1.1 GET over TCP and returns the body (no client crate needed).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}
