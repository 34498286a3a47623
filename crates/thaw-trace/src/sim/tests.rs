use super::*;
use crate::read::write_records;
use std::path::{Path, PathBuf};
use thaw_policy::{Lru, POLICY_NAMES};
use thaw_record::{CacheOutcome, LayerRef, Record, RequestRecord, SCHEMA_VERSION};

fn oracle_file(dir: &Path, reqs: &[(u64, u32)]) -> PathBuf {
    let recs: Vec<OracleRecord> = reqs
        .iter()
        .enumerate()
        .map(|(i, &(id, size))| OracleRecord {
            time: i as u32,
            id,
            size,
            next: -1,
        })
        .collect();
    let p = dir.join("t.oracleGeneral");
    let mut f = std::fs::File::create(&p).unwrap();
    write_records(&mut f, &recs).unwrap();
    p
}

fn run_oracle(
    path: &Path,
    policies: Vec<Box<dyn CachePolicy>>,
    model: Option<LatencyModel>,
) -> SimReport {
    let mut cfg = SimConfig::new(vec![], vec![]);
    cfg.model = model;
    simulate_policies(
        &[path.to_path_buf()],
        TraceFormat::OracleGeneral,
        ReadOptions::default(),
        CategoryMap::by_namespace(),
        &cfg,
        policies,
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn lru_hand_computed() {
    let dir = tempfile::tempdir().unwrap();
    // capacity 30: 1 2 3 miss; 1 hit; 4 miss (evicts 2); 2 miss (evicts 3); 1 hit; 50 too large
    let p = oracle_file(
        dir.path(),
        &[
            (1, 10),
            (2, 10),
            (3, 10),
            (1, 10),
            (4, 10),
            (2, 10),
            (1, 10),
            (9, 50),
        ],
    );
    let rep = run_oracle(&p, vec![Box::new(Lru::new(30))], None);
    let s = &rep.runs[0].stats;
    assert_eq!((s.requests, s.hits, s.misses), (8, 2, 6));
    assert_eq!(s.evictions, 2);
    assert_eq!(s.not_admitted, 1);
    assert_eq!(s.miss_bytes, 5 * 10 + 50);
    assert_eq!(s.tier_hits, [2, 0]);
    assert!((rep.runs[0].miss_ratio - 0.75).abs() < 1e-12);
    assert!((rep.runs[0].byte_miss_ratio - 100.0 / 120.0).abs() < 1e-12);
    assert_eq!(rep.accesses, 8);
}

#[test]
fn several_runs_in_one_pass_match_single_runs_and_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = crate::rng::Rng::new(9);
    let z = crate::rng::Zipf::new(500, 0.9);
    let reqs: Vec<(u64, u32)> = (0..20_000)
        .map(|_| {
            let k = z.sample(&mut rng) as u64;
            (k, 100 + (k % 7) as u32 * 50)
        })
        .collect();
    let p = oracle_file(dir.path(), &reqs);
    let sizes = [5_000u64, 10_000, 20_000, 40_000];
    let all = run_oracle(
        &p,
        sizes
            .iter()
            .map(|&c| Box::new(Lru::new(c)) as Box<dyn CachePolicy>)
            .collect(),
        None,
    );
    for (i, &c) in sizes.iter().enumerate() {
        let one = run_oracle(&p, vec![Box::new(Lru::new(c))], None);
        assert_eq!(all.runs[i].fast_bytes, c);
        assert_eq!(all.runs[i].stats, one.runs[0].stats);
    }
    // LRU has the inclusion property: a bigger cache never misses more
    assert!(all
        .runs
        .windows(2)
        .all(|w| w[0].stats.misses >= w[1].stats.misses));
}

#[test]
fn every_policy_replays() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let params = crate::gen::GenParams {
        requests: 4_000,
        duration_s: 3_600.0,
        seed: 5,
        ..Default::default()
    };
    crate::gen::generate(&params, TraceFormat::Thaw, &mut out).unwrap();
    let p = dir.path().join("g.jsonl");
    std::fs::write(&p, out).unwrap();
    let specs: Vec<PolicySpec> = POLICY_NAMES.iter().map(|n| n.parse().unwrap()).collect();
    let caps = vec![
        Capacity::single(200 << 20),
        Capacity {
            fast: 100 << 20,
            slow: 400 << 20,
        },
    ];
    let cfg = SimConfig {
        model: Some(LatencyModel::default()),
        ..SimConfig::new(specs.clone(), caps)
    };
    let rep = simulate(
        &[p],
        TraceFormat::Thaw,
        ReadOptions { strict: true },
        CategoryMap::by_namespace(),
        &cfg,
        &mut |_| {},
    )
    .unwrap();
    for spec in &specs {
        let name = spec.to_string();
        assert!(
            rep.runs
                .iter()
                .any(|r| r.policy.starts_with(name.split(':').next().unwrap())),
            "{name} never ran: {:?}",
            rep.skipped
        );
    }
    for r in &rep.runs {
        let s = &r.stats;
        assert_eq!(s.requests, rep.accesses, "{}", r.policy);
        assert_eq!(s.hits + s.misses, s.requests, "{}", r.policy);
        assert_eq!(s.tier_hits[0] + s.tier_hits[1], s.hits, "{}", r.policy);
        assert!(s.hits > 0, "{} never hit", r.policy);
        let lat = r.latency.as_ref().unwrap();
        assert!(lat.pulls > 0 && lat.avg_pull_us > 0.0);
    }
}

