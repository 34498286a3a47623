//! The mirror against real peers: docker-registry as the upstream, skopeo as the client.

use thaw_testkit as support;

use std::time::Duration;

use support::*;
use thaw_registry::RegistryConfig;

fn mirror_of(up: &DockerRegistry) -> Thaw {
    let cfg = RegistryConfig {
        upstreams: vec![upstream("docker.io", &up.url(), true)],
        ..Default::default()
    };
    Thaw::start(cfg)
}

/// skopeo pulls through thaw (default upstream and path-prefix forms); the second pull is served
/// entirely from the store: no upstream byte, every blob a hit.
#[test]
fn skopeo_pulls_through_the_mirror_and_warm_pulls_stay_local() {
    if !have("docker-registry", "skopeo_pulls_through_the_mirror") || !have("skopeo", "skopeo_pulls_through_the_mirror") {
        return;
    }
    let up = DockerRegistry::start();
    let img = TestImage::build(1, &[300_000, 1_200_000, 50_000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/library/app:v1", up.addr));
    let thaw = mirror_of(&up);

    let out1 = tempfile::tempdir().unwrap();
    skopeo_copy(&format!("docker://{}/library/app:v1", thaw.addr), &format!("oci:{}:v1", out1.path().display()));
    let fetched_cold = thaw.metric("thaw_upstream_bytes_total");
    assert!(fetched_cold as u64 >= img.total_bytes, "cold pull fetched {fetched_cold} < {}", img.total_bytes);
    for d in &img.layer_digests {
        let got = std::fs::read(out1.path().join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!(got, img.blob(d), "layer {d} differs");
    }

    // Warm pull through the path-prefix form (registries.conf mirror location host/docker.io).
    let out2 = tempfile::tempdir().unwrap();
    skopeo_copy(&format!("docker://{}/docker.io/library/app:v1", thaw.addr), &format!("oci:{}:v1", out2.path().display()));
    let fetched_warm = thaw.metric("thaw_upstream_bytes_total");
    assert_eq!(fetched_warm, fetched_cold, "a warm pull fetched bytes upstream");
    assert!(thaw.metric("thaw_cache_hits_total") >= 4.0);
    assert!(thaw.metric("thaw_bytes_saved_total") as u64 >= img.total_bytes - 2000);
}

/// thaw as a standalone registry: skopeo pushes (chunked uploads), pulls back, and a second
/// repository gets the blobs by cross-repository mount.
#[test]
fn standalone_registry_push_pull_and_mount() {
    if !have("skopeo", "standalone_registry_push_pull_and_mount") {
        return;
    }
    let thaw = Thaw::start(RegistryConfig::default());
    let img = TestImage::build(2, &[200_000, 700_000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/team/app:1.0", thaw.addr));
    skopeo_copy(&format!("docker://{}/team/app:1.0", thaw.addr), &format!("docker://{}/other/app:copy", thaw.addr));
    let out = tempfile::tempdir().unwrap();
    skopeo_copy(&format!("docker://{}/other/app:copy", thaw.addr), &format!("oci:{}:x", out.path().display()));
    for d in &img.layer_digests {
        assert_eq!(std::fs::read(out.path().join("blobs/sha256").join(&d[7..])).unwrap(), img.blob(d));
    }
    let tags = skopeo(&["list-tags", "--tls-verify=false", &format!("docker://{}/team/app", thaw.addr)]);
    let v: serde_json::Value = serde_json::from_slice(&tags.stdout).unwrap();
    assert_eq!(v["Tags"], serde_json::json!(["1.0"]));
}

/// Concurrent GETs of one uncached blob: one upstream fetch, every client gets the right bytes.
#[test]
fn concurrent_misses_are_fetched_once() {
    if !have("docker-registry", "concurrent_misses_are_fetched_once") || !have("skopeo", "concurrent_misses_are_fetched_once") {
        return;
    }
    let up = DockerRegistry::start();
    let img = TestImage::build(3, &[4_000_000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/library/big:v1", up.addr));
    let thaw = mirror_of(&up);
    let layer = img.layer_digests[0].clone();
    let url = format!("{}/v2/library/big/blobs/{layer}", thaw.url());
    let expect = img.blob(&layer);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bodies = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, u) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move { c.get(u).send().await.unwrap().bytes().await.unwrap() }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for b in bodies {
        assert_eq!(b.len(), expect.len());
        assert!(b.as_ref() == expect.as_slice());
    }
    let fetched = thaw.metric("thaw_upstream_bytes_total") as usize;
    assert_eq!(fetched, expect.len(), "the blob was fetched more than once upstream");
    let started = thaw.metric("thaw_cache_misses_total") + thaw.metric("thaw_coalesced_waiters_total") + thaw.metric("thaw_cache_hits_total");
    assert_eq!(started, 8.0);
}

/// Range requests: on a miss (answered from the flight) and on a hit (from the store), and a bad
/// Range gets 416 with the blob's size.
#[test]
fn range_requests_on_miss_and_hit() {
    if !have("docker-registry", "range_requests_on_miss_and_hit") || !have("skopeo", "range_requests_on_miss_and_hit") {
        return;
    }
    let up = DockerRegistry::start();
    let img = TestImage::build(4, &[1_000_000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/library/r:v1", up.addr));
    let thaw = mirror_of(&up);
    let layer = img.layer_digests[0].clone();
    let blob = img.blob(&layer);
    let url = format!("{}/v2/library/r/blobs/{layer}", thaw.url());
    let client = reqwest::blocking::Client::new();
    for (range, start, end) in [("bytes=100-199", 100usize, 200usize), ("bytes=-10", blob.len() - 10, blob.len()), ("bytes=500000-", 500_000, blob.len())] {
        let r = client.get(&url).header("Range", range).send().unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(r.headers()["content-range"].to_str().unwrap(), format!("bytes {}-{}/{}", start, end - 1, blob.len()));
        assert_eq!(r.bytes().unwrap().as_ref(), &blob[start..end], "{range}");
    }
    let r = client.get(&url).header("Range", "bytes=99999999-").send().unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"].to_str().unwrap(), format!("bytes */{}", blob.len()));
    // Ranges thaw cannot use (several ranges, another unit, bad syntax) are ignored: RFC 9110
    // says to answer with the whole body.
    for ignored in ["bytes=1-2,5-6", "items=0-1", "bytes=x-"] {
        let r = client.get(&url).header("Range", ignored).send().unwrap();
        assert_eq!(r.status(), 200, "{ignored}");
        assert_eq!(r.bytes().unwrap().len(), blob.len());
    }
    // the fetch completed once in all of that
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(thaw.metric("thaw_upstream_bytes_total") as usize, blob.len());
}

/// Manifests: correct headers for GET and HEAD by tag and by digest, and unknown names give the
/// spec's error JSON.
#[test]
fn manifest_headers_and_errors() {
    if !have("docker-registry", "manifest_headers_and_errors") || !have("skopeo", "manifest_headers_and_errors") {
        return;
    }
    let up = DockerRegistry::start();
    let img = TestImage::build(5, &[1000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/library/m:v1", up.addr));
    let thaw = mirror_of(&up);
    let client = reqwest::blocking::Client::new();
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    let r = client.get(format!("{}/v2/library/m/manifests/v1", thaw.url())).header("Accept", accept).send().unwrap();
    assert_eq!(r.status(), 200);
    let digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let len: usize = r.headers()["content-length"].to_str().unwrap().parse().unwrap();
    let body = r.bytes().unwrap();
    assert_eq!(body.len(), len);
    assert!(ct.contains("manifest"), "{ct}");
    let r = client.head(format!("{}/v2/library/m/manifests/{digest}", thaw.url())).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), digest);
    assert_eq!(r.headers()["x-thaw-cache"].to_str().unwrap(), "hit");
    let r = client.get(format!("{}/v2/library/nope/manifests/v1", thaw.url())).send().unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let r = client.get(format!("{}/v2/Bad_Name/manifests/v1", thaw.url())).send().unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
    let r = client.get(format!("{}/v2/library/m/blobs/sha256:zz", thaw.url())).send().unwrap();
    assert_eq!(r.status(), 400);
    let r = client.get(format!("{}/v2/", thaw.url())).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
}
