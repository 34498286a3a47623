//! Regression tests for the findings of the first security review of the registry, each named
//! after the behaviour it checks; its doc comment gives the finding's number.

use reqwest::blocking::Client;
use serde_json::json;
use thaw_registry::config::Account;
use thaw_registry::RegistryConfig;
use thaw_testkit::*;

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn push_blob(c: &Client, base: &str, repo: &str, data: &[u8]) -> String {
    let d = sha(data);
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}")).body(data.to_vec()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap_or_default());
    d
}

/// Finding 1: naming a digest cached for another repository, with an empty or wrong body, must not
/// link it into the pusher's repository; nor may a pushed manifest reference it.
#[test]
fn push_cannot_claim_a_cached_blob_by_digest() {
    let thaw = Thaw::start(RegistryConfig::default());
    let (base, c) = (thaw.url(), Client::new());
    let secret = filler(99, 5000);
    let d = push_blob(&c, &base, "private/team", &secret);
    // Monolithic push naming D with an empty body, and with other bytes.
    for body in [Vec::new(), b"not the secret".to_vec()] {
        let r = c.post(format!("{base}/v2/evil/blobs/uploads/?digest={d}")).body(body).send().unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<serde_json::Value>().unwrap()["errors"][0]["code"], "DIGEST_INVALID");
    }
    assert_eq!(c.get(format!("{base}/v2/evil/blobs/{d}")).send().unwrap().status(), 404);
    // A chunked upload finishing with D but other bytes: refused too.
    let r = c.post(format!("{base}/v2/evil/blobs/uploads/")).send().unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(c.put(format!("{base}{loc}?digest={d}")).body(vec![0u8; 10]).send().unwrap().status(), 400);
    assert_eq!(c.get(format!("{base}/v2/evil/blobs/{d}")).send().unwrap().status(), 404);
    // A manifest in evil/ referencing D (present in the store, but not pushed to evil/).
    let cfg = push_blob(&c, &base, "evil", b"{}");
    let m = serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cfg,"size":2},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":d,"size":secret.len()}]})).unwrap();
    let r = c.put(format!("{base}/v2/evil/manifests/x")).header("Content-Type", "application/vnd.oci.image.manifest.v1+json").body(m).send().unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(c.get(format!("{base}/v2/evil/blobs/{d}")).send().unwrap().status(), 404);
    // The rightful owner still reads it, and pushing the real bytes elsewhere works.
    assert_eq!(c.get(format!("{base}/v2/private/team/blobs/{d}")).send().unwrap().bytes().unwrap().as_ref(), secret.as_slice());
    push_blob(&c, &base, "other", &secret);
}

/// Finding 1: with accounts configured, local repositories are for accounts only.
#[test]
fn local_repositories_need_an_account_when_accounts_exist() {
    let cfg = RegistryConfig {
        accounts: vec![Account { username: "alice".into(), password: "pw".into(), upstream: Default::default() }],
        ..Default::default()
    };
    let thaw = Thaw::start(cfg);
    let (base, c) = (thaw.url(), Client::new());
    let r = c.post(format!("{base}/v2/team/app/blobs/uploads/?digest={}", sha(b"x"))).body(b"x".to_vec()).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let r = c.post(format!("{base}/v2/team/app/blobs/uploads/?digest={}", sha(b"x"))).basic_auth("alice", Some("pw")).body(b"x".to_vec()).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(c.get(format!("{base}/v2/team/app/blobs/{}", sha(b"x"))).send().unwrap().status(), 401);
    assert_eq!(c.get(format!("{base}/v2/team/app/blobs/{}", sha(b"x"))).basic_auth("alice", Some("pw")).send().unwrap().status(), 200);
    assert_eq!(c.get(format!("{base}/v2/team/app/tags/list")).send().unwrap().status(), 401);
}

