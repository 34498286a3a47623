//! Trace analysis (`thaw trace analyze`): image pulls, per-category distributions, association
//! mining.
//!
//! # Image pulls
//!
//! A manifest GET opens a pull for its (client, repository); blob GETs of that client and
//! repository within the pull window (5 minutes by default, measured from the pull's last
//! request) join it. A second manifest of the same repository from the same client opens a new
//! pull even inside the window: the client is pulling another tag, and merging the two would
//! double the pull's size and halve the pull count. Blob GETs with no open pull (a client that
//! had the manifest cached) open a pull of the repository's "unknown tag" image.
//!
//! # Exact and sketched figures
//!
//! Counts, sums, minima and maxima are exact. Distributions are kept in log-bucketed histograms
//! ([`crate::hist`]): their quantiles and CDF points are within ±0.8% of the true values. Per-object
//! figures (pulls per layer and per image, lifetimes, distinct clients per image) are exact while
//! the trace has at most [`Limits::max_objects`] layers, [`Limits::max_images`] images and
//! [`Limits::max_client_pairs`] distinct (client, image) pairs; past that, new objects are not
//! tracked and the report says so (`truncated`).
//!
//! # Association mining, exactly
//!
//! Counting (A, B) pairs as the trace streams by needs a table of every pair that ever shares a
//! window — hundreds of millions on a busy registry, where a minute holds hundreds of pulls — and
//! any pruning of that table loses exactly the counts that matter. Instead, each image pull is
//! logged compactly (16 bytes: time, image index, client index) and the pairs are counted after
//! the pass, when pull counts are known: only images pulled more than `min_pulls` times can be A.
//! (B cannot be filtered the same way: one pull of B can follow several pulls of A.) Each A is
//! then counted on its own, scanning the window after each of
//! its pulls, with a dense counter array reused from one A to the next. The counts are exact; the
//! cost is 16 bytes per image pull, up to [`Limits::max_pull_log`] pulls (past that, later pulls
//! are left out of the mining and the report says so).

use rustc_hash::{FxHashMap, FxHashSet};
use thaw_policy::CategoryId;

use crate::category::CategoryMap;
use crate::event::{image_id, stable_hash, Event, Method, ObjectKind};
use crate::hist::{LogHistogram, RELATIVE_ERROR};
use crate::read::{EventSource, ReadStats, TraceError};

/// Association mining settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AssocConfig {
    /// B must be pulled within this long after a pull of A.
    pub window_us: u64,
    /// ...after more than this share of A's pulls...
    pub share: f64,
    /// ...for A pulled more than this many times.
    pub min_pulls: u64,
    /// Count only B pulls by the client that pulled A (otherwise registry-wide).
    pub same_client: bool,
    /// Pairs reported, at most.
    pub top: usize,
}

impl Default for AssocConfig {
    fn default() -> Self {
        AssocConfig {
            window_us: 60_000_000,
            share: 0.5,
            min_pulls: 100,
            same_client: false,
            top: 100,
        }
    }
}

/// Memory bounds of the analysis.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Limits {
    pub max_objects: usize,
    pub max_images: usize,
    pub max_client_pairs: usize,
    /// Image pulls logged for association mining, at most (16 bytes each).
    pub max_pull_log: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_objects: 8 << 20,
            max_images: 2 << 20,
            max_client_pairs: 16 << 20,
            max_pull_log: 32 << 20,
        }
    }
}

/// Analysis settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AnalyzeConfig {
    pub pull_window_us: u64,
    pub assoc: AssocConfig,
    pub limits: Limits,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        AnalyzeConfig {
            pull_window_us: 300_000_000,
            assoc: AssocConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// A distribution, summarised.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Dist {
    pub count: u64,
    pub mean: f64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    /// (value, cumulative share) points, one per histogram bucket in use.
    pub cdf: Vec<(u64, f64)>,
}

impl Dist {
    fn of(h: &LogHistogram) -> Dist {
        Dist {
            count: h.count,
            mean: h.mean(),
            min: if h.count == 0 { 0 } else { h.min },
            p50: h.quantile(0.5),
            p90: h.quantile(0.9),
            p99: h.quantile(0.99),
            max: h.max,
            cdf: h.cdf(),
        }
    }
}

/// Request counts by method.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MethodCounts {
    pub get: u64,
    pub head: u64,
    pub put: u64,
    pub post: u64,
    pub patch: u64,
    pub delete: u64,
    pub other: u64,
}

impl MethodCounts {
    fn add(&mut self, m: Method) {
        match m {
            Method::Get => self.get += 1,
            Method::Head => self.head += 1,
            Method::Put => self.put += 1,
            Method::Post => self.post += 1,
            Method::Patch => self.patch += 1,
            Method::Delete => self.delete += 1,
            Method::Other => self.other += 1,
        }
    }
}