#[test]
fn metadata_policies_are_refused_on_oracle_traces() {
    // Only meaningful once a policy needing categories exists in this build.
    let Some(name) = POLICY_NAMES.iter().find(|n| n.starts_with("lacache")) else {
        assert!(!needs_metadata(&"lru".parse().unwrap()));
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = oracle_file(dir.path(), &[(1, 1)]);
    let cfg = SimConfig::new(
        vec![name.parse().unwrap()],
        vec![Capacity {
            fast: 100,
            slow: 100,
        }],
    );
    let err = simulate(
        &[p],
        TraceFormat::OracleGeneral,
        ReadOptions::default(),
        CategoryMap::by_namespace(),
        &cfg,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, SimError::NeedsMetadata { .. }), "{err}");
    assert!(err.to_string().contains("oracle-general"));
}

#[test]
fn latency_model_hand_computed() {
    let dir = tempfile::tempdir().unwrap();
    let p = oracle_file(dir.path(), &[(1, 100_000_000), (1, 100_000_000)]);
    let m = LatencyModel {
        fast_bps: 1e9,
        slow_bps: 1e8,
        backend_rtt_us: 50_000.0,
        backend_bps: 1e8,
    };
    let rep = run_oracle(&p, vec![Box::new(Lru::new(1 << 30))], Some(m));
    let lat = rep.runs[0].latency.as_ref().unwrap();
    // miss: 50 ms + 1 s; hit: 0.1 s
    assert_eq!(lat.pulls, 2);
    assert!(
        (lat.avg_pull_us - (1_050_000.0 + 100_000.0) / 2.0).abs() < 1.0,
        "{}",
        lat.avg_pull_us
    );
    assert!((lat.p99_pull_us as f64 - 1_050_000.0).abs() < 1_050_000.0 * 0.01);
}

/// A two-tier policy for accounting tests: small objects in the fast tier, large in the slow
/// one, LRU in each; a hit in the slow tier of an object accessed twice there promotes nothing.
struct SizeSplit {
    fast: Lru,
    slow: Lru,
    threshold: u64,
}

