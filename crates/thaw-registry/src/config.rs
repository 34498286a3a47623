//! The registry's configuration (the `[registry]` part of thaw's TOML config).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Docker Hub's registry endpoint and the name references use for it.
pub const DOCKER_HUB_NAME: &str = "docker.io";
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("bad duration {s:?} ({e}); write e.g. \"30s\" or \"5m\"")))
}

/// Username and password, for an upstream or a local account.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// One upstream registry thaw mirrors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The registry's name as clients write it: `docker.io`, `quay.io`, `registry.local:5000`. It is
    /// matched against containerd's `ns` query parameter and used as the path prefix
    /// (`thaw-host:5000/<name>/<repo>`, the registries.conf mirror location form).
    pub name: String,
    /// Base URL of its API (`https://registry-1.docker.io`, `http://127.0.0.1:5001`).
    pub url: String,
    /// Requests that name no upstream (no `ns`, no prefix) go to the default upstream.
    #[serde(default)]
    pub default: bool,
    /// The operator's credentials for this upstream. Content fetched with them is shared by every
    /// client of this mirror: that is the operator's choice.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// Add Docker Hub's `library/` prefix to one-component names (on by default for docker.io).
    #[serde(default)]
    pub library_prefix: Option<bool>,
}

impl UpstreamConfig {
    pub fn docker_hub() -> UpstreamConfig {
        UpstreamConfig {
            name: DOCKER_HUB_NAME.into(),
            url: DOCKER_HUB_URL.into(),
            default: true,
            credentials: None,
            library_prefix: Some(true),
        }
    }

    /// An upstream from a bare URL given with `--upstream`: its host:port is its name.
    pub fn from_url(url: &str) -> Result<UpstreamConfig, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("upstream {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("upstream {url:?} must be http:// or https://"));
        }
        let host = parsed.host_str().ok_or_else(|| format!("upstream {url:?} has no host"))?;
        let name = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let name = if name == "registry-1.docker.io" { DOCKER_HUB_NAME.to_string() } else { name };
        Ok(UpstreamConfig { name, url: url.trim_end_matches('/').to_string(), default: false, credentials: None, library_prefix: None })
    }

    pub fn adds_library_prefix(&self) -> bool {
        self.library_prefix.unwrap_or(self.name == DOCKER_HUB_NAME)
    }
}

/// A local account (Basic auth, over TLS) and the upstream credentials it maps to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub username: String,
    pub password: String,
    /// Upstream name -> credentials used upstream for this account's requests.
    #[serde(default)]
    pub upstream: BTreeMap<String, Credentials>,
}

/// Where and how the request trace is written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// Directory for `requests.jsonl` and its rotated predecessors.
    pub dir: PathBuf,
    /// Rotate when the current file reaches this many bytes.
    #[serde(default = "TraceConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// How many rotated files to keep.
    #[serde(default = "TraceConfig::default_keep")]
    pub keep: usize,
}

impl TraceConfig {
    fn default_max_bytes() -> u64 {
        256 << 20
    }
    fn default_keep() -> usize {
        8
    }
}

/// Everything the registry needs besides its store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub upstreams: Vec<UpstreamConfig>,
    /// How long a tag's answer is used before it is revalidated with a HEAD upstream.
    #[serde(deserialize_with = "duration")]
    pub tag_ttl: Duration,
    /// How long an upstream's "yes" to a client's credentials for a private repository is
    /// remembered (never longer than the client's token is valid).
    #[serde(deserialize_with = "duration")]
    pub auth_ttl: Duration,
    /// How long the upstream's verdict that a repository is public (or private) is trusted before
    /// it is asked again. While the upstream cannot be asked, content last seen public is still
    /// served; private content never is.
    #[serde(deserialize_with = "duration")]
    pub visibility_ttl: Duration,
    /// Timeout for connecting to and hearing from an upstream.
    #[serde(deserialize_with = "duration")]
    pub upstream_timeout: Duration,
    /// Retries of a blob download: after a connection failure or a 5xx answer before the first
    /// byte, and to resume an interrupted download with a Range request.
    pub fetch_retries: u32,
    pub accounts: Vec<Account>,
    pub trace: Option<TraceConfig>,
    /// Extra PEM CA certificates to trust for upstream TLS.
    pub upstream_ca: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            upstreams: Vec::new(),
            tag_ttl: Duration::from_secs(300),
            auth_ttl: Duration::from_secs(60),
            visibility_ttl: Duration::from_secs(300),
            upstream_timeout: Duration::from_secs(30),
            fetch_retries: 3,
            accounts: Vec::new(),
            trace: None,
            upstream_ca: None,
        }
    }
}

impl RegistryConfig {
    /// Checks what serde cannot: one default upstream at most, unique names.
    pub fn validate(&self) -> Result<(), String> {
        let defaults = self.upstreams.iter().filter(|u| u.default).count();
        if defaults > 1 {
            return Err("more than one upstream has `default = true`; choose one".into());
        }
        let mut names: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("upstream name {:?} is configured twice", w[0]));
        }
        for u in &self.upstreams {
            UpstreamConfig::from_url(&u.url)?;
        }
        Ok(())
    }
}