/// Figures of one service category.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CategoryReport {
    pub name: String,
    pub requests: u64,
    pub methods: MethodCounts,
    /// PUT requests per GET request.
    pub put_get_ratio: f64,
    pub layers: u64,
    pub images: u64,
    pub image_pulls: u64,
    /// Images pushed in the trace and never pulled.
    pub images_never_pulled: u64,
    /// Bytes of each layer GET.
    pub layer_pull_size: Dist,
    /// Bytes of each image pull (its layer GETs).
    pub image_pull_size: Dist,
    /// Distinct layers' sizes.
    pub layer_size: Dist,
    pub pulls_per_layer: Dist,
    pub pulls_per_image: Dist,
    /// Seconds from an image's push to its first pull (images pushed inside the trace).
    pub push_to_first_pull_s: Dist,
    /// Seconds between consecutive pulls of an image.
    pub pull_interval_s: Dist,
    /// Seconds from an image's first to its last pull.
    pub active_duration_s: Dist,
    pub clients_per_image: Dist,
}

/// One associated pair.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AssocPair {
    pub a: String,
    pub b: String,
    /// Pulls of A.
    pub a_pulls: u64,
    /// Pulls of A followed by a pull of B within the window.
    pub followed: u64,
    /// followed / a_pulls.
    pub share: f64,
    /// `share` over the share B would reach by chance: the probability that a window of that
    /// length at a random time holds a pull of B, were B's pulls spread evenly over the trace
    /// (`1 - exp(-pulls_B * window / span)`). Near 1, B merely is popular; a pair worth
    /// prefetching is well above it.
    pub lift: f64,
}

/// Everything the analysis found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AnalysisReport {
    pub read: ReadStats,
    pub config: AnalyzeConfig,
    pub requests: u64,
    pub first_us: u64,
    pub last_us: u64,
    pub methods: MethodCounts,
    pub put_get_ratio: f64,
    pub clients: u64,
    pub repositories: u64,
    pub categories: Vec<CategoryReport>,
    pub associations: Vec<AssocPair>,
    /// Pairs that passed the thresholds (before cutting to `top`).
    pub associations_found: u64,
    /// Image pulls left out of association mining because the pull log was full (0 = exact).
    pub association_pulls_skipped: u64,
    /// Objects that were not tracked because a limit was reached (0 = per-object figures exact).
    pub truncated_objects: u64,
    pub quantile_relative_error: f64,
}

#[derive(Default)]
struct CatAcc {
    requests: u64,
    methods: MethodCounts,
    layer_pull_size: LogHistogram,
    image_pull_size: LogHistogram,
    pull_interval_s: LogHistogram,
    image_pulls: u64,
}

#[derive(Clone, Copy)]
struct LayerState {
    category: CategoryId,
    size: u64,
    pulls: u32,
}

#[derive(Clone, Copy)]
struct ImageState {
    category: CategoryId,
    pulls: u32,
    clients: u32,
    first_pull: u64,
    last_pull: u64,
    push: Option<u64>,
}

#[derive(Clone, Copy)]
struct OpenPull {
    category: CategoryId,
    bytes: u64,
    last_us: u64,
}

/// One image pull, as association mining needs it.
#[derive(Clone, Copy)]
struct LoggedPull {
    time_us: u64,
    image: u32,
    client: u32,
}

/// The streaming analysis. Feed events with [`Analyzer::push`], then call [`Analyzer::finish`].
pub struct Analyzer {
    cfg: AnalyzeConfig,
    pub categories: CategoryMap,
    cats: Vec<CatAcc>,
    requests: u64,
    first_us: u64,
    last_us: u64,
    methods: MethodCounts,
    clients: FxHashSet<u64>,
    repos: FxHashSet<u64>,
    layers: FxHashMap<u64, LayerState>,
    images: FxHashMap<u64, ImageState>,
    image_names: FxHashMap<u64, String>,
    client_image: FxHashSet<u64>,
    open: FxHashMap<u64, OpenPull>,
    last_sweep: u64,
    pull_log: Vec<LoggedPull>,
    pulls_skipped: u64,
    /// Dense indices of images and clients in the pull log, and the images back from them.
    image_index: FxHashMap<u64, u32>,
    image_ids: Vec<u64>,
    client_index: FxHashMap<u64, u32>,
    truncated: u64,
}

impl Analyzer {
    pub fn new(cfg: AnalyzeConfig, categories: CategoryMap) -> Analyzer {
        Analyzer {
            cfg,
            categories,
            cats: Vec::new(),
            requests: 0,
            first_us: u64::MAX,
            last_us: 0,
            methods: MethodCounts::default(),
            clients: FxHashSet::default(),
            repos: FxHashSet::default(),
            layers: FxHashMap::default(),
            images: FxHashMap::default(),
            image_names: FxHashMap::default(),
            client_image: FxHashSet::default(),
            open: FxHashMap::default(),
            last_sweep: 0,
            pull_log: Vec::new(),
            pulls_skipped: 0,
            image_index: FxHashMap::default(),
            image_ids: Vec::new(),
            client_index: FxHashMap::default(),
            truncated: 0,
        }
    }

