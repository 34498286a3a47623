//! The metadata database (redb): blob rows, tags, repository links, manifest media types and
//! repository privacy. Every write is one durable transaction, announced to the [`StoreFs`] first
//! so that fault injection can cancel it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};
use thaw_oci::Digest;

use crate::error::StoreError;
use crate::fs::StoreFs;

/// digest -> (size in bytes, last access in microseconds since the Unix epoch)
pub(crate) const BLOBS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("blobs");
/// (upstream, repository, tag) -> JSON of a `TagEntry`
pub(crate) const TAGS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("tags");
/// (upstream, repository, digest) -> ()
pub(crate) const LINKS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("links");
/// manifest digest -> media type
pub(crate) const MANIFEST_TYPES: TableDefinition<&str, &str> = TableDefinition::new("manifest_types");
/// (upstream, repository) -> whether anonymous access was refused (format 1; migrated away)
const PRIVATE_V1: TableDefinition<(&str, &str), bool> = TableDefinition::new("private");
/// (upstream, repository) -> (whether anonymous access was refused, when the upstream said so in
/// microseconds since the Unix epoch; 0 when unknown, which counts as stale)
pub(crate) const VISIBILITY: TableDefinition<(&str, &str), (bool, u64)> = TableDefinition::new("visibility");
/// "format" -> version of this layout
const INFO: TableDefinition<&str, u64> = TableDefinition::new("info");

/// The version of the tables above. Bump it, and migrate in [`Meta::open`], when they change.
/// 2: `visibility` (verdict and its time) replaced `private` (verdict only), so a restarted daemon
/// trusts a recent verdict instead of asking the upstream about every repository again.
pub(crate) const FORMAT_VERSION: u64 = 2;

/// A blob row as read back at open.
#[derive(Debug, Clone)]
pub(crate) struct BlobRow {
    pub digest: Digest,
    pub size: u64,
    pub atime_us: u64,
}

pub(crate) struct Meta {
    db: Database,
    path: PathBuf,
    fs: Arc<dyn StoreFs>,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta").field("path", &self.path).finish()
    }
}

pub(crate) type WriteTxn = redb::WriteTransaction;

/// The error of a closure run inside a transaction: any redb error, boxed (redb's error type is
/// large, and every `Result` in the store would carry its size otherwise).
#[derive(Debug)]
pub(crate) struct DbError(pub Box<redb::Error>);

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> DbError {
                DbError(Box::new(e.into()))
            }
        }
    )*};
}
db_error_from!(redb::Error, redb::TableError, redb::StorageError, redb::TransactionError, redb::CommitError);

impl From<DbError> for redb::Error {
    fn from(e: DbError) -> redb::Error {
        *e.0
    }
}

