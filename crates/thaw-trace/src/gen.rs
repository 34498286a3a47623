//! Synthetic registry traces (`thaw trace gen`).
//!
//! # Model
//!
//! Each service category (web, ML, IoT by default) has a population of images. Images are pushed
//! over time (a Poisson process), live for an exponentially distributed lifetime, and while alive
//! are pulled with a weight drawn from a Pareto distribution, so pulls per image are heavy-tailed.
//! Pulls arrive as a Poisson process per category and pick a live image by weight (a Fenwick tree
//! keeps that sampling O(log n) as images are born and die). A pull is a manifest GET followed by
//! GETs of the config and the layers (\[OCI-DS\]), at most `pull_concurrency` downloads at a time
//! (\[DK\]), each timed by a fixed overhead plus its size over a per-download bandwidth; layers of
//! the category's shared base stacks are skipped with some probability (the client already has
//! them, \[S16\]). A share of the images has an associated image, pulled by the same client within
//! the association window after a pull of the leader with a high probability: the pairs that
//! association mining should find (\[T21\]). Pushes are monolithic uploads (POST then PUT per new
//! blob, then PUT of the manifest, \[OCI-DS\]). Manifest sizes are the exact length of the OCI
//! manifest listing the image's config and layers, and config sizes grow by one `diff_ids` entry
//! and one history entry per layer (\[OCI-IS\]).
//!
//! Two parameters hold by construction rather than through a rate estimate: push candidates
//! arrive as a Poisson process and become pushes only while the category owes PUTs
//! (`put_get_ratio` times the GETs it has emitted, less the PUTs already made), and a follow-up
//! pull takes the place of its category's next Poisson pull, so `pull_share` counts every pull.
//!
//! Memory is bounded by the live image population and a reorder buffer holding only the requests
//! of pulls still in progress, never by the trace's length.
//!
//! # Parameters and their sources
//!
//! Every default is in [`GenParams::default`], with its source in a comment next to it. The
//! sources:
//!
//! - **\[I3\]** thaw issue 3: the LACache comparison on a 7-day trace of web, ML and IoT services
//!   (the categories are LACache's), analysis of a 24-million-request trace "the size of the
//!   published production trace", association mining within 60 s.
//! - **\[A18\]** Anwar et al., "Improving Docker Registry Design based on Production Workload
//!   Analysis", FAST'18: 75 days of traces from five IBM data centres, public (22 GB unzipped,
//!   per the trace replayer's README), readable by `thaw trace analyze --format ibm`.
//! - **\[T21\]** "A Study of Container Image Storage and How To Improve It", ICSA colloquium
//!   talk, University of Edinburgh, 2021-02-18 (its abstract on the ICSA events page, summarising
//!   an analysis of IBM production registry traces): image accesses are heavily skewed, and some
//!   accesses can be predicted accurately from previous requests.
//! - **\[S16\]** Harter et al., "Slacker: Fast Distribution with Lazy Docker Containers", FAST'16
//!   (and its summary in The Morning Paper, 2016-05-02): a pull transfers only the layers the
//!   host does not already have.
//! - **\[Z19\]** Zhao et al., "Large-Scale Analysis of the Docker Hub Dataset", IEEE Cluster 2019,
//!   abstract: only 3% of the files in Docker Hub images are unique, so images share most of
//!   their content.
//! - **\[OCI-DS\]** OCI distribution-spec: a pull GETs the manifest, then each blob it lists; a
//!   monolithic push is a POST and a PUT per blob, then a PUT of the manifest.
//! - **\[OCI-IS\]** OCI image-spec: the manifest is a JSON document with one descriptor
//!   (media type, digest, size) for the config and one per layer; the config's `rootfs.diff_ids`
//!   lists one digest per layer and `history` one entry per build step.
//! - **\[DK\]** dockerd's `--max-concurrent-downloads`, 3 by default (also the default other
//!   pullers copy "to match dockerd").
//! - **\[MOBY\]** moby's layer store refuses images deeper than 125 layers.
//!
//! What could not be sourced: the body of \[A18\] (its figures of layer and manifest sizes,
//! request types, popularity, reuse times and per-data-centre differences) was not readable in
//! this environment — the stored copies of the paper return only its opening page — and the
//! LACache paper was not found at all. No source read gives a number per service category.
//! So every *value* below that shapes the workload is **assumed** (its comment says why); the
//! sources fix the *mechanisms* (skewed popularity, associations, shared layers, what a pull and
//! a push request) and the protocol-level sizes and timings. Replace the assumed values with
//! measurements of your own registry before trusting a policy comparison: run `thaw trace
//! analyze --json` on its trace (or on the IBM traces, `--format ibm`) and read the figures in
//! the last column (`c.` = the category's entry in `categories`).
//!
//! | parameter | default | source | measure to replace it |
//! |---|---|---|---|
//! | `duration_s` | 7 days | \[I3\] | the trace's span |
//! | `requests` | 1 M (CLI; 24 M in `bench/trace/run.sh`) | \[I3\] for 24 M | `requests` |
//! | categories | web, ml, iot | \[I3\] (LACache's) | namespaces → categories map |
//! | `pull_share` | web 0.55, ml 0.15, iot 0.30 | assumed | `c.image_pulls` / all pulls |
//! | `put_get_ratio` | web 1/15, ml 1/50, iot 1/100 | assumed (registries are read-heavy) | `c.put_get_ratio` |
//! | `layers_median`, `layers_sigma` | web 8, 0.5; ml 12, 0.4; iot 4, 0.5 | assumed; at most 125 \[MOBY\] | layers per manifest (the `layers` of manifest records) |
//! | `layer_size_median`, `layer_size_sigma` | web 4 MB, 1.6; ml 40 MB, 1.8; iot 1.5 MB, 1.2 | assumed | `c.layer_size` p50; sigma = ln(p90/p50) / 1.2816 |
//! | `popularity_alpha` | web 1.1, ml 1.3, iot 0.9 | shape \[T21\], value assumed | tail of `c.pulls_per_image` |
//! | `lifetime_mean_s` | web 1 d, ml 3 d, iot 7 d | assumed | `c.active_duration_s` mean |
//! | `shared_base_prob` | web 0.8, ml 0.9, iot 0.6 | mechanism \[S16\]\[Z19\], value assumed | layers shared between images' manifests |
//! | `base_stacks`, `base_layers` | 3, 3 | assumed | distinct base layers across manifests |
//! | `base_layer_size_median`, `_sigma` | 30 MB, 0.8 | assumed | size of the most shared layers |
//! | `base_cached_prob` | 0.5 | mechanism \[S16\], value assumed | share of a manifest's layers a pull fetches |
//! | `assoc_prob`, `assoc_follow` | web 0.3, 0.8; ml 0.4, 0.7; iot 0.2, 0.6 | mechanism \[T21\], values assumed | `associations` (count per image, `share`) |
//! | `assoc_delay_max_s` | 50 s | under the 60 s window \[I3\] | the gap between a pair's pulls |
//! | `clients` | web 2000, ml 300, iot 10000 | assumed | `c.clients_per_image`, `clients` |
//! | `new_tag_prob` | web 0.7, ml 0.8, iot 0.8 | assumed | `repositories` against images |
//! | `pull_concurrency` | 3 | \[DK\] | blob GETs of one client in flight at once |
//! | `request_gap_us` | 20 ms | assumed | manifest GET to first blob GET of a pull |
//! | `request_overhead_us` | 10 ms | assumed | `duration` of small GETs |
//! | `transfer_bytes_per_s` | 100 MB/s | assumed | size / `duration` of large GETs |
//! | manifest size | exact OCI JSON length | \[OCI-IS\] | — |
//! | `config_base_median`, `_sigma` | 1.5 kB, 0.5 | assumed | config blob sizes |
//! | config per layer | 74 B `diff_ids` \[OCI-IS\] + `config_history_per_layer` 120 B (assumed) | \[OCI-IS\] | config blob sizes against layer counts |
//!
//! The tests check that a generated trace, analysed by [`crate::analyze`], reproduces these
//! values: the median layer size and PUT:GET ratio per category, the categories' pull shares,
//! the skew of pulls towards the most popular images, exact manifest sizes and the download
//! limit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