    fn cat(&mut self, id: CategoryId) -> &mut CatAcc {
        let i = usize::from(id);
        if self.cats.len() <= i {
            self.cats.resize_with(i + 1, CatAcc::default);
        }
        &mut self.cats[i]
    }

    pub fn push(&mut self, e: &Event) {
        self.requests += 1;
        self.first_us = self.first_us.min(e.time_us);
        self.last_us = self.last_us.max(e.time_us);
        self.methods.add(e.method);
        if let Some(c) = &e.client {
            if self.clients.len() < self.cfg.limits.max_client_pairs {
                self.clients.insert(stable_hash(&[c]));
            }
        }
        let Some(repo) = e.repo.as_deref() else {
            return;
        };
        if self.repos.len() < self.cfg.limits.max_images {
            self.repos.insert(stable_hash(&[repo]));
        }
        let ns = crate::event::namespace_of(repo);
        let cat = self.categories.category_of(ns);
        {
            let acc = self.cat(cat);
            acc.requests += 1;
            acc.methods.add(e.method);
        }
        if e.time_us.saturating_sub(self.last_sweep) > self.cfg.pull_window_us.max(1) {
            self.sweep(e.time_us);
        }
        // Pushes: remember when an image's manifest was put.
        if e.kind == ObjectKind::Manifest
            && e.method == Method::Put
            && matches!(e.status, 200..=299)
        {
            if let Some(img) = e.image {
                if let Some(st) = self.image_state(img, cat, repo, e.reference.as_deref()) {
                    if st.push.is_none() {
                        st.push = Some(e.time_us);
                    }
                }
            }
            return;
        }
        if !e.cache_access {
            return;
        }
        let client = e.client.as_deref().unwrap_or("");
        let slot = stable_hash(&[client, repo]);
        match e.kind {
            ObjectKind::Manifest => {
                let img = e
                    .image
                    .unwrap_or_else(|| image_id(repo, e.reference.as_deref().unwrap_or("")));
                self.close_pull(slot);
                self.open.insert(
                    slot,
                    OpenPull {
                        category: cat,
                        bytes: 0,
                        last_us: e.time_us,
                    },
                );
                self.image_pulled(img, cat, repo, e.reference.as_deref(), client, e.time_us);
            }
            ObjectKind::Blob => {
                let joined = match self.open.get_mut(&slot) {
                    Some(p) if e.time_us.saturating_sub(p.last_us) <= self.cfg.pull_window_us => {
                        p.bytes += e.size;
                        p.last_us = e.time_us;
                        true
                    }
                    _ => false,
                };
                if !joined {
                    self.close_pull(slot);
                    self.open.insert(
                        slot,
                        OpenPull {
                            category: cat,
                            bytes: e.size,
                            last_us: e.time_us,
                        },
                    );
                    let img = image_id(repo, "");
                    self.image_pulled(img, cat, repo, None, client, e.time_us);
                }
                self.cat(cat).layer_pull_size.record(e.size);
                let max = self.cfg.limits.max_objects;
                let len = self.layers.len();
                match self.layers.get_mut(&e.key) {
                    Some(l) => {
                        l.pulls += 1;
                        l.size = l.size.max(e.size);
                    }
                    None if len < max => {
                        self.layers.insert(
                            e.key,
                            LayerState {
                                category: cat,
                                size: e.size,
                                pulls: 1,
                            },
                        );
                    }
                    None => self.truncated += 1,
                }
            }
            _ => {}
        }
    }

    fn image_state(
        &mut self,
        img: u64,
        cat: CategoryId,
        repo: &str,
        reference: Option<&str>,
    ) -> Option<&mut ImageState> {
        if !self.images.contains_key(&img) {
            if self.images.len() >= self.cfg.limits.max_images {
                self.truncated += 1;
                return None;
            }
            self.images.insert(
                img,
                ImageState {
                    category: cat,
                    pulls: 0,
                    clients: 0,
                    first_pull: 0,
                    last_pull: 0,
                    push: None,
                },
            );
            let name = match reference {
                Some(r) if !r.is_empty() => format!("{repo}:{r}"),
                _ => format!("{repo}:?"),
            };
            self.image_names.insert(img, name);
        }
        self.images.get_mut(&img)
    }

    fn image_pulled(
        &mut self,
        img: u64,
        cat: CategoryId,
        repo: &str,
        reference: Option<&str>,
        client: &str,
        t: u64,
    ) {
        let chash = stable_hash(&[client]);
        let pair = stable_hash(&[client]) ^ img.rotate_left(29);
        let new_client = if self.client_image.len() < self.cfg.limits.max_client_pairs {
            self.client_image.insert(pair)
        } else {
            !self.client_image.contains(&pair)
        };
        let mut interval = None;
        if let Some(st) = self.image_state(img, cat, repo, reference) {
            if st.pulls > 0 {
                interval = Some(t.saturating_sub(st.last_pull));
            } else {
                st.first_pull = t;
            }
            st.pulls += 1;
            st.last_pull = t;
            if new_client {
                st.clients += 1;
            }
        }
        let acc = self.cat(cat);
        acc.image_pulls += 1;
        if let Some(iv) = interval {
            acc.pull_interval_s.record(iv / 1_000_000);
        }
        self.log_pull(img, chash, t);
    }

