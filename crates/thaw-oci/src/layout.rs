//! Reading an OCI image layout directory (image-spec `image-layout.md`): the `oci-layout`
//! marker, `index.json`, tags through the `org.opencontainers.image.ref.name` annotation, and
//! `blobs/<algorithm>/<hex>`; and resolving a tag to an image's manifest, config and layers
//! (each paired with its diff_id from the config), as skopeo's `oci:PATH[:TAG]` names it.
//!
//! Everything read here is bounded and digest-checked: index, manifests and config are refused
//! past [`MAX_MANIFEST_BYTES`] and verified against the digest that names them; layers are
//! verified by the unpacker as they stream.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{Descriptor, Manifest, ManifestError, MediaType, MAX_MANIFEST_BYTES};

/// The annotation that names a tag in an image layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Indexes may nest; deeper than this is refused as hostile.
const MAX_NESTING: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path} is not an OCI image layout: {why}")]
    NotLayout { path: String, why: String },
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{what} in {path} is not valid JSON: {source}")]
    Json { what: &'static str, path: String, source: serde_json::Error },
    #[error("{what} {digest} is larger than the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge { what: &'static str, digest: Digest },
    #[error("blob {digest} in {path} does not match its digest (actual {actual}); the layout is corrupt")]
    DigestMismatch { path: String, digest: Digest, actual: Digest },
    #[error("tag {tag:?} is not in {path}; tags there: {available:?}")]
    TagNotFound { tag: String, path: String, available: Vec<String> },
    #[error("{path} holds {count} images; name one with oci:PATH:TAG (tags: {available:?})")]
    Ambiguous { path: String, count: usize, available: Vec<String> },
    #[error("no image for platform {wanted} in index {digest}; it has {available:?}")]
    NoPlatform { wanted: String, digest: Digest, available: Vec<String> },
    #[error("image manifest {digest} lists {layers} layers but its config has {diff_ids} diff_ids")]
    DiffIdCount { digest: Digest, layers: usize, diff_ids: usize },
    #[error("indexes in {path} nest deeper than {MAX_NESTING} levels")]
    TooDeep { path: String },
    #[error("manifest {digest}: {source}")]
    Manifest { digest: Digest, source: ManifestError },
    #[error("image reference {0:?} is not of the form oci:PATH[:TAG]")]
    BadRef(String),
}

/// `oci:PATH[:TAG]`, as skopeo and podman write an image in a layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub path: PathBuf,
    pub tag: Option<String>,
}

impl LayoutRef {
    /// Parses `oci:PATH[:TAG]`. The tag is what follows the last `:` when that part contains no
    /// `/` (so `oci:/a:b/c` is the directory `/a:b/c`).
    pub fn parse(s: &str) -> Result<LayoutRef, LayoutError> {
        let rest = s.strip_prefix("oci:").ok_or_else(|| LayoutError::BadRef(crate::digest::clip(s)))?;
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t)),
            _ => (rest, None),
        };
        if path.is_empty() || tag == Some("") {
            return Err(LayoutError::BadRef(crate::digest::clip(s)));
        }
        Ok(LayoutRef { path: PathBuf::from(path), tag: tag.map(str::to_string) })
    }
}

/// One entry of `index.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub descriptor: Descriptor,
    /// The tag from the `org.opencontainers.image.ref.name` annotation.
    pub ref_name: Option<String>,
}

/// A layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The blob as the manifest lists it (digest of the possibly compressed bytes).
    pub descriptor: Descriptor,
    /// The digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// An image resolved from a layout: its manifest, its config (raw, for the runtime settings a
/// caller parses itself) and its layers, base first.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config_digest: Digest,
    pub config: Vec<u8>,
    pub layers: Vec<Layer>,
}

/// An opened OCI image layout directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    entries: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct RawLayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndex {
    #[serde(default)]
    manifests: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

/// The platform this process runs on, as OCI names it (`linux/amd64`, `linux/arm64`, ...).
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io { path: path.display().to_string(), source }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, LayoutError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut v = Vec::new();
    f.take(MAX_MANIFEST_BYTES as u64 + 1).read_to_end(&mut v).map_err(io_err(path))?;
    Ok(v)
}

