//! The trace-driven cache simulator (`thaw sim`).
//!
//! # How a trace is replayed
//!
//! The trace is read once per invocation, whatever the number of policies and sizes: requests are
//! decoded in chunks of compact [`SimRequest`]s and every (policy, size) run consumes each chunk
//! before the next is read, runs spread over the machine's cores. Memory is the chunk plus the
//! policies' own state, not the trace.
//!
//! Only cache accesses (see `thaw_record`) reach the policies. Before that, a small tracker turns
//! layer requests into image pulls: a manifest GET opens a pull for its (client, repository), and
//! blob GETs of the same client and repository within the pull window join it, carrying the
//! image's id and the repository's service category. The same tracker learns each image's layers
//! (from manifests' layer lists when the trace has them, else from the blobs seen in its pulls),
//! which is what a registry knows about an image once it was pushed; the simulator uses it to act
//! on a policy's [`Effect::Prefetch`] hints by admitting the image's missing layers with
//! `Request::prefetch` set. Hints raised while admitting a prefetch are not followed, so prefetch
//! never cascades.
//!
//! # Latency model
//!
//! A hit in a tier costs `size / tier bandwidth`; a miss costs the backend's round trip plus
//! `size / backend bandwidth`. A pull's latency is the sum over its requests (clients fetch layers
//! a few at a time, so this is an upper bound of the wall time; it is the same bound for every
//! policy, which is what a comparison needs). Prefetches run in the background and cost no pull
//! latency; their bytes are counted separately. Traces without pulls (oracleGeneral) count each
//! request as its own pull.

use std::time::Instant;

use rustc_hash::{FxHashMap, FxHashSet};
use thaw_policy::{
    build_with_associations, AssociationTable, CachePolicy, Capacity, CategoryId, Effect, ImageId,
    Key, PolicySpec, Request, Tier,
};

use crate::category::CategoryMap;
use crate::event::{stable_hash, Event, ObjectKind};
use crate::hist::LogHistogram;
use crate::read::{
    self, EventSource, OracleReader, OracleRecord, ReadOptions, ReadStats, TraceError, TraceFormat,
};

/// Requests decoded per chunk.
pub const CHUNK: usize = 1 << 16;
/// Layers remembered per image, at most.
pub const MAX_LAYERS_PER_IMAGE: usize = 256;
/// Images whose layers are remembered, at most (the oldest learned are not evicted: past this
/// bound new images are simply not learned, and their prefetch hints find nothing to fetch).
pub const MAX_IMAGES: usize = 1 << 21;

/// The latency model.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyModel {
    /// Read bandwidth of the fast tier, bytes per second.
    pub fast_bps: f64,
    /// Read bandwidth of the slow tier, bytes per second.
    pub slow_bps: f64,
    /// Round trip to the backend (upstream registry), microseconds.
    pub backend_rtt_us: f64,
    /// Backend bandwidth, bytes per second.
    pub backend_bps: f64,
}

impl Default for LatencyModel {
    fn default() -> Self {
        // assumed: memory-class fast tier (4 GB/s), a SATA-class SSD slow tier (500 MB/s), and a
        // remote registry 50 ms away delivering 100 MB/s — a typical cross-region pull.
        LatencyModel {
            fast_bps: 4e9,
            slow_bps: 500e6,
            backend_rtt_us: 50_000.0,
            backend_bps: 100e6,
        }
    }
}

impl LatencyModel {
    fn check(&self) -> Result<(), SimError> {
        let ok = [self.fast_bps, self.slow_bps, self.backend_bps]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
            && self.backend_rtt_us.is_finite()
            && self.backend_rtt_us >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(SimError::Config(
                "latency model: bandwidths must be positive and the round trip not negative".into(),
            ))
        }
    }

    #[inline]
    fn hit_us(&self, tier: Tier, size: u64) -> f64 {
        let bps = match tier {
            Tier::Fast => self.fast_bps,
            Tier::Slow => self.slow_bps,
        };
        size as f64 * 1e6 / bps
    }

    #[inline]
    fn miss_us(&self, size: u64) -> f64 {
        self.backend_rtt_us + size as f64 * 1e6 / self.backend_bps
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("cache policy {policy} with {capacity}: {why}")]
    Policy {
        policy: String,
        capacity: String,
        why: String,
    },
    #[error("cache policy {policy} needs service categories and images, which {format} traces do not carry; replay a thaw, distribution or ibm trace instead")]
    NeedsMetadata { policy: String, format: TraceFormat },
    #[error("{0}")]
    Config(String),
}

