//! Which layer provides a path: overlayfs' lookup rules applied to the unpacked layer
//! directories, and the image's inventory (every regular file of the merged view with the layer
//! that provides it).
//!
//! The layer store unpacks layers in overlay format (`thaw_oci::WhiteoutMode::Overlay`): a
//! deleted path is a 0/0 character device, an opaque directory carries
//! `trusted.overlay.opaque=y`. The rules, topmost layer first, are the kernel's:
//! - the first layer holding a real entry at the path provides it;
//! - a whiteout at the path, or at any of its ancestors, hides it in every layer below;
//! - an opaque ancestor directory hides everything below that layer under it;
//! - an ancestor that is not a directory (a file or a symlink) means the path cannot exist in
//!   that layer and hides the layers below too (overlayfs never merges a directory with a
//!   non-directory).
//!
//! Lookups never follow a symlink inside a layer: each component is `lstat`ed in turn, so a
//! layer's `lib -> /usr/lib` can never send a lookup into the host's `/usr/lib`.
//!
//! All filesystem access goes through [`LayerFs`], so the rules are unit-tested against an
//! in-memory fake (whiteout devices and `trusted.*` xattrs need root to create for real).

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// What one layer directory holds at one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Missing,
    Dir { opaque: bool },
    File { size: u64 },
    /// An overlay whiteout (0/0 character device): the path was deleted by this layer.
    Whiteout,
    /// A symlink, device, fifo or socket.
    Other,
}

/// The filesystem calls the layer rules need.
pub trait LayerFs {
    /// The entry at `path`, without following a symlink at its last component. Callers only
    /// pass paths whose ancestors inside the layer were seen to be real directories.
    fn entry(&self, path: &Path) -> io::Result<Entry>;
    /// The names in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
}

/// The real filesystem: `lstat`, `lgetxattr` and `readdir`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl LayerFs for RealFs {
    fn entry(&self, path: &Path) -> io::Result<Entry> {
        let m = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Ok(Entry::Missing)
            }
            Err(e) => return Err(e),
        };
        let ft = m.file_type();
        Ok(if ft.is_dir() {
            Entry::Dir { opaque: is_opaque(path) }
        } else if ft.is_file() {
            Entry::File { size: m.len() }
        } else if ft.is_char_device() && m.rdev() == 0 {
            Entry::Whiteout
        } else {
            Entry::Other
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
    }
}

/// Whether a directory carries overlayfs' opaque marker.
fn is_opaque(path: &Path) -> bool {
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else { return false };
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer pointer and
    // length describe `buf`, which the kernel writes at most `buf.len()` bytes into.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

/// One layer directory. `id` is the layer's diff_id (or, for a plain root directory, its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDir {
    pub id: String,
    pub dir: PathBuf,
}

/// Where a path of the merged image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// The layer at this index of [`LayerSet::layers`] (topmost first).
    Layer(usize),
    /// No layer holds it: the container created it (in its upper directory).
    Container,
}

/// Regular files and bytes a layer provides to the merged view (shadowed files not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub files: u64,
    pub bytes: u64,
}

/// The image's regular files: totals, per layer (same order as [`LayerSet::layers`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub total: Count,
    pub per_layer: Vec<Count>,
}

/// An image's layers, topmost first (the order of overlayfs' `lowerdir=`).
#[derive(Debug, Clone)]
pub struct LayerSet {
    pub layers: Vec<LayerDir>,
}

/// The normal components of a path inside the image; `None` when it tries to leave the root.
pub fn image_components(path: &Path) -> Option<Vec<&std::ffi::OsStr>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

impl LayerSet {
    /// `layers` base first, as manifests list them; stored topmost first.
    pub fn from_base_first(mut layers: Vec<LayerDir>) -> LayerSet {
        layers.reverse();
        LayerSet { layers }
    }