impl Layout {
    /// Opens the layout at `path`: checks `oci-layout` and reads `index.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Layout, LayoutError> {
        let root = path.as_ref().to_path_buf();
        let marker = root.join("oci-layout");
        let not_layout = |why: String| LayoutError::NotLayout { path: root.display().to_string(), why };
        let m = read_bounded(&marker).map_err(|e| not_layout(format!("no readable oci-layout file ({e})")))?;
        let m: RawLayoutFile = serde_json::from_slice(&m)
            .map_err(|source| LayoutError::Json { what: "oci-layout", path: marker.display().to_string(), source })?;
        if !m.version.starts_with("1.") {
            return Err(not_layout(format!("imageLayoutVersion {} is not 1.x", m.version)));
        }
        let index_path = root.join("index.json");
        let raw = read_bounded(&index_path)?;
        if raw.len() > MAX_MANIFEST_BYTES {
            return Err(not_layout("index.json is larger than 4 MiB".into()));
        }
        let index: RawIndex = serde_json::from_slice(&raw)
            .map_err(|source| LayoutError::Json { what: "index", path: index_path.display().to_string(), source })?;
        let entries = index.manifests.into_iter().map(convert).map(|(d, mut a)| IndexEntry { ref_name: a.remove(REF_NAME), descriptor: d }).collect();
        Ok(Layout { root, entries })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entries of `index.json`.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// The tags the index names.
    pub fn tags(&self) -> Vec<String> {
        self.entries.iter().filter_map(|e| e.ref_name.clone()).collect()
    }

    /// Where a blob lives. Digests are validated hex, so the path cannot leave `blobs/`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm().as_str()).join(digest.hex())
    }

    /// Opens a blob for streaming (layers); the caller verifies it as it reads.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, LayoutError> {
        let p = self.blob_path(digest);
        File::open(&p).map_err(io_err(&p))
    }

    /// Reads a small blob (index, manifest, config) whole, bounded and verified.
    pub fn read_json_blob(&self, what: &'static str, digest: &Digest) -> Result<Vec<u8>, LayoutError> {
        let p = self.blob_path(digest);
        let data = read_bounded(&p)?;
        if data.len() > MAX_MANIFEST_BYTES {
            return Err(LayoutError::TooLarge { what, digest: digest.clone() });
        }
        let mut h = digest.digester();
        h.update(&data);
        let actual = h.finish();
        if actual != *digest {
            return Err(LayoutError::DigestMismatch { path: p.display().to_string(), digest: digest.clone(), actual });
        }
        Ok(data)
    }

    /// Resolves a tag (or, with `None`, the layout's only image) to an image for this host's
    /// platform.
    pub fn image(&self, tag: Option<&str>) -> Result<Image, LayoutError> {
        self.image_for(tag, &host_platform())
    }

    /// Like [`Layout::image`] for a given platform (`os/arch[/variant]`).
    pub fn image_for(&self, tag: Option<&str>, platform: &str) -> Result<Image, LayoutError> {
        let path = self.root.display().to_string();
        let entry = match tag {
            Some(t) => {
                let mut found = self.entries.iter().filter(|e| e.ref_name.as_deref() == Some(t));
                let first = found.next().ok_or_else(|| LayoutError::TagNotFound {
                    tag: t.to_string(),
                    path: path.clone(),
                    available: self.tags(),
                })?;
                if found.next().is_some() {
                    return Err(LayoutError::Ambiguous { path, count: 2, available: self.tags() });
                }
                first
            }
            None => match self.entries.as_slice() {
                [only] => only,
                many => return Err(LayoutError::Ambiguous { path, count: many.len(), available: self.tags() }),
            },
        };
        let mut desc = entry.descriptor.clone();
        for _ in 0..MAX_NESTING {
            let bytes = self.read_json_blob("manifest", &desc.digest)?;
            let ct = (!desc.media_type.is_empty()).then_some(desc.media_type.as_str());
            let manifest = Manifest::parse(&bytes, ct).map_err(|source| LayoutError::Manifest { digest: desc.digest.clone(), source })?;
            if manifest.media_type.is_index() {
                desc = pick_platform(&manifest, platform, &desc.digest)?;
                continue;
            }
            return self.finish_image(desc.digest, manifest);
        }
        Err(LayoutError::TooDeep { path })
    }

    fn finish_image(&self, manifest_digest: Digest, manifest: Manifest) -> Result<Image, LayoutError> {
        let config_desc = manifest.config.clone().expect("image manifests have a config");
        let config = self.read_json_blob("config", &config_desc.digest)?;
        let layers = layers_of(&manifest_digest, &manifest, &config, &self.blob_path(&config_desc.digest).display().to_string())?;
        Ok(Image { manifest_digest, manifest, config_digest: config_desc.digest, config, layers })
    }
}