/// Finding 3: a layer digest asked for on the manifest endpoint is not read or served.
#[test]
fn layer_digest_on_manifest_endpoint_is_unknown() {
    let thaw = Thaw::start(RegistryConfig::default());
    let (base, c) = (thaw.url(), Client::new());
    let d = push_blob(&c, &base, "lib/x", &filler(3, 100_000));
    for r in [c.get(format!("{base}/v2/lib/x/manifests/{d}")).send().unwrap(), c.head(format!("{base}/v2/lib/x/manifests/{d}")).send().unwrap()] {
        assert_eq!(r.status(), 404);
    }
}

/// Finding 4: a fresh tag whose manifest blob was evicted is fetched again, not answered 404.
#[test]
fn evicted_manifest_of_a_fresh_tag_is_refetched() {
    if !have("docker-registry", "evicted_manifest_of_a_fresh_tag_is_refetched") || !have("skopeo", "evicted_manifest_of_a_fresh_tag_is_refetched") {
        return;
    }
    let up = DockerRegistry::start();
    let img = TestImage::build(41, &[2000]);
    skopeo_copy(&img.oci_ref(), &format!("docker://{}/library/e:v1", up.addr));
    let thaw = Thaw::start(RegistryConfig { upstreams: vec![upstream("docker.io", &up.url(), true)], ..Default::default() });
    let c = Client::new();
    let url = format!("{}/v2/library/e/manifests/v1", thaw.url());
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    let first = c.get(&url).header("Accept", accept).send().unwrap();
    assert_eq!(first.status(), 200);
    let d: thaw_oci::Digest = first.headers()["docker-content-digest"].to_str().unwrap().parse().unwrap();
    assert!(thaw.registry.store().remove(&d).unwrap(), "the manifest was cached");
    let again = c.get(&url).header("Accept", accept).send().unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["docker-content-digest"].to_str().unwrap(), d.to_string());
    assert_eq!(again.headers()["x-thaw-cache"].to_str().unwrap(), "miss");
}

/// Finding 6: made-up methods do not create new metric series.
#[test]
fn unknown_http_methods_share_one_metric_label() {
    let thaw = Thaw::start(RegistryConfig::default());
    let c = Client::new();
    for i in 0..5 {
        let m = reqwest::Method::from_bytes(format!("FOO{i}").as_bytes()).unwrap();
        c.request(m, format!("{}/v2/", thaw.url())).send().unwrap();
    }
    let text = thaw.registry.render_metrics();
    assert!(!text.contains("FOO"), "{text}");
    assert!(text.contains("method=\"OTHER\""), "{text}");
}

/// Finding 5: the upstream's public/private verdict is asked again after `visibility_ttl`, so a
/// repository private before it was published does not stay closed forever, and one that turns
/// private stops being served to everyone; content last seen public is still served while the
/// upstream is down.
#[test]
fn upstream_visibility_is_asked_again_after_its_ttl() {
    use std::time::Duration;
    use thaw_testkit::fake_upstream::FakeUpstream;
    let fake = FakeUpstream::start();
    fake.enable_auth(false, Duration::from_secs(300));
    let img = fake.put_image("new/app", "v1", &[filler(501, 10_000)]);
    let ttl = Duration::from_millis(300);
    let thaw = Thaw::start(RegistryConfig { upstreams: vec![upstream("fake", &fake.url(), true)], visibility_ttl: ttl, ..Default::default() });
    let c = Client::new();
    let manifest = format!("{}/v2/new/app/manifests/v1", thaw.url());
    let (layer, data) = img.layers[0].clone();
    let blob = format!("{}/v2/new/app/blobs/{layer}", thaw.url());
    let accept = "application/vnd.oci.image.manifest.v1+json";

    assert_eq!(c.get(&manifest).header("Accept", accept).send().unwrap().status(), 401, "not yet public");
    fake.make_public("new/app");
    std::thread::sleep(ttl + Duration::from_millis(100));
    assert_eq!(c.get(&manifest).header("Accept", accept).send().unwrap().status(), 200, "published: asked again");
    assert_eq!(c.get(&blob).send().unwrap().bytes().unwrap().as_ref(), data.as_slice());

    fake.make_private("new/app");
    std::thread::sleep(ttl + Duration::from_millis(100));
    assert_eq!(c.get(&blob).send().unwrap().status(), 401, "turned private: cached content no longer served to anonymous clients");

    fake.make_public("new/app");
    std::thread::sleep(ttl + Duration::from_millis(100));
    assert_eq!(c.get(&blob).send().unwrap().status(), 200);
    std::thread::sleep(ttl + Duration::from_millis(100));
    fake.go_down();
    let r = c.get(&blob).send().unwrap();
    assert_eq!(r.status(), 200, "content last seen public is served while the upstream is down");
    assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
}