    fn log_pull(&mut self, img: u64, client: u64, t: u64) {
        if self.pull_log.len() >= self.cfg.limits.max_pull_log {
            self.pulls_skipped += 1;
            return;
        }
        // The index maps are bounded like the rest: a new image or client past the limits is not
        // mined (and counted as skipped) rather than growing memory without bound.
        let image = match self.image_index.get(&img) {
            Some(&i) => i,
            None if self.image_ids.len() < self.cfg.limits.max_images => {
                let i = self.image_ids.len() as u32;
                self.image_index.insert(img, i);
                self.image_ids.push(img);
                i
            }
            None => {
                self.pulls_skipped += 1;
                return;
            }
        };
        let client = match self.client_index.get(&client) {
            Some(&c) => c,
            None if self.client_index.len() < self.cfg.limits.max_client_pairs => {
                let c = self.client_index.len() as u32;
                self.client_index.insert(client, c);
                c
            }
            None => {
                self.pulls_skipped += 1;
                return;
            }
        };
        self.pull_log.push(LoggedPull {
            time_us: t,
            image,
            client,
        });
    }

    /// Counts, for every A pulled more than `min_pulls` times, the pulls of A followed within the
    /// window by a pull of each B, and returns the pairs above the share (see the module docs).
    fn mine(&self) -> Vec<(u32, u32, u64, u64, u64)> {
        let a = self.cfg.assoc;
        let log = &self.pull_log;
        let n = self.image_ids.len();
        let mut pulls = vec![0u64; n];
        for p in log {
            pulls[p.image as usize] += 1;
        }
        // Pull positions of each candidate A, grouped by image (a counting sort by index).
        let mut starts = vec![0usize; n + 1];
        for p in log {
            if pulls[p.image as usize] > a.min_pulls {
                starts[p.image as usize + 1] += 1;
            }
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut positions = vec![0u32; starts[n]];
        for (i, p) in log.iter().enumerate() {
            let img = p.image as usize;
            if pulls[img] > a.min_pulls {
                positions[fill[img]] = i as u32;
                fill[img] += 1;
            }
        }
        let mut count = vec![0u32; n];
        let mut stamp = vec![u32::MAX; n];
        let mut touched: Vec<u32> = Vec::new();
        let mut out = Vec::new();
        for img_a in 0..n {
            let mine = &positions[starts[img_a]..starts[img_a + 1]];
            if mine.is_empty() {
                continue;
            }
            for (inst, &i) in mine.iter().enumerate() {
                let pa = log[i as usize];
                for pb in &log[i as usize + 1..] {
                    if pb.time_us.saturating_sub(pa.time_us) > a.window_us {
                        break;
                    }
                    let b = pb.image as usize;
                    if b == img_a
                        || (a.same_client && pb.client != pa.client)
                        || stamp[b] == inst as u32
                    {
                        continue;
                    }
                    // each pull of A counts once per B, however often B follows it
                    stamp[b] = inst as u32;
                    if count[b] == 0 {
                        touched.push(b as u32);
                    }
                    count[b] += 1;
                }
            }
            let total = mine.len() as u64;
            for &b in &touched {
                let c = u64::from(count[b as usize]);
                if c as f64 > a.share * total as f64 {
                    out.push((img_a as u32, b, total, c, pulls[b as usize]));
                }
                count[b as usize] = 0;
                stamp[b as usize] = u32::MAX;
            }
            touched.clear();
        }
        out
    }

    fn close_pull(&mut self, slot: u64) {
        if let Some(p) = self.open.remove(&slot) {
            self.cat(p.category).image_pull_size.record(p.bytes);
        }
    }

    fn sweep(&mut self, now: u64) {
        let w = self.cfg.pull_window_us;
        let mut closed = Vec::new();
        self.open.retain(|_, p| {
            if now.saturating_sub(p.last_us) > w {
                closed.push((p.category, p.bytes));
                false
            } else {
                true
            }
        });
        for (c, b) in closed {
            self.cat(c).image_pull_size.record(b);
        }
        self.last_sweep = now;
    }

    pub fn finish(mut self, read: ReadStats) -> AnalysisReport {
        self.sweep(u64::MAX);
        let n = self.categories.names().len();
        if self.cats.len() < n {
            self.cats.resize_with(n, CatAcc::default);
        }
        let mut per: Vec<[LogHistogram; 7]> =
            (0..self.cats.len()).map(|_| Default::default()).collect();
        let mut counts = vec![(0u64, 0u64, 0u64); self.cats.len()]; // layers, images, never pulled
        for l in self.layers.values() {
            let i = usize::from(l.category);
            per[i][0].record(l.size);
            per[i][1].record(u64::from(l.pulls));
            counts[i].0 += 1;
        }
        for im in self.images.values() {
            let i = usize::from(im.category);
            counts[i].1 += 1;
            if im.pulls == 0 {
                counts[i].2 += 1;
                continue;
            }
            per[i][2].record(u64::from(im.pulls));
            per[i][3].record((im.last_pull - im.first_pull) / 1_000_000);
            per[i][4].record(u64::from(im.clients));
            if let Some(push) = im.push.filter(|&p| im.first_pull >= p) {
                per[i][5].record((im.first_pull - push) / 1_000_000);
            }
        }
        let ratio = |m: &MethodCounts| {
            if m.get == 0 {
                0.0
            } else {
                m.put as f64 / m.get as f64
            }
        };
        let mut categories = Vec::new();
        for (i, acc) in self.cats.iter().enumerate() {
            if acc.requests == 0 {
                continue;
            }
            let h = &per[i];
            categories.push(CategoryReport {
                name: self.categories.name(i as CategoryId).to_string(),
                requests: acc.requests,
                methods: acc.methods.clone(),
                put_get_ratio: ratio(&acc.methods),
                layers: counts[i].0,
                images: counts[i].1,
                image_pulls: acc.image_pulls,
                images_never_pulled: counts[i].2,
                layer_pull_size: Dist::of(&acc.layer_pull_size),
                image_pull_size: Dist::of(&acc.image_pull_size),
                layer_size: Dist::of(&h[0]),
                pulls_per_layer: Dist::of(&h[1]),
                pulls_per_image: Dist::of(&h[2]),
                push_to_first_pull_s: Dist::of(&h[5]),
                pull_interval_s: Dist::of(&acc.pull_interval_s),
                active_duration_s: Dist::of(&h[3]),
                clients_per_image: Dist::of(&h[4]),
            });
        }
        // Association: B follows more than `share` of A's pulls, A pulled more than `min_pulls`.
        let a = self.cfg.assoc;
        let name = |i: u32| {
            let id = self.image_ids[i as usize];
            self.image_names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("{id:016x}"))
        };
        let span_us = match (self.pull_log.first(), self.pull_log.last()) {
            (Some(f), Some(l)) => l.time_us.saturating_sub(f.time_us).max(1),
            _ => 1,
        };
        let mut pairs: Vec<AssocPair> = self
            .mine()
            .into_iter()
            .map(|(ia, ib, total, c, pulls_b)| {
                let share = c as f64 / total as f64;
                AssocPair {
                    a: name(ia),
                    b: name(ib),
                    a_pulls: total,
                    followed: c,
                    share,
                    lift: share / chance_share(pulls_b, a.window_us, span_us),
                }
            })
            .collect();
        pairs.sort_by(|x, y| {
            y.share
                .total_cmp(&x.share)
                .then(y.followed.cmp(&x.followed))
                .then(x.a.cmp(&y.a))
                .then(x.b.cmp(&y.b))
        });
        let found = pairs.len() as u64;
        pairs.truncate(a.top);
        AnalysisReport {
            read,
            config: self.cfg,
            requests: self.requests,
            first_us: if self.requests == 0 { 0 } else { self.first_us },
            last_us: self.last_us,
            put_get_ratio: ratio(&self.methods),
            methods: self.methods,
            clients: self.clients.len() as u64,
            repositories: self.repos.len() as u64,
            categories,
            associations: pairs,
            associations_found: found,
            association_pulls_skipped: self.pulls_skipped,
            truncated_objects: self.truncated,
            quantile_relative_error: RELATIVE_ERROR,
        }
    }
}

