//! Repository names, tags and image references.
//!
//! Repository names follow the distribution spec: path components of lowercase alphanumerics
//! separated by `.`, `_`, `__` or runs of `-`, joined by `/`. References follow the docker/skopeo
//! convention `[registry/]repository[:tag][@digest]`, where the first component is a registry when
//! it contains `.` or `:` or is `localhost`, and Docker Hub's `library/` prefix is implied for
//! one-component names on Docker Hub.

use std::fmt;
use std::str::FromStr;

use crate::digest::{clip, Digest, DigestError};

/// The longest repository name accepted (the distribution registry's own limit).
pub const MAX_REPO_LEN: usize = 255;
/// Docker Hub's registry host as references name it.
pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_REPO_LEN} characters")]
    TooLong,
    #[error("repository name {0:?} is invalid: components are lowercase letters and digits, separated by '.', '_', '__' or '-', joined by '/'")]
    BadRepo(String),
    #[error("tag {0:?} is invalid: up to 128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'")]
    BadTag(String),
    #[error("reference {0:?} has a bad digest: {1}")]
    BadDigest(String, DigestError),
    #[error("reference {0:?} has an invalid registry host")]
    BadRegistry(String),
}

/// A validated repository name, e.g. `library/alpine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component (the "namespace" analyses map to service categories).
    pub fn namespace(&self) -> &str {
        self.0.split('/').next().unwrap_or("")
    }

    /// Adds Docker Hub's implied `library/` prefix to a one-component name.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.0.contains('/') {
            self.clone()
        } else {
            RepoName(format!("library/{}", self.0))
        }
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator: '.', '_', '__' or a run of '-', always followed by an alphanumeric
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_REPO_LEN {
            return Err(NameError::TooLong);
        }
        // A one-component name may get Docker Hub's `library/` prefix; keep room for it so that
        // every RepoName, prefixed or not, stays within the limit (found by fuzzing).
        if !s.contains('/') && s.len() + "library/".len() > MAX_REPO_LEN {
            return Err(NameError::TooLong);
        }
        if !s.split('/').all(valid_component) {
            return Err(NameError::BadRepo(clip(s)));
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::BadTag(clip(s)))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An image reference: registry, repository, and a tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The registry host (with port), `docker.io` when none was written.
    pub registry: String,
    pub repo: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// What to ask the registry for: the digest when there is one, else the tag (`latest` when
    /// neither was written).
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".into(),
        }
    }
}

