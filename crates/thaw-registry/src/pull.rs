//! Pulling whole images into the store (`thaw pull`, preheat): the same machinery a client's pull
//! goes through — routing, authorisation with the mirror's own credential, single-flight fetches —
//! so a preheat and a concurrent client pull of the same layer share one upstream download.

use thaw_oci::{Digest, Manifest, Reference};

use crate::error::ApiError;
use crate::flight::Outcome;
use crate::registry::Registry;
use crate::upstream::Credential;

/// Progress of a pull, reported as it happens.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest was resolved: the image's digest and the blobs to fetch.
    Resolved { digest: String, blobs: usize, total_bytes: u64 },
    /// A blob was already in the store.
    Cached { digest: String, size: u64 },
    /// A blob is being fetched; `done` bytes of `size` so far.
    Progress { digest: String, done: u64, size: u64 },
    /// A blob is in the store.
    Stored { digest: String, size: u64 },
}

/// What a pull did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PullSummary {
    pub reference: String,
    pub digest: String,
    pub blobs: usize,
    pub bytes: u64,
    pub fetched_bytes: u64,
    pub cached_blobs: usize,
}

/// The platform picked from an index when none is asked for.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

impl Registry {
    /// Pulls `reference` (manifest, config and layers) into the store through the upstream it
    /// names. `platform` picks from an index (`linux/amd64` style; the host's by default).
    pub async fn pull(
        &self,
        reference: &Reference,
        platform: Option<&str>,
        mut progress: impl FnMut(PullEvent) + Send,
    ) -> Result<PullSummary, ApiError> {
        let name = format!("{}/{}", reference.registry, reference.repo);
        let target = self.resolve(&name, None)?;
        let Some(up) = target.upstream.clone() else {
            return Err(ApiError::bad_request(
                crate::error::Code::NameUnknown,
                format!("{} is not a configured upstream; add it under [[registry.upstreams]] or pass --upstream", reference.registry),
            ));
        };
        let cred: Credential = up.default_credential();
        let want = reference.digest.clone();
        let mut m = self.fetch_manifest(&up, &target.repo, &reference.object(), &cred, want.as_ref(), reference.tag.as_ref().map(|t| t.as_str())).await?;
        let mut parsed = Manifest::parse(&m.body, Some(&m.media_type)).map_err(|e| ApiError::bad_request(crate::error::Code::ManifestInvalid, e.to_string()))?;
        if parsed.media_type.is_index() {
            let plat = platform.map(str::to_string).unwrap_or_else(host_platform);
            let child = parsed
                .manifests
                .iter()
                .find(|d| d.platform.as_deref().is_some_and(|p| p == plat || p.starts_with(&format!("{plat}/"))))
                .ok_or_else(|| ApiError::not_found(crate::error::Code::ManifestUnknown, format!("{reference} for platform {plat}")))?
                .digest
                .clone();
            m = self.fetch_manifest(&up, &target.repo, &child.to_string(), &cred, Some(&child), None).await?;
            parsed = Manifest::parse(&m.body, Some(&m.media_type)).map_err(|e| ApiError::bad_request(crate::error::Code::ManifestInvalid, e.to_string()))?;
        }
        let blobs: Vec<(Digest, u64)> = parsed.blobs().map(|d| (d.digest.clone(), d.size)).collect();
        let total: u64 = blobs.iter().map(|b| b.1).sum();
        progress(PullEvent::Resolved { digest: m.digest.to_string(), blobs: blobs.len(), total_bytes: total });
        let mut summary = PullSummary { reference: reference.to_string(), digest: m.digest.to_string(), blobs: blobs.len(), bytes: total, ..Default::default() };
        // Start every missing blob's flight first, so they download concurrently as a client's
        // pull would; then follow them in turn, woken by their progress rather than polling.
        let mut flights = Vec::new();
        for (d, size) in blobs {
            let have = self.blocking_store(|s, d| s.stat(&d), d.clone()).await?;
            if have.is_some() {
                summary.cached_blobs += 1;
                progress(PullEvent::Cached { digest: d.to_string(), size });
                continue;
            }
            let (fl, _) = self.join_or_start(&up, &target.repo, &cred, &d).await?;
            flights.push((d, size, fl));
        }
        for (d, size, fl) in flights {
            let mut last = 0;
            let outcome = loop {
                let st = fl.next_state(last).await;
                if st.written != last {
                    last = st.written;
                    progress(PullEvent::Progress { digest: d.to_string(), done: st.written, size });
                }
                if let Some(o) = st.outcome {
                    break o;
                }
            };
            match outcome {
                Outcome::Stored => {
                    summary.fetched_bytes += size;
                    progress(PullEvent::Stored { digest: d.to_string(), size });
                }
                Outcome::NotCached => {
                    return Err(ApiError::unavailable(format!("{d} ({size} bytes) does not fit in the store beside the content pinned now; raise the store capacity")));
                }
                Outcome::Failed { reason, .. } => {
                    return Err(ApiError::unavailable(format!("fetching {d} failed: {reason}")));
                }
            }
        }
        Ok(summary)
    }
}
