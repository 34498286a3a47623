//! OCI vocabulary for thaw: digests, repository names and references, media types, manifests and
//! HTTP byte ranges, each parsed with bounds and answered with a clear error.
//!
//! Architecture invariant: no I/O, no storage decisions, no HTTP client or server. Everything here
//! is a pure function of its input, so every parser has property tests and a fuzz target
//! (`fuzz/` at the workspace root; the seed corpora are replayed by `tests/fuzz_corpus.rs`).

pub mod digest;
pub mod manifest;
pub mod name;
pub mod range;

pub use digest::{Digest, DigestError, Digester};
pub use manifest::{Descriptor, Manifest, ManifestError, MediaType, MAX_MANIFEST_BYTES};
pub use name::{NameError, Reference, RepoName, Tag};
pub use range::{ByteRange, RangeError};
