//! Crash safety of the real daemon (issue 2, "How it is checked"): `thaw serve` mirrors a real
//! docker-registry, several clients pull a multi-layer image at once, and the daemon is killed
//! with SIGKILL part-way — at a different point each round. Every restart on the same data
//! directory must find a consistent store: everything pulled afterwards hashes to its digest, no
//! partial or temp file is ever served, and content committed before the crash is still there.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thaw_testkit::*;

fn thaw() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_thaw"))
}

fn sha256(data: &[u8]) -> String {
    thaw_oci::Digest::sha256_of(data).to_string()
}

/// What a plain HTTP/1.1 GET got: status, declared length, the body bytes that arrived.
struct Got {
    status: u16,
    declared: Option<u64>,
    body: Vec<u8>,
}

/// A binary-safe HTTP/1.1 GET over a fresh connection (`Connection: close`): a killed server
/// shows as an error or as a body shorter than declared, exactly what a client would see.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<Got> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        read?;
        return Err(std::io::Error::other("connection closed before the response head"));
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let declared = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim().parse().ok()))
        .flatten();
    Ok(Got { status, declared, body: raw[split + 4..].to_vec() })
}

/// What was pushed upstream: the repository and the digests to pull back.
#[derive(Clone)]
struct Pushed {
    repo: String,
    manifest_digest: String,
    blobs: Vec<String>,
}

/// Pulls the image's manifest and every blob through thaw and checks each against its digest.
/// With `strict`, any failure panics; otherwise (a daemon about to be killed) a failed or cut
/// request is fine, but a body that arrives complete must still be right.
fn pull_and_verify(addr: SocketAddr, p: &Pushed, strict: bool, stop: Option<&AtomicBool>) {
    let mut paths = vec![(format!("/v2/{}/manifests/{}", p.repo, p.manifest_digest), p.manifest_digest.clone())];
    for d in &p.blobs {
        paths.push((format!("/v2/{}/blobs/{d}", p.repo), d.clone()));
    }
    for (path, d) in paths {
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            return;
        }
        let got = match get(addr, &path) {
            Ok(g) => g,
            Err(e) => {
                assert!(!strict, "GET {path}: {e}");
                continue;
            }
        };
        if got.status != 200 {
            assert!(!strict, "GET {path}: status {}", got.status);
            continue;
        }
        // A complete body (as long as it said) must be the right content, crash or not.
        if got.declared == Some(got.body.len() as u64) {
            assert_eq!(sha256(&got.body), d, "GET {path} served content that does not match its digest");
        } else {
            assert!(!strict, "GET {path}: short body {} of {:?}", got.body.len(), got.declared);
        }
    }
}

fn metric(daemon: &ThawDaemon, name: &str) -> f64 {
    metric_value(&http_get(daemon.addr, "/metrics"), name)
}

/// Every file left in the store's temp directory after a crash is removed or ignored on restart:
/// nothing below `blobs/` is anything but a complete, verified blob.
fn assert_blob_files_verified(data: &Path) {
    let mut checked = 0;
    let mut stack = vec![data.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
                continue;
            }
            // blobs/sha256/<2 hex>/<64 hex>
            let parts: Vec<_> = p.iter().rev().take(4).map(|s| s.to_string_lossy().into_owned()).collect();
            if parts.len() == 4 && parts[3] == "blobs" && parts[0].len() == 64 && parts[1].len() == 2 {
                let data = std::fs::read(&p).unwrap();
                assert_eq!(sha256(&data), format!("{}:{}", parts[2], parts[0]), "{} holds other content", p.display());
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no blob files found under {}", data.display());
}

#[test]
fn kill_9_during_concurrent_pulls_leaves_a_consistent_store() {
    if !have("docker-registry", "kill_9_during_concurrent_pulls") || !have("skopeo", "kill_9_during_concurrent_pulls") {
        return;
    }
    let up = DockerRegistry::start();
    let data = tempfile::Builder::new().prefix("thaw-crash").tempdir_in(shm()).unwrap();
    let data_s = data.path().to_str().unwrap().to_string();
    let upstream = format!("docker.io={}", up.url());
    let mut pushed: Vec<Pushed> = Vec::new();

    // Each round pushes a new ~24 MB image, starts four concurrent pulls of it through a fresh
    // daemon, and kills the daemon once this share of its bytes came from upstream. The last
    // round kills right after the fetch completed, when commits and links are being recorded.
    for (round, share) in [0.15f64, 0.5, 0.85, 1.0].into_iter().enumerate() {
        let img = TestImage::build(200 + round as u64, &[7_000_000, 6_000_000, 5_000_000, 4_000_000, 2_000_000]);
        let repo = format!("library/crash{round}");
        skopeo_copy(&img.oci_ref(), &format!("docker://{}/{repo}:v1", up.addr));
        let total = img.total_bytes as f64;
        let mut blobs = img.layer_digests.clone();
        blobs.push(img.config_digest.clone());
        pushed.push(Pushed { repo, manifest_digest: img.manifest_digest.clone(), blobs });
        drop(img);

        let mut daemon = ThawDaemon::start(thaw(), &["--data", &data_s, "--upstream", &upstream]);
        // Recovery cleared what the crash left half-written.
        assert_eq!(count_files(&data.path().join("store/tmp")), 0, "round {round}: temp files survived the restart");
        // Everything from earlier rounds (crashed or not) is served correctly after the restart.
        for p in &pushed[..round] {
            pull_and_verify(daemon.addr, p, true, None);
        }

        let stop = Arc::new(AtomicBool::new(false));
        let pullers: Vec<_> = (0..4)
            .map(|_| {
                let (addr, stop, p) = (daemon.addr, stop.clone(), pushed[round].clone());
                std::thread::spawn(move || pull_and_verify(addr, &p, false, Some(&stop)))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let before = metric(&daemon, "thaw_upstream_bytes_total");
        let metric_at_kill;
        loop {
            let fetched = metric(&daemon, "thaw_upstream_bytes_total") - before;
            if fetched >= share * total {
                metric_at_kill = fetched;
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: the pulls stalled at {fetched} bytes");
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut child = daemon.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let fetched = metric_at_kill;
        eprintln!("round {round}: killed after {fetched} of {total} upstream bytes; {} temp files left", count_files(&data.path().join("store/tmp")));
        stop.store(true, Ordering::SeqCst);
        for p in pullers {
            p.join().expect("a client received a complete body with the wrong content");
        }
    }

    // Final restart: everything pulls, concurrently, and every byte is right.
    let daemon = ThawDaemon::start(thaw(), &["--data", &data_s, "--upstream", &upstream]);
    std::thread::scope(|s| {
        for p in &pushed {
            let addr = daemon.addr;
            s.spawn(move || pull_and_verify(addr, p, true, None));
        }
    });
    // And once more, now from the store alone: no upstream bytes at all.
    let fetched = metric(&daemon, "thaw_upstream_bytes_total");
    for p in &pushed {
        pull_and_verify(daemon.addr, p, true, None);
    }
    assert_eq!(metric(&daemon, "thaw_upstream_bytes_total"), fetched, "a warm pull after recovery went upstream");
    drop(daemon);
    assert_blob_files_verified(data.path());
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}
