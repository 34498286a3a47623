//! The mirror's promises under a misbehaving upstream (issue 2, items 3 and 4): thaw in process,
//! in front of the fault-injecting fake upstream from thaw-testkit.
//!
//! Each test states one promise and breaks the upstream in one way. Assertions are on what
//! clients receive, on thaw's metrics, on the store, and on the fake's request log — never on how
//! long something took, except that a hanging upstream must not hang the client past a generous
//! bound derived from the configured timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use thaw_registry::RegistryConfig;
use thaw_testkit::fake_upstream::{Fault, FakeImage, FakeUpstream, Kind};
use thaw_testkit::{filler, upstream, Thaw};

const REPO: &str = "team/app";

fn mirror_cfg(fake: &FakeUpstream) -> RegistryConfig {
    RegistryConfig { upstreams: vec![upstream("fake", &fake.url(), true)], ..Default::default() }
}

fn mirror(fake: &FakeUpstream) -> Thaw {
    Thaw::start(mirror_cfg(fake))
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

fn blob_url(thaw: &Thaw, repo: &str, d: &str) -> String {
    format!("{}/v2/{repo}/blobs/{d}", thaw.url())
}

fn manifest_url(thaw: &Thaw, repo: &str, reference: &str) -> String {
    format!("{}/v2/{repo}/manifests/{reference}", thaw.url())
}

/// One sample of a metric with a label value, e.g. `thaw_cache_misses_total{kind="blob"}`.
fn metric_with(thaw: &Thaw, name: &str, label: &str) -> f64 {
    thaw.registry
        .render_metrics()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn digest(s: &str) -> thaw_oci::Digest {
    s.parse().unwrap()
}

fn stored(thaw: &Thaw, d: &str) -> bool {
    thaw.registry.store().stat(&digest(d)).unwrap().is_some()
}

/// GETs the image's manifest by tag through thaw: links its blobs to the repository and records
/// the repository as public, so later blob requests go straight to the fetch path.
fn warm_manifest(thaw: &Thaw, img: &FakeImage) {
    let r = client().get(manifest_url(thaw, &img.repo, &img.tag)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), img.manifest.as_slice());
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Wrong bytes of the right length: every client streaming the miss is cut off before the last
/// byte, the mismatch is counted once, nothing is stored, and the next request fetches again.
#[test]
fn wrong_bytes_cut_every_waiter_and_nothing_is_stored() {
    let fake = FakeUpstream::start();
    let layer = filler(1, 2_000_000);
    let img = fake.put_image(REPO, "v1", std::slice::from_ref(&layer));
    let thaw = mirror(&fake);
    warm_manifest(&thaw, &img);
    let ld = img.layers[0].0.clone();
    let path = format!("/v2/{REPO}/blobs/{ld}");

    // Hold the wrong body at byte 0 until every client has joined the one flight.
    fake.push_once(Kind::Blob, Fault::WrongBytes.stalled_at(0));
    const CLIENTS: usize = 6;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = blob_url(&thaw, REPO, &ld);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.clone();
            rt.spawn(async move {
                let resp = reqwest::get(url).await?;
                let status = resp.status().as_u16();
                let mut body = resp.bytes_stream();
                let mut got = Vec::new();
                while let Some(chunk) = body.next().await {
                    match chunk {
                        Ok(c) => got.extend_from_slice(&c),
                        Err(_) => return Ok::<_, reqwest::Error>((status, got, true)),
                    }
                }
                Ok((status, got, false))
            })
        })
        .collect();
    wait_until("every client joined the flight", || {
        metric_with(&thaw, "thaw_cache_misses_total", "kind=\"blob\"") + thaw.metric("thaw_coalesced_waiters_total") >= CLIENTS as f64
    });
    assert_eq!(metric_with(&thaw, "thaw_cache_misses_total", "kind=\"blob\""), 1.0, "one flight for all clients");
    // Release only once the flight's request is at the upstream and its body is being held.
    wait_until("the flight's GET reached the upstream", || fake.count("GET", &path) == 1);
    fake.release();
    for t in tasks {
        match rt.block_on(t).unwrap() {
            // The connection was refused or reset before the headers: no content at all.
            Err(_) => {}
            Ok((status, got, cut)) => {
                assert!(
                    got.len() < layer.len(),
                    "a client received the full {} bytes of a blob that failed verification (status {status}, cut {cut}, right bytes {}, mismatches {}, log {:?})",
                    got.len(),
                    got == layer,
                    thaw.metric("thaw_digest_mismatches_total"),
                    fake.log()
                );
                assert!(status != 200 || cut, "a 200 body ended cleanly although it was short");
            }
        }
    }
    assert_eq!(thaw.metric("thaw_digest_mismatches_total"), 1.0);
    assert!(!stored(&thaw, &ld), "a blob that failed verification was stored");
    assert_eq!(fake.count("GET", &path), 1);

    // The next request fetches again, and this time the upstream is honest.
    let r = client().get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), layer.as_slice());
    assert_eq!(fake.count("GET", &path), 2, "the failed blob was not fetched again");
    wait_until("the blob is committed", || stored(&thaw, &ld));
}

