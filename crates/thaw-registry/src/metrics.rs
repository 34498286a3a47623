//! Prometheus metrics, served at `/metrics` in the text exposition format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `version`, `manifest`, `blob`, `upload`, `tags`, `other`
    pub api: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `manifest` or `blob`
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

/// Every metric the registry exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub hits: Family<KindLabels, Counter>,
    pub misses: Family<KindLabels, Counter>,
    pub coalesced: Counter,
    pub stale: Counter,
    pub pass_through: Counter,
    pub bytes_served: Counter,
    pub bytes_fetched: Family<UpstreamLabels, Counter>,
    pub bytes_saved: Counter,
    pub digest_mismatches: Counter,
    pub upstream_resumes: Counter,
    pub upstream_latency: Family<UpstreamLabels, Histogram>,
    pub store_bytes: Gauge,
    pub store_blobs: Gauge,
    pub store_pinned_bytes: Gauge,
    pub evictions: Gauge,
    pub trace_dropped: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("thaw");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Registry API requests answered, by API, method and status", requests.clone());
        let hits = Family::<KindLabels, Counter>::default();
        registry.register("cache_hits", "GETs answered from the store", hits.clone());
        let misses = Family::<KindLabels, Counter>::default();
        registry.register("cache_misses", "GETs that started an upstream fetch", misses.clone());
        let coalesced = Counter::default();
        registry.register("coalesced_waiters", "GETs fed from a fetch already in flight", coalesced.clone());
        let stale = Counter::default();
        registry.register("stale_answers", "Tags answered from the cache because the upstream could not be asked", stale.clone());
        let pass_through = Counter::default();
        registry.register("pass_through", "Blobs relayed without being cached (no room beside pinned content)", pass_through.clone());
        let bytes_served = Counter::default();
        registry.register("bytes_served", "Body bytes sent to clients", bytes_served.clone());
        let bytes_fetched = Family::<UpstreamLabels, Counter>::default();
        registry.register("upstream_bytes", "Body bytes fetched from upstreams", bytes_fetched.clone());
        let bytes_saved = Counter::default();
        registry.register("bytes_saved", "Body bytes served from the store instead of the upstream", bytes_saved.clone());
        let digest_mismatches = Counter::default();
        registry.register("digest_mismatches", "Upstream blobs discarded because their digest did not match", digest_mismatches.clone());
        let upstream_resumes = Counter::default();
        registry.register("upstream_resumes", "Interrupted upstream downloads resumed with a Range request", upstream_resumes.clone());
        let upstream_latency = Family::<UpstreamLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register("upstream_latency_seconds", "Time to the upstream's response headers", upstream_latency.clone());
        let store_bytes = Gauge::default();
        registry.register("store_bytes", "Bytes of blobs in the store", store_bytes.clone());
        let store_blobs = Gauge::default();
        registry.register("store_blobs", "Blobs in the store", store_blobs.clone());
        let store_pinned_bytes = Gauge::default();
        registry.register("store_pinned_bytes", "Bytes of blobs pinned (being served or in use)", store_pinned_bytes.clone());
        let evictions = Gauge::default();
        registry.register("evictions", "Blobs evicted from the store since it was opened", evictions.clone());
        let trace_dropped = Gauge::default();
        registry.register("trace_dropped", "Trace records dropped because the writer fell behind", trace_dropped.clone());
        Metrics {
            registry, requests, hits, misses, coalesced, stale, pass_through, bytes_served, bytes_fetched,
            bytes_saved, digest_mismatches, upstream_resumes, upstream_latency, store_bytes, store_blobs,
            store_pinned_bytes, evictions, trace_dropped,
        }
    }

    pub fn kind(kind: &str) -> KindLabels {
        KindLabels { kind: kind.into() }
    }

    pub fn upstream(name: &str) -> UpstreamLabels {
        UpstreamLabels { upstream: name.into() }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}