use thaw_record::{CacheOutcome, LayerRef, ObjectKind, Record, RequestRecord, SCHEMA_VERSION};

use crate::read::{OracleRecord, TraceFormat};
use crate::rng::{splitmix64, Fenwick, Rng, Zipf};

/// The shape of one service category.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryParams {
    /// The category's name; also the namespace (first path component) of its repositories, so
    /// the default namespace→category mapping recovers it.
    pub name: String,
    /// Share of all image pulls.
    pub pull_share: f64,
    /// PUT requests per GET request.
    pub put_get_ratio: f64,
    /// Layers per image: log-normal median and sigma (clamped to 1..=64).
    pub layers_median: f64,
    pub layers_sigma: f64,
    /// Compressed layer size in bytes: log-normal median and sigma.
    pub layer_size_median: f64,
    pub layer_size_sigma: f64,
    /// Pareto shape of an image's pull weight (smaller = heavier tail).
    pub popularity_alpha: f64,
    /// Mean time an image is pulled after its push, seconds.
    pub lifetime_mean_s: f64,
    /// Probability an image is built on one of the category's shared base stacks.
    pub shared_base_prob: f64,
    /// Probability that an image has an associated image pulled after it.
    pub assoc_prob: f64,
    /// Probability that a pull of a leader is followed by a pull of its associate.
    pub assoc_follow: f64,
    /// Number of distinct clients (nodes) pulling.
    pub clients: u32,
    /// Probability that a push is a new tag of an existing repository rather than a new repository.
    pub new_tag_prob: f64,
}

/// Every parameter of the generator. In a TOML file, fields left out keep their defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenParams {
    pub seed: u64,
    /// The number of requests to write.
    pub requests: u64,
    /// The trace's nominal time span in seconds: pull and push rates are derived from `requests`
    /// and it, and the trace ends at its `requests`-th request.
    pub duration_s: f64,
    /// Microseconds since the epoch of the trace's first instant.
    pub start_us: u64,
    pub categories: Vec<CategoryParams>,
    /// Base stacks per category, and layers per stack.
    pub base_stacks: u32,
    pub base_layers: u32,
    /// Base-stack layer size: log-normal median and sigma.
    pub base_layer_size_median: f64,
    pub base_layer_size_sigma: f64,
    /// Probability that a client already holds a base-stack layer and does not fetch it.
    pub base_cached_prob: f64,
    /// Time a client spends between receiving the manifest and asking for the first blob
    /// (parsing, checking what it already has), microseconds.
    pub request_gap_us: u64,
    /// Blob downloads one client runs at once during a pull.
    pub pull_concurrency: u32,
    /// Fixed cost of one request (round trip, registry lookup), microseconds.
    pub request_overhead_us: u64,
    /// Bytes per second one download (or upload) gets.
    pub transfer_bytes_per_s: f64,
    /// Image config blob: log-normal median and sigma of the part that does not grow with the
    /// image's layers (platform, environment, entrypoint, labels), bytes.
    pub config_base_median: f64,
    pub config_base_sigma: f64,
    /// Image config blob: bytes of `history` per layer (one entry per build step).
    pub config_history_per_layer: u64,
    /// Upper bound of the delay between a leader's pull and its associate's, seconds (kept under
    /// the 60-second window of the association mining).
    pub assoc_delay_max_s: f64,
    /// Images alive at the start of the trace, at least, per category (so short traces have a
    /// population to pull from).
    pub min_images: u32,
}

impl Default for GenParams {
    fn default() -> Self {
        // Every value carries its source in the comment next to it, in the short names of the
        // module doc's source list ([I3], [OCI-DS], [DK], ...). "Assumed" means no published
        // number was found; the comment then says why the value is what it is, and the module
        // doc's table says which `thaw trace analyze` figure replaces it.
        //
        // No source gives per-category shapes (web, ML, IoT): the LACache paper names the
        // categories ([I3]) and the IBM trace study [A18] does not split its traffic by service,
        // so every per-category value below is assumed, chosen to make the three categories
        // differ the way their names suggest (many small short-lived web images; few huge
        // long-lived ML images; small images pulled by many devices for IoT).
        GenParams {
            seed: 1,
            requests: 1_000_000,
            // [I3]: the LACache comparison runs on a 7-day trace.
            duration_s: 7.0 * 86_400.0,
            start_us: 1_700_000_000_000_000,
            categories: vec![
                CategoryParams {
                    name: "web".into(),
                    // assumed: web services are the bulk of a general-purpose registry's pulls
                    pull_share: 0.55,
                    // assumed: read-dominated like every registry trace ([A18] reports request
                    // type distributions, not read here); one PUT per ~15 GETs for services
                    // redeployed from CI
                    put_get_ratio: 1.0 / 15.0,
                    // assumed: application images a handful of layers over a shared base
                    layers_median: 8.0,
                    layers_sigma: 0.5,
                    // assumed: application layers a few MB compressed, with a long tail
                    layer_size_median: 4.0e6,
                    layer_size_sigma: 1.6,
                    // shape [T21] (accesses heavily skewed); value assumed
                    popularity_alpha: 1.1,
                    // assumed: a web release is replaced within about a day
                    lifetime_mean_s: 86_400.0,
                    // mechanism [S16][Z19] (content shared between images); value assumed
                    shared_base_prob: 0.8,
                    // mechanism [T21] (accesses predictable from earlier ones); values assumed
                    // (front end and back end deployed together)
                    assoc_prob: 0.3,
                    assoc_follow: 0.8,
                    // assumed
                    clients: 2_000,
                    new_tag_prob: 0.7,
                },
                CategoryParams {
                    name: "ml".into(),
                    // assumed: few, very large, long-lived images
                    pull_share: 0.15,
                    // assumed: model-serving images are rebuilt rarely
                    put_get_ratio: 1.0 / 50.0,
                    layers_median: 12.0,
                    layers_sigma: 0.4,
                    // assumed: framework and CUDA layers are hundreds of MB
                    layer_size_median: 40.0e6,
                    layer_size_sigma: 1.8,
                    popularity_alpha: 1.3,
                    // assumed: a model image serves for several days
                    lifetime_mean_s: 3.0 * 86_400.0,
                    shared_base_prob: 0.9,
                    // assumed: inference server + model sidecar pairs
                    assoc_prob: 0.4,
                    assoc_follow: 0.7,
                    clients: 300,
                    new_tag_prob: 0.8,
                },
                CategoryParams {
                    name: "iot".into(),
                    // assumed: small images pulled by very many devices, long-lived
                    pull_share: 0.30,
                    // assumed: device images change seldom
                    put_get_ratio: 1.0 / 100.0,
                    layers_median: 4.0,
                    layers_sigma: 0.5,
                    // assumed: alpine-style images of a few MB
                    layer_size_median: 1.5e6,
                    layer_size_sigma: 1.2,
                    popularity_alpha: 0.9,
                    // assumed: a fleet runs one version for a week
                    lifetime_mean_s: 7.0 * 86_400.0,
                    shared_base_prob: 0.6,
                    assoc_prob: 0.2,
                    assoc_follow: 0.6,
                    clients: 10_000,
                    new_tag_prob: 0.8,
                },
            ],
            // mechanism [S16][Z19]; values assumed: a handful of popular bases (debian, alpine,
            // cuda) per category, OS base layers tens of MB compressed
            base_stacks: 3,
            base_layers: 3,
            base_layer_size_median: 30.0e6,
            base_layer_size_sigma: 0.8,
            // mechanism [S16] (a pull transfers only the layers the host lacks); value assumed
            base_cached_prob: 0.5,
            // assumed: the client parses the manifest and checks its store before fetching
            request_gap_us: 20_000,
            // [DK]: dockerd downloads at most 3 blobs of a pull at once by default
            pull_concurrency: 3,
            // assumed: one round trip plus the registry's lookup, same data centre
            request_overhead_us: 10_000,
            // assumed: 100 MB/s per download from the registry's storage
            transfer_bytes_per_s: 100.0e6,
            // assumed (what is left of a config without rootfs and history: platform, env,
            // entrypoint, labels); the per-layer part is exact, [OCI-IS]
            config_base_median: 1_500.0,
            config_base_sigma: 0.5,
            // assumed: one `history` entry (timestamp and build command) per layer, [OCI-IS]
            config_history_per_layer: 120,
            // kept under the 60-second window of the association mining ([I3])
            assoc_delay_max_s: 50.0,
            min_images: 10,
        }
    }
}

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("cannot write the trace: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad generator parameters: {0}")]
    Params(String),
}