/// A body cut mid-way is resumed with `Range` from the byte where it stopped; the client sees one
/// complete, correct body.
#[test]
fn truncated_body_is_resumed_with_range() {
    let fake = FakeUpstream::start();
    let layer = filler(2, 1_500_000);
    let img = fake.put_image(REPO, "v1", std::slice::from_ref(&layer));
    let thaw = mirror(&fake);
    warm_manifest(&thaw, &img);
    let ld = img.layers[0].0.clone();
    fake.push_once(Kind::Blob, Fault::Truncate(700_000));
    let fetched_before = thaw.metric("thaw_upstream_bytes_total") as usize;
    let r = client().get(blob_url(&thaw, REPO, &ld)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), layer.as_slice());
    assert!(thaw.metric("thaw_upstream_resumes_total") >= 1.0);
    let path = format!("/v2/{REPO}/blobs/{ld}");
    let log = fake.log();
    let resumes: Vec<_> = log.iter().filter(|l| l.path == path && l.method == "GET" && l.range.is_some()).collect();
    assert!(!resumes.is_empty(), "no Range request reached the upstream: {log:?}");
    for r in &resumes {
        let from: u64 = r.range.as_deref().unwrap().trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
        assert!(from > 0 && from <= 700_000, "resumed from {from}");
        assert_eq!(r.status, 206);
    }
    assert_eq!(thaw.metric("thaw_upstream_bytes_total") as usize - fetched_before, layer.len(), "bytes were fetched twice");
    wait_until("the blob is committed", || stored(&thaw, &ld));
}

/// An upstream that answers a resume with 200 and the whole blob: thaw skips what it has and the
/// client still gets exactly the blob.
#[test]
fn upstream_ignoring_range_on_resume_still_gives_the_right_blob() {
    let fake = FakeUpstream::start();
    let layer = filler(3, 1_000_000);
    let img = fake.put_image(REPO, "v1", std::slice::from_ref(&layer));
    let thaw = mirror(&fake);
    warm_manifest(&thaw, &img);
    let ld = img.layers[0].0.clone();
    fake.set(Kind::Blob, Fault::IgnoreRange);
    fake.push_once(Kind::Blob, Fault::Truncate(300_000));
    let r = client().get(blob_url(&thaw, REPO, &ld)).send().unwrap();
    assert_eq!(r.status(), 200, "{:?} {:?}", fake.log(), r.text());
    assert_eq!(r.bytes().unwrap().as_ref(), layer.as_slice());
    assert!(thaw.metric("thaw_upstream_resumes_total") >= 1.0);
    let path = format!("/v2/{REPO}/blobs/{ld}");
    assert!(
        fake.log().iter().any(|l| l.path == path && l.range.is_some() && l.status == 200),
        "the resume was not answered with a 200: {:?}",
        fake.log()
    );
    wait_until("the blob is committed", || stored(&thaw, &ld));
    // A ranged read of the committed blob is right too.
    let r = client().get(blob_url(&thaw, REPO, &ld)).header("Range", "bytes=299990-300009").send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &layer[299_990..300_010]);
}

