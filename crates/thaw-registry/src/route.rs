//! Parsing `/v2/...` paths into API endpoints.
//!
//! Repository names contain slashes, so routes are recognised from the end of the path: the last
//! one or two segments name the endpoint and everything before them is the name.

/// A parsed registry API path (below `/v2/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Version,
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: String, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: String, id: String },
    /// `/v2/<name>/tags/list`
    Tags { name: String },
}

/// Parses the path after `/v2/` (without a leading slash). `None` for paths that are no endpoint.
pub fn parse(rest: &str) -> Option<Endpoint> {
    if rest.is_empty() {
        return Some(Endpoint::Version);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |upto: usize| -> Option<String> {
        (upto > 0).then(|| segs[..upto].join("/"))
    };
    // /<name>/blobs/uploads/ (trailing slash gives an empty last segment) or /blobs/uploads
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Some(Endpoint::UploadStart { name: name(n - 2)? });
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let id = segs[n - 1];
        return Some(if id.is_empty() {
            Endpoint::UploadStart { name: name(n - 3)? }
        } else {
            Endpoint::Upload { name: name(n - 3)?, id: id.to_string() }
        });
    }
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Some(Endpoint::Tags { name: name(n - 2)? });
    }
    if n >= 3 && segs[n - 2] == "manifests" && !segs[n - 1].is_empty() {
        return Some(Endpoint::Manifest { name: name(n - 2)?, reference: segs[n - 1].to_string() });
    }
    if n >= 3 && segs[n - 2] == "blobs" && !segs[n - 1].is_empty() {
        return Some(Endpoint::Blob { name: name(n - 2)?, digest: segs[n - 1].to_string() });
    }
    None
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(parse(""), Some(Endpoint::Version));
        assert_eq!(
            parse("library/alpine/manifests/3.19"),
            Some(Endpoint::Manifest { name: "library/alpine".into(), reference: "3.19".into() })
        );
        assert_eq!(
            parse("a/manifests/manifests/latest"),
            Some(Endpoint::Manifest { name: "a/manifests".into(), reference: "latest".into() })
        );
        assert_eq!(parse("x/blobs/uploads/"), Some(Endpoint::UploadStart { name: "x".into() }));
        assert_eq!(parse("x/y/blobs/uploads/abc"), Some(Endpoint::Upload { name: "x/y".into(), id: "abc".into() }));
        assert_eq!(parse("docker.io/library/busybox/tags/list"), Some(Endpoint::Tags { name: "docker.io/library/busybox".into() }));
        assert_eq!(parse("x/blobs/sha256:ab"), Some(Endpoint::Blob { name: "x".into(), digest: "sha256:ab".into() }));
        assert_eq!(parse("manifests/latest"), None);
        assert_eq!(parse("x/nothing"), None);
    }
}