impl Meta {
    pub fn open(path: &Path, fs: Arc<dyn StoreFs>) -> Result<Meta, StoreError> {
        let db = Database::create(path).map_err(StoreError::meta("open", path))?;
        let meta = Meta { db, path: path.to_path_buf(), fs };
        let found = {
            let r = meta.db.begin_read().map_err(meta.err("read"))?;
            match r.open_table(INFO) {
                Ok(t) => t.get("format").map_err(meta.err("read"))?.map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(meta.err("read")(e)),
            }
        };
        match found {
            Some(v) if v == FORMAT_VERSION => {}
            Some(1) => {
                // Verdicts keep their value; their time is unknown, so each is asked again once.
                meta.write(|tx| {
                    let old: Vec<((String, String), bool)> = {
                        let t = tx.open_table(PRIVATE_V1)?;
                        let mut v = Vec::new();
                        for row in t.iter()? {
                            let (k, val) = row?;
                            let (u, r) = k.value();
                            v.push(((u.to_string(), r.to_string()), val.value()));
                        }
                        v
                    };
                    let mut t = tx.open_table(VISIBILITY)?;
                    for ((u, r), private) in &old {
                        t.insert((u.as_str(), r.as_str()), (*private, 0))?;
                    }
                    drop(t);
                    tx.delete_table(PRIVATE_V1)?;
                    tx.open_table(INFO)?.insert("format", FORMAT_VERSION)?;
                    Ok(())
                })?;
                tracing::info!(path = %meta.path.display(), "metadata migrated from format 1 to {FORMAT_VERSION}");
            }
            Some(v) => {
                return Err(StoreError::MetaVersion { path: meta.path.clone(), found: v, supported: FORMAT_VERSION })
            }
            None => {
                meta.write(|tx| {
                    tx.open_table(BLOBS)?;
                    tx.open_table(TAGS)?;
                    tx.open_table(LINKS)?;
                    tx.open_table(MANIFEST_TYPES)?;
                    tx.open_table(VISIBILITY)?;
                    tx.open_table(INFO)?.insert("format", FORMAT_VERSION)?;
                    Ok(())
                })?;
            }
        }
        Ok(meta)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn err<E: Into<redb::Error>>(&self, what: &'static str) -> impl FnOnce(E) -> StoreError {
        StoreError::meta(what, self.path.clone())
    }

    /// Runs `f` in a write transaction and commits it durably.
    pub fn write<T>(&self, f: impl FnOnce(&WriteTxn) -> Result<T, DbError>) -> Result<T, StoreError> {
        let tx = self.db.begin_write().map_err(self.err("begin a write"))?;
        let out = f(&tx).map_err(self.err("write"))?;
        self.fs.before_meta_commit().map_err(StoreError::io("commit metadata to", &self.path))?;
        tx.commit().map_err(self.err("commit"))?;
        Ok(out)
    }

    /// Runs `f` in a read transaction.
    pub fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T, DbError>) -> Result<T, StoreError> {
        let tx = self.db.begin_read().map_err(self.err("begin a read"))?;
        f(&tx).map_err(self.err("read"))
    }

    /// Every blob row. Rows whose key is not a digest are reported as corruption.
    pub fn blob_rows(&self) -> Result<Vec<BlobRow>, StoreError> {
        let raw: Vec<(String, u64, u64)> = self.read(|tx| {
            let t = tx.open_table(BLOBS)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                let (size, atime) = v.value();
                out.push((k.value().to_string(), size, atime));
            }
            Ok(out)
        })?;
        raw.into_iter()
            .map(|(k, size, atime_us)| {
                let digest = k.parse::<Digest>().map_err(|e| StoreError::MetaCorrupt {
                    path: self.path.clone(),
                    what: format!("blob row key {k:?} is not a digest: {e}"),
                })?;
                Ok(BlobRow { digest, size, atime_us })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobStore, StoreConfig};

    /// A format-1 store (verdicts without times) opens as format 2 with its verdicts kept and
    /// their times unknown; a newer format than this build knows is refused.
    #[test]
    fn format_1_verdicts_migrate_without_a_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        {
            let db = Database::create(dir.path().join("meta.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(BLOBS).unwrap();
            tx.open_table(TAGS).unwrap();
            tx.open_table(LINKS).unwrap();
            tx.open_table(MANIFEST_TYPES).unwrap();
            tx.open_table(PRIVATE_V1).unwrap().insert(("hub", "library/alpine"), false).unwrap();
            tx.open_table(PRIVATE_V1).unwrap().insert(("hub", "acme/secret"), true).unwrap();
            tx.open_table(INFO).unwrap().insert("format", 1).unwrap();
            tx.commit().unwrap();
        }
        let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(s.visibility("hub", "library/alpine").unwrap(), Some((false, 0)));
        assert_eq!(s.visibility("hub", "acme/secret").unwrap(), Some((true, 0)));
        assert_eq!(s.is_private("hub", "nope").unwrap(), None);
        s.set_private("hub", "acme/secret", false).unwrap();
        let (private, at) = s.visibility("hub", "acme/secret").unwrap().unwrap();
        assert!(!private && at > 0, "a new verdict carries its time");
        drop(s);
        // Reopening a format-2 store changes nothing; a format from the future is refused.
        let s = BlobStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(s.visibility("hub", "library/alpine").unwrap(), Some((false, 0)));
        drop(s);
        {
            let db = Database::create(dir.path().join("meta.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(INFO).unwrap().insert("format", FORMAT_VERSION + 1).unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(BlobStore::open(dir.path(), StoreConfig::default()), Err(StoreError::MetaVersion { .. })));
    }
}