/// 429 and 503 from the upstream on a blob miss reach the client as 429 and 503 with the spec's
/// error JSON — both on the fetch itself (repository known public) and on the access check (a
/// repository seen for the first time). Nothing is stored; the next request succeeds.
#[test]
fn rate_limits_and_outages_on_a_blob_miss_reach_the_client() {
    let fake = FakeUpstream::start();
    let known = fake.put_image(REPO, "v1", &[filler(4, 100_000), filler(5, 100_000)]);
    let fresh = fake.put_image("team/fresh", "v1", &[filler(6, 100_000), filler(7, 100_000)]);
    let thaw = mirror(&fake);
    warm_manifest(&thaw, &known);
    let c = client();
    // A lasting 503 (every attempt fails); a single one is absorbed by a retry, see below.
    for (img, status, i) in [(&known, 429u16, 0usize), (&known, 503, 1), (&fresh, 429, 0), (&fresh, 503, 1)] {
        if status == 503 {
            fake.set(Kind::Blob, Fault::Status(503));
        }
        let (ld, data) = &img.layers[i];
        if status != 503 {
            fake.push_once(Kind::Blob, Fault::Status(status));
        }
        let r = c.get(blob_url(&thaw, &img.repo, ld)).send().unwrap();
        fake.heal();
        assert_eq!(r.status().as_u16(), status, "{} {ld}", img.repo);
        assert!(r.headers()["content-type"].to_str().unwrap().contains("json"));
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        let v: serde_json::Value = r.json().unwrap();
        let code = v["errors"][0]["code"].as_str().unwrap_or_default().to_string();
        assert!(v["errors"][0]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        if status == 429 {
            assert_eq!(code, "TOOMANYREQUESTS", "{v}");
            assert_eq!(retry_after.as_deref(), Some("1"), "the upstream's Retry-After was not relayed");
        } else {
            assert!(!code.is_empty(), "{v}");
        }
        assert!(!stored(&thaw, ld));
        // The upstream recovered: the same request now succeeds.
        let r = c.get(blob_url(&thaw, &img.repo, ld)).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
    }
}

/// A server error or a refused connection before the first byte of a blob is retried, so a
/// passing outage of the upstream never reaches the client; one that outlasts the retries does,
/// after exactly 1 + `fetch_retries` attempts. A 429 is never retried (covered above).
#[test]
fn passing_upstream_errors_before_the_first_byte_are_retried() {
    let fake = FakeUpstream::start();
    let img = fake.put_image(REPO, "v1", &[filler(21, 50_000), filler(22, 50_000), filler(23, 50_000)]);
    let mut cfg = mirror_cfg(&fake);
    cfg.fetch_retries = 2;
    let thaw = Thaw::start(cfg);
    warm_manifest(&thaw, &img);
    let c = client();
    let gets = |d: &str| fake.log().iter().filter(|l| l.method == "GET" && l.path.ends_with(&format!("/blobs/{d}"))).count();

    // one 502: absorbed
    let (ld, data) = &img.layers[0];
    fake.push_once(Kind::Blob, Fault::Status(502));
    let r = c.get(blob_url(&thaw, REPO, ld)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
    assert_eq!(gets(ld), 2, "one failed attempt and one retry");
    assert!(stored(&thaw, ld));

    // a lasting 504: the client gets a server error after three attempts, nothing is stored
    let (ld, data) = &img.layers[1];
    fake.set(Kind::Blob, Fault::Status(504));
    let r = c.get(blob_url(&thaw, REPO, ld)).send().unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(gets(ld), 3);
    assert!(!stored(&thaw, ld));
    fake.heal();
    let r = c.get(blob_url(&thaw, REPO, ld)).send().unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());

    // the upstream down for a moment: connection refused, then back within the retries
    let (ld, data) = &img.layers[2];
    fake.go_down();
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            fake.come_up();
        });
        c.get(blob_url(&thaw, REPO, ld)).send().unwrap()
    });
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
    assert!(stored(&thaw, ld));
}