/// One request as the simulator keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimRequest {
    pub time_us: u64,
    pub key: Key,
    pub size: u64,
    /// 0 when unknown.
    pub image: ImageId,
    /// `CategoryId::MAX` when unknown.
    pub category: CategoryId,
    /// The pull this request belongs to; 0 = a pull of its own.
    pub pull: u64,
}

const NO_CATEGORY: CategoryId = CategoryId::MAX;

/// What the simulator needs to know about a run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub policies: Vec<PolicySpec>,
    pub capacities: Vec<Capacity>,
    pub model: Option<LatencyModel>,
    /// Requests of one client and repository this close together belong to one pull.
    pub pull_window_us: u64,
    /// Act on prefetch hints.
    pub prefetch: bool,
    /// Worker threads (0 = the machine's parallelism).
    pub threads: usize,
    /// Image associations (A is followed by B with probability p) for the policies that prefetch.
    pub associations: Vec<(ImageId, ImageId, f64)>,
}

impl SimConfig {
    pub fn new(policies: Vec<PolicySpec>, capacities: Vec<Capacity>) -> SimConfig {
        SimConfig {
            policies,
            capacities,
            model: None,
            pull_window_us: 300_000_000,
            prefetch: true,
            threads: 0,
            associations: Vec::new(),
        }
    }
}

/// Counters of one run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunStats {
    pub requests: u64,
    pub bytes: u64,
    pub hits: u64,
    pub hit_bytes: u64,
    pub misses: u64,
    pub miss_bytes: u64,
    /// Hits per tier (fast, slow).
    pub tier_hits: [u64; 2],
    pub tier_hit_bytes: [u64; 2],
    /// Misses the policy refused to admit (larger than the cache).
    pub not_admitted: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub demotions: u64,
    pub demoted_bytes: u64,
    pub promotions: u64,
    /// Objects admitted by prefetch, and their bytes (fetched from the backend).
    pub prefetches: u64,
    pub prefetch_bytes: u64,
    /// Client requests that hit an object that was prefetched and not yet used.
    pub prefetch_hits: u64,
}

/// Latency figures of one run, microseconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub pulls: u64,
    pub avg_pull_us: f64,
    pub p50_pull_us: u64,
    pub p99_pull_us: u64,
    pub avg_request_us: f64,
    pub p99_request_us: u64,
    /// Quantiles come from a log-bucketed histogram with this relative error.
    pub quantile_relative_error: f64,
}

/// The result of one (policy, capacity) run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    pub policy: String,
    pub fast_bytes: u64,
    pub slow_bytes: u64,
    pub stats: RunStats,
    pub miss_ratio: f64,
    pub byte_miss_ratio: f64,
    /// Hit ratios per tier, of all requests (fast, slow).
    pub tier_hit_ratio: [f64; 2],
    pub latency: Option<LatencySummary>,
}

/// Everything a simulation produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimReport {
    pub trace_format: TraceFormat,
    pub read: ReadStats,
    /// Requests seen (all kinds) and cache accesses replayed.
    pub events: u64,
    pub accesses: u64,
    pub runs: Vec<RunResult>,
    /// Runs skipped because the policy does not take that capacity (e.g. one tier given two).
    pub skipped: Vec<String>,
    pub wall_seconds: f64,
    /// Accesses per second per run (total work / wall time).
    pub requests_per_second: f64,
}

struct Run {
    policy: Box<dyn CachePolicy>,
    name: String,
    capacity: Capacity,
    stats: RunStats,
    effects: Vec<Effect>,
    prefetch_effects: Vec<Effect>,
    prefetched: FxHashSet<Key>,
    model: Option<LatencyModel>,
    open_pulls: FxHashMap<u64, (f64, u64)>,
    pull_hist: LogHistogram,
    req_hist: LogHistogram,
    prefetch: bool,
}