impl CachePolicy for SizeSplit {
    fn name(&self) -> String {
        "test-split".into()
    }
    fn lookup(&mut self, req: &Request, fx: &mut Vec<Effect>) -> Option<Tier> {
        if self.fast.lookup(req, fx).is_some() {
            return Some(Tier::Fast);
        }
        self.slow.lookup(req, fx).map(|_| Tier::Slow)
    }
    fn admit(&mut self, req: &Request, pinned: &dyn Fn(Key) -> bool, fx: &mut Vec<Effect>) -> bool {
        let start = fx.len();
        let ok = if req.size < self.threshold {
            self.fast.admit(req, pinned, fx)
        } else {
            self.slow.admit(req, pinned, fx)
        };
        if req.size >= self.threshold {
            for e in &mut fx[start..] {
                match e {
                    Effect::Evicted { tier, .. } | Effect::Inserted { tier, .. } => {
                        *tier = Tier::Slow
                    }
                    _ => {}
                }
            }
        }
        ok
    }
    fn remove(&mut self, key: Key) -> bool {
        self.fast.remove(key) || self.slow.remove(key)
    }
    fn peek(&self, key: Key) -> Option<Tier> {
        self.fast
            .peek(key)
            .or(self.slow.peek(key).map(|_| Tier::Slow))
    }
    fn used(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Fast => self.fast.used(Tier::Fast),
            Tier::Slow => self.slow.used(Tier::Fast),
        }
    }
    fn capacity(&self) -> Capacity {
        Capacity {
            fast: self.fast.capacity().fast,
            slow: self.slow.capacity().fast,
        }
    }
    fn len(&self) -> usize {
        self.fast.len() + self.slow.len()
    }
}

#[test]
fn two_tier_accounting() {
    let dir = tempfile::tempdir().unwrap();
    // small: 1, 2 (10 B); large: 3, 4 (100 B). fast holds 20 B, slow 100 B.
    let p = oracle_file(
        dir.path(),
        &[
            (1, 10),
            (3, 100),
            (1, 10),
            (3, 100),
            (4, 100),
            (3, 100),
            (2, 10),
            (1, 10),
        ],
    );
    let m = LatencyModel {
        fast_bps: 1e6,
        slow_bps: 1e5,
        backend_rtt_us: 1000.0,
        backend_bps: 1e4,
    };
    let pol = SizeSplit {
        fast: Lru::new(20),
        slow: Lru::new(100),
        threshold: 50,
    };
    let rep = run_oracle(&p, vec![Box::new(pol)], Some(m));
    let r = &rep.runs[0];
    let s = &r.stats;
    // 1 miss, 3 miss, 1 fast hit, 3 slow hit, 4 miss (evicts 3), 3 miss (evicts 4), 2 miss, 1 fast hit
    assert_eq!(s.tier_hits, [2, 1]);
    assert_eq!(s.tier_hit_bytes, [20, 100]);
    assert_eq!(s.misses, 5);
    assert_eq!(s.evictions, 2);
    assert_eq!((r.fast_bytes, r.slow_bytes), (20, 100));
    assert!((r.tier_hit_ratio[1] - 1.0 / 8.0).abs() < 1e-12);
    // latency: fast hits 10 B at 1e6 B/s = 10 us; slow hit 100 B at 1e5 = 1000 us;
    // misses 1000 us + size/1e4 s: 10 B -> 2000 us, 100 B -> 11000 us
    let expect = (2.0 * 10.0 + 1000.0 + 2.0 * 2000.0 + 3.0 * 11_000.0) / 8.0;
    let lat = r.latency.as_ref().unwrap();
    assert!(
        (lat.avg_request_us - expect).abs() < 1.0,
        "{} vs {expect}",
        lat.avg_request_us
    );
}

/// LRU that hints image `hint` whenever it admits key `trigger`.
struct Hinting {
    lru: Lru,
    trigger: Key,
    hint: ImageId,
}

impl CachePolicy for Hinting {
    fn name(&self) -> String {
        "test-hint".into()
    }
    fn lookup(&mut self, req: &Request, fx: &mut Vec<Effect>) -> Option<Tier> {
        self.lru.lookup(req, fx)
    }
    fn admit(&mut self, req: &Request, pinned: &dyn Fn(Key) -> bool, fx: &mut Vec<Effect>) -> bool {
        let ok = self.lru.admit(req, pinned, fx);
        if req.key == self.trigger || req.prefetch {
            // hints raised while admitting prefetches must not be followed
            fx.push(Effect::Prefetch {
                image: self.hint,
                probability: 0.9,
            });
        }
        ok
    }
    fn remove(&mut self, key: Key) -> bool {
        self.lru.remove(key)
    }
    fn peek(&self, key: Key) -> Option<Tier> {
        self.lru.peek(key)
    }
    fn used(&self, tier: Tier) -> u64 {
        self.lru.used(tier)
    }
    fn capacity(&self) -> Capacity {
        self.lru.capacity()
    }
    fn len(&self) -> usize {
        self.lru.len()
    }
}