impl GenParams {
    /// Checks the parameters for values the model cannot use.
    pub fn validate(&self) -> Result<(), GenError> {
        let bad = |s: String| Err(GenError::Params(s));
        if self.categories.is_empty() {
            return bad("at least one category is needed".into());
        }
        if self.duration_s.is_nan() || self.duration_s <= 0.0 {
            return bad("duration must be positive".into());
        }
        if self.pull_concurrency == 0
            || self.transfer_bytes_per_s.is_nan()
            || self.transfer_bytes_per_s <= 0.0
            || self.config_base_median.is_nan()
            || self.config_base_median < 1.0
        {
            return bad(
                "pull_concurrency must be at least 1, transfer_bytes_per_s positive and \
                 config_base_median at least 1"
                    .into(),
            );
        }
        let total: f64 = self.categories.iter().map(|c| c.pull_share).sum();
        if total.is_nan() || total <= 0.0 {
            return bad("pull shares must sum to a positive number".into());
        }
        for c in &self.categories {
            let ok = c.pull_share >= 0.0
                && c.put_get_ratio >= 0.0
                && c.layers_median >= 1.0
                && c.layer_size_median >= 1.0
                && c.popularity_alpha > 0.0
                && c.lifetime_mean_s > 0.0
                && (0.0..=1.0).contains(&c.shared_base_prob)
                && (0.0..=1.0).contains(&c.assoc_prob)
                && (0.0..=1.0).contains(&c.assoc_follow)
                && (0.0..=1.0).contains(&c.new_tag_prob)
                && c.clients > 0
                && !c.name.is_empty()
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                return bad(format!("category {:?} has a parameter out of range (names are lowercase letters and digits)", c.name));
            }
        }
        Ok(())
    }
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenSummary {
    pub requests: u64,
    pub pulls: u64,
    pub pushes: u64,
    pub images: u64,
    pub associated_pairs: u64,
    pub span_s: f64,
}

#[derive(Debug, Clone)]
struct Image {
    repo: u32,
    tag: u32,
    manifest: u64,
    /// Bytes of the image's OCI manifest (its exact JSON length, see [`oci_manifest_json`]).
    manifest_size: u64,
    config: (u64, u64),
    layers: Vec<(u64, u64, bool)>,
    assoc: Option<(usize, u32)>,
    generation: u32,
    alive: bool,
}

struct Category {
    params: CategoryParams,
    pull_mean_gap_us: f64,
    /// Mean gap between push *candidates*: twice the expected push rate, thinned by
    /// `put_credit` so that the trace's PUT:GET ratio is the parameter's, whatever the realised
    /// number of GETs.
    push_mean_gap_us: f64,
    /// PUTs owed: `put_get_ratio` per GET emitted, less the PUTs of the pushes made. A push
    /// candidate becomes a push only while it is positive.
    put_credit: f64,
    /// Follow-up pulls (of associated images) made and not yet taken out of the Poisson pulls:
    /// each one cancels the category's next Poisson pull, so `pull_share` is the share of *all*
    /// pulls, follow-ups included.
    follow_debt: u64,
    slots: Vec<Image>,
    free: Vec<usize>,
    weights: Fenwick,
    bases: Vec<Vec<(u64, u64)>>,
    repos: u32,
    next_tag: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Pull(usize),
    Push(usize),
    Death(usize, usize, u32),
    Follow(usize, usize, u32, u32),
}

/// An output request: the record and the cache key of its object.
struct Out {
    key: u64,
    rec: RequestRecord,
}

/// Where generated requests go.
trait Sink {
    fn put(&mut self, out: &Out) -> std::io::Result<()>;
}

struct ThawSink<W: Write> {
    w: W,
}

impl<W: Write> Sink for ThawSink<W> {
    fn put(&mut self, out: &Out) -> std::io::Result<()> {
        let line = Record::Request(out.rec.clone()).to_line();
        self.w.write_all(line.as_bytes())
    }
}

struct OracleSink<W: Write> {
    w: W,
    start_us: u64,
}

impl<W: Write> Sink for OracleSink<W> {
    fn put(&mut self, out: &Out) -> std::io::Result<()> {
        // oracleGeneral holds cache accesses only; pushes and the like have no place in it.
        if !out.rec.is_cache_access() {
            return Ok(());
        }
        let t = (out.rec.ts_us.saturating_sub(self.start_us) / 1_000_000).min(u64::from(u32::MAX))
            as u32;
        let size = out.rec.size.unwrap_or(0).min(u64::from(u32::MAX)) as u32;
        // `next` (the oracle's next access time) would need a second pass over the trace; -1 says
        // "unknown/never", which only Belady-style policies use.
        self.w.write_all(
            &OracleRecord {
                time: t,
                id: out.key,
                size,
                next: -1,
            }
            .encode(),
        )
    }
}

/// Layers of one image, at most: the layer store of moby (Docker Engine) refuses deeper images
/// (\[MOBY\]).
const MAX_LAYERS: f64 = 125.0;

/// Bytes one layer adds to an image config: its `rootfs.diff_ids` entry, a quoted
/// `sha256:<64 hex>` string and a comma (\[OCI-IS\]).
const CONFIG_DIFF_ID_BYTES: u64 = 74;

