//! A fault-injecting [`StoreFs`] for tests: numbered operations, injected failures, and power cuts
//! that lose unsynced writes.
//!
//! It works on real files (the store hands out real `File`s to readers) and keeps, beside them, a
//! model of what a power cut would leave:
//!
//! * every file has a *durable content*: what its last fsync saw (a new file's is empty). Writes
//!   after that fsync are lost in a cut.
//! * every directory has a *durable listing*: its entries as of its last `sync_dir`. Creations,
//!   renames and removals after that are undone in a cut — a renamed file reappears under its old
//!   name (if that name was durable) and not under the new one.
//!
//! Directories are learned lazily: the first operation inside a directory records its current
//! files as durable. Created directories count as durable at once (the store creates its few
//! directories at open and when a new shard appears, and fsyncs their parent; modelling lost
//! directory creations would add little). Files the store does not touch through this trait (the
//! lock file and redb's database, which fsyncs itself) are left alone.
//!
//! Operations are numbered from 1 in the order they are called. [`FaultFs::fail_at`] makes one
//! operation return an error and the following ones work; [`FaultFs::crash_at`] makes that
//! operation and every later one fail, as if the process died there. After dropping the store,
//! [`FaultFs::power_cut`] rewrites the files to their durable state, as a machine would find them
//! after rebooting, and forgets everything, ready for the store to be opened again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::fs::{DirEntryInfo, RealFs, StoreFs};

type NodeId = u64;

#[derive(Debug, Default)]
struct Node {
    /// `Some(bytes)`: the durable content, kept here because the real file has changed since its
    /// last fsync or is gone. `None`: the real file at `live_at` holds exactly the durable content.
    durable: Option<Vec<u8>>,
    /// Where the real file is now, if it still has a name.
    live_at: Option<(PathBuf, String)>,
}

#[derive(Debug, Default)]
struct Dir {
    live: BTreeMap<String, NodeId>,
    durable: BTreeMap<String, NodeId>,
}

#[derive(Debug, Default)]
struct State {
    ops: u64,
    fail_at: BTreeSet<u64>,
    crash_at: Option<u64>,
    crashed: bool,
    /// The kind of every operation so far, by number (for messages of failing tests).
    log: Vec<&'static str>,
    next_id: NodeId,
    by_ino: HashMap<(u64, u64), NodeId>,
    nodes: HashMap<NodeId, Node>,
    dirs: HashMap<PathBuf, Dir>,
}

/// A [`StoreFs`] that can fail any numbered operation and simulate a power cut. See the module
/// docs.
#[derive(Debug, Default)]
pub struct FaultFs {
    state: Mutex<State>,
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?
        .to_string_lossy()
        .into_owned();
    Ok((parent.to_path_buf(), name))
}

fn read_all_at(file: &File) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(&mut buf[done..], done as u64)?;
        if n == 0 {
            buf.truncate(done);
            break;
        }
        done += n;
    }
    Ok(buf)
}

impl State {
    /// Numbers the operation and decides whether it fails.
    fn tick(&mut self, kind: &'static str) -> io::Result<()> {
        self.ops += 1;
        self.log.push(kind);
        let n = self.ops;
        if self.crashed {
            return Err(io::Error::other(format!("simulated crash: operation {n} ({kind}) after the crash")));
        }
        if self.crash_at == Some(n) {
            self.crashed = true;
            return Err(io::Error::other(format!("simulated crash at operation {n} ({kind})")));
        }
        if self.fail_at.remove(&n) {
            return Err(io::Error::other(format!("injected failure of operation {n} ({kind})")));
        }
        Ok(())
    }

    /// Learns a directory's current files as durable, the first time it is used.
    fn learn_dir(&mut self, dir: &Path) -> io::Result<()> {
        if self.dirs.contains_key(dir) {
            return Ok(());
        }
        let mut d = Dir::default();
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e?;
                    let md = e.metadata()?;
                    if !md.is_file() {
                        continue;
                    }
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = self.next_id;
                    self.next_id += 1;
                    self.by_ino.insert((md.dev(), md.ino()), id);
                    self.nodes.insert(id, Node { durable: None, live_at: Some((dir.to_path_buf(), name.clone())) });
                    d.live.insert(name.clone(), id);
                    d.durable.insert(name, id);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.dirs.insert(dir.to_path_buf(), d);
        Ok(())
    }

    fn node_of(&mut self, file: &File) -> io::Result<Option<NodeId>> {
        let md = file.metadata()?;
        Ok(self.by_ino.get(&(md.dev(), md.ino())).copied())
    }

    /// Before the real file of `id` changes or loses its name: keep its durable content in memory.
    fn save_durable(&mut self, id: NodeId, file: Option<&File>) -> io::Result<()> {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.durable.is_some() {
            return Ok(());
        }
        let bytes = match (file, &node.live_at) {
            (Some(f), _) => read_all_at(f)?,
            (None, Some((dir, name))) => std::fs::read(dir.join(name))?,
            (None, None) => Vec::new(),
        };
        node.durable = Some(bytes);
        Ok(())
    }

    /// Removes the live name `name` in `dir`, if tracked, saving durable content first.
    fn unlink(&mut self, dir: &Path, name: &str) -> io::Result<()> {
        let Some(id) = self.dirs.get(dir).and_then(|d| d.live.get(name).copied()) else { return Ok(()) };
        self.save_durable(id, None)?;
        self.dirs.get_mut(dir).expect("learned").live.remove(name);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.live_at = None;
        self.by_ino.retain(|_, v| *v != id);
        Ok(())
    }
}