/// The share of A's pulls a B pulled `pulls_b` times over `span_us` would follow within
/// `window_us` by chance alone, if its pulls were a Poisson process (never 0, so lifts stay
/// finite).
pub fn chance_share(pulls_b: u64, window_us: u64, span_us: u64) -> f64 {
    let rate = pulls_b as f64 / span_us.max(1) as f64;
    (1.0 - (-rate * window_us as f64).exp()).max(f64::MIN_POSITIVE)
}

/// Reads the associated pairs of a `thaw trace analyze --json` result (or of the summary
/// `thaw trace report --json` writes) as (image A, image B, probability) for the simulator's
/// prefetching policies, keeping only pairs whose lift is at least `min_lift` (0 keeps all; files
/// written before lifts were reported have none and are refused when `min_lift` is above 0).
/// Image names `repo:tag` map to the simulator's image ids; `repo:?` (pulls whose manifest was
/// not seen) maps to the repository's unknown-tag image.
pub fn associations_from_json(text: &str, min_lift: f64) -> Result<Vec<(u64, u64, f64)>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not json: {e}"))?;
    let list = v
        .get("associations")
        .or_else(|| v.get("analysis").and_then(|a| a.get("associations")))
        .and_then(|l| l.as_array())
        .ok_or("no \"associations\" list: expected the output of `thaw trace analyze --json`")?;
    let id = |name: &str| -> Result<u64, String> {
        let (repo, tag) = name
            .rsplit_once(':')
            .ok_or_else(|| format!("image name {name:?} is not repo:tag"))?;
        Ok(image_id(repo, if tag == "?" { "" } else { tag }))
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let field = |k: &str| {
            p.get(k)
                .ok_or_else(|| format!("association {i} has no {k:?}"))
        };
        let a = field("a")?
            .as_str()
            .ok_or_else(|| format!("association {i}: \"a\" is not a string"))?;
        let b = field("b")?
            .as_str()
            .ok_or_else(|| format!("association {i}: \"b\" is not a string"))?;
        let share = field("share")?
            .as_f64()
            .filter(|s| (0.0..=1.0).contains(s))
            .ok_or_else(|| format!("association {i}: \"share\" is not in [0, 1]"))?;
        if min_lift > 0.0 {
            let lift = p.get("lift").and_then(|l| l.as_f64()).ok_or_else(|| {
                format!("association {i} has no \"lift\": re-run `thaw trace analyze --json` with this thaw, or drop --min-lift")
            })?;
            if lift < min_lift {
                continue;
            }
        }
        out.push((id(a)?, id(b)?, share));
    }
    Ok(out)
}