/// An upstream that never answers, or stalls mid-body, gives the client an error within a bound
/// set by the configured upstream timeout; nothing is stored.
#[test]
fn hanging_upstream_gives_an_error_within_the_timeout() {
    let fake = FakeUpstream::start();
    let img = fake.put_image(REPO, "v1", &[filler(8, 600_000), filler(9, 600_000)]);
    let mut cfg = mirror_cfg(&fake);
    let timeout = Duration::from_millis(800);
    cfg.upstream_timeout = timeout;
    cfg.fetch_retries = 1;
    let thaw = Thaw::start(cfg);
    warm_manifest(&thaw, &img);
    // Every attempt (the first and the one retry) may take the timeout, plus backoff; the bound
    // is generous because the point is "it ends", not how fast.
    let bound = timeout * 2 + Duration::from_secs(5);

    // No headers at all.
    fake.set(Kind::Blob, Fault::Hang);
    let (ld, _) = &img.layers[0];
    let t0 = Instant::now();
    let r = client().get(blob_url(&thaw, REPO, ld)).send().unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    let v: serde_json::Value = r.json().unwrap();
    assert!(v["errors"][0]["code"].is_string());
    assert!(t0.elapsed() < bound, "took {:?}", t0.elapsed());

    // Headers and 100 kB, then silence; the resume hangs too.
    let (ld, data) = &img.layers[1];
    fake.push_once(Kind::Blob, Fault::Normal.stalled_at(100_000));
    let t0 = Instant::now();
    let r = client().get(blob_url(&thaw, REPO, ld)).send().unwrap();
    assert_eq!(r.status(), 200, "the headers were sent as the upstream's arrived");
    if let Ok(b) = r.bytes() { assert!(b.len() < data.len(), "a stalled fetch produced a complete body") }
    assert!(t0.elapsed() < bound, "took {:?}", t0.elapsed());
    assert!(!stored(&thaw, ld));
    fake.heal();
    fake.release();
}

/// A tag whose TTL expired is served stale — said so in `x-thaw-stale` and counted — when the
/// upstream answers 503 or 429 or cannot be reached; once it is back, answers are fresh again.
#[test]
fn expired_tag_is_served_stale_when_the_upstream_cannot_answer() {
    let fake = FakeUpstream::start();
    let img = fake.put_image(REPO, "v1", &[filler(10, 10_000)]);
    let mut cfg = mirror_cfg(&fake);
    cfg.tag_ttl = Duration::ZERO;
    let thaw = Thaw::start(cfg);
    let c = client();
    let url = manifest_url(&thaw, REPO, "v1");
    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-thaw-stale").is_none());

    let mut expected_stale = 0.0;
    for fault in [Some(Fault::Status(503)), Some(Fault::Status(429)), None] {
        match &fault {
            Some(f) => fake.set(Kind::Manifest, f.clone()),
            None => fake.go_down(),
        }
        let r = c.get(&url).send().unwrap();
        assert_eq!(r.status(), 200, "{fault:?}");
        assert_eq!(r.headers().get("x-thaw-stale").map(|v| v.to_str().unwrap()), Some("1"), "{fault:?}");
        assert_eq!(r.headers()["x-thaw-cache"], "stale");
        assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), img.manifest_digest);
        assert_eq!(r.bytes().unwrap().as_ref(), img.manifest.as_slice());
        expected_stale += 1.0;
        assert_eq!(thaw.metric("thaw_stale_answers_total"), expected_stale);
        fake.heal();
    }
    fake.come_up();
    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-thaw-stale").is_none(), "a fresh answer was marked stale");
    assert_eq!(thaw.metric("thaw_stale_answers_total"), expected_stale);

    // A tag that moved while cached is followed once revalidation works.
    let img2 = fake.put_image(REPO, "v2", &[filler(11, 10_000)]);
    fake.retag(REPO, "v1", &img2.manifest_digest);
    let r = c.get(&url).send().unwrap();
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), img2.manifest_digest);
}