    /// Which layer provides `path` (absolute inside the image, `..` refused as not in any layer).
    pub fn locate(&self, fs: &dyn LayerFs, path: &Path) -> io::Result<Provider> {
        let Some(comps) = image_components(path) else { return Ok(Provider::Container) };
        if comps.is_empty() {
            return Ok(self.layers.first().map_or(Provider::Container, |_| Provider::Layer(0)));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let mut p = layer.dir.clone();
            let mut hides_below = false;
            let mut present = true;
            for (k, c) in comps.iter().enumerate() {
                p.push(c);
                let last = k + 1 == comps.len();
                match fs.entry(&p)? {
                    Entry::Missing => {
                        present = false;
                        break;
                    }
                    Entry::Whiteout => return Ok(Provider::Container),
                    Entry::Dir { opaque } => {
                        if opaque && !last {
                            hides_below = true;
                        }
                    }
                    Entry::File { .. } | Entry::Other => {
                        if !last {
                            // A non-directory where a directory is needed: the path cannot
                            // exist here, and this entry hides the layers below.
                            return Ok(Provider::Container);
                        }
                    }
                }
            }
            if present {
                return Ok(Provider::Layer(i));
            }
            if hides_below {
                return Ok(Provider::Container);
            }
        }
        Ok(Provider::Container)
    }