/// Pairs an image manifest's layers with its config's `rootfs.diff_ids`, base first, checking
/// there is exactly one diff_id per layer and that each is a digest. Images from a layout and
/// from a registry are read alike through this. `config_name` says where the config came from
/// in errors (a path, or a digest and an image name).
pub fn layers_of(manifest_digest: &Digest, manifest: &Manifest, config: &[u8], config_name: &str) -> Result<Vec<Layer>, LayoutError> {
    let raw: RawConfig = serde_json::from_slice(config).map_err(|source| LayoutError::Json {
        what: "image config",
        path: config_name.to_string(),
        source,
    })?;
    if raw.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(LayoutError::DiffIdCount {
            digest: manifest_digest.clone(),
            layers: manifest.layers.len(),
            diff_ids: raw.rootfs.diff_ids.len(),
        });
    }
    Ok(manifest
        .layers
        .iter()
        .cloned()
        .zip(raw.rootfs.diff_ids)
        .map(|(descriptor, diff_id)| Layer { descriptor, diff_id })
        .collect())
}

fn pick_platform(index: &Manifest, platform: &str, digest: &Digest) -> Result<Descriptor, LayoutError> {
    // An entry without a variant matches any variant of its architecture, and an index entry
    // with no platform at all is taken only when it is the only one.
    let wanted_base: String = platform.split('/').take(2).collect::<Vec<_>>().join("/");
    let candidates: Vec<&Descriptor> = index.manifests.iter().filter(|d| MediaType::parse(&d.media_type).is_some() || d.media_type.is_empty()).collect();
    if let Some(d) = candidates.iter().find(|d| d.platform.as_deref() == Some(platform)) {
        return Ok((*d).clone());
    }
    if let Some(d) = candidates.iter().find(|d| d.platform.as_deref().is_some_and(|p| p.split('/').take(2).collect::<Vec<_>>().join("/") == wanted_base)) {
        return Ok((*d).clone());
    }
    if let [only] = candidates.as_slice() {
        if only.platform.is_none() {
            return Ok((*only).clone());
        }
    }
    Err(LayoutError::NoPlatform {
        wanted: platform.to_string(),
        digest: digest.clone(),
        available: index.manifests.iter().filter_map(|d| d.platform.clone()).collect(),
    })
}

fn convert(e: RawEntry) -> (Descriptor, std::collections::BTreeMap<String, String>) {
    let platform = e.platform.map(|p| match p.variant {
        Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
        None => format!("{}/{}", p.os, p.architecture),
    });
    (Descriptor { media_type: e.media_type, digest: e.digest, size: e.size, platform }, e.annotations)
}

/// Writes OCI image layouts: blobs, one image manifest per [`LayoutWriter::add_image`], and the
/// index with tags. Used by tests across the workspace to build images without a registry, and
/// by anything that exports an image.
pub struct LayoutWriter {
    root: PathBuf,
    entries: Vec<serde_json::Value>,
}

impl LayoutWriter {
    /// Creates (or reuses) the layout directory and writes its `oci-layout` marker.
    pub fn create(root: impl AsRef<Path>) -> std::io::Result<LayoutWriter> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(root.join("blobs/sha256"))?;
        std::fs::write(root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(LayoutWriter { root, entries: Vec::new() })
    }

    /// Stores a blob and returns its sha256 digest.
    pub fn add_blob(&mut self, data: &[u8]) -> std::io::Result<Digest> {
        let d = Digest::sha256_of(data);
        std::fs::write(self.root.join("blobs/sha256").join(d.hex()), data)?;
        Ok(d)
    }