/// Content addressed by digest is immutable: a warm GET or HEAD by digest sends nothing upstream,
/// even with `tag_ttl = 0` and even with the upstream gone.
#[test]
fn content_by_digest_is_never_revalidated() {
    let fake = FakeUpstream::start();
    let img = fake.put_image(REPO, "v1", &[filler(12, 300_000), filler(13, 20_000)]);
    let mut cfg = mirror_cfg(&fake);
    cfg.tag_ttl = Duration::ZERO;
    let thaw = Thaw::start(cfg);
    let c = client();
    warm_manifest(&thaw, &img);
    let mut blobs: Vec<(String, Vec<u8>)> = img.layers.clone();
    blobs.push((img.config_digest.clone(), img.config.clone()));
    for (d, data) in &blobs {
        let r = c.get(blob_url(&thaw, REPO, d)).send().unwrap();
        assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
        wait_until("the blob is committed", || stored(&thaw, d));
    }
    for down in [false, true] {
        if down {
            fake.go_down();
        }
        fake.clear_log();
        let r = c.get(manifest_url(&thaw, REPO, &img.manifest_digest)).send().unwrap();
        assert_eq!(r.status(), 200, "down={down}");
        assert_eq!(r.headers()["x-thaw-cache"], "hit");
        assert_eq!(r.bytes().unwrap().as_ref(), img.manifest.as_slice());
        let r = c.head(manifest_url(&thaw, REPO, &img.manifest_digest)).send().unwrap();
        assert_eq!(r.status(), 200);
        for (d, data) in &blobs {
            let r = c.get(blob_url(&thaw, REPO, d)).send().unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-thaw-cache"], "hit");
            assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
            let r = c.head(blob_url(&thaw, REPO, d)).send().unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-length"].to_str().unwrap(), data.len().to_string());
        }
        assert_eq!(fake.registry_requests(), 0, "down={down}: requests went upstream: {:?}", fake.log());
    }
}

/// Manifests larger than 4 MiB are refused, whether the upstream announces the length or not,
/// and are not stored.
#[test]
fn manifest_over_4_mib_is_refused() {
    let fake = FakeUpstream::start();
    // A syntactically plausible manifest padded with an annotation past the limit.
    let pad = "x".repeat(4 * 1024 * 1024);
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}},"layers":[],"annotations":{{"pad":"{pad}"}}}}"#,
        "0".repeat(64)
    );
    let d = fake.put_manifest(REPO, Some("huge"), "application/vnd.oci.image.manifest.v1+json", body.as_bytes());
    let thaw = mirror(&fake);
    let c = client();
    for chunked in [false, true] {
        if chunked {
            fake.set(Kind::Manifest, Fault::Chunked);
        }
        for reference in ["huge", d.as_str()] {
            let r = c.get(manifest_url(&thaw, REPO, reference)).send().unwrap();
            assert!(r.status().is_client_error() || r.status().is_server_error(), "chunked={chunked} {reference}: {}", r.status());
            let v: serde_json::Value = r.json().unwrap();
            assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID", "{v}");
        }
    }
    assert!(!stored(&thaw, &d));
}

