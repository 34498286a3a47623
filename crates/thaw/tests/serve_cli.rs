//! `thaw serve`, `thaw pull` and `thaw preheat` as a user runs them: the real binary, a real
//! upstream (docker-registry), skopeo as a client.

use std::path::Path;
use std::process::Command;

use thaw_testkit::*;

fn thaw() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_thaw"))
}

#[test]
fn serve_pull_through_daemon_then_without_it() {
    if !have("docker-registry", "serve_pull_through_daemon_then_without_it") || !have("skopeo", "serve_pull_through_daemon_then_without_it") {
        return;
    }
    let up = DockerRegistry::start();
    let img = TestImage::build(11, &[400_000, 900_000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/library/app:v1", up.addr));
    let data = tempfile::Builder::new().prefix("thaw-cli").tempdir_in(shm()).unwrap();
    let trace = data.path().join("trace");
    let upstream = format!("docker.io={}", up.url());
    let data_s = data.path().to_str().unwrap();
    let mut daemon = ThawDaemon::start(thaw(), &["--data", data_s, "--upstream", &upstream, "--trace-dir", trace.to_str().unwrap()]);

    // A second daemon on the same data directory is refused with a clear message.
    let second = Command::new(thaw()).args(["serve", "--listen", "127.0.0.1:0", "--data", data_s, "--upstream", &upstream]).output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another thaw daemon") || err.contains("holds the store"), "{err}");

    // thaw pull goes through the daemon's socket.
    let out = Command::new(thaw()).args(["pull", "--json", "--data", data_s, "docker.io/library/app:v1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let pulled = events.iter().find(|e| e["event"] == "pulled").expect("a pulled event");
    assert_eq!(pulled["summary"]["digest"], img.manifest_digest);
    assert_eq!(pulled["summary"]["blobs"], 3);
    let metrics = http_get(daemon.addr, "/metrics");
    let fetched = metric_value(&metrics, "thaw_upstream_bytes_total") as u64;
    assert!(fetched >= img.total_bytes, "{fetched} < {}", img.total_bytes);

    // A client pull is now served locally.
    let out_dir = tempfile::tempdir().unwrap();
    skopeo_copy(&format!("docker://{}/library/app:v1", daemon.addr), &format!("oci:{}:v1", out_dir.path().display()));
    let metrics = http_get(daemon.addr, "/metrics");
    assert_eq!(metric_value(&metrics, "thaw_upstream_bytes_total") as u64, fetched, "skopeo's pull went upstream");
    assert!(metric_value(&metrics, "thaw_cache_hits_total") >= 3.0);

    assert!(daemon.stop().success(), "thaw serve did not exit cleanly on SIGTERM");

    // Without a daemon, thaw pull opens the store itself: everything is cached already.
    let out = Command::new(thaw()).args(["pull", "--json", "--data", data_s, "--upstream", &upstream, "docker.io/library/app:v1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let pulled: serde_json::Value = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|e| e["event"] == "pulled").unwrap();
    assert_eq!(pulled["summary"]["cached_blobs"], 3, "{text}");

    // The request trace holds one record per request, in thaw-record's schema.
    let lines = std::fs::read_to_string(trace.join("requests.jsonl")).unwrap();
    let recs: Vec<thaw_record::Record> = lines.lines().map(|l| thaw_record::Record::from_line(l).unwrap()).collect();
    let hits = recs.iter().filter(|r| matches!(r, thaw_record::Record::Request(q) if q.outcome == thaw_record::CacheOutcome::Hit && q.kind == thaw_record::ObjectKind::Blob)).count();
    assert!(hits >= 3, "expected the blob hits of skopeo's pull in the trace, got {hits} in {} records", recs.len());
    for r in &recs {
        if let thaw_record::Record::Request(q) = r {
            assert_eq!(q.principal, None, "anonymous requests carry no principal");
        }
    }
}

#[test]
fn preheat_reports_failures_and_bad_input_clearly() {
    if !have("docker-registry", "preheat_reports_failures") || !have("skopeo", "preheat_reports_failures") {
        return;
    }
    let up = DockerRegistry::start();
    let img = TestImage::build(12, &[100_000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/library/one:v1", up.addr));
    let data = tempfile::Builder::new().prefix("thaw-cli").tempdir_in(shm()).unwrap();
    let list = data.path().join("images.txt");
    std::fs::write(&list, "# images to warm\ndocker.io/library/one:v1\ndocker.io/library/missing:v1\nNot A Reference\n").unwrap();
    let upstream = format!("docker.io={}", up.url());
    let out = Command::new(thaw())
        .args(["preheat", "--data", data.path().to_str().unwrap(), "--upstream", &upstream, "-f", list.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "two of three images cannot be pulled");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing"), "{err}");
    assert!(err.contains("Not A Reference"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&img.manifest_digest), "{stdout}");
}

#[test]
fn bad_config_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("thaw.toml");
    std::fs::write(&cfg, "[registry]\ntag_ttl = \"soon\"\n").unwrap();
    let out = Command::new(thaw()).args(["serve", "--config", cfg.to_str().unwrap(), "--data", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad duration") && err.contains("5m"), "{err}");
    std::fs::write(&cfg, "[registry]\n[[registry.upstreams]]\nname = \"a\"\nurl = \"ftp://x\"\n").unwrap();
    let out = Command::new(thaw()).args(["serve", "--config", cfg.to_str().unwrap(), "--data", dir.path().to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http:// or https://"), "{err}");
}
