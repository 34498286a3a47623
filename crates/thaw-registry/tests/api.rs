//! The distribution API as a standalone registry, driven with raw HTTP: chunked uploads, tag
//! pagination, manifest media types, and the spec's errors.

use reqwest::blocking::Client;
use serde_json::json;
use thaw_registry::RegistryConfig;
use thaw_testkit::*;

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Pushes `data` as a blob with a chunked upload (POST, PATCH..., PUT) and returns its digest.
fn push_chunked(c: &Client, base: &str, repo: &str, data: &[u8], chunk: usize) -> String {
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), 202);
    let mut loc = r.headers()["location"].to_str().unwrap().to_string();
    let mut off = 0;
    for part in data.chunks(chunk) {
        let r = c
            .patch(format!("{base}{loc}"))
            .header("Content-Range", format!("{}-{}", off, off + part.len() - 1))
            .header("Content-Type", "application/octet-stream")
            .body(part.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
        off += part.len();
        assert_eq!(r.headers()["range"].to_str().unwrap(), format!("0-{}", off - 1));
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    let d = sha(data);
    let r = c.put(format!("{base}{loc}?digest={d}")).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    d
}

#[test]
fn chunked_upload_status_resume_and_errors() {
    let thaw = Thaw::start(RegistryConfig::default());
    let base = thaw.url();
    let c = Client::new();
    let data = filler(7, 300_000);
    let d = push_chunked(&c, &base, "team/blobs", &data, 64 * 1024);
    let got = c.get(format!("{base}/v2/team/blobs/blobs/{d}")).send().unwrap();
    assert_eq!(got.headers()["docker-content-digest"].to_str().unwrap(), d);
    assert_eq!(got.bytes().unwrap().as_ref(), data.as_slice());

    // A chunk that does not start where the upload ends: 416, and the upload is unharmed.
    let r = c.post(format!("{base}/v2/team/blobs/blobs/uploads/")).send().unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    c.patch(format!("{base}{loc}")).header("Content-Range", "0-9").body(vec![1u8; 10]).send().unwrap();
    let r = c.patch(format!("{base}{loc}")).header("Content-Range", "20-29").body(vec![1u8; 10]).send().unwrap();
    assert_eq!(r.status(), 416);
    let r = c.get(format!("{base}{loc}")).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"].to_str().unwrap(), "0-9");
    // Finishing with the wrong digest is refused and nothing is stored under it.
    let wrong = sha(b"something else");
    let r = c.put(format!("{base}{loc}?digest={wrong}")).send().unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
    assert_eq!(c.head(format!("{base}/v2/team/blobs/blobs/{wrong}")).send().unwrap().status(), 404);
    // Cancelled and unknown uploads.
    let r = c.post(format!("{base}/v2/team/blobs/blobs/uploads/")).send().unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(c.delete(format!("{base}{loc}")).send().unwrap().status(), 204);
    let r = c.get(format!("{base}{loc}")).send().unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(c.get(format!("{base}/v2/team/blobs/blobs/uploads/not-an-id")).send().unwrap().status(), 404);

    // Monolithic POST with ?digest=.
    let small = b"monolithic blob".to_vec();
    let ds = sha(&small);
    let r = c.post(format!("{base}/v2/team/blobs/blobs/uploads/?digest={ds}")).body(small.clone()).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(c.get(format!("{base}/v2/team/blobs/blobs/{ds}")).send().unwrap().bytes().unwrap().as_ref(), small.as_slice());
    // A blob is only visible under repositories it was pushed or mounted to.
    assert_eq!(c.head(format!("{base}/v2/elsewhere/blobs/{ds}")).send().unwrap().status(), 404);
    let r = c.post(format!("{base}/v2/elsewhere/blobs/uploads/?mount={ds}&from=team/blobs")).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(c.head(format!("{base}/v2/elsewhere/blobs/{ds}")).send().unwrap().status(), 200);
}

fn push_image(c: &Client, base: &str, repo: &str, tag: &str, media_type: &str, seed: u64) -> (String, Vec<u8>) {
    let layer = filler(seed, 1000);
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes();
    let ld = push_chunked(c, base, repo, &layer, 4096);
    let cd = push_chunked(c, base, repo, &config, 4096);
    let (cfg_type, layer_type) = if media_type.contains("docker") {
        ("application/vnd.docker.container.image.v1+json", "application/vnd.docker.image.rootfs.diff.tar.gzip")
    } else {
        ("application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar")
    };
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": cfg_type, "digest": cd, "size": config.len()},
        "layers": [{"mediaType": layer_type, "digest": ld, "size": layer.len()}]
    }))
    .unwrap();
    let r = c.put(format!("{base}/v2/{repo}/manifests/{tag}")).header("Content-Type", media_type).body(m.clone()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    (sha(&m), m)
}