const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The compact OCI image manifest (\[OCI-IS\]) listing `config` and `layers` (digest, size).
/// The generator writes its length as the manifest's size, so manifest sizes grow with the layer
/// count exactly as real ones do.
fn oci_manifest_json(config: (&str, u64), layers: &[(String, u64)]) -> String {
    let descriptor = |media_type: &str, digest: &str, size: u64| serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size });
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": thaw_oci::MediaType::OciManifest.as_str(),
        "config": descriptor(OCI_CONFIG_MEDIA_TYPE, config.0, config.1),
        "layers": layers
            .iter()
            .map(|(d, size)| descriptor(OCI_LAYER_MEDIA_TYPE, d, *size))
            .collect::<Vec<_>>(),
    })
    .to_string()
}

/// When each of a pull's downloads starts, given when the first may start, how long each takes
/// (in the manifest's order) and how many run at once: each starts as soon as a slot is free,
/// in order, the way dockerd's transfer manager hands out its download slots (\[DK\]). The limit
/// is applied per pull, not per client: a client pulling two images at once (an image and its
/// associate) gets up to twice the slots, which keeps a busy client's backlog from growing
/// without bound under the generator's skewed choice of clients.
fn download_starts(from: u64, durations: impl Iterator<Item = u64>, concurrency: u32) -> Vec<u64> {
    let mut free_at = vec![from; concurrency.max(1) as usize];
    durations
        .map(|d| {
            let (lane, &at) = free_at
                .iter()
                .enumerate()
                .min_by_key(|&(_, t)| *t)
                .expect("at least one download slot");
            free_at[lane] = at + d;
            at
        })
        .collect()
}

/// A 64-hex-digit sha256-style digest whose first 16 digits are `key`: distinct uids give
/// distinct keys because SplitMix64 is a bijection.
fn digest_of(uid: u64) -> (u64, String) {
    let key = splitmix64(uid);
    let d = format!(
        "sha256:{key:016x}{:016x}{:016x}{:016x}",
        splitmix64(uid ^ 0x5151_5151_5151_5151),
        splitmix64(uid ^ 0xa2a2_a2a2_a2a2_a2a2),
        splitmix64(uid ^ 0x3c3c_3c3c_3c3c_3c3c)
    );
    (key, d)
}

/// The per-request fields of a generated record.
struct Req {
    kind: ObjectKind,
    method: &'static str,
    status: u16,
    client: Option<u32>,
    size: u64,
    digest: String,
    layers: Vec<LayerRef>,
}

struct Gen<'a> {
    p: &'a GenParams,
    rng: Rng,
    cats: Vec<Category>,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    pending: BinaryHeap<Reverse<(u64, u64, usize)>>,
    pending_out: Vec<Option<Out>>,
    pending_free: Vec<usize>,
    seq: u64,
    uid: u64,
    summary: GenSummary,
}

/// Generates a trace per `params` into `w` in `format` (`thaw` or `oracle-general`).
pub fn generate(
    params: &GenParams,
    format: TraceFormat,
    w: &mut dyn Write,
) -> Result<GenSummary, GenError> {
    params.validate()?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, w);
    let summary = match format {
        TraceFormat::Thaw => Gen::new(params).run(&mut ThawSink { w: &mut w })?,
        TraceFormat::OracleGeneral => Gen::new(params).run(&mut OracleSink {
            w: &mut w,
            start_us: params.start_us,
        })?,
        other => {
            return Err(GenError::Params(format!(
                "cannot write {other} traces; use thaw or oracle-general"
            )))
        }
    };
    w.flush()?;
    Ok(summary)
}