/// The manifest answer never waits for layers: while a large blob's fetch is stalled mid-body,
/// a manifest GET (a miss, fetched upstream) completes; only then is the blob released, and it
/// still arrives whole.
#[test]
fn manifest_answer_does_not_wait_for_a_stalled_layer() {
    let fake = FakeUpstream::start();
    let layer = filler(14, 3_000_000);
    let img = fake.put_image(REPO, "v1", std::slice::from_ref(&layer));
    let thaw = mirror(&fake);
    let ld = img.layers[0].0.clone();
    fake.push_once(Kind::Blob, Fault::Normal.stalled_at(1_000_000));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let blob_done = Arc::new(AtomicBool::new(false));
    let (rcv, done) = (received.clone(), blob_done.clone());
    let url = blob_url(&thaw, REPO, &ld);
    let blob_task = rt.spawn(async move {
        let resp = reqwest::get(url).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut got = Vec::new();
        while let Some(c) = body.next().await {
            let c = c.unwrap();
            got.extend_from_slice(&c);
            rcv.store(got.len() as u64, Ordering::SeqCst);
        }
        done.store(true, Ordering::SeqCst);
        got
    });
    // The blob is in flight: its first bytes reached the client.
    wait_until("the stalled blob's first bytes arrived", || received.load(Ordering::SeqCst) > 0);

    let r = client().get(manifest_url(&thaw, REPO, "v1")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-thaw-cache"], "miss");
    assert_eq!(r.bytes().unwrap().as_ref(), img.manifest.as_slice());
    assert!(!blob_done.load(Ordering::SeqCst), "the blob finished before the manifest: the test proved nothing");
    assert!(received.load(Ordering::SeqCst) <= 1_000_000);

    fake.release();
    let got = rt.block_on(blob_task).unwrap();
    assert_eq!(got.len(), layer.len());
    assert!(got == layer);
}

/// When pinned content leaves no room, a new blob streams through without being cached: the
/// answer says `x-thaw-cache: pass-through`, the bytes are right, and the store does not keep it.
#[test]
fn blob_streams_through_uncached_when_pinned_content_fills_the_store() {
    let fake = FakeUpstream::start();
    let (x, y) = (filler(15, 2_000_000), filler(16, 2_000_000));
    let img = fake.put_image(REPO, "v1", &[x.clone(), y.clone()]);
    let store_cfg = thaw_store::StoreConfig { capacity: Some(3_000_000), ..Default::default() };
    let thaw = Thaw::start_with_store(mirror_cfg(&fake), store_cfg);
    warm_manifest(&thaw, &img);
    let (dx, dy) = (img.layers[0].0.clone(), img.layers[1].0.clone());
    let c = client();
    let r = c.get(blob_url(&thaw, REPO, &dx)).send().unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), x.as_slice());
    wait_until("x is committed", || stored(&thaw, &dx));
    // x is in use (as by a running sandbox or a slow client): it cannot be evicted.
    let pin = thaw.registry.store().pin(&digest(&dx)).expect("x is present");

    for round in 0..2 {
        let r = c.get(blob_url(&thaw, REPO, &dy)).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-thaw-cache"], "pass-through", "round {round}");
        assert_eq!(r.bytes().unwrap().as_ref(), y.as_slice());
        wait_until("the pass-through is counted", || thaw.metric("thaw_pass_through_total") >= (round + 1) as f64);
        assert!(!stored(&thaw, &dy), "y was cached although pinned x leaves no room");
        assert!(stored(&thaw, &dx), "pinned x was evicted");
    }
    // Unpinned, x may go: y is cached on its next fetch.
    drop(pin);
    let r = c.get(blob_url(&thaw, REPO, &dy)).send().unwrap();
    assert_eq!(r.headers()["x-thaw-cache"], "miss");
    assert_eq!(r.bytes().unwrap().as_ref(), y.as_slice());
    wait_until("y is committed", || stored(&thaw, &dy));
}

/// An upstream that sends blobs without `Content-Length` (chunked) is relayed correctly and
/// fetched once.
#[test]
fn chunked_upstream_blob_is_relayed_and_verified() {
    let fake = FakeUpstream::start();
    let layer = filler(17, 1_200_000);
    let img = fake.put_image(REPO, "v1", std::slice::from_ref(&layer));
    let thaw = mirror(&fake);
    warm_manifest(&thaw, &img);
    let ld = img.layers[0].0.clone();
    fake.set(Kind::Blob, Fault::Chunked);
    let r = client().get(blob_url(&thaw, REPO, &ld)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), layer.as_slice());
    wait_until("the blob is committed", || stored(&thaw, &ld));
    assert_eq!(fake.count("GET", &format!("/v2/{REPO}/blobs/{ld}")), 1);
}