/// Analyses a whole event source. `progress` gets the number of events read, every 2^16.
pub fn analyze(
    src: &mut dyn EventSource,
    cfg: AnalyzeConfig,
    categories: CategoryMap,
    progress: &mut dyn FnMut(u64),
) -> Result<AnalysisReport, TraceError> {
    let mut a = Analyzer::new(cfg, categories);
    let mut n = 0u64;
    while let Some(e) = src.next_event()? {
        a.push(&e);
        n += 1;
        if n.is_multiple_of(1 << 16) {
            progress(n);
        }
    }
    progress(n);
    Ok(a.finish(src.stats()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn ev(
        t_s: u64,
        client: &str,
        repo: &str,
        kind: ObjectKind,
        reference: &str,
        size: u64,
        method: Method,
    ) -> Event {
        let image = (kind == ObjectKind::Manifest).then(|| image_id(repo, reference));
        Event {
            time_us: t_s * 1_000_000,
            client: Some(client.into()),
            repo: Some(repo.into()),
            kind,
            key: stable_hash(&[reference]),
            reference: Some(reference.into()),
            size,
            method,
            status: if method == Method::Get { 200 } else { 201 },
            image,
            cache_access: method == Method::Get,
            layers: vec![],
        }
    }

    fn pull(a: &mut Analyzer, t: u64, client: &str, repo: &str, tag: &str, layers: &[(&str, u64)]) {
        a.push(&ev(
            t,
            client,
            repo,
            ObjectKind::Manifest,
            tag,
            500,
            Method::Get,
        ));
        for (i, (l, s)) in layers.iter().enumerate() {
            a.push(&ev(
                t + 1 + i as u64,
                client,
                repo,
                ObjectKind::Blob,
                l,
                *s,
                Method::Get,
            ));
        }
    }

    #[test]
    fn pulls_sizes_lifetimes_and_put_get() {
        let mut a = Analyzer::new(AnalyzeConfig::default(), CategoryMap::by_namespace());
        a.push(&ev(
            0,
            "p",
            "web/a",
            ObjectKind::Manifest,
            "v1",
            500,
            Method::Put,
        ));
        pull(
            &mut a,
            100,
            "c1",
            "web/a",
            "v1",
            &[("l1", 1000), ("l2", 3000)],
        );
        pull(
            &mut a,
            200,
            "c2",
            "web/a",
            "v1",
            &[("l1", 1000), ("l2", 3000)],
        );
        // the same client pulls a second tag inside the window: a separate pull
        pull(&mut a, 210, "c2", "web/a", "v2", &[("l3", 50)]);
        pull(&mut a, 1_000, "c1", "web/a", "v1", &[("l1", 1000)]);
        let r = a.finish(ReadStats::default());
        assert_eq!(r.categories.len(), 1);
        let c = &r.categories[0];
        assert_eq!(c.name, "web");
        assert_eq!(c.image_pulls, 4);
        assert_eq!(c.images, 2);
        assert_eq!(c.image_pull_size.count, 4);
        assert_eq!(c.image_pull_size.max, 4000);
        assert_eq!(c.image_pull_size.min, 50);
        assert_eq!(c.layers, 3);
        assert_eq!(c.pulls_per_layer.max, 3);
        assert_eq!(c.pulls_per_image.max, 3);
        assert_eq!(c.clients_per_image.max, 2);
        assert_eq!(c.push_to_first_pull_s.count, 1);
        assert_eq!(c.push_to_first_pull_s.max, 100);
        assert_eq!(c.active_duration_s.max, 900);
        // intervals of v1: 100 s and 800 s
        assert_eq!(c.pull_interval_s.count, 2);
        assert_eq!((c.pull_interval_s.min, c.pull_interval_s.max), (100, 800));
        assert_eq!(c.methods.put, 1);
        // 10 GETs: 4 manifests and 6 layers
        assert!((r.put_get_ratio - 1.0 / 10.0).abs() < 1e-9);
        assert_eq!(r.clients, 3);
    }

    fn assoc_cfg(same_client: bool) -> AnalyzeConfig {
        AnalyzeConfig {
            assoc: AssocConfig {
                min_pulls: 3,
                same_client,
                ..AssocConfig::default()
            },
            ..AnalyzeConfig::default()
        }
    }

    #[test]
    fn association_thresholds() {
        let mut a = Analyzer::new(assoc_cfg(false), CategoryMap::by_namespace());
        // A pulled 5 times; B follows 3 of them within 60 s (by another client); C follows 2; D
        // follows all but 90 s later
        for i in 0..5u64 {
            let t = i * 10_000;
            pull(&mut a, t, "x", "web/a", "1", &[]);
            if i < 3 {
                pull(&mut a, t + 30, "y", "web/b", "1", &[]);
                pull(&mut a, t + 40, "y", "web/b", "1", &[]); // a second B pull credits once
            }
            if i < 2 {
                pull(&mut a, t + 50, "z", "web/c", "1", &[]);
            }
            pull(&mut a, t + 90, "z", "web/d", "1", &[]);
        }
        let r = a.finish(ReadStats::default());
        let found: Vec<(&str, &str, u64)> = r
            .associations
            .iter()
            .map(|p| (p.a.as_str(), p.b.as_str(), p.followed))
            .collect();
        assert!(found.contains(&("web/a:1", "web/b:1", 3)), "{found:?}");
        assert!(
            !found.iter().any(|f| f.0 == "web/a:1" && f.1 == "web/c:1"),
            "2 of 5 is not more than half"
        );
        assert!(
            !found.iter().any(|f| f.0 == "web/a:1" && f.1 == "web/d:1"),
            "outside the window"
        );
        assert_eq!(r.association_pulls_skipped, 0);

        // restricted to the same client, B (pulled by another client) is not associated
        let mut a = Analyzer::new(assoc_cfg(true), CategoryMap::by_namespace());
        for i in 0..5u64 {
            pull(&mut a, i * 10_000, "x", "web/a", "1", &[]);
            pull(&mut a, i * 10_000 + 30, "y", "web/b", "1", &[]);
            pull(&mut a, i * 10_000 + 35, "x", "web/e", "1", &[]);
        }
        let r = a.finish(ReadStats::default());
        let found: Vec<(&str, &str)> = r
            .associations
            .iter()
            .map(|p| (p.a.as_str(), p.b.as_str()))
            .collect();
        assert!(found.contains(&("web/a:1", "web/e:1")), "{found:?}");
        assert!(!found.contains(&("web/a:1", "web/b:1")));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn mining_matches_brute_force(
            pulls in proptest::collection::vec((0u64..40, 0u8..6, 0u8..3), 1..120),
            same_client in proptest::bool::ANY,
            min_pulls in 0u64..6,
        ) {
            let cfg = AnalyzeConfig {
                assoc: AssocConfig { min_pulls, same_client, share: 0.5, window_us: 60_000_000, top: usize::MAX },
                ..AnalyzeConfig::default()
            };
            let mut a = Analyzer::new(cfg, CategoryMap::by_namespace());
            let mut t = 0u64;
            let mut seq = Vec::new();
            for (gap, img, client) in pulls {
                t += gap;
                seq.push((t, img, client));
                pull(&mut a, t, &format!("c{client}"), &format!("web/i{img}"), "1", &[]);
            }
            let r = a.finish(ReadStats::default());
            let mut got: Vec<(String, String, u64)> = r.associations.iter().map(|p| (p.a.clone(), p.b.clone(), p.followed)).collect();
            got.sort();
            // brute force: for every pull of A, the distinct B pulled after it within 60 s
            let mut want = Vec::new();
            for ia in 0u8..6 {
                let mine: Vec<usize> = (0..seq.len()).filter(|&i| seq[i].1 == ia).collect();
                if mine.len() as u64 <= min_pulls { continue; }
                for ib in 0u8..6 {
                    if ib == ia { continue; }
                    let followed = mine.iter().filter(|&&i| {
                        seq[i + 1..].iter().take_while(|p| p.0 - seq[i].0 <= 60).any(|p| p.1 == ib && (!same_client || p.2 == seq[i].2))
                    }).count() as u64;
                    if followed as f64 > 0.5 * mine.len() as f64 {
                        want.push((format!("web/i{ia}:1"), format!("web/i{ib}:1"), followed));
                    }
                }
            }
            want.sort();
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// A follower that only ever comes after A has a high lift; an image pulled all the time
    /// also "follows" most of A's pulls, but only as often as chance would have it (lift near
    /// 1), and `min_lift` drops it.
    #[test]
    fn lift_tells_a_real_follower_from_a_popular_image() {
        const S: u64 = 1; // the test events' times are in seconds
        let mut a = Analyzer::new(assoc_cfg(false), CategoryMap::by_namespace());
        // C: pulled every 20 s for 2 hours (360 pulls), by other clients; A every 10 minutes,
        // B 5 s after each A (pushed in time order, as a trace is)
        let mut pulls: Vec<(u64, String, &str)> = (0..360u64)
            .map(|i| (i * 20 * S, format!("c{}", i % 7), "web/popular"))
            .collect();
        for i in 0..12u64 {
            let t = i * 600 * S + 3 * S;
            pulls.push((t, "x".into(), "web/a"));
            pulls.push((t + 5 * S, "x".into(), "web/b"));
        }
        pulls.sort();
        for (t, client, repo) in &pulls {
            pull(&mut a, *t, client, repo, "1", &[]);
        }
        let r = a.finish(ReadStats::default());
        let lift = |b: &str| {
            r.associations
                .iter()
                .find(|p| p.a == "web/a:1" && p.b == b)
                .map(|p| p.lift)
        };
        let (lb, lc) = (lift("web/b:1").unwrap(), lift("web/popular:1").unwrap());
        // B: share 1, chance 1-exp(-12*60/7200) ~ 0.095 -> lift ~ 10.5
        assert!((9.0..12.0).contains(&lb), "lift of B {lb}");
        // C: share 1, chance ~ 1-exp(-360*60/7200) ~ 0.95 -> lift ~ 1.05
        assert!((1.0..1.2).contains(&lc), "lift of C {lc}");
        let text = serde_json::to_string(&r).unwrap();
        let all = associations_from_json(&text, 0.0).unwrap();
        let strong = associations_from_json(&text, 2.0).unwrap();
        let (ia, ib, ic) = (
            image_id("web/a", "1"),
            image_id("web/b", "1"),
            image_id("web/popular", "1"),
        );
        assert!(all.iter().any(|p| (p.0, p.1) == (ia, ic)));
        assert!(strong.iter().any(|p| (p.0, p.1) == (ia, ib)));
        assert!(!strong.iter().any(|p| (p.0, p.1) == (ia, ic)), "{strong:?}");
        // a file without lifts is refused only when a minimum is asked for
        let old = r#"{"associations":[{"a":"x:1","b":"y:1","share":0.9}]}"#;
        assert_eq!(associations_from_json(old, 0.0).unwrap().len(), 1);
        let e = associations_from_json(old, 2.0).unwrap_err();
        assert!(e.contains("re-run"), "{e}");
    }

    #[test]
    fn associations_round_trip_to_the_simulator() {
        let mut a = Analyzer::new(assoc_cfg(false), CategoryMap::by_namespace());
        for i in 0..5u64 {
            pull(&mut a, i * 10_000, "x", "web/a", "1", &[]);
            pull(&mut a, i * 10_000 + 5, "x", "web/b", "2", &[]);
        }
        let r = a.finish(ReadStats::default());
        let text = serde_json::to_string(&r).unwrap();
        let pairs = associations_from_json(&text, 0.0).unwrap();
        assert!(
            pairs.contains(&(image_id("web/a", "1"), image_id("web/b", "2"), 1.0)),
            "{pairs:?}"
        );
        assert!(associations_from_json("{}", 0.0).is_err());
        assert!(associations_from_json(
            "{\"associations\":[{\"a\":\"x\",\"b\":\"y:1\",\"share\":0.5}]}",
            0.0
        )
        .is_err());
    }

    #[test]
    fn min_pulls_is_strict() {
        let mut a = Analyzer::new(assoc_cfg(false), CategoryMap::by_namespace());
        for i in 0..3u64 {
            pull(&mut a, i * 10_000, "x", "web/a", "1", &[]);
            pull(&mut a, i * 10_000 + 1, "x", "web/b", "1", &[]);
        }
        assert!(
            a.finish(ReadStats::default()).associations.is_empty(),
            "3 pulls is not more than 3"
        );
    }

    #[test]
    fn synthetic_trace_associations_are_found() {
        let params = crate::gen::GenParams {
            requests: 60_000,
            duration_s: 86_400.0,
            seed: 11,
            ..Default::default()
        };
        let mut out = Vec::new();
        crate::gen::generate(&params, crate::read::TraceFormat::Thaw, &mut out).unwrap();
        let input: Box<dyn std::io::BufRead + Send> = Box::new(std::io::Cursor::new(out));
        let mut src = crate::read::ThawReader::from_bufread(
            input,
            std::path::Path::new("g"),
            Default::default(),
        );
        let cfg = AnalyzeConfig {
            assoc: AssocConfig {
                min_pulls: 20,
                ..AssocConfig::default()
            },
            ..AnalyzeConfig::default()
        };
        let r = analyze(&mut src, cfg, CategoryMap::by_namespace(), &mut |_| {}).unwrap();
        let names: Vec<&str> = r.categories.iter().map(|c| c.name.as_str()).collect();
        for n in ["web", "ml", "iot"] {
            assert!(names.contains(&n), "{names:?}");
        }
        assert!(
            r.associations_found > 0,
            "the generator plants associated pairs"
        );
        assert!(r
            .associations
            .iter()
            .all(|p| p.share > 0.5 && p.a_pulls > 20));
        let web = r.categories.iter().find(|c| c.name == "web").unwrap();
        assert!(web.pulls_per_image.p99 > web.pulls_per_image.p50);
        assert!(web.put_get_ratio > 0.0);
    }
}