    /// Walks the merged view as overlayfs builds it and counts the regular files (and their
    /// bytes) each layer provides. Iterative, so a deep hostile tree cannot overflow the stack.
    pub fn inventory(&self, fs: &dyn LayerFs) -> io::Result<Inventory> {
        let mut inv = Inventory { total: Count::default(), per_layer: vec![Count::default(); self.layers.len()] };
        // (path inside the image, the layers that hold it as a directory visible in the merge)
        let mut stack: Vec<(PathBuf, Vec<usize>)> = vec![(PathBuf::new(), (0..self.layers.len()).collect())];
        while let Some((rel, holders)) = stack.pop() {
            let mut names = BTreeSet::new();
            for &i in &holders {
                names.extend(fs.list(&self.layers[i].dir.join(&rel))?);
            }
            for name in names {
                let child = rel.join(&name);
                let mut dirs = Vec::new();
                for &i in &holders {
                    match fs.entry(&self.layers[i].dir.join(&child))? {
                        Entry::Missing => continue,
                        Entry::Dir { opaque } => {
                            dirs.push(i);
                            if opaque {
                                break;
                            }
                        }
                        Entry::File { size } => {
                            if dirs.is_empty() {
                                inv.per_layer[i].files += 1;
                                inv.per_layer[i].bytes += size;
                                inv.total.files += 1;
                                inv.total.bytes += size;
                            }
                            break;
                        }
                        Entry::Whiteout | Entry::Other => break,
                    }
                }
                if !dirs.is_empty() {
                    stack.push((child, dirs));
                }
            }
        }
        Ok(inv)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::collections::BTreeMap;

    /// An in-memory filesystem: absolute path -> entry; directories list their children.
    #[derive(Default)]
    pub struct FakeFs {
        pub entries: BTreeMap<PathBuf, Entry>,
    }

    impl FakeFs {
        /// Adds an entry and every missing ancestor as a plain directory.
        pub fn add(&mut self, path: &str, e: Entry) {
            let p = PathBuf::from(path);
            for a in p.ancestors().skip(1) {
                if a.as_os_str().is_empty() {
                    continue;
                }
                self.entries.entry(a.to_path_buf()).or_insert(Entry::Dir { opaque: false });
            }
            self.entries.insert(p, e);
        }
    }

    impl LayerFs for FakeFs {
        fn entry(&self, path: &Path) -> io::Result<Entry> {
            Ok(self.entries.get(path).copied().unwrap_or(Entry::Missing))
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
            Ok(self
                .entries
                .keys()
                .filter(|k| k.parent() == Some(dir))
                .filter_map(|k| k.file_name().map(|n| n.to_os_string()))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeFs;
    use super::*;

    fn file(size: u64) -> Entry {
        Entry::File { size }
    }

    /// base: /bin/sh, /etc/passwd, /etc/old, /opt/x/a, /lib -> symlink, /data/b
    /// mid:  /etc/passwd (new), /etc/old whiteout, /opt/x opaque with /opt/x/b, /data/b
    /// top:  /data (dir) /data/a
    fn set() -> (FakeFs, LayerSet) {
        let mut fs = FakeFs::default();
        for (p, e) in [
            ("/L0/bin/sh", file(100)),
            ("/L0/etc/passwd", file(10)),
            ("/L0/etc/old", file(7)),
            ("/L0/opt/x/a", file(5)),
            ("/L0/lib", Entry::Other),
            ("/L0/data/b", file(3)),
            ("/L0/gone/f", file(9)),
            ("/L1/etc/passwd", file(20)),
            ("/L1/etc/old", Entry::Whiteout),
            ("/L1/opt/x", Entry::Dir { opaque: true }),
            ("/L1/opt/x/b", file(6)),
            ("/L1/data/b", file(4)),
            ("/L1/gone", Entry::Whiteout),
            ("/L2/data/a", file(1)),
        ] {
            fs.add(p, e);
        }
        let layers = ["L0", "L1", "L2"]
            .iter()
            .map(|l| LayerDir { id: l.to_string(), dir: PathBuf::from("/").join(l) })
            .collect();
        (fs, LayerSet::from_base_first(layers))
    }

    fn at(s: &LayerSet, fs: &FakeFs, p: &str) -> Option<String> {
        match s.locate(fs, Path::new(p)).unwrap() {
            Provider::Layer(i) => Some(s.layers[i].id.clone()),
            Provider::Container => None,
        }
    }

    #[test]
    fn topmost_layer_provides_a_path() {
        let (fs, s) = set();
        assert_eq!(s.layers[0].id, "L2", "stored topmost first");
        assert_eq!(at(&s, &fs, "/bin/sh").as_deref(), Some("L0"));
        assert_eq!(at(&s, &fs, "/etc/passwd").as_deref(), Some("L1"), "shadowed by the middle layer");
        assert_eq!(at(&s, &fs, "/data/a").as_deref(), Some("L2"));
        assert_eq!(at(&s, &fs, "/data/b").as_deref(), Some("L1"));
        assert_eq!(at(&s, &fs, "/opt/x/b").as_deref(), Some("L1"));
    }

    #[test]
    fn whiteouts_opaque_dirs_and_non_dirs_hide_lower_layers() {
        let (fs, s) = set();
        assert_eq!(at(&s, &fs, "/etc/old"), None, "whited out: a file there now is the container's");
        assert_eq!(at(&s, &fs, "/gone/f"), None, "a whiteout of an ancestor hides it");
        assert_eq!(at(&s, &fs, "/opt/x/a"), None, "under an opaque directory");
        assert_eq!(at(&s, &fs, "/lib/libc.so"), None, "never through a symlink in a layer");
        assert_eq!(at(&s, &fs, "/tmp/new"), None);
        assert_eq!(at(&s, &fs, "/../etc/passwd"), None, "no escape");
    }

    #[test]
    fn inventory_counts_the_merged_view() {
        let (fs, s) = set();
        let inv = s.inventory(&fs).unwrap();
        // visible: /bin/sh (L0,100) /etc/passwd (L1,20) /opt/x/b (L1,6) /data/b (L1,4) /data/a (L2,1)
        // hidden: /etc/passwd of L0, /etc/old, /opt/x/a, /gone/f, /data/b of L0; /lib is a symlink
        assert_eq!(inv.total, Count { files: 5, bytes: 131 });
        assert_eq!(inv.per_layer, vec![Count { files: 1, bytes: 1 }, Count { files: 3, bytes: 30 }, Count { files: 1, bytes: 100 }]);
    }

    #[test]
    fn inventory_and_locate_agree() {
        let (fs, s) = set();
        let inv = s.inventory(&fs).unwrap();
        let mut per = vec![Count::default(); s.layers.len()];
        for p in ["/bin/sh", "/etc/passwd", "/etc/old", "/opt/x/a", "/opt/x/b", "/data/a", "/data/b", "/gone/f"] {
            if let Provider::Layer(i) = s.locate(&fs, Path::new(p)).unwrap() {
                per[i].files += 1;
            }
        }
        assert_eq!(per.iter().map(|c| c.files).collect::<Vec<_>>(), inv.per_layer.iter().map(|c| c.files).collect::<Vec<_>>());
    }

    /// Every path of a depth-3 tree over two names, parents first.
    fn universe() -> Vec<String> {
        let mut out = Vec::new();
        for a in ["a", "b"] {
            out.push(format!("/{a}"));
            for b in ["a", "b"] {
                out.push(format!("/{a}/{b}"));
                for c in ["a", "b"] {
                    out.push(format!("/{a}/{b}/{c}"));
                }
            }
        }
        out
    }

    fn kind(k: u8) -> Option<Entry> {
        match k {
            0 => None,
            1 => Some(Entry::Dir { opaque: false }),
            2 => Some(Entry::Dir { opaque: true }),
            3 => Some(Entry::File { size: 3 }),
            4 => Some(Entry::Whiteout),
            _ => Some(Entry::Other),
        }
    }

    proptest::proptest! {
        /// The merged walk and the per-path lookup are two implementations of overlayfs' rules:
        /// on random stacks (whiteouts, opaque directories, files over directories) they agree
        /// on which layer provides every file.
        #[test]
        fn walk_and_lookup_agree_on_random_stacks(kinds in proptest::collection::vec(proptest::collection::vec(0u8..6, 14), 1..4)) {
            let mut fs = FakeFs::default();
            let paths = universe();
            for (l, ks) in kinds.iter().enumerate() {
                let root = PathBuf::from(format!("/L{l}"));
                fs.entries.insert(root.clone(), Entry::Dir { opaque: false });
                for (p, k) in paths.iter().zip(ks) {
                    let Some(e) = kind(*k) else { continue };
                    let full = root.join(&p[1..]);
                    // only entries whose ancestors in this layer are (or can become) directories
                    let blocked = full.ancestors().skip(1).take_while(|a| *a != root).any(|a| matches!(fs.entries.get(a), Some(x) if !matches!(x, Entry::Dir { .. })));
                    let has_children = fs.entries.keys().any(|k| k.parent() == Some(full.as_path()));
                    if blocked || (has_children && !matches!(e, Entry::Dir { .. })) {
                        continue;
                    }
                    fs.add(full.to_str().unwrap(), e);
                }
            }
            let layers = (0..kinds.len()).map(|l| LayerDir { id: format!("L{l}"), dir: PathBuf::from(format!("/L{l}")) }).collect();
            let set = LayerSet::from_base_first(layers);
            let inv = set.inventory(&fs).unwrap();
            let mut per = vec![0u64; set.layers.len()];
            for p in &paths {
                if let Provider::Layer(i) = set.locate(&fs, Path::new(p)).unwrap() {
                    if matches!(fs.entry(&set.layers[i].dir.join(&p[1..])).unwrap(), Entry::File { .. }) {
                        per[i] += 1;
                    }
                }
            }
            proptest::prop_assert_eq!(per, inv.per_layer.iter().map(|c| c.files).collect::<Vec<_>>());
        }
    }

    #[test]
    fn real_fs_reads_plain_directories() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("a/l")).unwrap();
        let s = LayerSet::from_base_first(vec![LayerDir { id: "root".into(), dir: d.path().to_path_buf() }]);
        assert_eq!(s.locate(&RealFs, Path::new("/a/b/f")).unwrap(), Provider::Layer(0));
        assert_eq!(s.locate(&RealFs, Path::new("/a/l/passwd")).unwrap(), Provider::Container);
        assert_eq!(s.locate(&RealFs, Path::new("/a/b/f/x")).unwrap(), Provider::Container);
        let inv = s.inventory(&RealFs).unwrap();
        assert_eq!(inv.total, Count { files: 1, bytes: 5 });
    }
}