impl<'a> Gen<'a> {
    fn new(p: &'a GenParams) -> Gen<'a> {
        let mut rng = Rng::new(p.seed);
        let share_total: f64 = p.categories.iter().map(|c| c.pull_share).sum();
        // Expected requests per pull and per push, to turn `requests` over `duration_s` into rates.
        let mut per_pull_total = 0.0;
        let mut per_push = Vec::new();
        // The mean layer count is estimated by sampling the very distribution images draw from
        // (rounded and clamped log-normal), with its own RNG so the trace's stream is untouched.
        let mut est = Rng::new(p.seed ^ 0x6a09_e667_f3bc_c908);
        for c in &p.categories {
            let share = c.pull_share / share_total;
            const SAMPLES: u32 = 4096;
            let layers = (0..SAMPLES)
                .map(|_| {
                    est.lognormal(c.layers_median, c.layers_sigma)
                        .round()
                        .clamp(1.0, MAX_LAYERS)
                })
                .sum::<f64>()
                / f64::from(SAMPLES);
            let base_layers = c.shared_base_prob * f64::from(p.base_layers);
            // manifest + config + own layers + the base layers the client does not have
            let gets = 2.0 + layers + base_layers * (1.0 - p.base_cached_prob);
            // a push uploads its own layers and config (POST + PUT each) and PUTs the manifest
            let puts_per_push = layers + 2.0;
            let reqs_per_push = 2.0 * (layers + 1.0) + 1.0;
            // Pushes per pull so that PUT/GET matches the ratio (follow-up pulls replace Poisson
            // pulls, so every pull counts once).
            let pushes_per_pull = gets * c.put_get_ratio / puts_per_push;
            per_pull_total += share * (gets + pushes_per_pull * reqs_per_push);
            per_push.push(pushes_per_pull);
        }
        let pulls_per_s = p.requests as f64 / p.duration_s / per_pull_total.max(1.0);
        let mut cats = Vec::new();
        let mut uid = 1u64;
        for (i, c) in p.categories.iter().enumerate() {
            let share = c.pull_share / share_total;
            let pull_rate = pulls_per_s * share;
            let push_rate = pull_rate * per_push[i];
            let mut bases = Vec::new();
            for _ in 0..p.base_stacks {
                let mut stack = Vec::new();
                for _ in 0..p.base_layers {
                    let size = rng
                        .lognormal(p.base_layer_size_median, p.base_layer_size_sigma)
                        .max(1.0) as u64;
                    stack.push((uid, size));
                    uid += 1;
                }
                bases.push(stack);
            }
            let alive = (push_rate * c.lifetime_mean_s)
                .max(f64::from(p.min_images))
                .ceil() as usize;
            let cap = alive * 2 + 16;
            cats.push(Category {
                params: c.clone(),
                pull_mean_gap_us: if pull_rate > 0.0 {
                    1e6 / pull_rate
                } else {
                    f64::INFINITY
                },
                push_mean_gap_us: if push_rate > 0.0 {
                    1e6 / (2.0 * push_rate)
                } else {
                    f64::INFINITY
                },
                put_credit: 0.0,
                follow_debt: 0,
                slots: Vec::with_capacity(cap),
                free: Vec::new(),
                weights: Fenwick::new(cap),
                bases,
                repos: 0,
                next_tag: 0,
            });
        }
        let mut g = Gen {
            p,
            rng,
            cats,
            events: BinaryHeap::new(),
            pending: BinaryHeap::new(),
            pending_out: Vec::new(),
            pending_free: Vec::new(),
            seq: 0,
            uid,
            summary: GenSummary::default(),
        };
        g.populate();
        g
    }

    fn schedule(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, ev)));
    }

    fn next_uid(&mut self) -> u64 {
        self.uid += 1;
        self.uid
    }

    /// The images alive when the trace starts, and the first pull and push of each category.
    fn populate(&mut self) {
        let start = self.p.start_us;
        for c in 0..self.cats.len() {
            let target = (self.cats[c].weights.len().saturating_sub(16)) / 2;
            for _ in 0..target {
                let slot = self.new_image(c);
                // Lifetimes are exponential, hence memoryless: an image alive at the start has a
                // residual lifetime with the same distribution.
                let life = self.rng.exp(self.cats[c].params.lifetime_mean_s * 1e6) as u64;
                let generation = self.cats[c].slots[slot].generation;
                self.schedule(start + life, Ev::Death(c, slot, generation));
            }
            for slot in 0..self.cats[c].slots.len() {
                self.maybe_associate(c, slot);
            }
            let g = self.rng.exp(self.cats[c].pull_mean_gap_us);
            if g.is_finite() {
                self.schedule(start + g as u64, Ev::Pull(c));
            }
            let g = self.rng.exp(self.cats[c].push_mean_gap_us);
            if g.is_finite() {
                self.schedule(start + g as u64, Ev::Push(c));
            }
        }
    }

    /// Creates an image in category `c` (not yet pushed in the trace) and returns its slot.
    fn new_image(&mut self, c: usize) -> usize {
        let params = self.cats[c].params.clone();
        let n_layers = self
            .rng
            .lognormal(params.layers_median, params.layers_sigma)
            .round()
            .clamp(1.0, MAX_LAYERS) as usize;
        let mut layers = Vec::with_capacity(n_layers + self.p.base_layers as usize);
        if !self.cats[c].bases.is_empty() && self.rng.chance(params.shared_base_prob) {
            let b = self.rng.below(self.cats[c].bases.len() as u64) as usize;
            for &(uid, size) in &self.cats[c].bases[b] {
                layers.push((uid, size, true));
            }
        }
        for _ in 0..n_layers {
            let uid = self.next_uid();
            let size = self
                .rng
                .lognormal(params.layer_size_median, params.layer_size_sigma)
                .max(100.0) as u64;
            layers.push((uid, size, false));
        }
        let config_uid = self.next_uid();
        let config_size = self
            .rng
            .lognormal(self.p.config_base_median, self.p.config_base_sigma)
            .max(100.0) as u64
            + layers.len() as u64 * (CONFIG_DIFF_ID_BYTES + self.p.config_history_per_layer);
        let manifest = self.next_uid();
        let layer_digests: Vec<(String, u64)> = layers
            .iter()
            .map(|&(uid, size, _)| (digest_of(uid).1, size))
            .collect();
        let manifest_size =
            oci_manifest_json((&digest_of(config_uid).1, config_size), &layer_digests).len() as u64;
        let cat = &mut self.cats[c];
        let repo = if cat.repos > 0 && self.rng.chance(params.new_tag_prob) {
            self.rng.below(u64::from(cat.repos)) as u32
        } else {
            cat.repos += 1;
            cat.repos - 1
        };
        cat.next_tag += 1;
        let img = Image {
            repo,
            tag: cat.next_tag,
            manifest,
            manifest_size,
            config: (config_uid, config_size),
            layers,
            assoc: None,
            generation: 0,
            alive: true,
        };
        let weight = self.rng.pareto(params.popularity_alpha);
        let slot = match cat.free.pop() {
            Some(s) => {
                let generation = cat.slots[s].generation + 1;
                cat.slots[s] = Image { generation, ..img };
                s
            }
            None => {
                cat.slots.push(img);
                cat.slots.len() - 1
            }
        };
        if slot >= cat.weights.len() {
            // Grow the weight tree: rebuild it at twice the size.
            let mut f = Fenwick::new(cat.weights.len() * 2 + 16);
            for i in 0..cat.weights.len() {
                f.set(i, cat.weights.get(i));
            }
            cat.weights = f;
        }
        cat.weights.set(slot, weight);
        self.summary.images += 1;
        slot
    }

    fn maybe_associate(&mut self, c: usize, slot: usize) {
        let cat = &self.cats[c];
        if cat.slots.len() < 2 || !self.rng.chance(cat.params.assoc_prob) {
            return;
        }
        let other = self.rng.below(cat.slots.len() as u64) as usize;
        if other == slot || !cat.slots[other].alive {
            return;
        }
        let generation = cat.slots[other].generation;
        self.cats[c].slots[slot].assoc = Some((other, generation));
        self.summary.associated_pairs += 1;
    }

    fn client_of(&mut self, c: usize) -> u32 {
        // Skewed: a few nodes pull much more than the rest (assumed: busy nodes churn containers).
        let n = self.cats[c].params.clients;
        ((f64::from(n) * self.rng.f64().powi(2)) as u32).min(n - 1)
    }

    fn emit(&mut self, out: Out) {
        let idx = match self.pending_free.pop() {
            Some(i) => {
                self.pending_out[i] = Some(out);
                i
            }
            None => {
                self.pending_out.push(Some(out));
                self.pending_out.len() - 1
            }
        };
        let t = self.pending_out[idx]
            .as_ref()
            .expect("just stored")
            .rec
            .ts_us;
        self.seq += 1;
        self.pending.push(Reverse((t, self.seq, idx)));
    }

    /// Writes every buffered request up to time `now` (later events cannot produce earlier ones).
    fn flush(&mut self, now: u64, sink: &mut dyn Sink, limit: u64) -> std::io::Result<bool> {
        while let Some(Reverse((t, _, idx))) = self.pending.peek().copied() {
            if t > now {
                break;
            }
            self.pending.pop();
            let out = self.pending_out[idx]
                .take()
                .expect("pending request present");
            self.pending_free.push(idx);
            if self.summary.requests >= limit {
                return Ok(true);
            }
            sink.put(&out)?;
            self.summary.requests += 1;
        }
        Ok(self.summary.requests >= limit)
    }

    /// Buffers one request of image `img` in category `c`, at `ts_us`, for the object `key`.
    fn request(&mut self, ts_us: u64, c: usize, img: &Image, key: u64, r: Req) {
        let rec = self.record(ts_us, c, img, r);
        self.emit(Out { key, rec });
    }

    fn record(&self, ts_us: u64, c: usize, img: &Image, r: Req) -> RequestRecord {
        let Req {
            kind,
            method,
            status,
            client,
            size,
            digest,
            layers,
        } = r;
        let cat = &self.cats[c];
        let is_get = method == "GET";
        RequestRecord {
            v: SCHEMA_VERSION,
            ts_us,
            client: client.map(|n| format!("10.{}.{}.{}", c, n / 256, n % 256)),
            principal: None,
            user_agent: Some(
                if is_get {
                    "containerd/1.7"
                } else {
                    "buildkit/0.12"
                }
                .into(),
            ),
            upstream: None,
            repo: Some(format!("{}/app{}", cat.params.name, img.repo)),
            tag: if kind == ObjectKind::Manifest {
                Some(format!("v{}", img.tag))
            } else {
                None
            },
            digest: Some(digest),
            kind,
            size: Some(size),
            bytes_sent: if is_get { size } else { 0 },
            method: method.into(),
            status,
            duration_us: self.transfer_us(size),
            outcome: if is_get {
                CacheOutcome::Hit
            } else {
                CacheOutcome::None
            },
            range: None,
            layers,
        }
    }

    fn manifest_layers(img: &Image) -> Vec<LayerRef> {
        let mut v = Vec::with_capacity(img.layers.len() + 1);
        v.push(LayerRef {
            digest: digest_of(img.config.0).1,
            size: img.config.1,
        });
        for &(uid, size, _) in &img.layers {
            v.push(LayerRef {
                digest: digest_of(uid).1,
                size,
            });
        }
        v
    }

    /// How long moving `size` bytes takes one request: the fixed overhead plus the transfer.
    fn transfer_us(&self, size: u64) -> u64 {
        self.p.request_overhead_us + (size as f64 / self.p.transfer_bytes_per_s * 1e6) as u64
    }

    /// One pull: the manifest GET, then the config and the layers the client lacks, fetched
    /// `pull_concurrency` at a time (\[OCI-DS\], \[DK\]): each blob starts when a download slot frees,
    /// so a request's timestamp is when the client asked for it, as a registry logs it.
    fn pull(&mut self, t: u64, c: usize, slot: usize, client: u32) {
        let img = self.cats[c].slots[slot].clone();
        let layers = Self::manifest_layers(&img);
        let (mkey, mdigest) = digest_of(img.manifest);
        self.request(
            t,
            c,
            &img,
            mkey,
            Req {
                kind: ObjectKind::Manifest,
                method: "GET",
                status: 200,
                client: Some(client),
                size: img.manifest_size,
                digest: mdigest,
                layers,
            },
        );
        let blobs_from = t + self.transfer_us(img.manifest_size) + self.p.request_gap_us;
        let mut wanted = Vec::with_capacity(img.layers.len() + 1);
        wanted.push(img.config);
        for &(uid, size, base) in &img.layers {
            if base && self.rng.chance(self.p.base_cached_prob) {
                continue;
            }
            wanted.push((uid, size));
        }
        let starts = download_starts(
            blobs_from,
            wanted.iter().map(|w| self.transfer_us(w.1)),
            self.p.pull_concurrency,
        );
        let gets = 1 + wanted.len();
        self.cats[c].put_credit += gets as f64 * self.cats[c].params.put_get_ratio;
        for ((uid, size), at) in wanted.into_iter().zip(starts) {
            let (key, d) = digest_of(uid);
            self.request(
                at,
                c,
                &img,
                key,
                Req {
                    kind: ObjectKind::Blob,
                    method: "GET",
                    status: 200,
                    client: Some(client),
                    size,
                    digest: d,
                    layers: Vec::new(),
                },
            );
        }
        self.summary.pulls += 1;
        if let Some((other, generation)) = img.assoc {
            let alive = self.cats[c].slots[other].alive
                && self.cats[c].slots[other].generation == generation;
            if alive && self.rng.chance(self.cats[c].params.assoc_follow) {
                let delay =
                    (1.0 + self.rng.f64() * (self.p.assoc_delay_max_s - 1.0).max(0.0)) * 1e6;
                self.schedule(t + delay as u64, Ev::Follow(c, other, generation, client));
            }
        }
    }

    fn push(&mut self, t: u64, c: usize) {
        let slot = self.new_image(c);
        self.maybe_associate(c, slot);
        let img = self.cats[c].slots[slot].clone();
        let gap = self.p.request_gap_us;
        let pusher = self
            .rng
            .below(u64::from(self.cats[c].params.clients.min(50))) as u32;
        let mut at = t;
        let mut blobs: Vec<(u64, u64)> = img
            .layers
            .iter()
            .filter(|l| !l.2)
            .map(|l| (l.0, l.1))
            .collect();
        blobs.push(img.config);
        // one PUT per blob and one for the manifest
        self.cats[c].put_credit -= (blobs.len() + 1) as f64;
        for (uid, size) in blobs {
            let (key, d) = digest_of(uid);
            self.request(
                at,
                c,
                &img,
                key,
                Req {
                    kind: ObjectKind::Upload,
                    method: "POST",
                    status: 202,
                    client: Some(pusher),
                    size: 0,
                    digest: d.clone(),
                    layers: Vec::new(),
                },
            );
            at += self.transfer_us(0) + gap;
            self.request(
                at,
                c,
                &img,
                key,
                Req {
                    kind: ObjectKind::Upload,
                    method: "PUT",
                    status: 201,
                    client: Some(pusher),
                    size,
                    digest: d,
                    layers: Vec::new(),
                },
            );
            at += self.transfer_us(size) + gap;
        }
        let layers = Self::manifest_layers(&img);
        let msize = img.manifest_size;
        let (mkey, md) = digest_of(img.manifest);
        self.request(
            at,
            c,
            &img,
            mkey,
            Req {
                kind: ObjectKind::Manifest,
                method: "PUT",
                status: 201,
                client: Some(pusher),
                size: msize,
                digest: md,
                layers,
            },
        );
        self.summary.pushes += 1;
        let life = self.rng.exp(self.cats[c].params.lifetime_mean_s * 1e6) as u64;
        self.schedule(at + life, Ev::Death(c, slot, img.generation));
    }

    fn run(mut self, sink: &mut dyn Sink) -> Result<GenSummary, GenError> {
        // `duration_s` set the rates; the trace runs until it has `requests` requests, so its span
        // is `duration_s` give or take the Poisson noise.
        let limit = self.p.requests;
        let mut last = self.p.start_us;
        while let Some(Reverse((t, _, ev))) = self.events.pop() {
            if self.flush(t, sink, limit)? {
                break;
            }
            last = t;
            match ev {
                Ev::Pull(c) if self.cats[c].follow_debt > 0 => {
                    self.cats[c].follow_debt -= 1;
                    let g = self.rng.exp(self.cats[c].pull_mean_gap_us) as u64;
                    self.schedule(t + g.max(1), Ev::Pull(c));
                }
                Ev::Pull(c) => {
                    if let Some(slot) = self.cats[c].weights.sample(&mut self.rng) {
                        let client = self.client_of(c);
                        self.pull(t, c, slot, client);
                    }
                    let g = self.rng.exp(self.cats[c].pull_mean_gap_us) as u64;
                    self.schedule(t + g.max(1), Ev::Pull(c));
                }
                Ev::Push(c) => {
                    if self.cats[c].put_credit > 0.0 {
                        self.push(t, c);
                    }
                    let g = self.rng.exp(self.cats[c].push_mean_gap_us) as u64;
                    self.schedule(t + g.max(1), Ev::Push(c));
                }
                Ev::Death(c, slot, generation) => {
                    let cat = &mut self.cats[c];
                    if cat.slots[slot].generation == generation && cat.slots[slot].alive {
                        cat.slots[slot].alive = false;
                        cat.slots[slot].layers = Vec::new();
                        cat.weights.set(slot, 0.0);
                        cat.free.push(slot);
                    }
                }
                Ev::Follow(c, slot, generation, client) => {
                    let s = &self.cats[c].slots[slot];
                    if s.alive && s.generation == generation {
                        self.pull(t, c, slot, client);
                        self.cats[c].follow_debt += 1;
                    }
                }
            }
        }
        self.flush(u64::MAX, sink, limit)?;
        self.summary.span_s = (last.saturating_sub(self.p.start_us)) as f64 / 1e6;
        Ok(self.summary)
    }
}

