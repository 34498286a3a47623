//! thaw serving HTTPS (rustls with ring) with a certificate the test makes with the openssl CLI:
//! skopeo pushes and pulls with the certificate as its only trust, a client that does not trust
//! it is refused, and thaw's accounts authenticate with Basic auth over TLS in front of a
//! private upstream repository.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use thaw_registry::config::{Account, Credentials};
use thaw_registry::{Registry, RegistryConfig};
use thaw_testkit::fake_upstream::FakeUpstream;
use thaw_testkit::{have, shm, upstream, TestImage};

/// A self-signed certificate for 127.0.0.1: `dir/ca.crt` (the certificate, which is its own
/// issuer, named as skopeo's `--cert-dir` expects) and `dir/key.pem`.
struct Cert {
    dir: tempfile::TempDir,
}

impl Cert {
    fn make() -> Cert {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            // A leaf, not a CA: webpki refuses a CA certificate as a server's own certificate.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("ca.crt"))
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl failed: {}", String::from_utf8_lossy(&out.stderr));
        Cert { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

/// thaw in process, serving HTTPS on an ephemeral loopback port.
struct TlsThaw {
    addr: SocketAddr,
    _data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsThaw {
    fn start(cfg: RegistryConfig, cert: &Cert) -> TlsThaw {
        let data = tempfile::Builder::new().prefix("thaw-tls").tempdir_in(shm()).unwrap();
        let store = thaw_store::BlobStore::open(&data.path().join("store"), Default::default()).unwrap();
        let registry = Registry::new(cfg, store, thaw_registry::trace::PrincipalHasher::with_secret([2; 32])).unwrap();
        let tls = thaw_registry::server::tls_config(&cert.cert(), &cert.key()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let router = thaw_registry::server::router(registry);
                thaw_registry::server::serve(listener, router, Some(tls), async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        });
        TlsThaw { addr, _data: data, stop: Some(tx), thread: Some(thread) }
    }
}

impl Drop for TlsThaw {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn skopeo_out(args: &[&str]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    Command::new("skopeo").args(["--tmpdir", tmp.path().to_str().unwrap()]).args(args).output().expect("run skopeo")
}

fn https_client(cert: &Cert) -> reqwest::blocking::Client {
    let pem = std::fs::read(cert.cert()).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn assert_same_blobs(img: &TestImage, out: &Path) {
    for d in img.layer_digests.iter().chain([&img.config_digest]) {
        let got = std::fs::read(out.join("blobs/sha256").join(&d[7..])).unwrap();
        assert!(got == img.blob(d), "blob {d} differs");
    }
}

/// skopeo pushes to and pulls from thaw over HTTPS trusting only the test's certificate; a
/// client that does not trust it, or speaks plain HTTP, gets nothing.
#[test]
fn skopeo_pushes_and_pulls_over_tls() {
    if !have("openssl", "skopeo_pushes_and_pulls_over_tls") || !have("skopeo", "skopeo_pushes_and_pulls_over_tls") {
        return;
    }
    let cert = Cert::make();
    let thaw = TlsThaw::start(RegistryConfig::default(), &cert);
    let cert_dir = cert.dir.path().to_str().unwrap().to_string();
    let img = TestImage::build(40, &[300_000, 80_000]);
    let dst = format!("docker://{}/team/secure:v1", thaw.addr);
    let out = skopeo_out(&["copy", "--quiet", "--dest-cert-dir", &cert_dir, &img.oci_ref(), &dst]);
    assert!(out.status.success(), "push over TLS failed: {}", String::from_utf8_lossy(&out.stderr));
    let pulled = tempfile::tempdir().unwrap();
    let out = skopeo_out(&["copy", "--quiet", "--src-cert-dir", &cert_dir, &dst, &format!("oci:{}:v1", pulled.path().display())]);
    assert!(out.status.success(), "pull over TLS failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_same_blobs(&img, pulled.path());

    // Without the certificate, skopeo verifies against the system roots and refuses.
    let untrusted = tempfile::tempdir().unwrap();
    let out = skopeo_out(&["copy", "--quiet", &dst, &format!("oci:{}:v1", untrusted.path().display())]);
    assert!(!out.status.success(), "skopeo trusted a certificate it was never given");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate") || err.contains("x509") || err.contains("tls"), "{err}");

    // reqwest trusting the certificate sees the API; plain HTTP on the TLS port does not.
    let c = https_client(&cert);
    let r = c.get(format!("https://{}/v2/", thaw.addr)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN should negotiate h2");
    let plain = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    assert!(!plain.get(format!("http://{}/v2/", thaw.addr)).send().map(|r| r.status().is_success()).unwrap_or(false));
}

/// Basic-auth accounts over TLS, mapped to upstream users of a private repository: the right
/// account pulls with skopeo, another account and anonymous clients are refused.
#[test]
fn basic_auth_accounts_over_tls() {
    if !have("openssl", "basic_auth_accounts_over_tls") || !have("skopeo", "basic_auth_accounts_over_tls") {
        return;
    }
    // A private repository upstream holding a real image (skopeo checks what it copies).
    let fake = FakeUpstream::start();
    fake.enable_auth(false, Duration::from_secs(300));
    fake.add_user("u1", "pw1");
    fake.add_user("u3", "pw3");
    fake.allow("team/private", "u1");
    let img = TestImage::build(41, &[200_000, 50_000]);
    for d in img.layer_digests.iter().chain([&img.config_digest]) {
        fake.put_blob("team/private", &img.blob(d));
    }
    fake.put_manifest("team/private", Some("v1"), "application/vnd.oci.image.manifest.v1+json", &img.blob(&img.manifest_digest));
    let public = TestImage::build(42, &[100_000]);
    fake.make_public("team/public");
    for d in public.layer_digests.iter().chain([&public.config_digest]) {
        fake.put_blob("team/public", &public.blob(d));
    }
    fake.put_manifest("team/public", Some("v1"), "application/vnd.oci.image.manifest.v1+json", &public.blob(&public.manifest_digest));

    let account = |name: &str, pw: &str, up_user: &str, up_pw: &str| Account {
        username: name.into(),
        password: pw.into(),
        upstream: [("fake".to_string(), Credentials { username: up_user.into(), password: up_pw.into() })].into(),
    };
    let cfg = RegistryConfig {
        upstreams: vec![upstream("fake", &fake.url(), true)],
        accounts: vec![account("alice", "alice-pw", "u1", "pw1"), account("carol", "carol-pw", "u3", "pw3")],
        ..Default::default()
    };
    let cert = Cert::make();
    let thaw = TlsThaw::start(cfg, &cert);
    let cert_dir = cert.dir.path().to_str().unwrap().to_string();
    let src = format!("docker://{}/team/private:v1", thaw.addr);

    let pulled = tempfile::tempdir().unwrap();
    let out = skopeo_out(&["copy", "--quiet", "--src-cert-dir", &cert_dir, "--src-creds", "alice:alice-pw", &src, &format!("oci:{}:v1", pulled.path().display())]);
    assert!(out.status.success(), "alice's pull failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_same_blobs(&img, pulled.path());

    for creds in [Some("carol:carol-pw"), Some("alice:wrong"), None] {
        let dir = tempfile::tempdir().unwrap();
        let dst = format!("oci:{}:v1", dir.path().display());
        let mut args = vec!["copy", "--quiet", "--src-cert-dir", &cert_dir];
        if let Some(c) = creds {
            args.extend(["--src-creds", c]);
        }
        args.extend([src.as_str(), dst.as_str()]);
        let out = skopeo_out(&args);
        assert!(!out.status.success(), "{creds:?} pulled a private image");
    }

    // Public content needs no account, also from a client that answers the ping's Basic
    // challenge without credentials.
    let dir = tempfile::tempdir().unwrap();
    let out = skopeo_out(&["copy", "--quiet", "--src-cert-dir", &cert_dir, &format!("docker://{}/team/public:v1", thaw.addr), &format!("oci:{}:v1", dir.path().display())]);
    assert!(out.status.success(), "anonymous pull of public content failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_same_blobs(&public, dir.path());

    // The same through a plain HTTPS client: the challenge is Basic, and only alice gets bytes.
    let c = https_client(&cert);
    let blob = format!("https://{}/v2/team/private/blobs/{}", thaw.addr, img.layer_digests[0]);
    let r = c.get(&blob).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let r = c.get(&blob).basic_auth("carol", Some("carol-pw")).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(&blob).basic_auth("alice", Some("alice-pw")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().unwrap().as_ref() == img.blob(&img.layer_digests[0]).as_slice());
}
