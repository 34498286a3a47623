//! OCI vocabulary for thaw: digests, repository names and references, media types, manifests and
//! HTTP byte ranges, each parsed with bounds and answered with a clear error.
//!
//! Architecture invariant: no storage decisions, no HTTP client or server. The parsers are pure
//! functions of their input, so every one has property tests and a fuzz target (`fuzz/` at the
//! workspace root; the seed corpora are replayed by `tests/fuzz_corpus.rs`, through the entry
//! points in [`fuzzing`]). The only I/O is in [`mod@unpack`] (a tar stream into a directory the caller
//! chose) and [`mod@layout`] (reading an OCI image layout directory); where layers are kept is the
//! store's business.

pub mod digest;
pub mod fuzzing;
pub mod layout;
pub mod manifest;
pub mod name;
pub mod range;
pub mod unpack;

pub use digest::{Digest, DigestError, Digester};
pub use layout::{Layout, LayoutError, LayoutRef};
pub use manifest::{Descriptor, Manifest, ManifestError, MediaType, MAX_MANIFEST_BYTES};
pub use name::{NameError, Reference, RepoName, Tag};
pub use range::{ByteRange, RangeError, RangeSpec};
pub use unpack::{unpack, Compression, IdMap, Limits, Ownership, UnpackError, UnpackOptions, UnpackReport, WhiteoutMode};