/// A registry host as distribution's reference grammar writes it: a domain name (labels of
/// letters, digits and inner hyphens, joined by dots) or a bracketed IPv6 literal, then an
/// optional `:port` of decimal digits.
fn valid_registry(h: &str) -> bool {
    if h.is_empty() || h.len() > 255 {
        return false;
    }
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else { return false };
        let v6_ok = !v6.is_empty()
            && v6.len() <= 45
            && v6.contains(':')
            && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !v6_ok {
            return false;
        }
        match after {
            "" => return true,
            a => match a.strip_prefix(':') {
                Some(p) => ("", p),
                None => return false,
            },
        }
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host, port),
            None => (h, ""),
        }
    };
    let port_ok = (port.is_empty() && !h.ends_with(':'))
        || (port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty());
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    port_ok && (h.starts_with('[') || host.split('.').all(label_ok))
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                (r, Some(d.parse::<Digest>().map_err(|e| NameError::BadDigest(clip(s), e))?))
            }
            None => (s, None),
        };
        // The tag is after the last ':' that follows the last '/', so "host:5000/repo" keeps its port.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(rest[i + 1..].parse::<Tag>()?))
            }
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            // As docker decides it: a first component with a dot, a port, uppercase letters
            // (never valid in a repository name) or the word localhost names a registry.
            Some((first, path))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                if !valid_registry(first) {
                    return Err(NameError::BadRegistry(clip(s)));
                }
                (first.to_string(), path)
            }
            _ => (DOCKER_HUB.to_string(), name),
        };
        let mut repo: RepoName = path.parse()?;
        if registry == DOCKER_HUB || registry == "index.docker.io" || registry == "registry-1.docker.io" {
            repo = repo.with_library_prefix();
        }
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_string() } else { registry };
        Ok(Reference { registry, repo, tag, digest })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repo_names() {
        for ok in ["a", "library/alpine", "a.b_c__d---e/f", "x/y/z", "0"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in ["", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", "a/../b", "a b", "a:b"] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
        assert!("a".repeat(248).parse::<RepoName>().is_err(), "no room for library/");
        assert!("a".repeat(247).parse::<RepoName>().is_ok());
        assert!(format!("x/{}", "a".repeat(253)).parse::<RepoName>().is_ok());
        let r: Reference = "a".repeat(247).parse().unwrap();
        assert_eq!(r.repo.as_str().len(), MAX_REPO_LEN);
    }

    #[test]
    fn references() {
        let r: Reference = "alpine".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine");
        assert_eq!(r.object(), "latest");
        let r: Reference = "localhost:5000/team/app:v1.2".parse().unwrap();
        assert_eq!((r.registry.as_str(), r.repo.as_str(), r.tag.unwrap().as_str()), ("localhost:5000", "team/app", "v1.2"));
        let d = format!("sha256:{}", "c".repeat(64));
        let r: Reference = format!("quay.io/a/b:t@{d}").parse().unwrap();
        assert_eq!(r.object(), d);
        let r: Reference = "127.0.0.1:5000/x".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert!("Alpine".parse::<Reference>().is_err());
        assert!("alpine:".parse::<Reference>().is_err());
        assert!("alpine@sha256:zz".parse::<Reference>().is_err());
        let r: Reference = "[::1]:5000/a/b".parse().unwrap();
        assert_eq!(r.registry, "[::1]:5000");
        let r: Reference = "Registry.Example/a".parse().unwrap();
        assert_eq!(r.registry, "Registry.Example");
        let r: Reference = "MyHost/app".parse().unwrap();
        assert_eq!(r.registry, "MyHost");
        let r: Reference = "index.docker.io/busybox:1".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:1");
        for bad in ["a..b/c", "-a.b/c", "a.b:/c", "a.b:x/c", "a.b:123456/c", "[zz:1]/c", "[::1/c", "a_b.c/d", ":5000/a"] {
            assert!(matches!(bad.parse::<Reference>(), Err(NameError::BadRegistry(_))), "{bad}");
        }
    }

    #[test]
    fn tags() {
        assert!("a".repeat(128).parse::<Tag>().is_ok());
        assert!("a".repeat(129).parse::<Tag>().is_err());
        for ok in ["latest", "_x", "V1.2-rc_3", "0"] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", "a b", "é"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            let _ = s.parse::<Reference>();
            let _ = s.parse::<RepoName>();
            let _ = s.parse::<Tag>();
        }

        #[test]
        fn generated_names_parse_and_round_trip(
            comps in proptest::collection::vec("[a-z0-9]{1,5}([._-][a-z0-9]{1,5}){0,2}", 1..4),
            tag in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}",
        ) {
            let repo = comps.join("/");
            let s = format!("registry.example:5000/{repo}:{tag}");
            let r: Reference = s.parse().unwrap();
            prop_assert_eq!(r.to_string(), s);
        }

        /// Whatever parses prints as a reference that parses back to the same value.
        #[test]
        fn display_round_trips(s in "([a-zA-Z0-9.:_/@-]{0,40})(:[a-z0-9]{1,5})?(@sha256:[a-f0-9]{64})?") {
            if let Ok(r) = s.parse::<Reference>() {
                let again: Reference = r.to_string().parse().unwrap();
                prop_assert_eq!(again, r);
            }
        }

        /// The repository grammar from the distribution spec, written as a regex for proptest to
        /// generate from: everything it generates is accepted (up to the length limit).
        #[test]
        fn spec_grammar_accepted(s in "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,3}(/[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,3}){0,3}") {
            prop_assume!(s.len() <= MAX_REPO_LEN);
            let r = s.parse::<RepoName>().unwrap();
            prop_assert_eq!(r.as_str(), s.as_str());
        }

        /// Accepted names contain only the grammar's characters, never start or end a component
        /// with a separator, and never contain three underscores or a dot next to a separator.
        #[test]
        fn accepted_names_are_in_grammar(s in "[a-z0-9._/-]{1,40}") {
            if let Ok(r) = s.parse::<RepoName>() {
                for c in r.as_str().split('/') {
                    prop_assert!(!c.is_empty());
                    prop_assert!(c.as_bytes()[0].is_ascii_alphanumeric());
                    prop_assert!(c.as_bytes()[c.len() - 1].is_ascii_alphanumeric());
                    prop_assert!(!c.contains("___") && !c.contains("..") && !c.contains(".-") && !c.contains("-.") && !c.contains("._") && !c.contains("_.") && !c.contains("-_") && !c.contains("_-"));
                }
            }
        }
    }
}
