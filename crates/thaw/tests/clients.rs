//! Real container engines pull through thaw unchanged: podman (registries.conf mirror with a path
//! prefix) and containerd's ctr (hosts.toml mirror; containerd adds the `ns` parameter). Both pull
//! the same image; the upstream serves each blob once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thaw_registry::RegistryConfig;
use thaw_testkit::*;

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// containerd with its root, state and sockets in `dir`, stopped by PID on drop.
struct Containerd {
    sock: std::path::PathBuf,
    _child: ChildGuard,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let sock = dir.join("ctd.sock");
        let cfg = dir.join("containerd.toml");
        write(
            &cfg,
            &format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = sock.display()
            ),
        );
        let child = Command::new("containerd").arg("--config").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start containerd");
        let guard = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "containerd did not create its socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd { sock, _child: guard }
    }
}

#[test]
fn podman_and_containerd_pull_through_thaw() {
    let name = "podman_and_containerd_pull_through_thaw";
    for bin in ["docker-registry", "skopeo", "podman", "containerd", "ctr"] {
        if !have(bin, name) {
            return;
        }
    }
    let up = DockerRegistry::start();
    let img = TestImage::build(21, &[600_000, 300_000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/library/app:v1", up.addr));
    let thaw = Thaw::start(RegistryConfig { upstreams: vec![upstream("docker.io", &up.url(), true)], ..Default::default() });
    let work = tempfile::Builder::new().prefix("thaw-clients").tempdir_in(shm()).unwrap();
    let w = work.path();

    // containerd: hosts.toml sends docker.io pulls to thaw; the real Docker Hub is unreachable here,
    // so a pull that succeeds went through thaw.
    write(
        &w.join("certs.d/docker.io/hosts.toml"),
        &format!("server = \"https://registry-1.docker.io\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", thaw.addr),
    );
    let ctd = Containerd::start(&w.join("containerd"));
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&ctd.sock)
        .args(["images", "pull", "--hosts-dir"])
        .arg(w.join("certs.d"))
        .arg("docker.io/library/app:v1")
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr pull failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let after_ctr = thaw.metric("thaw_upstream_bytes_total");
    assert!(after_ctr as u64 >= img.total_bytes, "containerd's pull did not go through thaw");

    // podman: a registries.conf mirror with thaw's path prefix for docker.io.
    write(&w.join("registries.conf"), &format!("[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"{}/docker.io\"\ninsecure = true\n", thaw.addr));
    write(&w.join("containers.conf"), "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n");
    write(
        &w.join("storage.conf"),
        &format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n", w.join("pm/run").display(), w.join("pm/root").display()),
    );
    let out = Command::new("podman")
        .env("CONTAINERS_REGISTRIES_CONF", w.join("registries.conf"))
        .env("CONTAINERS_CONF", w.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", w.join("storage.conf"))
        .args(["pull", "-q", "docker.io/library/app:v1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "podman pull failed: {}", String::from_utf8_lossy(&out.stderr));
    let after_podman = thaw.metric("thaw_upstream_bytes_total");
    assert_eq!(after_podman, after_ctr, "podman's pull of the same image went upstream again");
    assert!(thaw.metric("thaw_cache_hits_total") >= 3.0);
    // containerd keeps its own content store: every layer it holds has the image's digest.
    let out = Command::new("ctr").arg("--address").arg(&ctd.sock).args(["content", "ls", "-q"]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    for d in &img.layer_digests {
        assert!(listed.contains(d.as_str()), "containerd lacks {d}: {listed}");
    }
    // podman's cleanup of its storage under the temp dir: unmount anything it left.
    let _ = Command::new("podman")
        .env("CONTAINERS_STORAGE_CONF", w.join("storage.conf"))
        .env("CONTAINERS_CONF", w.join("containers.conf"))
        .args(["system", "reset", "--force"])
        .output();
}

/// dockerd, stopped with SIGTERM (so it stops the containerd it manages) and waited for.
struct Dockerd {
    sock: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn dockerd_pulls_through_thaw_as_registry_mirror() {
    let name = "dockerd_pulls_through_thaw_as_registry_mirror";
    for bin in ["docker-registry", "skopeo", "dockerd", "docker"] {
        if !have(bin, name) {
            return;
        }
    }
    let up = DockerRegistry::start();
    let img = TestImage::build(22, &[500_000, 200_000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/library/app:v1", up.addr));
    let thaw = Thaw::start(RegistryConfig { upstreams: vec![upstream("docker.io", &up.url(), true)], ..Default::default() });
    // dockerd's paths must stay short (unix socket addresses), so use a short tmpfs directory.
    let work = tempfile::Builder::new().prefix("dk").tempdir_in(shm()).unwrap();
    let w = work.path();
    let sock = w.join("d.sock");
    write(
        &w.join("daemon.json"),
        &serde_json::json!({
            "data-root": w.join("root"),
            "exec-root": w.join("x"),
            "pidfile": w.join("d.pid"),
            "hosts": [format!("unix://{}", sock.display())],
            "bridge": "none",
            "iptables": false,
            "ip6tables": false,
            "ip-masq": false,
            "registry-mirrors": [thaw.url()],
            "insecure-registries": [thaw.addr.to_string()],
            "storage-driver": "vfs",
        })
        .to_string(),
    );
    let child = Command::new("dockerd").arg("--config-file").arg(w.join("daemon.json")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start dockerd");
    let dockerd = Dockerd { sock: sock.clone(), child: Some(child) };
    let host = format!("unix://{}", dockerd.sock.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new("docker").args(["-H", &host, "version"]).stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "dockerd did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = Command::new("docker").args(["-H", &host, "pull", "app:v1"]).output().unwrap();
    assert!(out.status.success(), "docker pull failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&img.manifest_digest), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(thaw.metric("thaw_upstream_bytes_total") as u64 >= img.total_bytes, "docker's pull did not go through thaw");
    let _ = Command::new("docker").args(["-H", &host, "rmi", "app:v1"]).output();
    drop(dockerd);
}