/// Parameters of a plain Zipf object trace (no registry structure): the kind of trace cache
/// simulators are usually benchmarked on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ZipfParams {
    pub seed: u64,
    pub requests: u64,
    pub objects: usize,
    pub alpha: f64,
    /// Object size: log-normal median and sigma, bytes.
    pub size_median: f64,
    pub size_sigma: f64,
    /// Requests per second of trace time.
    pub rate: f64,
}

/// Writes a Zipf trace in `oracleGeneral` format. Each object keeps one size.
pub fn generate_zipf(p: &ZipfParams, w: &mut dyn Write) -> Result<u64, GenError> {
    if p.objects == 0 || p.alpha.is_nan() || p.alpha < 0.0 || p.rate.is_nan() || p.rate <= 0.0 {
        return Err(GenError::Params(
            "zipf needs objects > 0, alpha >= 0 and rate > 0".into(),
        ));
    }
    let zipf = Zipf::new(p.objects, p.alpha);
    let mut rng = Rng::new(p.seed);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, w);
    // Ranks are scrambled into ids so popular objects are not the small ids.
    for i in 0..p.requests {
        let rank = zipf.sample(&mut rng) as u64;
        let id = splitmix64(rank ^ p.seed.rotate_left(17));
        // size is a function of the id, so an object keeps its size across requests
        let mut srng = Rng::new(id);
        let size = srng
            .lognormal(p.size_median, p.size_sigma)
            .clamp(1.0, f64::from(u32::MAX)) as u32;
        let time = (i as f64 / p.rate) as u32;
        w.write_all(
            &OracleRecord {
                time,
                id,
                size,
                next: -1,
            }
            .encode(),
        )?;
    }
    w.flush()?;
    Ok(p.requests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::{EventSource, ReadOptions, ThawReader};
    use std::collections::{HashMap, HashSet};
    use std::path::PathBuf;

    fn small(seed: u64, requests: u64) -> GenParams {
        GenParams {
            seed,
            requests,
            duration_s: 86_400.0,
            ..GenParams::default()
        }
    }

    fn gen_bytes(p: &GenParams, f: TraceFormat) -> (Vec<u8>, GenSummary) {
        let mut out = Vec::new();
        let s = generate(p, f, &mut out).unwrap();
        (out, s)
    }

    #[test]
    fn reproducible_and_seed_dependent() {
        let (a, sa) = gen_bytes(&small(1, 5_000), TraceFormat::Thaw);
        let (b, _) = gen_bytes(&small(1, 5_000), TraceFormat::Thaw);
        let (c, _) = gen_bytes(&small(2, 5_000), TraceFormat::Thaw);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(sa.requests, 5_000);
    }

    #[test]
    fn trace_is_valid_ordered_and_shaped() {
        let (bytes, s) = gen_bytes(&small(3, 20_000), TraceFormat::Thaw);
        let input: Box<dyn std::io::BufRead + Send> = Box::new(std::io::Cursor::new(bytes));
        let mut r =
            ThawReader::from_bufread(input, &PathBuf::from("gen"), ReadOptions { strict: true });
        let mut last = 0;
        let mut gets = 0u64;
        let mut puts = 0u64;
        let mut pulls_per_image: HashMap<u64, u64> = HashMap::new();
        let mut namespaces = HashSet::new();
        let mut sizes = HashMap::new();
        while let Some(e) = r.next_event().unwrap() {
            assert!(e.time_us >= last, "time order");
            last = e.time_us;
            namespaces.insert(e.namespace().unwrap().to_string());
            match e.method {
                crate::event::Method::Get => gets += 1,
                crate::event::Method::Put => puts += 1,
                _ => {}
            }
            if e.kind == ObjectKind::Manifest && e.cache_access {
                *pulls_per_image.entry(e.image.unwrap()).or_default() += 1;
            }
            if e.cache_access {
                // an object keeps its size
                let prev = sizes.insert(e.key, e.size);
                assert!(prev.is_none() || prev == Some(e.size));
            }
        }
        assert_eq!(r.stats().events, s.requests);
        assert_eq!(
            namespaces,
            ["web", "ml", "iot"].iter().map(|s| s.to_string()).collect()
        );
        let ratio = puts as f64 / gets as f64;
        assert!(ratio > 0.005 && ratio < 0.2, "put:get {ratio}");
        // heavy tail: the most pulled image gets far more than the median one
        let mut counts: Vec<u64> = pulls_per_image.values().copied().collect();
        counts.sort_unstable();
        assert!(
            counts[counts.len() - 1] >= 10 * counts[counts.len() / 2].max(1),
            "{counts:?}"
        );
    }

    #[test]
    fn oracle_output_holds_only_accesses() {
        let p = small(4, 3_000);
        let (thaw, _) = gen_bytes(&p, TraceFormat::Thaw);
        let (oracle, _) = gen_bytes(&p, TraceFormat::OracleGeneral);
        let accesses = thaw
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter(
                |l| match Record::from_line(std::str::from_utf8(l).unwrap()).unwrap() {
                    Record::Request(r) => r.is_cache_access(),
                    Record::File(_) => false,
                },
            )
            .count();
        assert_eq!(oracle.len(), accesses * 24);
    }

    #[test]
    fn params_round_trip_through_toml_and_partial_files_keep_defaults() {
        let p = GenParams::default();
        let text = toml::to_string_pretty(&p).unwrap();
        assert_eq!(toml::from_str::<GenParams>(&text).unwrap(), p);
        let partial: GenParams = toml::from_str("seed = 9\nbase_stacks = 1\n").unwrap();
        assert_eq!(partial.seed, 9);
        assert_eq!(partial.base_stacks, 1);
        assert_eq!(partial.categories, p.categories);
        assert!(toml::from_str::<GenParams>("no_such_field = 1").is_err());
    }

    #[test]
    fn bad_params_are_refused() {
        let mut p = small(1, 10);
        p.categories[0].name = "Web!".into();
        assert!(matches!(
            generate(&p, TraceFormat::Thaw, &mut Vec::new()),
            Err(GenError::Params(_))
        ));
        let p = small(1, 10);
        assert!(generate(&p, TraceFormat::Ibm, &mut Vec::new()).is_err());
        for bad in [
            GenParams {
                pull_concurrency: 0,
                ..small(1, 10)
            },
            GenParams {
                transfer_bytes_per_s: 0.0,
                ..small(1, 10)
            },
            GenParams {
                config_base_median: f64::NAN,
                ..small(1, 10)
            },
        ] {
            assert!(matches!(
                generate(&bad, TraceFormat::Thaw, &mut Vec::new()),
                Err(GenError::Params(_))
            ));
        }
    }

    /// Generates `p` and analyses it, also counting image pulls (manifest GETs) per image.
    fn analysed(p: &GenParams) -> (crate::analyze::AnalysisReport, Vec<u64>) {
        let (bytes, _) = gen_bytes(p, TraceFormat::Thaw);
        let mut pulls: HashMap<String, u64> = HashMap::new();
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Record::Request(r) =
                Record::from_line(std::str::from_utf8(line).unwrap()).unwrap()
            {
                if r.kind == ObjectKind::Manifest && r.method == "GET" {
                    *pulls.entry(r.digest.unwrap()).or_default() += 1;
                }
            }
        }
        let input: Box<dyn std::io::BufRead + Send> = Box::new(std::io::Cursor::new(bytes));
        let mut src =
            ThawReader::from_bufread(input, &PathBuf::from("gen"), ReadOptions { strict: true });
        let report = crate::analyze::analyze(
            &mut src,
            crate::analyze::AnalyzeConfig::default(),
            crate::category::CategoryMap::by_namespace(),
            &mut |_| {},
        )
        .unwrap();
        let mut counts: Vec<u64> = pulls.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        (report, counts)
    }

    /// The median blob size a registry sees in a category: the analysis cannot tell a config
    /// blob from a layer (both are `/blobs/` GETs), so the median of its distinct blob sizes is
    /// the median of the layers mixed with one small config per image. Computed by sampling the
    /// documented distributions with an RNG of its own, independently of the generator's code.
    fn expected_blob_median(c: &CategoryParams) -> f64 {
        let mut rng = Rng::new(99);
        const IMAGES: usize = 20_000;
        let mut sizes = Vec::new();
        for _ in 0..IMAGES {
            let n = rng
                .lognormal(c.layers_median, c.layers_sigma)
                .round()
                .clamp(1.0, 125.0) as usize;
            for _ in 0..n {
                sizes.push(
                    rng.lognormal(c.layer_size_median, c.layer_size_sigma)
                        .max(100.0),
                );
            }
        }
        // one config per image, far below any layer median
        sizes.extend(std::iter::repeat_n(0.0, IMAGES));
        sizes.sort_by(f64::total_cmp);
        sizes[sizes.len() / 2]
    }

    /// The shapes the parameters promise, measured on a generated trace by the same analysis a
    /// user runs on a real one (the module doc's table): if the generator drifts from its
    /// parameters (a rate estimate off, a size drawn from the wrong distribution, follow-up pulls
    /// counted twice), this fails.
    #[test]
    fn generated_trace_reproduces_its_parameters() {
        let p = small(21, 150_000);
        let (r, pulls) = analysed(&p);
        let all_pulls: u64 = r.categories.iter().map(|c| c.image_pulls).sum();
        let shares: f64 = p.categories.iter().map(|c| c.pull_share).sum();
        for c in &p.categories {
            let got = r.categories.iter().find(|x| x.name == c.name).unwrap();
            let want_median = expected_blob_median(c);
            let median = got.layer_size.p50 as f64;
            assert!(
                (median / want_median - 1.0).abs() < 0.10,
                "{}: median blob {median}, expected {want_median}",
                c.name
            );
            // PUT:GET is kept by construction (pushes are thinned by the GETs seen), so it holds
            // to within a push's worth of PUTs.
            assert!(
                (got.put_get_ratio / c.put_get_ratio - 1.0).abs() < 0.05,
                "{}: put:get {}, parameter {}",
                c.name,
                got.put_get_ratio,
                c.put_get_ratio
            );
            // Pull shares count follow-up pulls too; the Poisson noise of ~10^4 pulls is ~1%.
            let share = got.image_pulls as f64 / all_pulls as f64;
            let want = c.pull_share / shares;
            assert!(
                (share - want).abs() < 0.02,
                "{}: pull share {share}, parameter {want}",
                c.name
            );
        }
        // [T21]: accesses are heavily skewed. The top 1% of images get at least ten times their
        // proportional share of the pulls.
        let top = pulls.len().div_ceil(100);
        let total: u64 = pulls.iter().sum();
        let top_share = pulls[..top].iter().sum::<u64>() as f64 / total as f64;
        assert!(
            top_share >= 0.10,
            "top 1% of {} images get {top_share} of the pulls",
            pulls.len()
        );
    }

    /// Manifest sizes are those of real OCI manifests: rebuilding the manifest a record lists
    /// gives a document `thaw_oci` parses, with the same blobs, exactly `size` bytes long; and
    /// each layer adds one descriptor's worth of bytes.
    #[test]
    fn manifest_sizes_are_real_manifests() {
        let (bytes, _) = gen_bytes(&small(5, 4_000), TraceFormat::Thaw);
        let mut seen = 0;
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Record::Request(r) = Record::from_line(std::str::from_utf8(line).unwrap()).unwrap()
            else {
                continue;
            };
            if r.kind != ObjectKind::Manifest {
                continue;
            }
            let config = &r.layers[0];
            let layers: Vec<(String, u64)> = r.layers[1..]
                .iter()
                .map(|l| (l.digest.clone(), l.size))
                .collect();
            let json = oci_manifest_json((&config.digest, config.size), &layers);
            assert_eq!(r.size, Some(json.len() as u64));
            let m = thaw_oci::Manifest::parse(json.as_bytes(), None).unwrap();
            assert_eq!(m.media_type, thaw_oci::MediaType::OciManifest);
            assert_eq!(m.layers.len(), layers.len());
            assert_eq!(m.config.unwrap().size, config.size);
            seen += 1;
        }
        assert!(seen > 100, "{seen} manifests");
        let d = |c: char| (format!("sha256:{}", c.to_string().repeat(64)), 1_000_000u64);
        let one = oci_manifest_json((&d('a').0, 1), &[d('b')]).len();
        let two = oci_manifest_json((&d('a').0, 1), &[d('b'), d('c')]).len();
        // {"digest":"sha256:<64>","mediaType":"<layer type>","size":1000000} and a comma
        let descriptor = 10 + 73 + 13 + (OCI_LAYER_MEDIA_TYPE.len() + 2) + 8 + 7 + 1 + 1;
        assert_eq!(two - one, descriptor);
    }

    proptest::proptest! {
        /// The download schedule of a pull: starts in manifest order, never more than the limit in
        /// flight, and no slot idle while a download waits (each start is the pull's first
        /// moment or the end of an earlier download).
        #[test]
        fn downloads_respect_the_limit(
            from in 0u64..1_000_000,
            durations in proptest::collection::vec(1u64..5_000_000, 0..40),
            concurrency in 1u32..6,
        ) {
            let starts = download_starts(from, durations.iter().copied(), concurrency);
            proptest::prop_assert_eq!(starts.len(), durations.len());
            let ends: Vec<u64> = starts.iter().zip(&durations).map(|(s, d)| s + d).collect();
            for (i, &s) in starts.iter().enumerate() {
                proptest::prop_assert!(s >= from);
                if i > 0 {
                    proptest::prop_assert!(s >= starts[i - 1]);
                }
                let in_flight = (0..i).filter(|&j| ends[j] > s).count();
                proptest::prop_assert!(in_flight < concurrency as usize);
                proptest::prop_assert!(s == from || ends[..i].contains(&s));
            }
        }
    }

    #[test]
    fn zipf_trace() {
        let mut out = Vec::new();
        let p = ZipfParams {
            seed: 1,
            requests: 1000,
            objects: 100,
            alpha: 1.0,
            size_median: 1000.0,
            size_sigma: 1.0,
            rate: 100.0,
        };
        generate_zipf(&p, &mut out).unwrap();
        assert_eq!(out.len(), 24_000);
        let recs: Vec<OracleRecord> = out
            .chunks_exact(24)
            .map(|c| OracleRecord::decode(c.try_into().unwrap()))
            .collect();
        let ids: HashSet<u64> = recs.iter().map(|r| r.id).collect();
        assert!(ids.len() <= 100 && ids.len() > 20);
        assert_eq!(recs[999].time, 9);
    }
}