impl Run {
    #[inline]
    fn step(&mut self, r: &SimRequest, images: &ImageLayers) {
        let req = Request {
            time_us: r.time_us,
            key: r.key,
            size: r.size,
            category: (r.category != NO_CATEGORY).then_some(r.category),
            image: (r.image != 0).then_some(r.image),
            prefetch: false,
        };
        self.effects.clear();
        let s = &mut self.stats;
        s.requests += 1;
        s.bytes += r.size;
        // `access` is the protocol's simulator path (lookup, then admit with nothing pinned), which
        // policies may implement in one pass.
        let cost = match self.policy.access(&req, &mut self.effects) {
            Some(tier) => {
                // `access` reports the tier after a promotion; the read itself came from the slow
                // tier, which is what the tier counters and the latency model must see.
                let key = r.key;
                let tier = if tier == Tier::Fast
                    && self
                        .effects
                        .iter()
                        .any(|e| matches!(*e, Effect::Promoted { key: k, .. } if k == key))
                {
                    Tier::Slow
                } else {
                    tier
                };
                s.hits += 1;
                s.hit_bytes += r.size;
                s.tier_hits[tier.index()] += 1;
                s.tier_hit_bytes[tier.index()] += r.size;
                if !self.prefetched.is_empty() && self.prefetched.remove(&r.key) {
                    s.prefetch_hits += 1;
                }
                self.model.map(|m| m.hit_us(tier, r.size))
            }
            None => {
                s.misses += 1;
                s.miss_bytes += r.size;
                // Every policy reports its insertions (thaw-policy's conformance suite holds them to
                // it), so a miss without one was refused, with no extra lookup.
                let key = r.key;
                if !self
                    .effects
                    .iter()
                    .any(|e| matches!(*e, Effect::Inserted { key: k, .. } if k == key))
                {
                    s.not_admitted += 1;
                }
                self.model.map(|m| m.miss_us(r.size))
            }
        };
        if !self.effects.is_empty() {
            self.apply_effects(r.time_us, images);
        }
        if let Some(us) = cost {
            self.account_latency(r, us);
        }
    }

    fn apply_effects(&mut self, time_us: u64, images: &ImageLayers) {
        let mut hints: Vec<(ImageId, f64)> = Vec::new();
        count_effects(
            &mut self.stats,
            &mut self.prefetched,
            &self.effects,
            Some(&mut hints),
        );
        if !self.prefetch || hints.is_empty() {
            return;
        }
        // Most probable first, so a full cache spends its room on the likeliest image.
        hints.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (image, _) in hints {
            let Some(layers) = images.get(image) else {
                continue;
            };
            for &(key, size) in layers {
                if self.policy.peek(key).is_some() {
                    continue;
                }
                let req = Request {
                    time_us,
                    key,
                    size,
                    category: None,
                    image: Some(image),
                    prefetch: true,
                };
                self.prefetch_effects.clear();
                if self
                    .policy
                    .admit(&req, &|_| false, &mut self.prefetch_effects)
                {
                    self.stats.prefetches += 1;
                    self.stats.prefetch_bytes += size;
                    self.prefetched.insert(key);
                }
                // Hints raised by a prefetch are dropped: prefetch never cascades.
                count_effects(
                    &mut self.stats,
                    &mut self.prefetched,
                    &self.prefetch_effects,
                    None,
                );
            }
        }
    }

    fn account_latency(&mut self, r: &SimRequest, us: f64) {
        self.req_hist.record(us as u64);
        if r.pull == 0 {
            self.pull_hist.record(us as u64);
            return;
        }
        let e = self.open_pulls.entry(r.pull).or_insert((0.0, r.time_us));
        e.0 += us;
        e.1 = r.time_us;
    }

    /// Closes pulls idle for longer than `window_us` before `now`.
    fn close_pulls(&mut self, now: u64, window_us: u64) {
        let hist = &mut self.pull_hist;
        self.open_pulls.retain(|_, (sum, last)| {
            if now.saturating_sub(*last) > window_us {
                hist.record(*sum as u64);
                false
            } else {
                true
            }
        });
    }

    fn finish(mut self) -> RunResult {
        self.close_pulls(u64::MAX, 0);
        let s = self.stats;
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let latency = self.model.map(|_| LatencySummary {
            pulls: self.pull_hist.count,
            avg_pull_us: self.pull_hist.mean(),
            p50_pull_us: self.pull_hist.quantile(0.5),
            p99_pull_us: self.pull_hist.quantile(0.99),
            avg_request_us: self.req_hist.mean(),
            p99_request_us: self.req_hist.quantile(0.99),
            quantile_relative_error: crate::hist::RELATIVE_ERROR,
        });
        RunResult {
            policy: self.name,
            fast_bytes: self.capacity.fast,
            slow_bytes: self.capacity.slow,
            miss_ratio: ratio(s.misses, s.requests),
            byte_miss_ratio: ratio(s.miss_bytes, s.bytes),
            tier_hit_ratio: [
                ratio(s.tier_hits[0], s.requests),
                ratio(s.tier_hits[1], s.requests),
            ],
            stats: s,
            latency,
        }
    }
}

