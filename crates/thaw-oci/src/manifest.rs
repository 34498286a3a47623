//! Manifests and indexes: OCI image manifest and index, Docker schema 2 manifest and list.
//!
//! thaw only needs a manifest's media type and the descriptors it lists (to record layers in the
//! trace, to know which blobs belong to a repository, and to pull an image). It parses those with
//! its own small serde types rather than `oci-spec`'s full image types on purpose: the mirror must
//! relay Docker schema 2 manifests and lists byte for byte, which `oci-spec`'s OCI types model only
//! loosely, and a mirror must not refuse a manifest merely because an optional field it never reads
//! is unusual. Parsing is bounded: manifests over [`MAX_MANIFEST_BYTES`] are refused before any
//! JSON is read, and the number of descriptors is capped.

use serde::Deserialize;

use crate::digest::{Digest, DigestError};

/// Manifests larger than this are refused (the distribution registry's own limit).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// More descriptors than this in one manifest is refused as hostile.
pub const MAX_DESCRIPTORS: usize = 10_000;

/// Manifest media types thaw serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaType {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerList,
}

impl MediaType {
    pub const ALL: [MediaType; 4] =
        [MediaType::OciManifest, MediaType::OciIndex, MediaType::DockerManifest, MediaType::DockerList];

    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::OciManifest => "application/vnd.oci.image.manifest.v1+json",
            MediaType::OciIndex => "application/vnd.oci.image.index.v1+json",
            MediaType::DockerManifest => "application/vnd.docker.distribution.manifest.v2+json",
            MediaType::DockerList => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }

    pub fn parse(s: &str) -> Option<MediaType> {
        let s = s.split(';').next().unwrap_or("").trim();
        MediaType::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether this type lists other manifests (index, list) rather than layers.
    pub fn is_index(self) -> bool {
        matches!(self, MediaType::OciIndex | MediaType::DockerList)
    }

    /// The `Accept` header value a client (thaw upstream) sends to get any of them.
    pub fn accept_all() -> String {
        MediaType::ALL.map(MediaType::as_str).join(", ")
    }
}

/// A content descriptor as a manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// For index entries: `os/arch[/variant]` when given.
    pub platform: Option<String>,
}