/// A manifest asked by digest whose bytes do not match is refused (502, DIGEST_INVALID), counted,
/// and not stored; asked by tag, bytes that are not a manifest are refused too. Once the upstream
/// is honest again, both work.
#[test]
fn wrong_manifest_bytes_are_refused_and_not_stored() {
    let fake = FakeUpstream::start();
    let img = fake.put_image(REPO, "v1", &[filler(18, 1000)]);
    let thaw = mirror(&fake);
    let c = client();
    fake.set(Kind::Manifest, Fault::WrongBytes);
    let r = c.get(manifest_url(&thaw, REPO, &img.manifest_digest)).send().unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
    assert_eq!(thaw.metric("thaw_digest_mismatches_total"), 1.0);
    let r = c.get(manifest_url(&thaw, REPO, "v1")).send().unwrap();
    assert_eq!(r.status(), 502, "garbage served as a manifest");
    assert!(!stored(&thaw, &img.manifest_digest));
    fake.heal();
    let r = c.get(manifest_url(&thaw, REPO, &img.manifest_digest)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), img.manifest.as_slice());
    let r = c.get(manifest_url(&thaw, REPO, "v1")).send().unwrap();
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), img.manifest_digest);
}

mod random_faults {
    //! Random upstream faults under concurrent full and ranged readers: whatever the upstream
    //! does, a complete 200 body is the blob, a complete 206 body is the blob's range unless the
    //! upstream itself sent wrong bytes (ranges before the end are relayed unverified, as
    //! documented in `flight`), the store never holds anything but the blob, and once the
    //! upstream is honest the blob is served.

    use super::*;
    use proptest::prelude::*;

    fn fault() -> impl Strategy<Value = Fault> {
        prop_oneof![
            Just(Fault::Normal),
            Just(Fault::WrongBytes),
            (0u64..400_000).prop_map(Fault::Truncate),
            Just(Fault::IgnoreRange),
            Just(Fault::Chunked),
            Just(Fault::Status(503)),
        ]
    }

    fn range(size: u64) -> impl Strategy<Value = Option<(u64, u64)>> {
        prop_oneof![
            2 => Just(None),
            1 => (0..size, 0..size).prop_map(|(a, b)| Some((a.min(b), a.max(b)))),
        ]
    }

    /// Blob size, one-shot faults in order, whether the upstream ignores Range afterwards, and
    /// each reader's range (None: the whole blob).
    type Case = (u64, Vec<Fault>, bool, Vec<Option<(u64, u64)>>);

    fn case() -> impl Strategy<Value = Case> {
        (50_000u64..600_000).prop_flat_map(|size| {
            (Just(size), proptest::collection::vec(fault(), 1..4), any::<bool>(), proptest::collection::vec(range(size), 1..5))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 32, ..ProptestConfig::default() })]

        #[test]
        fn faults_never_yield_a_wrong_complete_body((size, faults, ignore_range, readers) in case()) {
            let fake = FakeUpstream::start();
            let blob = filler(size, size as usize);
            let img = fake.put_image(REPO, "v1", std::slice::from_ref(&blob));
            let mut cfg = mirror_cfg(&fake);
            cfg.fetch_retries = 2;
            let thaw = Thaw::start(cfg);
            warm_manifest(&thaw, &img);
            let d = img.layers[0].0.clone();
            if ignore_range {
                fake.set(Kind::Blob, Fault::IgnoreRange);
            }
            for f in &faults {
                fake.push_once(Kind::Blob, f.clone());
            }
            let wrong_upstream = faults.contains(&Fault::WrongBytes);
            let rt = tokio::runtime::Runtime::new().unwrap();
            let url = blob_url(&thaw, REPO, &d);
            let tasks: Vec<_> = readers
                .iter()
                .map(|r| {
                    let (url, r) = (url.clone(), *r);
                    rt.spawn(async move {
                        let c = reqwest::Client::new();
                        let mut req = c.get(url);
                        if let Some((a, b)) = r {
                            req = req.header("Range", format!("bytes={a}-{b}"));
                        }
                        let resp = req.send().await.ok()?;
                        let status = resp.status().as_u16();
                        let declared = resp.content_length();
                        let mut s = resp.bytes_stream();
                        let mut got = Vec::new();
                        while let Some(c) = s.next().await {
                            got.extend_from_slice(&c.ok()?);
                        }
                        Some((r, status, declared, got))
                    })
                })
                .collect();
            for t in tasks {
                let Some((r, status, declared, got)) = rt.block_on(t).unwrap() else { continue };
                if declared != Some(got.len() as u64) {
                    continue;
                }
                match (status, r) {
                    (200, None) => prop_assert!(got == blob, "a complete 200 body is not the blob (faults {faults:?})"),
                    (206, Some((a, b))) => {
                        if !wrong_upstream {
                            prop_assert!(got == blob[a as usize..=b as usize], "a complete 206 body is not the range (faults {faults:?})");
                        }
                    }
                    (s, _) => prop_assert!(!(200..300).contains(&s), "unexpected {s} for {r:?}"),
                }
            }
            // Once the upstream is honest the blob is served (a request may still join a flight
            // that is failing, so allow a few attempts), and whatever was committed is the blob.
            fake.heal();
            let mut healed = false;
            for _ in 0..5 {
                let r = client().get(&url).send().unwrap();
                if r.status() != 200 {
                    continue;
                }
                let Ok(b) = r.bytes() else { continue };
                prop_assert!(b.as_ref() == blob.as_slice() || b.len() < blob.len(), "wrong blob after healing (faults {:?})", faults);
                if b.len() == blob.len() {
                    healed = true;
                    break;
                }
            }
            prop_assert!(healed, "the blob was not served after the upstream healed (faults {:?})", faults);
            if stored(&thaw, &d) {
                let r = client().get(&url).send().unwrap();
                prop_assert_eq!(r.headers()["x-thaw-cache"].to_str().unwrap(), "hit");
                prop_assert!(r.bytes().unwrap().as_ref() == blob.as_slice());
            }
        }
    }
}