fn count_effects(
    s: &mut RunStats,
    prefetched: &mut FxHashSet<Key>,
    effects: &[Effect],
    mut hints: Option<&mut Vec<(ImageId, f64)>>,
) {
    for e in effects {
        match *e {
            Effect::Inserted { .. } => {}
            Effect::Evicted { key, size, .. } => {
                s.evictions += 1;
                s.evicted_bytes += size;
                if !prefetched.is_empty() {
                    prefetched.remove(&key);
                }
            }
            Effect::Demoted { size, .. } => {
                s.demotions += 1;
                s.demoted_bytes += size;
            }
            Effect::Promoted { .. } => s.promotions += 1,
            Effect::Prefetch { image, probability } => {
                if let Some(h) = hints.as_deref_mut() {
                    h.push((image, probability));
                }
            }
        }
    }
}

/// Image → layers, as learned from the trace.
#[derive(Debug, Default)]
pub struct ImageLayers {
    map: FxHashMap<ImageId, Vec<(Key, u64)>>,
}

impl ImageLayers {
    pub fn get(&self, image: ImageId) -> Option<&[(Key, u64)]> {
        self.map.get(&image).map(Vec::as_slice)
    }

    fn set(&mut self, image: ImageId, layers: &[(Key, u64)]) {
        if self.map.len() >= MAX_IMAGES && !self.map.contains_key(&image) {
            return;
        }
        let v: Vec<(Key, u64)> = layers.iter().copied().take(MAX_LAYERS_PER_IMAGE).collect();
        self.map.insert(image, v);
    }