    /// Adds an image made of `layers` (each as stored: `(blob bytes, diff_id, media type)`) and
    /// a config holding `config` merged with the `rootfs` section, tagged `tag`.
    pub fn add_image(&mut self, tag: &str, layers: &[(Vec<u8>, Digest, &str)], config: serde_json::Value) -> std::io::Result<Digest> {
        let mut config = match config {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        config.entry("architecture").or_insert_with(|| host_platform()["linux/".len()..].into());
        config.entry("os").or_insert_with(|| "linux".into());
        config.insert(
            "rootfs".into(),
            serde_json::json!({"type": "layers", "diff_ids": layers.iter().map(|l| l.1.to_string()).collect::<Vec<_>>()}),
        );
        let config = serde_json::to_vec(&serde_json::Value::Object(config))?;
        let config_digest = self.add_blob(&config)?;
        let mut ls = Vec::new();
        for (blob, _, media_type) in layers {
            let d = self.add_blob(blob)?;
            ls.push(serde_json::json!({"mediaType": media_type, "digest": d.to_string(), "size": blob.len()}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MediaType::OciManifest.as_str(),
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
            "layers": ls,
        }))?;
        let md = self.add_blob(&manifest)?;
        self.entries.push(serde_json::json!({
            "mediaType": MediaType::OciManifest.as_str(),
            "digest": md.to_string(),
            "size": manifest.len(),
            "annotations": {REF_NAME: tag},
        }));
        self.write_index()?;
        Ok(md)
    }

    fn write_index(&self) -> std::io::Result<()> {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MediaType::OciIndex.as_str(),
            "manifests": self.entries,
        }))?;
        std::fs::write(self.root.join("index.json"), index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_refs() {
        assert_eq!(LayoutRef::parse("oci:/tmp/img:v1").unwrap(), LayoutRef { path: "/tmp/img".into(), tag: Some("v1".into()) });
        assert_eq!(LayoutRef::parse("oci:/tmp/img").unwrap(), LayoutRef { path: "/tmp/img".into(), tag: None });
        assert_eq!(LayoutRef::parse("oci:/a:b/c").unwrap(), LayoutRef { path: "/a:b/c".into(), tag: None });
        assert_eq!(LayoutRef::parse("oci:rel").unwrap().path, PathBuf::from("rel"));
        for bad in ["docker://x", "oci:", "oci::tag", "oci:/x:"] {
            assert!(LayoutRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LayoutWriter::create(dir.path()).unwrap();
        let l1 = b"layer one".to_vec();
        let d1 = Digest::sha256_of(&l1);
        let md = w.add_image("v1", &[(l1.clone(), d1.clone(), "application/vnd.oci.image.layer.v1.tar")], serde_json::json!({"config": {"Cmd": ["sh"]}})).unwrap();
        w.add_image("v2", &[], serde_json::json!({})).unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        assert_eq!(layout.tags(), vec!["v1", "v2"]);
        let img = layout.image(Some("v1")).unwrap();
        assert_eq!(img.manifest_digest, md);
        assert_eq!(img.layers.len(), 1);
        assert_eq!(img.layers[0].diff_id, d1);
        assert!(String::from_utf8_lossy(&img.config).contains("\"Cmd\""));
        let mut blob = Vec::new();
        layout.open_blob(&img.layers[0].descriptor.digest).unwrap().read_to_end(&mut blob).unwrap();
        assert_eq!(blob, l1);
        assert!(matches!(layout.image(None), Err(LayoutError::Ambiguous { count: 2, .. })));
        assert!(matches!(layout.image(Some("nope")), Err(LayoutError::TagNotFound { .. })));
        // A corrupted manifest blob is caught by its digest.
        std::fs::write(layout.blob_path(&md), b"{}").unwrap();
        assert!(matches!(layout.image(Some("v1")), Err(LayoutError::DigestMismatch { .. })));
        // Not a layout at all.
        assert!(matches!(Layout::open(dir.path().join("blobs")), Err(LayoutError::NotLayout { .. })));
    }

    #[test]
    fn nested_index_picks_the_platform() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LayoutWriter::create(dir.path()).unwrap();
        let amd = w.add_image("amd", &[], serde_json::json!({})).unwrap();
        let arm = w.add_image("arm", &[], serde_json::json!({})).unwrap();
        let size = |d: &Digest| std::fs::metadata(dir.path().join("blobs/sha256").join(d.hex())).unwrap().len();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MediaType::OciIndex.as_str(),
            "manifests": [
                {"mediaType": MediaType::OciManifest.as_str(), "digest": arm.to_string(), "size": size(&arm), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": MediaType::OciManifest.as_str(), "digest": amd.to_string(), "size": size(&amd), "platform": {"os": "linux", "architecture": "amd64"}},
            ]})).unwrap();
        let id = w.add_blob(&index).unwrap();
        w.entries = vec![serde_json::json!({"mediaType": MediaType::OciIndex.as_str(), "digest": id.to_string(), "size": index.len(), "annotations": {REF_NAME: "multi"}})];
        w.write_index().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        assert_eq!(layout.image_for(Some("multi"), "linux/amd64").unwrap().manifest_digest, amd);
        assert_eq!(layout.image_for(Some("multi"), "linux/arm64").unwrap().manifest_digest, arm);
        assert!(matches!(layout.image_for(Some("multi"), "linux/s390x"), Err(LayoutError::NoPlatform { .. })));
    }
}
