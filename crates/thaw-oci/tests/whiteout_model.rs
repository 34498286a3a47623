//! Whiteout handling against a reference model: random stacks of layers (files, directories,
//! symlinks, whiteouts, opaque markers over a small name space, so they collide often) are
//! applied to an in-memory model of overlay semantics and unpacked to disk in apply mode; the
//! trees must match, and a stack the model says is invalid must fail to unpack. As root, the
//! same stack is also unpacked in overlay mode, one directory per layer, and mounted with the
//! kernel's overlayfs: what the kernel shows must match too.
//!
//! One kernel quirk is tolerated in that comparison: a directory that exists in one layer only
//! is listed by overlayfs straight from that layer, so a whiteout of nothing inside it shows up
//! in `readdir` but cannot be stat'ed. Such names are skipped when reading the mount.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;
use support::{Scratch, Tar};
use thaw_oci::unpack::{unpack, UnpackOptions, WhiteoutMode};

#[derive(Debug, Clone)]
enum Op {
    File(String, u8),
    Dir(String),
    Symlink(String, String),
    Whiteout(String),
    Opaque(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File(u8),
    Dir,
    Symlink(String),
}

fn path() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..4).prop_map(|v| v.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path(), any::<u8>()).prop_map(|(p, c)| Op::File(p, c)),
        3 => path().prop_map(Op::Dir),
        1 => (path(), prop_oneof![Just("a"), Just("../x"), Just("/etc")]).prop_map(|(p, t)| Op::Symlink(p, t.to_string())),
        2 => path().prop_map(Op::Whiteout),
        1 => path().prop_map(Op::Opaque),
    ]
}

fn ancestors(p: &str) -> Vec<String> {
    let parts: Vec<&str> = p.split('/').collect();
    (1..parts.len()).map(|i| parts[..i].join("/")).collect()
}

fn under(p: &str, dir: &str) -> bool {
    p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/'
}

/// The model of applying one layer: overlay semantics, with the unpacker's refusals (a parent
/// that exists but is not a directory fails the layer).
struct Model {
    tree: BTreeMap<String, Node>,
}

impl Model {
    fn remove_tree(&mut self, p: &str) {
        self.tree.retain(|k, _| k != p && !under(k, p));
    }