    fn learn(&mut self, image: ImageId, key: Key, size: u64) {
        if self.map.len() >= MAX_IMAGES && !self.map.contains_key(&image) {
            return;
        }
        let v = self.map.entry(image).or_default();
        if v.len() < MAX_LAYERS_PER_IMAGE && !v.iter().any(|&(k, _)| k == key) {
            v.push((key, size));
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Turns events into simulator requests: pull aggregation, categories, image layers.
pub struct Preprocessor {
    pub categories: CategoryMap,
    window_us: u64,
    /// (client, repo) hash → (image, pull id, category, last time, layers listed by manifest)
    open: FxHashMap<u64, OpenPull>,
    next_pull: u64,
    pub images: ImageLayers,
    last_sweep: u64,
    pub events: u64,
    pub accesses: u64,
}

#[derive(Debug, Clone, Copy)]
struct OpenPull {
    image: ImageId,
    pull: u64,
    last_us: u64,
    listed: bool,
}

impl Preprocessor {
    pub fn new(categories: CategoryMap, window_us: u64) -> Preprocessor {
        Preprocessor {
            categories,
            window_us,
            open: FxHashMap::default(),
            next_pull: 1,
            images: ImageLayers::default(),
            last_sweep: 0,
            events: 0,
            accesses: 0,
        }
    }

    /// The simulator request of an event, if it is a cache access.
    pub fn push(&mut self, e: &Event) -> Option<SimRequest> {
        self.events += 1;
        if e.time_us.saturating_sub(self.last_sweep) > self.window_us.max(1) * 4 {
            let (now, w) = (e.time_us, self.window_us);
            self.open.retain(|_, p| now.saturating_sub(p.last_us) <= w);
            self.last_sweep = e.time_us;
        }
        // Pushed manifests tell the registry an image's layers before anyone pulls it.
        if e.kind == ObjectKind::Manifest && !e.layers.is_empty() {
            if let Some(img) = e.image {
                self.images.set(img, &e.layers);
            }
        }
        if !e.cache_access {
            return None;
        }
        self.accesses += 1;
        let category = e
            .namespace()
            .map(|ns| self.categories.category_of(ns))
            .unwrap_or(NO_CATEGORY);
        let mut req = SimRequest {
            time_us: e.time_us,
            key: e.key,
            size: e.size,
            image: 0,
            category,
            pull: 0,
        };
        let (Some(repo), Some(client)) = (&e.repo, &e.client) else {
            return Some(req);
        };
        let slot = stable_hash(&[client, repo]);
        match e.kind {
            ObjectKind::Manifest => {
                let image = e.image.unwrap_or(0);
                // A second manifest of the same repository from the same client inside the window
                // is a second tag being pulled: a new pull, not a continuation of the first.
                let pull = self.next_pull;
                self.next_pull += 1;
                self.open.insert(
                    slot,
                    OpenPull {
                        image,
                        pull,
                        last_us: e.time_us,
                        listed: !e.layers.is_empty(),
                    },
                );
                req.image = image;
                req.pull = pull;
            }
            _ => {
                if let Some(p) = self.open.get_mut(&slot) {
                    if e.time_us.saturating_sub(p.last_us) <= self.window_us {
                        p.last_us = e.time_us;
                        req.image = p.image;
                        req.pull = p.pull;
                        if !p.listed && p.image != 0 {
                            self.images.learn(p.image, e.key, e.size);
                        }
                    }
                }
            }
        }
        Some(req)
    }
}

/// Whether a policy needs categories and images from the trace. thaw-policy does not say, so this
/// goes by name: LACache (per-service lifetimes, association prefetch) is the one that does.
pub fn needs_metadata(spec: &PolicySpec) -> bool {
    spec.to_string().to_ascii_lowercase().starts_with("lacache")
}

/// Replays `paths` through every (policy, capacity) of `config`.
/// `progress` is called after each chunk with the number of accesses replayed so far.
pub fn simulate(
    paths: &[std::path::PathBuf],
    format: TraceFormat,
    opts: ReadOptions,
    categories: CategoryMap,
    config: &SimConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<SimReport, SimError> {
    if config.policies.is_empty() || config.capacities.is_empty() {
        return Err(SimError::Config(
            "give at least one policy and one cache size".into(),
        ));
    }
    if let Some(m) = &config.model {
        m.check()?;
    }
    if !format.has_repositories() {
        if let Some(p) = config.policies.iter().find(|p| needs_metadata(p)) {
            return Err(SimError::NeedsMetadata {
                policy: p.to_string(),
                format,
            });
        }
    }
    let mut policies = Vec::new();
    let mut skipped = Vec::new();
    for spec in &config.policies {
        for &cap in &config.capacities {
            let table: AssociationTable = config.associations.iter().copied().collect();
            match build_with_associations(spec, cap, table) {
                Ok(policy) => policies.push(policy),
                Err(thaw_policy::PolicyError::Tiers { why, .. }) => {
                    skipped.push(format!("{spec} with {}: {why}", fmt_capacity(cap)));
                }
                Err(e) => {
                    return Err(SimError::Policy {
                        policy: spec.to_string(),
                        capacity: fmt_capacity(cap),
                        why: e.to_string(),
                    });
                }
            }
        }
    }
    if policies.is_empty() {
        return Err(SimError::Config(format!(
            "no policy accepts the cache sizes given: {}",
            skipped.join("; ")
        )));
    }
    let mut report =
        simulate_policies(paths, format, opts, categories, config, policies, progress)?;
    report.skipped = skipped;
    Ok(report)
}

/// Replays `paths` through already built policies (the CLI builds them from names; tests and the
/// live-store comparison pass their own).
pub fn simulate_policies(
    paths: &[std::path::PathBuf],
    format: TraceFormat,
    opts: ReadOptions,
    categories: CategoryMap,
    config: &SimConfig,
    policies: Vec<Box<dyn CachePolicy>>,
    progress: &mut dyn FnMut(u64),
) -> Result<SimReport, SimError> {
    let runs: Vec<Run> = policies
        .into_iter()
        .map(|policy| Run {
            name: policy.name(),
            capacity: policy.capacity(),
            policy,
            stats: RunStats::default(),
            effects: Vec::with_capacity(16),
            prefetch_effects: Vec::new(),
            prefetched: FxHashSet::default(),
            model: config.model,
            open_pulls: FxHashMap::default(),
            pull_hist: LogHistogram::new(),
            req_hist: LogHistogram::new(),
            prefetch: config.prefetch,
        })
        .collect();
    if runs.is_empty() {
        return Err(SimError::Config("no policy to replay".into()));
    }
    let threads = match config.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    }
    .min(runs.len())
    .max(1);
    let started = Instant::now();
    let mut pre = Preprocessor::new(categories, config.pull_window_us);
    let mut chunk: Vec<SimRequest> = Vec::with_capacity(CHUNK);
    let mut read_stats;
    let window = config.pull_window_us;
    let mut groups: Vec<Vec<Run>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, r) in runs.into_iter().enumerate() {
        groups[i % threads].push(r);
    }
    let replay = |groups: &mut Vec<Vec<Run>>, chunk: &[SimRequest], images: &ImageLayers| {
        let last_time = chunk.last().map(|r| r.time_us).unwrap_or(0);
        let work = |group: &mut Vec<Run>| {
            for run in group.iter_mut() {
                for r in chunk {
                    run.step(r, images);
                }
                if run.model.is_some() && !run.open_pulls.is_empty() {
                    run.close_pulls(last_time, window);
                }
            }
        };
        if groups.len() == 1 {
            work(&mut groups[0]);
        } else {
            std::thread::scope(|s| {
                let (first, rest) = groups.split_first_mut().expect("at least one group");
                for g in rest.iter_mut() {
                    s.spawn(|| work(g));
                }
                work(first);
            });
        }
    };
    let mut accesses = 0u64;
    if format == TraceFormat::OracleGeneral {
        // Fast path: decode records straight into requests, no events, no strings.
        let mut recs: Vec<OracleRecord> = Vec::with_capacity(CHUNK);
        let mut total = ReadStats::default();
        for p in paths {
            let mut r = OracleReader::open(p, opts)?;
            while r.fill(&mut recs, CHUNK)? > 0 {
                chunk.clear();
                chunk.extend(recs.iter().map(|o| SimRequest {
                    time_us: u64::from(o.time) * 1_000_000,
                    key: o.id,
                    size: u64::from(o.size),
                    image: 0,
                    category: NO_CATEGORY,
                    pull: 0,
                }));
                accesses += chunk.len() as u64;
                replay(&mut groups, &chunk, &pre.images);
                progress(accesses);
            }
            total.merge(&r.stats());
        }
        pre.events = total.events;
        pre.accesses = accesses;
        read_stats = total;
    } else {
        // Parsing text runs on its own thread, overlapping with the replay.
        let mut src: Box<dyn EventSource> =
            Box::new(read::Background::new(read::open(paths, format, opts)?));
        loop {
            chunk.clear();
            let mut done = false;
            while chunk.len() < CHUNK {
                match src.next_event()? {
                    Some(e) => {
                        if let Some(r) = pre.push(&e) {
                            chunk.push(r);
                        }
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            if !chunk.is_empty() {
                accesses += chunk.len() as u64;
                replay(&mut groups, &chunk, &pre.images);
                progress(accesses);
            }
            if done {
                break;
            }
        }
        read_stats = src.stats();
    }
    read_stats.samples.truncate(read::MALFORMED_SAMPLES);
    let wall = started.elapsed().as_secs_f64();
    let mut results: Vec<(usize, RunResult)> = Vec::new();
    for (gi, g) in groups.into_iter().enumerate() {
        for (ri, r) in g.into_iter().enumerate() {
            // restore the order runs were created in: policy-major, then capacity
            results.push((ri * threads + gi, r.finish()));
        }
    }
    results.sort_by_key(|(i, _)| *i);
    let n_runs = results.len() as f64;
    Ok(SimReport {
        trace_format: format,
        read: read_stats,
        events: pre.events,
        accesses: pre.accesses,
        runs: results.into_iter().map(|(_, r)| r).collect(),
        skipped: Vec::new(),
        wall_seconds: wall,
        requests_per_second: if wall > 0.0 {
            accesses as f64 * n_runs / wall
        } else {
            0.0
        },
    })
}

/// Formats a capacity like `1GiB` or `1GiB+8GiB`.
pub fn fmt_capacity(c: Capacity) -> String {
    if c.slow == 0 {
        fmt_bytes(c.fast)
    } else {
        format!("{}+{}", fmt_bytes(c.fast), fmt_bytes(c.slow))
    }
}

/// Bytes in binary units, exact when possible (`1GiB`, `1536MiB`, `1000B`).
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    for (u, v) in UNITS {
        if b >= v && b.is_multiple_of(v) {
            return format!("{}{u}", b / v);
        }
    }
    for (u, v) in UNITS {
        if b >= v {
            return format!("{:.2}{u}", b as f64 / v as f64);
        }
    }
    "0B".into()
}

/// Parses a capacity: `1GiB` (one tier) or `1GiB+8GiB` (fast + slow), each size as
/// [`thaw_policy::parse_bytes`] reads it (so `1G` is 2^30 bytes and `1GB` is 10^9).
pub fn parse_capacity(s: &str) -> Result<Capacity, String> {
    let size = |t: &str| thaw_policy::parse_bytes(t).map_err(|e| e.to_string());
    match s.split_once('+') {
        Some((f, sl)) => Ok(Capacity {
            fast: size(f)?,
            slow: size(sl)?,
        }),
        None => Ok(Capacity::single(size(s)?)),
    }
}

#[cfg(test)]
mod tests;