impl FaultFs {
    pub fn new() -> FaultFs {
        FaultFs::default()
    }

    /// Makes operation number `n` (counting from 1) fail once.
    pub fn fail_at(&self, n: u64) {
        self.state.lock().fail_at.insert(n);
    }

    /// Makes operation number `n` and every later one fail: the process "dies" there.
    pub fn crash_at(&self, n: u64) {
        self.state.lock().crash_at = Some(n);
    }

    /// Makes every operation from now on fail.
    pub fn crash_now(&self) {
        self.state.lock().crashed = true;
    }

    /// Whether a crash has happened.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// Number of operations so far.
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// The kind of operation number `n` (counting from 1), for messages.
    pub fn op_kind(&self, n: u64) -> Option<&'static str> {
        let s = self.state.lock();
        n.checked_sub(1).and_then(|i| s.log.get(i as usize).copied())
    }

    /// Rewrites every directory this fs has seen to its durable state (see the module docs), then
    /// forgets all state, faults and counters. Call it after the store using this fs is dropped.
    pub fn power_cut(&self) -> io::Result<()> {
        let mut s = self.state.lock();
        // 1. What each durable name will hold.
        let mut restore: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        for (dir, d) in &s.dirs {
            for (name, id) in &d.durable {
                let node = &s.nodes[id];
                let bytes = match (&node.durable, &node.live_at) {
                    (Some(b), _) => b.clone(),
                    (None, Some((ldir, lname))) => std::fs::read(ldir.join(lname))?,
                    (None, None) => Vec::new(),
                };
                restore.push((dir.join(name), bytes));
            }
        }
        // 2. Remove every live name, then 3. write the durable ones.
        for (dir, d) in &s.dirs {
            for name in d.live.keys() {
                match std::fs::remove_file(dir.join(name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for (path, bytes) in restore {
            std::fs::write(&path, bytes)?;
        }
        *s = State::default();
        Ok(())
    }
}

impl StoreFs for FaultFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.state.lock().tick("create_dir_all")?;
        RealFs.create_dir_all(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<File> {
        let mut s = self.state.lock();
        s.tick("create_new")?;
        let (dir, name) = split(path)?;
        s.learn_dir(&dir)?;
        let f = RealFs.create_new(path)?;
        let md = f.metadata()?;
        let id = s.next_id;
        s.next_id += 1;
        s.by_ino.insert((md.dev(), md.ino()), id);
        s.nodes.insert(id, Node { durable: Some(Vec::new()), live_at: Some((dir.clone(), name.clone())) });
        s.dirs.get_mut(&dir).expect("learned").live.insert(name, id);
        Ok(f)
    }

    fn open_append(&self, path: &Path) -> io::Result<File> {
        let mut s = self.state.lock();
        s.tick("open_append")?;
        let (dir, _) = split(path)?;
        s.learn_dir(&dir)?;
        RealFs.open_append(path)
    }

    fn write_all(&self, file: &File, data: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock();
        s.tick("write")?;
        if let Some(id) = s.node_of(file)? {
            s.save_durable(id, Some(file))?;
        }
        RealFs.write_all(file, data)
    }

    fn sync_file(&self, file: &File) -> io::Result<()> {
        let mut s = self.state.lock();
        s.tick("sync_file")?;
        RealFs.sync_file(file)?;
        if let Some(id) = s.node_of(file)? {
            let live = s.nodes[&id].live_at.is_some();
            let node = s.nodes.get_mut(&id).expect("known node");
            node.durable = if live { None } else { Some(read_all_at(file)?) };
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.tick("rename")?;
        let (fdir, fname) = split(from)?;
        let (tdir, tname) = split(to)?;
        s.learn_dir(&fdir)?;
        s.learn_dir(&tdir)?;
        if std::fs::symlink_metadata(from).is_err() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", from.display())));
        }
        // Save what the replaced and the moved file durably hold before the real rename.
        s.unlink(&tdir, &tname)?;
        let moved = s.dirs[&fdir].live.get(&fname).copied();
        if let Some(id) = moved {
            s.save_durable(id, None)?;
        }
        RealFs.rename(from, to)?;
        if let Some(id) = moved {
            s.dirs.get_mut(&fdir).expect("learned").live.remove(&fname);
            s.dirs.get_mut(&tdir).expect("learned").live.insert(tname.clone(), id);
            s.nodes.get_mut(&id).expect("known node").live_at = Some((tdir, tname));
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.tick("sync_dir")?;
        s.learn_dir(dir)?;
        RealFs.sync_dir(dir)?;
        let d = s.dirs.get_mut(dir).expect("learned");
        d.durable = d.live.clone();
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.tick("remove_file")?;
        let (dir, name) = split(path)?;
        s.learn_dir(&dir)?;
        if std::fs::symlink_metadata(path).is_err() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display())));
        }
        s.unlink(&dir, &name)?;
        RealFs.remove_file(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<File> {
        self.state.lock().tick("open_read")?;
        RealFs.open_read(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirEntryInfo>> {
        self.state.lock().tick("read_dir")?;
        RealFs.read_dir(dir)
    }

    fn file_len(&self, path: &Path) -> io::Result<Option<u64>> {
        self.state.lock().tick("file_len")?;
        RealFs.file_len(path)
    }

    fn before_meta_commit(&self) -> io::Result<()> {
        self.state.lock().tick("meta_commit")
    }
}
