//! The store's error type. Every message says what went wrong and, where the user can act, what
//! to do about it.

use std::io;
use std::path::PathBuf;

use thaw_oci::Digest;

/// Everything that can go wrong in the blob store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store's lock file.
    #[error(
        "another thaw process ({}) holds the store at {}; use its API (thaw talks to it through the socket) or stop it",
        pid_text(*pid),
        dir.display()
    )]
    Locked { dir: PathBuf, pid: Option<u32> },

    /// A file operation failed.
    #[error("could not {op} {}: {source}; check that the data directory is writable and the disk is not full", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The metadata database failed.
    #[error("store metadata database {}: could not {what}: {source}; if the file is damaged, stop thaw, move it away and restart (blobs are re-verified and adopted)", path.display())]
    Meta {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },

    /// A metadata row could not be decoded.
    #[error("store metadata database {}: {what}; stop thaw, move the file away and restart (blobs are re-verified and adopted)", path.display())]
    MetaCorrupt { path: PathBuf, what: String },

    /// The metadata database was written by a newer thaw.
    #[error("store metadata database {} has format version {found}, this thaw understands {supported}; use a newer thaw or a new data directory", path.display())]
    MetaVersion { path: PathBuf, found: u64, supported: u64 },

    /// Content did not hash to the digest it was announced as.
    #[error("content announced as {expected} hashes to {actual}; it was discarded (the source sent wrong bytes; retry or check the upstream)")]
    DigestMismatch { expected: Digest, actual: Digest },

    /// Content had another length than announced.
    #[error("content for {digest} is {actual} bytes, {expected} were announced; it was discarded (the source sent a truncated or padded body; retry)")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },

    /// A write to a blob's temp file failed earlier, so what the file holds is unknown.
    #[error("an earlier write of {digest} to its temp file failed, so its content is unknown; start the blob over")]
    WriterFailed { digest: Digest },

    /// A chunk of an upload did not start where the upload ends.
    #[error("upload {id} has {size} bytes, a chunk starting at offset {offset} cannot be appended; resume from offset {size}")]
    UploadOffset { id: String, size: u64, offset: u64 },

    /// The upload id names no upload in progress.
    #[error("no upload {id} is in progress (finished, cancelled, or never started); start a new upload")]
    UnknownUpload { id: String },

    /// An upload id was not of the form thaw hands out.
    #[error("{0:?} is not an upload id (expected 8-4-4-4-12 lowercase hex digits)")]
    BadUploadId(String),

    /// The configured cache policy cannot be built.
    #[error(transparent)]
    Policy(#[from] thaw_policy::PolicyError),
}

fn pid_text(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("pid {p}"),
        None => "pid unknown".to_string(),
    }
}

impl StoreError {
    pub(crate) fn io<P: Into<PathBuf>>(op: &'static str, path: P) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }

    pub(crate) fn meta<E: Into<redb::Error>, P: Into<PathBuf>>(
        what: &'static str,
        path: P,
    ) -> impl FnOnce(E) -> StoreError {
        let path = path.into();
        move |e| StoreError::Meta { what, path, source: Box::new(e.into()) }
    }
}