/// A parsed manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: MediaType,
    /// For image manifests: the config blob.
    pub config: Option<Descriptor>,
    /// For image manifests: the layers, base first.
    pub layers: Vec<Descriptor>,
    /// For indexes and lists: the manifests they point to.
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {size} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge { size: usize },
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest media type {0:?} is not one thaw serves (OCI manifest/index, Docker schema 2 manifest/list)")]
    UnknownMediaType(String),
    #[error("manifest has no media type in its body or its Content-Type")]
    NoMediaType,
    #[error("manifest schema version {0} is not supported; only schemaVersion 2")]
    SchemaVersion(u64),
    #[error("manifest lists a descriptor with a bad digest: {0}")]
    BadDigest(#[from] DigestError),
    #[error("manifest lists more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("image manifest has no config descriptor")]
    NoConfig,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u64>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
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

impl RawDescriptor {
    fn convert(self) -> Result<Descriptor, ManifestError> {
        Ok(Descriptor {
            media_type: self.media_type,
            digest: self.digest.parse()?,
            size: self.size,
            platform: self.platform.map(|p| match p.variant {
                Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
                None => format!("{}/{}", p.os, p.architecture),
            }),
        })
    }
}

impl Manifest {
    /// Parses manifest bytes. `content_type` is the header it came with, used when the body has no
    /// `mediaType` field (allowed by the OCI spec); when both are present the body wins, as the
    /// body is what the digest covers.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { size: bytes.len() });
        }
        let raw: RawManifest = serde_json::from_slice(bytes)?;
        let manifests_present = raw.manifests.is_some();
        let layers = raw.layers.unwrap_or_default();
        let manifests = raw.manifests.unwrap_or_default();
        if let Some(v) = raw.schema_version {
            if v != 2 {
                return Err(ManifestError::SchemaVersion(v));
            }
        }
        let media_type = match (raw.media_type.as_deref(), content_type) {
            (Some(m), _) => MediaType::parse(m).ok_or_else(|| ManifestError::UnknownMediaType(m.into()))?,
            (None, Some(ct)) => MediaType::parse(ct).ok_or_else(|| ManifestError::UnknownMediaType(ct.into()))?,
            // An OCI body without mediaType: tell manifest from index by shape.
            (None, None) if !manifests.is_empty() => MediaType::OciIndex,
            (None, None) if raw.config.is_some() => MediaType::OciManifest,
            // `{"schemaVersion":2,"manifests":[]}` is a valid, empty OCI index.
            (None, None) if manifests_present && layers.is_empty() => MediaType::OciIndex,
            (None, None) => return Err(ManifestError::NoMediaType),
        };
        if layers.len() + manifests.len() > MAX_DESCRIPTORS {
            return Err(ManifestError::TooManyDescriptors);
        }
        let config = raw.config.map(RawDescriptor::convert).transpose()?;
        if !media_type.is_index() && config.is_none() {
            return Err(ManifestError::NoConfig);
        }
        Ok(Manifest {
            media_type,
            config,
            layers: layers.into_iter().map(RawDescriptor::convert).collect::<Result<_, _>>()?,
            manifests: manifests.into_iter().map(RawDescriptor::convert).collect::<Result<_, _>>()?,
        })
    }

    /// Every blob this manifest references directly (config and layers; for an index, none).
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn oci_manifest() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":9}}]}}"#,
            d('a'),
            d('b')
        );
        let m = Manifest::parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.media_type, MediaType::OciManifest);
        assert_eq!(m.blobs().count(), 2);
        assert_eq!(m.layers[0].size, 9);
    }

    #[test]
    fn docker_list_by_content_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            d('c')
        );
        let m = Manifest::parse(body.as_bytes(), Some(MediaType::DockerList.as_str())).unwrap();
        assert_eq!(m.media_type, MediaType::DockerList);
        assert_eq!(m.manifests[0].platform.as_deref(), Some("linux/arm64/v8"));
    }

    #[test]
    fn refusals() {
        assert!(matches!(Manifest::parse(&vec![b' '; MAX_MANIFEST_BYTES + 1], None), Err(ManifestError::TooLarge { .. })));
        assert!(matches!(Manifest::parse(b"{\"schemaVersion\":1}", None), Err(ManifestError::SchemaVersion(1))));
        assert!(matches!(Manifest::parse(b"{}", None), Err(ManifestError::NoMediaType)));
        assert!(matches!(Manifest::parse(b"{\"mediaType\":\"text/plain\"}", None), Err(ManifestError::UnknownMediaType(_))));
        let bad = r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:x","size":1}}"#;
        assert!(matches!(Manifest::parse(bad.as_bytes(), None), Err(ManifestError::BadDigest(_))));
    }

    #[test]
    fn empty_index_and_docker_manifest() {
        let m = Manifest::parse(br#"{"schemaVersion":2,"manifests":[]}"#, None).unwrap();
        assert_eq!(m.media_type, MediaType::OciIndex);
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"{}"}},"layers":[]}}"#,
            d('e')
        );
        let m = Manifest::parse(body.as_bytes(), Some("application/vnd.oci.image.manifest.v1+json")).unwrap();
        assert_eq!(m.media_type, MediaType::DockerManifest, "the body's mediaType wins over the header");
        assert_eq!(MediaType::parse("Application/VND.oci.image.index.v1+json; charset=utf-8"), Some(MediaType::OciIndex));
        assert!(matches!(Manifest::parse(b"{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\"}", None), Err(ManifestError::NoConfig)));
    }

    #[test]
    fn descriptor_cap() {
        let one = format!(r#"{{"mediaType":"x","digest":"{}","size":1}}"#, d('f'));
        let body = format!(
            r#"{{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
            vec![one.as_str(); MAX_DESCRIPTORS + 1].join(",")
        );
        assert!(matches!(Manifest::parse(body.as_bytes(), None), Err(ManifestError::TooManyDescriptors)));
    }

    fn hex64() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<u8>(), 32).prop_map(|b| format!("sha256:{}", hex::encode(b)))
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::parse(&bytes, None);
        }

        /// A manifest written from random descriptors parses back to exactly those descriptors,
        /// in order, whatever the field order and extra fields.
        #[test]
        fn generated_manifests_parse(
            config in hex64(),
            layers in proptest::collection::vec((hex64(), 0u64..u64::MAX), 0..20),
            extra in "[a-z]{1,8}",
            config_last in any::<bool>(),
        ) {
            let ls: Vec<String> = layers.iter().map(|(dg, size)| format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{dg}","size":{size},"annotations":{{"{extra}":"v"}}}}"#)).collect();
            let cfg = format!(r#""config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":3}}"#);
            let lay = format!(r#""layers":[{}]"#, ls.join(","));
            let (a, b) = if config_last { (lay, cfg) } else { (cfg, lay) };
            let body = format!(r#"{{"schemaVersion":2,"{extra}":[1,{{}}],{a},{b}}}"#);
            let m = Manifest::parse(body.as_bytes(), Some("application/vnd.oci.image.manifest.v1+json")).unwrap();
            prop_assert_eq!(m.config.unwrap().digest.to_string(), config);
            prop_assert_eq!(m.layers.len(), layers.len());
            for (got, (dg, size)) in m.layers.iter().zip(&layers) {
                prop_assert_eq!(&got.digest.to_string(), dg);
                prop_assert_eq!(got.size, *size);
            }
        }
    }
}
