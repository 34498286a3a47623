//! Content-addressed blob and layer store: atomic verified commits, redb metadata, policy-driven
//! eviction, pins.
//!
//! Architecture invariant: this crate knows nothing about HTTP or registries' wire formats. It is
//! blocking (std::fs); async callers run it on `spawn_blocking` or dedicated threads.
//!
//! Layout under the store's directory (every name derives from it, so two stores never touch each
//! other's files):
//!
//! ```text
//! blobs/<alg>/<first 2 hex>/<hex>   verified, durable content
//! tmp/                              blobs being written (deleted at open)
//! uploads/<upload id>               push uploads in progress (kept across restarts)
//! meta.redb                         metadata: blob sizes and access times, tags, links, ...
//! lock                              exclusive lock, holding the owner's pid
//! ```
//!
//! See [`store`] for the commit order, recovery, and how the policy's state survives a restart.

pub mod error;
pub mod faultfs;
pub mod fs;
pub mod layers;
mod meta;
pub mod store;
pub mod upload;

pub use error::StoreError;
pub use faultfs::FaultFs;
pub use fs::{DirEntryInfo, RealFs, StoreFs};
pub use store::{
    BlobHandle, BlobStore, BlobWriter, CheckReport, Committed, Pin, StoreConfig, StoreStats, TagEntry,
};
pub use upload::UploadId;

#[cfg(test)]
mod fs_conformance;