/// Content being served is pinned: while a slow client is still reading a cached blob, that blob
/// cannot be evicted, so a new blob that would need its room streams through uncached; once the
/// client is gone, the new blob is cached.
#[test]
fn a_blob_being_served_is_pinned_and_the_next_one_passes_through() {
    use std::io::{Read, Write};
    let fake = FakeUpstream::start();
    let (x, y) = (filler(19, 6_000_000), filler(20, 2_000_000));
    let img = fake.put_image(REPO, "v1", &[x.clone(), y.clone()]);
    let store_cfg = thaw_store::StoreConfig { capacity: Some(7_000_000), ..Default::default() };
    let thaw = Thaw::start_with_store(mirror_cfg(&fake), store_cfg);
    warm_manifest(&thaw, &img);
    let (dx, dy) = (img.layers[0].0.clone(), img.layers[1].0.clone());
    let c = client();
    assert_eq!(c.get(blob_url(&thaw, REPO, &dx)).send().unwrap().bytes().unwrap().len(), x.len());
    wait_until("x is committed", || stored(&thaw, &dx));
    wait_until("nothing is pinned", || thaw.metric("thaw_store_pinned_bytes") == 0.0);

    // A client that asks for x and then stops reading: the kernel buffers hold far less than
    // 6 MB, so thaw's response stays open, holding x.
    let mut slow = std::net::TcpStream::connect(thaw.addr).unwrap();
    write!(slow, "GET /v2/{REPO}/blobs/{dx} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 1024];
    let n = slow.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    wait_until("x is pinned by the slow client", || thaw.metric("thaw_store_pinned_bytes") >= x.len() as f64);

    let r = c.get(blob_url(&thaw, REPO, &dy)).send().unwrap();
    assert_eq!(r.headers()["x-thaw-cache"], "pass-through");
    assert_eq!(r.bytes().unwrap().as_ref(), y.as_slice());
    wait_until("the pass-through is counted", || thaw.metric("thaw_pass_through_total") >= 1.0);
    assert!(!stored(&thaw, &dy));
    assert!(stored(&thaw, &dx), "x was evicted while it was being served");

    drop(slow);
    wait_until("x is unpinned", || thaw.metric("thaw_store_pinned_bytes") == 0.0);
    let r = c.get(blob_url(&thaw, REPO, &dy)).send().unwrap();
    assert_eq!(r.headers()["x-thaw-cache"], "miss");
    assert_eq!(r.bytes().unwrap().as_ref(), y.as_slice());
    wait_until("y is committed", || stored(&thaw, &dy));
}
