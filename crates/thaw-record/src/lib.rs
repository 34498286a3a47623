//! The one trace schema of thaw.
//!
//! The registry appends a [`RequestRecord`] per HTTP request it answers; the file-level recorder
//! writes [`FileAccessRecord`]s; the trace toolkit (`thaw-trace`) reads both. This crate is
//! deliberately light (serde only) so the registry can write traces without pulling in analysis,
//! plots or the simulator.
//!
//! # Line format
//!
//! A trace file is JSON lines: one JSON object per line, each carrying `"v"` (the schema version,
//! [`SCHEMA_VERSION`]) and `"type"` (`"request"` or `"file"`). Readers reject records whose version is
//! newer than they know and count them as malformed; older versions are read with defaults for the
//! fields they lack (every field added after version 1 is `#[serde(default)]`).
//!
//! # Units
//!
//! Times are microseconds since the Unix epoch (UTC); durations are microseconds; sizes are bytes.
//!
//! # What counts as an access
//!
//! A cache "access" — the event a cache policy sees, live or in the simulator — is a `GET` of a
//! manifest or blob that was answered with content: a hit, a miss, a coalesced wait on a miss in
//! flight, a stale answer, and a ranged read (`206`) all count. `HEAD` requests, tag listings,
//! pushes, errors and pass-through answers (content too large to cache) do not: they never move an
//! object in or out of the cache. [`RequestRecord::is_cache_access`] is that rule in code; the store
//! and the simulator both use it.

use serde::{Deserialize, Serialize};

/// The version written by this build. Bump it when a field changes meaning; adding an optional
/// field with a default does not need a bump.
pub const SCHEMA_VERSION: u32 = 1;

/// What kind of object a request addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// An image manifest or index (by tag or by digest).
    Manifest,
    /// A blob: a layer or a config.
    Blob,
    /// A tag listing.
    Tags,
    /// The `/v2/` version check.
    Version,
    /// An upload (push) session.
    Upload,
    /// Anything else (catalog, metrics, unknown paths).
    Other,
}

/// How the cache answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Served from the store.
    Hit,
    /// Not in the store: fetched from the upstream (this request started the fetch).
    Miss,
    /// Not in the store, but a fetch was already in flight: this request was fed from it.
    Coalesced,
    /// A tag answered from the cache because the upstream could not be asked.
    Stale,
    /// Relayed from the upstream without being cached (too large for the capacity left unpinned).
    PassThrough,
    /// Answered locally without a cache decision (version check, push, error, tags of a local repo).
    None,
}

/// One layer (or config) listed by a manifest, as recorded with manifest requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub digest: String,
    pub size: u64,
}

/// One HTTP request answered by thaw's registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// When the request arrived, microseconds since the Unix epoch.
    pub ts_us: u64,
    /// The client's address (IP without port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Who the client authenticated as: a keyed hash (HMAC-SHA256 with a per-install secret,
    /// truncated to 16 hex digits) of the tenant identity. Never the credential itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The upstream registry host the request was routed to (`None` for local repositories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The repository as the upstream names it, e.g. `library/alpine`. Its first path component is
    /// the namespace that analyses map to a service category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The content digest answered (for manifests by tag: the digest the tag resolved to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub kind: ObjectKind,
    /// The whole object's size in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Body bytes actually sent to the client.
    pub bytes_sent: u64,
    pub method: String,
    pub status: u16,
    /// From arrival to the last byte sent, microseconds.
    pub duration_us: u64,
    pub outcome: CacheOutcome,
    /// For a ranged read: the first and last byte offsets (inclusive) served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u64, u64)>,
    /// For manifests: the layers (and config) they list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerRef>,
}

impl RequestRecord {
    /// Whether a cache policy sees this request as an access (see the crate docs).
    pub fn is_cache_access(&self) -> bool {
        self.method == "GET"
            && matches!(self.kind, ObjectKind::Manifest | ObjectKind::Blob)
            && matches!(self.status, 200 | 206)
            && matches!(
                self.outcome,
                CacheOutcome::Hit | CacheOutcome::Miss | CacheOutcome::Coalesced | CacheOutcome::Stale
            )
    }
}

/// How a file was accessed, as fanotify reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOp {
    Open,
    OpenExec,
    Access,
    Close,
}

