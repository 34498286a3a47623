//! One conformance suite for every [`StoreFs`] implementation: the real file system on a tmpfs
//! directory, and the fault injector with no faults. Both must behave alike, so tests that run
//! the store on the fault injector say something about the store on the real file system.

use std::io::Read;
use std::path::Path;

use crate::fs::{RealFs, StoreFs};
use crate::FaultFs;

fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::Builder::new().prefix("thaw-store-fs-").tempdir_in(shm).expect("tempdir in /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

fn read(fs: &dyn StoreFs, p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    fs.open_read(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn suite(fs: &dyn StoreFs) {
    let dir = scratch();
    let root = dir.path();
    let sub = root.join("a/b");

    // directories
    fs.create_dir_all(&sub).unwrap();
    fs.create_dir_all(&sub).unwrap();
    assert!(sub.is_dir());
    fs.sync_dir(&sub).unwrap();

    // create_new, write, sync, read back
    let p = sub.join("f");
    let f = fs.create_new(&p).unwrap();
    assert_eq!(fs.create_new(&p).unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    fs.write_all(&f, b"hello ").unwrap();
    fs.write_all(&f, b"world").unwrap();
    fs.sync_file(&f).unwrap();
    assert_eq!(read(fs, &p), b"hello world");
    assert_eq!(fs.file_len(&p).unwrap(), Some(11));
    assert_eq!(fs.file_len(&sub.join("missing")).unwrap(), None);

    // append
    let f = fs.open_append(&p).unwrap();
    fs.write_all(&f, b"!").unwrap();
    fs.sync_file(&f).unwrap();
    assert_eq!(read(fs, &p), b"hello world!");
    assert_eq!(fs.open_append(&sub.join("missing")).unwrap_err().kind(), std::io::ErrorKind::NotFound);

    // rename, including over an existing file
    let q = sub.join("g");
    fs.rename(&p, &q).unwrap();
    assert_eq!(fs.file_len(&p).unwrap(), None);
    assert_eq!(read(fs, &q), b"hello world!");
    let r = fs.create_new(&p).unwrap();
    fs.write_all(&r, b"new").unwrap();
    fs.rename(&p, &q).unwrap();
    assert_eq!(read(fs, &q), b"new");
    assert!(fs.rename(&p, &q).is_err(), "renaming a missing file must fail");

    // listing: sorted, files with lengths, directories flagged
    fs.create_dir_all(&sub.join("z")).unwrap();
    let f2 = fs.create_new(&sub.join("e")).unwrap();
    fs.write_all(&f2, b"12345").unwrap();
    let names: Vec<_> = fs.read_dir(&sub).unwrap().into_iter().map(|e| (e.name, e.is_dir, e.len)).collect();
    assert_eq!(names, vec![("e".into(), false, 5), ("g".into(), false, 3), ("z".into(), true, 0)]);
    assert_eq!(fs.read_dir(&root.join("nope")).unwrap_err().kind(), std::io::ErrorKind::NotFound);

    // removal
    fs.remove_file(&q).unwrap();
    assert_eq!(fs.file_len(&q).unwrap(), None);
    assert_eq!(fs.remove_file(&q).unwrap_err().kind(), std::io::ErrorKind::NotFound);
    fs.sync_dir(&sub).unwrap();

    // an open reader keeps the content of a removed file
    let s = sub.join("s");
    let w = fs.create_new(&s).unwrap();
    fs.write_all(&w, b"kept").unwrap();
    let mut reader = fs.open_read(&s).unwrap();
    fs.remove_file(&s).unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"kept");

    fs.before_meta_commit().unwrap();
}

#[test]
fn real_fs_conforms() {
    suite(&RealFs);
}

#[test]
fn fault_fs_without_faults_conforms() {
    let fs = FaultFs::new();
    suite(&fs);
    assert!(fs.ops() > 20);
    assert!(!fs.crashed());
}

/// The power-cut model: unsynced data and unsynced directory changes are lost; synced ones kept.
#[test]
fn fault_fs_power_cut_loses_exactly_the_unsynced() {
    let dir = scratch();
    let d = dir.path().join("d");
    let fs = FaultFs::new();
    fs.create_dir_all(&d).unwrap();

    // First the durable state: a, c, e and g all named durably; a, e and g with fsynced data.
    let (a, c, e, g) = (d.join("a"), d.join("c"), d.join("e"), d.join("g"));
    let fa = fs.create_new(&a).unwrap();
    fs.write_all(&fa, b"durable").unwrap();
    fs.sync_file(&fa).unwrap();
    let fc = fs.create_new(&c).unwrap();
    for (p, data) in [(&e, &b"moved"[..]), (&g, &b"ghost"[..])] {
        let f = fs.create_new(p).unwrap();
        fs.write_all(&f, data).unwrap();
        fs.sync_file(&f).unwrap();
    }
    fs.sync_dir(&d).unwrap();

    // Then changes that are never synced, all lost in the cut:
    fs.write_all(&fa, b" and lost").unwrap(); // data appended to a
    fs.write_all(&fc, b"unsynced").unwrap(); // c's data
    fs.rename(&e, &d.join("e2")).unwrap(); // e moved to e2
    fs.remove_file(&g).unwrap(); // g removed
    // b: data fsynced, but its directory never synced -> the name is lost
    let d3 = dir.path().join("d3");
    fs.create_dir_all(&d3).unwrap();
    let b = d3.join("b");
    let f = fs.create_new(&b).unwrap();
    fs.write_all(&f, b"nameless").unwrap();
    fs.sync_file(&f).unwrap();
    let d2 = dir.path().join("d2");
    fs.create_dir_all(&d2).unwrap();
    // h: fully durable in d2, then overwritten by a rename that is not synced -> old content back
    let h = d2.join("h");
    let fh = fs.create_new(&h).unwrap();
    fs.write_all(&fh, b"old h").unwrap();
    fs.sync_file(&fh).unwrap();
    let h2 = d2.join("h2");
    let f = fs.create_new(&h2).unwrap();
    fs.write_all(&f, b"new h").unwrap();
    fs.sync_file(&f).unwrap();
    fs.sync_dir(&d2).unwrap();
    fs.rename(&h2, &h).unwrap();
    assert_eq!(std::fs::read(&h).unwrap(), b"new h");

    fs.power_cut().unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), b"durable");
    assert!(!b.exists());
    assert_eq!(std::fs::read(&c).unwrap(), b"");
    assert_eq!(std::fs::read(&e).unwrap(), b"moved");
    assert!(!d.join("e2").exists());
    assert_eq!(std::fs::read(&g).unwrap(), b"ghost");
    assert_eq!(std::fs::read(&h).unwrap(), b"old h");
    assert_eq!(std::fs::read(&h2).unwrap(), b"new h");
    assert_eq!(fs.ops(), 0);
}

#[test]
fn fault_fs_fails_numbered_operations() {
    let dir = scratch();
    let fs = FaultFs::new();
    fs.fail_at(2);
    fs.create_dir_all(dir.path()).unwrap(); // 1
    assert!(fs.create_new(&dir.path().join("x")).is_err()); // 2 fails once
    assert!(!dir.path().join("x").exists(), "a failed operation has no effect");
    fs.create_new(&dir.path().join("x")).unwrap(); // 3
    fs.crash_at(5);
    fs.file_len(&dir.path().join("x")).unwrap(); // 4
    assert!(fs.sync_dir(dir.path()).is_err()); // 5 crash
    assert!(fs.crashed());
    assert!(fs.file_len(&dir.path().join("x")).is_err(), "everything fails after a crash");
    assert_eq!(fs.op_kind(5), Some("sync_dir"));
    // x was never made durable in its directory: a power cut removes it
    fs.power_cut().unwrap();
    assert!(!dir.path().join("x").exists());
}