    /// Walks the parents of `p`: Err if one is not a directory, creating missing ones. Every
    /// parent joins the layer's own tree (`created`).
    fn parents(&mut self, p: &str, create: bool, created: &mut BTreeSet<String>) -> Result<bool, ()> {
        for a in ancestors(p) {
            match self.tree.get(&a) {
                Some(Node::Dir) => {
                    if create {
                        created.insert(a);
                    }
                }
                Some(_) => return Err(()),
                None if create => {
                    self.tree.insert(a.clone(), Node::Dir);
                    created.insert(a);
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    fn apply(&mut self, layer: &[Op]) -> Result<(), ()> {
        let mut created = BTreeSet::new();
        for op in layer {
            match op {
                Op::File(p, _) | Op::Symlink(p, _) | Op::Dir(p) => {
                    self.parents(p, true, &mut created)?;
                    let node = match op {
                        Op::File(_, c) => Node::File(*c),
                        Op::Symlink(_, t) => Node::Symlink(t.clone()),
                        _ => Node::Dir,
                    };
                    if !(node == Node::Dir && self.tree.get(p) == Some(&Node::Dir)) {
                        self.remove_tree(p);
                        self.tree.insert(p.clone(), node);
                    }
                    created.insert(p.clone());
                }
                Op::Whiteout(p) => {
                    if created.contains(p) {
                        continue;
                    }
                    // Parents of a whiteout are created, as overlay mode must to hold it.
                    self.parents(p, true, &mut created)?;
                    self.remove_tree(p);
                }
                Op::Opaque(d) => {
                    // `d/.wh..wh..opq`: the walk goes through d itself.
                    let marker = format!("{d}/.wh..wh..opq");
                    self.parents(&marker, true, &mut created)?;
                    // Keep a descendant only if it and every ancestor below d were created by
                    // this layer.
                    let doomed: Vec<String> = self
                        .tree
                        .keys()
                        .filter(|k| under(k, d))
                        .filter(|k| !created.contains(*k))
                        .cloned()
                        .collect();
                    for k in doomed {
                        self.remove_tree(&k);
                    }
                }
            }
        }
        Ok(())
    }
}

fn layer_tar(layer: &[Op]) -> Vec<u8> {
    let mut t = Tar::new();
    for op in layer {
        match op {
            Op::File(p, c) => t.file(p, &[*c]),
            Op::Dir(p) => t.dir(&format!("{p}/")),
            Op::Symlink(p, target) => t.symlink(p, target),
            Op::Whiteout(p) => {
                let (dir, name) = p.rsplit_once('/').map_or(("", p.as_str()), |(a, b)| (a, b));
                let wh = if dir.is_empty() { format!(".wh.{name}") } else { format!("{dir}/.wh.{name}") };
                t.file(&wh, b"")
            }
            Op::Opaque(d) => t.file(&format!("{d}/.wh..wh..opq"), b""),
        };
    }
    t.finish()
}

fn disk_tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for (k, v) in support::snapshot(root) {
        let node = if v == "dir" {
            Node::Dir
        } else if let Some(t) = v.strip_prefix("symlink ") {
            Node::Symlink(t.to_string())
        } else if let Some(c) = v.strip_prefix("file ") {
            let c: String = c.trim_matches('"').to_string();
            let bytes = std::fs::read(root.join(&k)).unwrap();
            assert_eq!(bytes.len(), 1, "{k}: {c}");
            Node::File(bytes[0])
        } else {
            panic!("unexpected {k}: {v}")
        };
        out.insert(k, node);
    }
    out
}

fn run_stack(layers: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let s = Scratch::new();
    let mut model = Model { tree: BTreeMap::new() };
    for (i, layer) in layers.iter().enumerate() {
        let expected = model.apply(layer);
        let got = unpack(&layer_tar(layer)[..], &s.root(), &UnpackOptions::default());
        match (expected, got) {
            (Ok(()), Ok(_)) => {}
            (Err(()), Err(_)) => return Ok(()),
            (Ok(()), Err(e)) => return Err(TestCaseError::fail(format!("layer {i} failed but the model accepts it: {e}"))),
            (Err(()), Ok(_)) => return Err(TestCaseError::fail(format!("layer {i} unpacked but the model refuses it"))),
        }
        prop_assert_eq!(&disk_tree(&s.root()), &model.tree, "after layer {}", i);
    }
    // The overlayfs half needs root (mknod for whiteouts, trusted xattrs, mount).
    if support::need_root("whiteout_model overlayfs comparison") {
        overlay_matches(layers, &model.tree)?;
    }
    Ok(())
}

/// Unpacks every layer in overlay mode into its own directory, mounts them with overlayfs and
/// compares what the kernel shows with the model.
fn overlay_matches(layers: &[Vec<Op>], expected: &BTreeMap<String, Node>) -> Result<(), TestCaseError> {
    let s = Scratch::new();
    let mut lowers = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let dir = s.dir.path().join(format!("l{i}"));
        std::fs::create_dir(&dir).unwrap();
        let o = UnpackOptions { mode: WhiteoutMode::Overlay, ..UnpackOptions::default() };
        unpack(&layer_tar(layer)[..], &dir, &o).map_err(|e| TestCaseError::fail(format!("overlay unpack of layer {i}: {e}")))?;
        lowers.push(dir.display().to_string());
    }
    // A single lower layer plus an empty one: overlayfs needs two lowers without an upper.
    let empty = s.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    lowers.push(empty.display().to_string());
    lowers.reverse();
    let mnt = s.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let data = format!("lowerdir={}", lowers.join(":"));
    let mounted = std::process::Command::new("mount").args(["-t", "overlay", "overlay", "-o", &data]).arg(&mnt).status().unwrap();
    if !mounted.success() {
        return Err(TestCaseError::fail("mount -t overlay failed"));
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    prop_assert_eq!(&disk_tree(&mnt), expected, "overlayfs view differs from the model");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn apply_mode_matches_the_model(layers in proptest::collection::vec(proptest::collection::vec(op(), 0..8), 1..5)) {
        run_stack(&layers)?;
    }
}

#[test]
fn opaque_hides_lower_content_of_merged_directories() {
    // Regression: a directory this layer re-creates over a lower one merges with it, but an
    // opaque marker on its parent must still hide the lower content below it.
    run_stack(&[
        vec![Op::File("a/b/c".into(), 1), Op::File("a/d".into(), 2)],
        vec![Op::Dir("a/b".into()), Op::File("a/b/e".into(), 3), Op::Opaque("a".into())],
    ])
    .unwrap();
}