/// One file access seen while a container started (`thaw trace files`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileAccessRecord {
    pub v: u32,
    /// Microseconds since the Unix epoch.
    pub ts_us: u64,
    /// The image the container ran (reference as given).
    pub image: String,
    /// Path inside the container's root.
    pub path: String,
    pub op: FileOp,
    /// The file's size when it was seen.
    pub size: u64,
    /// The diff_id of the layer that provides the file (the topmost layer holding it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// A line of a thaw trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Request(RequestRecord),
    File(FileAccessRecord),
}

/// Why a line could not be read as a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The line is not a JSON record of a known type.
    #[error("not a thaw trace record: {0}")]
    Json(#[from] serde_json::Error),
    /// The record was written by a newer thaw.
    #[error("record schema version {found} is newer than this build reads ({SCHEMA_VERSION}); upgrade thaw")]
    TooNew { found: u32 },
}

impl Record {
    pub fn version(&self) -> u32 {
        match self {
            Record::Request(r) => r.v,
            Record::File(f) => f.v,
        }
    }

    /// Parses one line (without its newline).
    pub fn from_line(line: &str) -> Result<Record, RecordError> {
        let rec: Record = serde_json::from_str(line)?;
        if rec.version() > SCHEMA_VERSION {
            return Err(RecordError::TooNew { found: rec.version() });
        }
        Ok(rec)
    }

    /// Serialises the record as one line, newline included.
    pub fn to_line(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string keys, no I/O.
        let mut s = serde_json::to_string(self).expect("trace records always serialise");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RequestRecord {
        RequestRecord {
            v: SCHEMA_VERSION,
            ts_us: 1_700_000_000_000_000,
            client: Some("10.0.0.2".into()),
            principal: Some("0123456789abcdef".into()),
            user_agent: Some("containerd/1.6".into()),
            upstream: Some("registry-1.docker.io".into()),
            repo: Some("library/alpine".into()),
            tag: Some("3.19".into()),
            digest: Some(format!("sha256:{}", "a".repeat(64))),
            kind: ObjectKind::Manifest,
            size: Some(1234),
            bytes_sent: 1234,
            method: "GET".into(),
            status: 200,
            duration_us: 850,
            outcome: CacheOutcome::Miss,
            range: None,
            layers: vec![LayerRef { digest: format!("sha256:{}", "b".repeat(64)), size: 99 }],
        }
    }

    #[test]
    fn request_round_trips_through_a_line() {
        let rec = Record::Request(sample());
        let line = rec.to_line();
        assert!(line.ends_with('\n'));
        assert!(line.contains("\"type\":\"request\""));
        assert_eq!(Record::from_line(line.trim_end()).unwrap(), rec);
    }

    #[test]
    fn newer_versions_are_refused() {
        let mut r = sample();
        r.v = SCHEMA_VERSION + 1;
        let line = Record::Request(r).to_line();
        assert!(matches!(Record::from_line(line.trim_end()), Err(RecordError::TooNew { .. })));
    }

    #[test]
    fn missing_optional_fields_default() {
        let line = r#"{"type":"request","v":1,"ts_us":5,"kind":"blob","bytes_sent":0,"method":"HEAD","status":200,"duration_us":1,"outcome":"hit"}"#;
        let Record::Request(r) = Record::from_line(line).unwrap() else { panic!("wrong type") };
        assert_eq!(r.repo, None);
        assert!(r.layers.is_empty());
        assert!(!r.is_cache_access(), "HEAD is never an access");
    }

    #[test]
    fn access_rule() {
        let mut r = sample();
        assert!(r.is_cache_access());
        r.outcome = CacheOutcome::Coalesced;
        r.status = 206;
        assert!(r.is_cache_access(), "coalesced ranged reads count");
        r.outcome = CacheOutcome::PassThrough;
        assert!(!r.is_cache_access());
        r.outcome = CacheOutcome::Hit;
        r.status = 404;
        assert!(!r.is_cache_access());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in ["", "{", "[]", "{\"type\":\"nope\"}", "{\"type\":\"request\",\"v\":\"x\"}"] {
            assert!(Record::from_line(line).is_err(), "{line:?}");
        }
    }
}