/// A verdict is kept in the store with its time: a restarted mirror trusts a recent one instead
/// of asking the upstream about the repository again, and asks once it is older than the TTL.
#[test]
fn a_restart_keeps_recent_visibility_verdicts() {
    use std::time::Duration;
    use thaw_testkit::fake_upstream::FakeUpstream;
    let fake = FakeUpstream::start();
    fake.enable_auth(false, Duration::from_secs(300));
    fake.put_image("pub/app", "v1", &[filler(502, 1000)]);
    fake.make_public("pub/app");
    let cfg = |ttl| RegistryConfig { upstreams: vec![upstream("fake", &fake.url(), true)], visibility_ttl: ttl, ..Default::default() };
    let c = Client::new();
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let probes = || fake.count("HEAD", "/v2/pub/app/manifests/v1");
    let get = |thaw: &Thaw| c.get(format!("{}/v2/pub/app/manifests/v1", thaw.url())).header("Accept", accept).send().unwrap().status();

    let thaw = Thaw::start(cfg(Duration::from_secs(3600)));
    assert_eq!(get(&thaw), 200);
    let asked = probes();
    assert!(asked >= 1, "the first request asks the upstream");
    let thaw = thaw.restart(cfg(Duration::from_secs(3600)));
    assert_eq!(get(&thaw), 200);
    assert_eq!(probes(), asked, "a restarted mirror asked again about a verdict an hour from stale");
    // The same verdict under a TTL it has outlived is asked again.
    std::thread::sleep(Duration::from_millis(50));
    let thaw = thaw.restart(cfg(Duration::from_millis(10)));
    assert_eq!(get(&thaw), 200);
    assert!(probes() > asked, "a stale verdict was trusted after a restart");
}

/// Finding 12: a 401 always carries a challenge.
#[test]
fn every_401_carries_a_challenge() {
    let thaw = Thaw::start(RegistryConfig::default());
    let r = Client::new().get(format!("{}/v2/x/blobs/{}", thaw.url(), sha(b"x"))).header("Authorization", "Digest nonsense").send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
}

/// Benchmark finding: concurrent cold requests for one manifest make one upstream GET (what Docker
/// Hub counts as a pull) and one access probe, not one each.
#[test]
fn concurrent_manifest_misses_make_one_upstream_get() {
    use thaw_testkit::fake_upstream::FakeUpstream;
    let fake = FakeUpstream::start();
    let img = fake.put_image("team/app", "v1", &[filler(601, 50_000)]);
    let thaw = Thaw::start(RegistryConfig { upstreams: vec![upstream("fake", &fake.url(), true)], ..Default::default() });
    fake.clear_log();
    let url = format!("{}/v2/team/app/manifests/v1", thaw.url());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bodies = rt.block_on(async {
        let c = reqwest::Client::new();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (c, u) = (c.clone(), url.clone());
                tokio::spawn(async move { c.get(u).header("Accept", "application/vnd.oci.image.manifest.v1+json").send().await.unwrap().bytes().await.unwrap() })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for b in bodies {
        assert_eq!(b.as_ref(), img.manifest.as_slice());
    }
    assert_eq!(fake.count("GET", "/v2/team/app/manifests/v1"), 1, "{:?}", fake.log());
    assert!(fake.count("HEAD", "/v2/team/app/manifests/v1") <= 1, "{:?}", fake.log());
}