#[allow(clippy::too_many_arguments)] // a test helper mirroring the record's fields
fn req(
    ts: u64,
    method: &str,
    kind: ObjectKind,
    repo: &str,
    tag: Option<&str>,
    digest: &str,
    size: u64,
    layers: Vec<LayerRef>,
) -> String {
    Record::Request(RequestRecord {
        v: SCHEMA_VERSION,
        ts_us: ts,
        client: Some("10.0.0.9".into()),
        principal: None,
        user_agent: None,
        upstream: None,
        repo: Some(repo.into()),
        tag: tag.map(Into::into),
        digest: Some(digest.into()),
        kind,
        size: Some(size),
        bytes_sent: size,
        method: method.into(),
        status: if method == "GET" { 200 } else { 201 },
        duration_us: 1,
        outcome: if method == "GET" {
            CacheOutcome::Miss
        } else {
            CacheOutcome::None
        },
        range: None,
        layers,
    })
    .to_line()
}

fn dg(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

#[test]
fn prefetch_admits_hinted_layers_and_counts_hits() {
    let dir = tempfile::tempdir().unwrap();
    let lb1 = LayerRef {
        digest: dg('1'),
        size: 100,
    };
    let lb2 = LayerRef {
        digest: dg('2'),
        size: 200,
    };
    let mut t = String::new();
    // image B pushed (its manifest lists its layers), then A pulled, then B pulled
    t += &req(
        1,
        "PUT",
        ObjectKind::Manifest,
        "web/b",
        Some("v1"),
        &dg('b'),
        50,
        vec![lb1.clone(), lb2.clone()],
    );
    t += &req(
        10,
        "GET",
        ObjectKind::Manifest,
        "web/a",
        Some("v1"),
        &dg('a'),
        50,
        vec![LayerRef {
            digest: dg('3'),
            size: 10,
        }],
    );
    t += &req(
        11,
        "GET",
        ObjectKind::Blob,
        "web/a",
        None,
        &dg('3'),
        10,
        vec![],
    );
    t += &req(
        20,
        "GET",
        ObjectKind::Manifest,
        "web/b",
        Some("v1"),
        &dg('b'),
        50,
        vec![lb1, lb2],
    );
    t += &req(
        21,
        "GET",
        ObjectKind::Blob,
        "web/b",
        None,
        &dg('1'),
        100,
        vec![],
    );
    t += &req(
        22,
        "GET",
        ObjectKind::Blob,
        "web/b",
        None,
        &dg('2'),
        200,
        vec![],
    );
    let p = dir.path().join("t.jsonl");
    std::fs::write(&p, t).unwrap();
    let trigger = crate::event::key_of_digest(&dg('a'));
    let hint = crate::event::image_id("web/b", "v1");
    let pol = Hinting {
        lru: Lru::new(10_000),
        trigger,
        hint,
    };
    let cfg = SimConfig::new(vec![], vec![]);
    let rep = simulate_policies(
        std::slice::from_ref(&p),
        TraceFormat::Thaw,
        ReadOptions { strict: true },
        CategoryMap::by_namespace(),
        &cfg,
        vec![Box::new(pol)],
        &mut |_| {},
    )
    .unwrap();
    let s = &rep.runs[0].stats;
    assert_eq!(rep.accesses, 5);
    assert_eq!(s.prefetches, 2, "both layers of b, once: no cascade");
    assert_eq!(s.prefetch_bytes, 300);
    assert_eq!(s.prefetch_hits, 2);
    assert_eq!((s.hits, s.misses), (2, 3));
    // with prefetch off, the same trace misses everything
    let pol = Hinting {
        lru: Lru::new(10_000),
        trigger,
        hint,
    };
    let cfg = SimConfig {
        prefetch: false,
        ..SimConfig::new(vec![], vec![])
    };
    let rep = simulate_policies(
        &[p],
        TraceFormat::Thaw,
        ReadOptions::default(),
        CategoryMap::by_namespace(),
        &cfg,
        vec![Box::new(pol)],
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(rep.runs[0].stats.misses, 5);
    assert_eq!(rep.runs[0].stats.prefetches, 0);
}

#[test]
fn pulls_group_layers_and_second_tags_start_new_pulls() {
    let mut pre = Preprocessor::new(CategoryMap::by_namespace(), 300_000_000);
    let mk = |ts: u64, kind: ObjectKind, tag: Option<&str>, d: char| {
        let line = req(ts, "GET", kind, "ml/x", tag, &dg(d), 5, vec![]);
        let Record::Request(r) = Record::from_line(line.trim_end()).unwrap() else {
            unreachable!()
        };
        crate::read::request_to_event(&r)
    };
    let a = pre
        .push(&mk(0, ObjectKind::Manifest, Some("v1"), 'a'))
        .unwrap();
    let a1 = pre
        .push(&mk(1_000_000, ObjectKind::Blob, None, '1'))
        .unwrap();
    let b = pre
        .push(&mk(2_000_000, ObjectKind::Manifest, Some("v2"), 'b'))
        .unwrap();
    let b1 = pre
        .push(&mk(3_000_000, ObjectKind::Blob, None, '2'))
        .unwrap();
    let late = pre
        .push(&mk(400_000_000, ObjectKind::Blob, None, '3'))
        .unwrap();
    assert_eq!(a1.pull, a.pull);
    assert_eq!(a1.image, a.image);
    assert_ne!(b.pull, a.pull);
    assert_eq!(b1.image, b.image);
    assert_eq!(late.pull, 0, "outside the window: not part of a pull");
    assert_eq!(pre.categories.name(a.category), "ml");
    // blobs pulled with an image whose manifest listed nothing are learned as its layers
    assert_eq!(
        pre.images.get(a.image).unwrap(),
        &[(crate::event::key_of_digest(&dg('1')), 5)]
    );
}

#[test]
fn sizes_parse() {
    // sizes are thaw_policy::parse_bytes's: bare letters binary, two-letter units decimal
    assert_eq!(parse_capacity("1G").unwrap(), Capacity::single(1 << 30));
    assert_eq!(parse_capacity("1.5 MB").unwrap(), Capacity::single(1_500_000));
    assert_eq!(parse_capacity("4096").unwrap(), Capacity::single(4096));
    assert_eq!(
        parse_capacity("0.5G+2GB").unwrap(),
        Capacity {
            fast: 1 << 29,
            slow: 2_000_000_000
        }
    );
    let e = parse_capacity("1GiB+1 parsec").unwrap_err();
    assert!(e.contains("\"1 parsec\" is not a byte size"), "{e}");
    assert!(parse_capacity("").is_err());
    assert!(parse_capacity("1GiB+").is_err());
    assert_eq!(
        parse_capacity("1GiB+8GiB").unwrap(),
        Capacity {
            fast: 1 << 30,
            slow: 8 << 30
        }
    );
    assert_eq!(
        fmt_capacity(Capacity {
            fast: 1 << 30,
            slow: 3 << 29
        }),
        "1GiB+1536MiB"
    );
    assert_eq!(fmt_bytes(1000), "1000B");
}

#[test]
fn distribution_logs_replay_with_pulls_and_categories() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let line = |t: &str, uri: &str, status: u16, written: u64| {
        format!(
            "{{\"time\":\"{t}\",\"http.request.method\":\"GET\",\"http.request.uri\":\"{uri}\",\"http.request.remoteaddr\":\"10.1.1.1:5000\",\
             \"http.response.status\":{status},\"http.response.written\":{written},\"http.response.duration\":\"2ms\"}}\n"
        )
    };
    for minute in 0..3 {
        let t = |s: u32| format!("2024-05-01T10:0{minute}:0{s}Z");
        text += &line(&t(0), "/v2/web/shop/manifests/v1", 200, 500);
        text += &line(&t(1), &format!("/v2/web/shop/blobs/{}", dg('1')), 200, 1000);
        text += &line(&t(2), &format!("/v2/web/shop/blobs/{}", dg('2')), 200, 2000);
        text += &line(&t(3), &format!("/v2/web/shop/blobs/{}", dg('9')), 404, 0);
    }
    text += "this line is not json\n";
    let p = dir.path().join("registry.log");
    std::fs::write(&p, text).unwrap();
    let cfg = SimConfig {
        model: Some(LatencyModel::default()),
        ..SimConfig::new(vec![], vec![])
    };
    let rep = simulate_policies(
        &[p],
        TraceFormat::Distribution,
        ReadOptions::default(),
        CategoryMap::by_namespace(),
        &cfg,
        vec![Box::new(Lru::new(1 << 20))],
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(rep.events, 12);
    assert_eq!(rep.accesses, 9, "404s are not accesses");
    assert_eq!(rep.read.malformed, 1);
    let r = &rep.runs[0];
    assert_eq!((r.stats.misses, r.stats.hits), (3, 6));
    // three pulls of manifest + two layers each
    assert_eq!(r.latency.as_ref().unwrap().pulls, 3);
}

/// Two LRUs; everything is admitted to the slow one (a [`SizeSplit`] whose threshold no size
/// is under), and a hit there promotes the object and reports the fast tier, as the protocol
/// says (the tier after promotion).
struct Promoting(SizeSplit);

impl CachePolicy for Promoting {
    fn name(&self) -> String {
        "test-promote".into()
    }
    fn lookup(&mut self, req: &Request, fx: &mut Vec<Effect>) -> Option<Tier> {
        let t = &mut self.0;
        if t.fast.lookup(req, fx).is_some() {
            return Some(Tier::Fast);
        }
        if t.slow.remove(req.key) {
            let mut inner = Vec::new();
            t.fast.admit(req, &|_| false, &mut inner);
            fx.push(Effect::Promoted {
                key: req.key,
                size: req.size,
            });
            return Some(Tier::Fast);
        }
        None
    }
    fn admit(&mut self, req: &Request, pinned: &dyn Fn(Key) -> bool, fx: &mut Vec<Effect>) -> bool {
        self.0.admit(req, pinned, fx)
    }
    fn remove(&mut self, key: Key) -> bool {
        self.0.remove(key)
    }
    fn peek(&self, key: Key) -> Option<Tier> {
        self.0.peek(key)
    }
    fn used(&self, tier: Tier) -> u64 {
        self.0.used(tier)
    }
    fn capacity(&self) -> Capacity {
        self.0.capacity()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[test]
fn promoted_hits_count_as_slow_tier_reads() {
    let dir = tempfile::tempdir().unwrap();
    // miss (into slow), hit in slow (promoted), hit in fast
    let p = oracle_file(dir.path(), &[(1, 100), (1, 100), (1, 100)]);
    let m = LatencyModel {
        fast_bps: 1e6,
        slow_bps: 1e5,
        backend_rtt_us: 0.0,
        backend_bps: 1e4,
    };
    let rep = run_oracle(
        &p,
        vec![Box::new(Promoting(SizeSplit {
            fast: Lru::new(1000),
            slow: Lru::new(1000),
            threshold: 0,
        }))],
        Some(m),
    );
    let s = &rep.runs[0].stats;
    assert_eq!(s.tier_hits, [1, 1]);
    assert_eq!(s.promotions, 1);
    // latency: miss 10_000 us, slow read 1_000 us, fast read 100 us
    let lat = rep.runs[0].latency.as_ref().unwrap();
    assert!(
        (lat.avg_request_us - 11_100.0 / 3.0).abs() < 1.0,
        "{}",
        lat.avg_request_us
    );
}