#[test]
fn manifest_media_types_index_and_tag_pagination() {
    let thaw = Thaw::start(RegistryConfig::default());
    let base = thaw.url();
    let c = Client::new();
    let docker_v2 = "application/vnd.docker.distribution.manifest.v2+json";
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let (d1, m1) = push_image(&c, &base, "lib/app", "docker", docker_v2, 1);
    let (d2, m2) = push_image(&c, &base, "lib/app", "oci", oci, 2);
    for (tag, d, m, mt) in [("docker", &d1, &m1, docker_v2), ("oci", &d2, &m2, oci)] {
        for reference in [tag, d.as_str()] {
            let r = c.get(format!("{base}/v2/lib/app/manifests/{reference}")).send().unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"].to_str().unwrap(), mt);
            assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), d);
            assert_eq!(r.headers()["content-length"].to_str().unwrap(), m.len().to_string());
            assert_eq!(r.bytes().unwrap().as_ref(), m.as_slice(), "bytes must be served exactly as pushed");
        }
    }
    // An OCI index over both, and a Docker manifest list.
    for (tag, mt) in [("multi", "application/vnd.oci.image.index.v1+json"), ("list", "application/vnd.docker.distribution.manifest.list.v2+json")] {
        let idx = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": mt,
            "manifests": [
                {"mediaType": docker_v2, "digest": d1, "size": m1.len(), "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": oci, "digest": d2, "size": m2.len(), "platform": {"os": "linux", "architecture": "arm64"}}
            ]
        }))
        .unwrap();
        let r = c.put(format!("{base}/v2/lib/app/manifests/{tag}")).header("Content-Type", mt).body(idx.clone()).send().unwrap();
        assert_eq!(r.status(), 201);
        let r = c.head(format!("{base}/v2/lib/app/manifests/{tag}")).send().unwrap();
        assert_eq!(r.headers()["content-type"].to_str().unwrap(), mt);
        assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), sha(&idx));
    }
    // A manifest referencing a blob never pushed is refused with MANIFEST_BLOB_UNKNOWN.
    let bad = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":oci,
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":sha(b"nope"),"size":4},"layers":[]})).unwrap();
    let r = c.put(format!("{base}/v2/lib/app/manifests/bad")).header("Content-Type", oci).body(bad).send().unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    // Garbage manifests are refused with MANIFEST_INVALID.
    let r = c.put(format!("{base}/v2/lib/app/manifests/junk")).header("Content-Type", oci).body("{not json").send().unwrap();
    assert_eq!(r.json::<serde_json::Value>().unwrap()["errors"][0]["code"], "MANIFEST_INVALID");

    // Tag listing with pagination: n and last, and a Link header to the next page.
    for t in ["b", "a", "c"] {
        let (_, m) = (0, &m2);
        let r = c.put(format!("{base}/v2/lib/app/manifests/{t}")).header("Content-Type", oci).body(m.clone()).send().unwrap();
        assert_eq!(r.status(), 201);
    }
    let all: serde_json::Value = c.get(format!("{base}/v2/lib/app/tags/list")).send().unwrap().json().unwrap();
    assert_eq!(all["tags"], json!(["a", "b", "c", "docker", "list", "multi", "oci"]));
    let r = c.get(format!("{base}/v2/lib/app/tags/list?n=2")).send().unwrap();
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(r.json::<serde_json::Value>().unwrap()["tags"], json!(["a", "b"]));
    assert!(link.contains("last=b") && link.contains("rel=\"next\""), "{link}");
    let r = c.get(format!("{base}/v2/lib/app/tags/list?n=3&last=b")).send().unwrap();
    assert_eq!(r.json::<serde_json::Value>().unwrap()["tags"], json!(["c", "docker", "list"]));
    let r = c.get(format!("{base}/v2/lib/app/tags/list?n=10&last=oci")).send().unwrap();
    assert!(r.headers().get("link").is_none());
    assert_eq!(r.json::<serde_json::Value>().unwrap()["tags"], json!([]));
    assert_eq!(c.get(format!("{base}/v2/never/pushed/tags/list")).send().unwrap().status(), 404);
}

/// A monolithic POST whose body breaks off (the client announces more than it sends and hangs
/// up) is refused and leaves no upload behind in the store, rather than one that lingers until
/// the upload expiry timer.
#[test]
fn a_broken_monolithic_push_leaves_no_upload() {
    use std::io::Write;
    let thaw = Thaw::start(RegistryConfig::default());
    let d = sha(b"never sent whole");
    let mut s = std::net::TcpStream::connect(thaw.addr).unwrap();
    write!(
        s,
        "POST /v2/team/broken/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[7u8; 1000]).unwrap();
    s.flush().unwrap();
    // wait until the upload exists, then break the body off
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while thaw.registry.store().uploads().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the upload never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(s);
    while !thaw.registry.store().uploads().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the broken push's upload was left behind");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(Client::new().head(format!("{}/v2/team/broken/blobs/{d}", thaw.url())).send().unwrap().status(), 404);
}
