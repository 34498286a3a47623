//! The file operations the store makes, behind a trait.
//!
//! Every operation that changes what survives a crash goes through [`StoreFs`], so a test can
//! number the operations, fail any one of them, and simulate a power cut that loses whatever was
//! not yet fsynced ([`crate::FaultFs`]). Reads of blob content go straight to the `File` the trait
//! handed out: they change nothing on disk.
//!
//! The metadata database (redb) does its own I/O and its own fsyncs. The trait still sees each of
//! its commits through [`StoreFs::before_meta_commit`], so a crash can be placed before any commit,
//! and a commit that the crash would have prevented never happens.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntryInfo {
    /// The entry's file name (not valid UTF-8 names are reported lossily).
    pub name: String,
    pub is_dir: bool,
    /// Length in bytes for files, 0 for directories.
    pub len: u64,
}

/// The file operations of the store. Paths are absolute paths under the store's directory.
pub trait StoreFs: Send + Sync + fmt::Debug {
    /// Creates `path` and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates a new, empty file (failing if it exists), open for reading and writing.
    fn create_new(&self, path: &Path) -> io::Result<File>;
    /// Opens an existing file for appending.
    fn open_append(&self, path: &Path) -> io::Result<File>;
    /// Appends `data` to a file this trait opened for writing.
    fn write_all(&self, file: &File, data: &[u8]) -> io::Result<()>;
    /// Makes a file's data durable (fsync).
    fn sync_file(&self, file: &File) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of a directory (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Opens a file for reading.
    fn open_read(&self, path: &Path) -> io::Result<File>;
    /// Lists a directory, sorted by name.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntryInfo>>;
    /// The length of the file at `path`, or `None` when there is none.
    fn file_len(&self, path: &Path) -> io::Result<Option<u64>>;
    /// Called right before every metadata (redb) commit; an error cancels the commit.
    fn before_meta_commit(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl StoreFs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).create_new(true).mode(0o644).open(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).append(true).open(path)
    }

    fn write_all(&self, file: &File, data: &[u8]) -> io::Result<()> {
        let mut f = file;
        f.write_all(data)
    }

    fn sync_file(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntryInfo>> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let md = e.metadata()?;
            out.push(DirEntryInfo {
                name: e.file_name().to_string_lossy().into_owned(),
                is_dir: md.is_dir(),
                len: if md.is_dir() { 0 } else { md.len() },
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn file_len(&self, path: &Path) -> io::Result<Option<u64>> {
        match fs::metadata(path) {
            Ok(md) => Ok(Some(md.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
