//! Unpacking: hostile archives (each escape attempt fails with a clear error and writes nothing
//! outside the target), limits, digests, and the metadata an entry carries.

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use support::{gzip, need_root, zstd, Scratch, Tar};
use tar::EntryType;
use thaw_oci::unpack::{unpack, Limits, UnpackError, UnpackOptions, WhiteoutMode};
use thaw_oci::Digest;

fn opts() -> UnpackOptions {
    UnpackOptions::default()
}

/// Unpacks `archive` into a fresh scratch root and checks that nothing outside changed.
fn hostile(archive: Vec<u8>) -> (UnpackError, Scratch) {
    let s = Scratch::new();
    let before = s.outside_snapshot();
    let err = unpack(&archive[..], &s.root(), &opts()).expect_err("hostile archive was accepted");
    assert_eq!(s.outside_snapshot(), before, "something outside the root changed: {err}");
    assert_eq!(fs::read(s.outside().join("secret")).unwrap(), b"untouched");
    (err, s)
}

#[test]
fn dotdot_paths_are_refused() {
    for name in ["../evil", "a/../../evil", "./../outside/secret", "a/b/../../../x", ".."] {
        let (e, _) = hostile(Tar::new().dir("a/").file(name, b"pwned").finish());
        assert!(matches!(e, UnpackError::DotDot { .. }), "{name}: {e}");
        assert!(e.to_string().contains("'..'"), "{e}");
    }
}

#[test]
fn absolute_paths_are_refused() {
    let s = Scratch::new();
    let target = format!("{}/secret", s.outside().display());
    let (e, _) = hostile(Tar::new().file(&target, b"pwned").finish());
    assert!(matches!(e, UnpackError::AbsolutePath { .. }), "{e}");
    let (e, _) = hostile(Tar::new().symlink("/abs-link", "/").finish());
    assert!(matches!(e, UnpackError::AbsolutePath { .. }), "{e}");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let s = Scratch::new();
    let outside = s.outside().display().to_string();
    for target in ["../outside", outside.as_str(), "/", "../../../../../../tmp", "."] {
        let (e, _) = hostile(Tar::new().symlink("link", target).file("link/pwned", b"x").finish());
        assert!(matches!(e, UnpackError::ThroughSymlink { ref component, .. } if component == "link"), "{target}: {e}");
        // The same through a deeper, legitimate-looking parent.
        let (e, _) = hostile(Tar::new().dir("usr/").symlink("usr/lib", target).file("usr/lib/x/y", b"x").finish());
        assert!(matches!(e, UnpackError::ThroughSymlink { ref component, .. } if component == "usr/lib"), "{target}: {e}");
    }
}

#[test]
fn directory_replaced_by_symlink_then_written_through() {
    let (e, _) = hostile(Tar::new().dir("d/").file("d/a", b"1").symlink("d", "../outside").file("d/secret", b"pwned").finish());
    assert!(matches!(e, UnpackError::ThroughSymlink { .. }), "{e}");
}

#[test]
fn whiteouts_and_opaque_markers_through_symlinks_are_refused() {
    for mode in [WhiteoutMode::Apply, WhiteoutMode::Overlay] {
        for tail in [".wh.secret", ".wh..wh..opq"] {
            let s = Scratch::new();
            let before = s.outside_snapshot();
            let archive = Tar::new().symlink("link", "../outside").file(&format!("link/{tail}"), b"").finish();
            let o = UnpackOptions { mode, ..opts() };
            let e = unpack(&archive[..], &s.root(), &o).unwrap_err();
            assert!(matches!(e, UnpackError::ThroughSymlink { .. }), "{mode:?} {tail}: {e}");
            assert_eq!(s.outside_snapshot(), before);
        }
    }
}

#[test]
fn invalid_whiteouts_are_refused() {
    for name in [".wh..", ".wh.", "a/.wh.."] {
        let (e, _) = hostile(Tar::new().dir("a/").file(name, b"").finish());
        assert!(matches!(e, UnpackError::BadWhiteout { .. }), "{name}: {e}");
    }
    // `.wh...` names a `..` component after stripping the prefix? No: `..` is the only dangerous
    // name and it is refused above; `...` is an ordinary name.
}

#[test]
fn hard_links_outside_or_forward_are_refused() {
    let s = Scratch::new();
    let abs = format!("{}/secret", s.outside().display());
    for (target, why) in [
        ("../outside/secret", "is outside the root"),
        (abs.as_str(), "is outside the root"),
        ("later", "was not extracted before it"),
        ("etc/passwd", "was not extracted before it"),
        (".", "is the root directory"),
    ] {
        let (e, _) = hostile(Tar::new().hardlink("hl", target).file("later", b"x").finish());
        match e {
            UnpackError::HardLink { why: w, .. } => assert_eq!(w, why, "{target}"),
            other => panic!("{target}: {other}"),
        }
    }
    // A hard link to a symlink (which points outside) links the symlink itself, and a file
    // written over it afterwards replaces the link instead of writing through it.
    let s = Scratch::new();
    let before = s.outside_snapshot();
    let a = Tar::new().symlink("s", "../outside/secret").hardlink("h", "s").file("h", b"replaced").file("s", b"also").finish();
    unpack(&a[..], &s.root(), &opts()).unwrap();
    assert_eq!(s.outside_snapshot(), before);
    assert_eq!(fs::read(s.root().join("h")).unwrap(), b"replaced");
    // A hard link to a directory is refused.
    let (e, _) = hostile(Tar::new().dir("d/").hardlink("hd", "d").finish());
    assert!(matches!(e, UnpackError::HardLink { why: "is a directory", .. }), "{e}");
}

#[test]
fn long_names_and_pax_paths_are_checked_too() {
    let (e, _) = hostile(Tar::new().long_name(b"../../outside/secret").file("innocent", b"pwned").finish());
    assert!(matches!(e, UnpackError::DotDot { .. }), "{e}");
    let (e, _) = hostile(Tar::new().pax(&[("path", b"../outside/secret")]).file("innocent", b"pwned").finish());
    assert!(matches!(e, UnpackError::DotDot { .. }), "{e}");
    let (e, _) = hostile(Tar::new().pax(&[("linkpath", b"../outside/secret")]).hardlink("h", "ok").finish());
    assert!(matches!(e, UnpackError::HardLink { .. }), "{e}");
    // A legitimate long name works.
    let s = Scratch::new();
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(150));
    let a = Tar::new().long_name(long.as_bytes()).file("short", b"long").finish();
    unpack(&a[..], &s.root(), &opts()).unwrap();
    assert_eq!(fs::read(s.root().join(&long)).unwrap(), b"long");
}

#[test]
fn overwriting_a_symlink_never_writes_through_it() {
    let s = Scratch::new();
    let before = s.outside_snapshot();
    let a = Tar::new().symlink("f", "../outside/secret").file("f", b"new").finish();
    unpack(&a[..], &s.root(), &opts()).unwrap();
    assert_eq!(s.outside_snapshot(), before);
    assert_eq!(fs::read(s.root().join("f")).unwrap(), b"new");
    // Same for a symlink left by a lower layer, in apply mode.
    let a = Tar::new().symlink("g", "../outside").finish();
    unpack(&a[..], &s.root(), &opts()).unwrap();
    let b = Tar::new().dir("g/").file("g/secret", b"new").finish();
    unpack(&b[..], &s.root(), &opts()).unwrap();
    assert_eq!(s.outside_snapshot(), before);
    assert!(fs::symlink_metadata(s.root().join("g")).unwrap().is_dir());
}

#[test]
fn decompression_bomb_hits_the_limit() {
    let big = vec![0u8; 8 << 20];
    let archive = Tar::new().file("zeros", &big).finish();
    for data in [gzip(&archive), zstd(&archive), archive.clone()] {
        let s = Scratch::new();
        let o = UnpackOptions { limits: Limits { max_uncompressed_bytes: 1 << 20, ..Limits::default() }, ..opts() };
        let e = unpack(&data[..], &s.root(), &o).unwrap_err();
        assert!(matches!(e, UnpackError::Limit { limit: "max_uncompressed_bytes", .. }), "{e}");
        assert!(e.to_string().contains("raise Limits::max_uncompressed_bytes"), "{e}");
    }
}

#[test]
fn other_limits() {
    let s = Scratch::new();
    let mut t = Tar::new();
    for i in 0..20 {
        t.file(&format!("f{i}"), b"");
    }
    let o = UnpackOptions { limits: Limits { max_entries: 10, ..Limits::default() }, ..opts() };
    let e = unpack(&t.finish()[..], &s.root(), &o).unwrap_err();
    assert!(matches!(e, UnpackError::Limit { limit: "max_entries", value: 11, max: 10 }), "{e}");

    let o = UnpackOptions { limits: Limits { max_path_len: 50, ..Limits::default() }, ..opts() };
    let e = unpack(&Tar::new().file(&"x".repeat(51), b"").finish()[..], &s.root(), &o).unwrap_err();
    assert!(matches!(e, UnpackError::Limit { limit: "max_path_len", .. }), "{e}");
    let e = unpack(&Tar::new().symlink("l", &"x".repeat(51)).finish()[..], &s.root(), &o).unwrap_err();
    assert!(matches!(e, UnpackError::Limit { limit: "max_path_len", .. }), "{e}");

    let o = UnpackOptions { limits: Limits { max_metadata_bytes: 1000, ..Limits::default() }, ..opts() };
    let e = unpack(&Tar::new().long_name(&[b'a'; 2000]).file("x", b"").finish()[..], &s.root(), &o).unwrap_err();
    assert!(matches!(e, UnpackError::Limit { limit: "max_metadata_bytes", .. }), "{e}");

    let o = UnpackOptions { limits: Limits { max_xattr_size: 10, ..Limits::default() }, ..opts() };
    let e = unpack(&Tar::new().pax(&[("SCHILY.xattr.user.big", &[7u8; 11])]).file("x", b"").finish()[..], &s.root(), &o).unwrap_err();
    assert!(matches!(e, UnpackError::Limit { limit: "max_xattr_size", .. }), "{e}");
}

#[test]
fn sparse_and_unknown_entries_are_refused() {
    let (e, _) = hostile(Tar::new().raw(EntryType::GNUSparse, b"sparse", b"", 0o644, b"").finish());
    assert!(matches!(e, UnpackError::Unsupported { kind: "sparse file", .. }), "{e}");
    let (e, _) = hostile(Tar::new().pax(&[("GNU.sparse.major", b"1")]).file("x", b"").finish());
    assert!(matches!(e, UnpackError::Unsupported { .. }), "{e}");
    let (e, _) = hostile(Tar::new().raw(EntryType::new(b'V'), b"vol", b"", 0o644, b"").finish());
    assert!(matches!(e, UnpackError::Unsupported { .. }), "{e}");
    let (e, _) = hostile(Tar::new().pax(&[("size", b"99999999999")]).file("x", b"").finish());
    assert!(matches!(e, UnpackError::Unsupported { .. }), "{e}");
    let (e, _) = hostile(b"this is not a tar archive, but it is long enough to look like one? no.".repeat(20));
    assert!(matches!(e, UnpackError::Tar(_)), "{e}");
}

#[test]
fn compression_detection_and_digests() {
    let archive = Tar::new().dir("etc/").file("etc/hostname", b"thaw\n").finish();
    let diff_id = Digest::sha256_of(&archive);
    for (data, kind) in [
        (archive.clone(), thaw_oci::Compression::None),
        (gzip(&archive), thaw_oci::Compression::Gzip),
        (zstd(&archive), thaw_oci::Compression::Zstd),
    ] {
        let s = Scratch::new();
        let o = UnpackOptions {
            expected_diff_id: Some(diff_id.clone()),
            expected_digest: Some(Digest::sha256_of(&data)),
            ..opts()
        };
        let r = unpack(&data[..], &s.root(), &o).unwrap();
        assert_eq!(r.compression, kind);
        assert_eq!(r.diff_id, diff_id);
        assert_eq!(r.uncompressed_bytes, archive.len() as u64);
        assert_eq!(r.compressed_bytes, data.len() as u64);
        assert_eq!(fs::read(s.root().join("etc/hostname")).unwrap(), b"thaw\n");

        let wrong = Digest::sha256_of(b"other");
        let o = UnpackOptions { expected_diff_id: Some(wrong.clone()), ..opts() };
        let e = unpack(&data[..], &Scratch::new().root(), &o).unwrap_err();
        assert!(matches!(e, UnpackError::DiffIdMismatch { .. }), "{e}");
        let o = UnpackOptions { expected_digest: Some(wrong), ..opts() };
        let e = unpack(&data[..], &Scratch::new().root(), &o).unwrap_err();
        assert!(matches!(e, UnpackError::DigestMismatch { .. }), "{e}");
    }
    // Two concatenated gzip members are one stream (pigz and some registries write them).
    let mut two = gzip(&archive[..512]);
    two.extend(gzip(&archive[512..]));
    let r = unpack(&two[..], &Scratch::new().root(), &opts()).unwrap();
    assert_eq!(r.diff_id, diff_id);
    // Trailing garbage after the compressed stream is an error, not silently ignored.
    let mut bad = gzip(&archive);
    bad.extend_from_slice(b"garbage");
    assert!(unpack(&bad[..], &Scratch::new().root(), &opts()).is_err());
    let e = unpack(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2][..], &Scratch::new().root(), &opts()).unwrap_err();
    assert!(matches!(e, UnpackError::UnsupportedCompression("xz")), "{e}");
    // An empty stream is an empty layer.
    let r = unpack(&b""[..], &Scratch::new().root(), &opts()).unwrap();
    assert_eq!(r.entries, 0);
}

#[test]
fn modes_mtimes_and_xattrs() {
    let s = Scratch::new();
    let a = Tar::new()
        .raw(EntryType::Directory, b"ro/", b"", 0o555, b"")
        .raw(EntryType::Regular, b"ro/suid", b"", 0o4755, b"#!")
        .raw(EntryType::Regular, b"sticky", b"", 0o1644, b"")
        .pax(&[("SCHILY.xattr.user.thaw", b"v\0\xff"), ("mtime", b"1700000000.25")])
        .file("x", b"data")
        .pax(&[("SCHILY.xattr.trusted.secret", b"1"), ("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
        .file("t", b"")
        .raw(EntryType::Fifo, b"fifo", b"", 0o600, b"")
        .finish();
    let r = unpack(&a[..], &s.root(), &opts()).unwrap();
    let md = fs::metadata(s.root().join("ro/suid")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(md.mtime(), 1_600_000_000);
    let md = fs::metadata(s.root().join("ro")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o555);
    assert_eq!(md.mtime(), 1_600_000_000, "directory mtime is set after its entries were written");
    assert_eq!(fs::metadata(s.root().join("sticky")).unwrap().permissions().mode() & 0o7777, 0o1644);
    let md = fs::metadata(s.root().join("x")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 250_000_000));
    assert_eq!(getxattr(&s.root().join("x"), "user.thaw").as_deref(), Some(&b"v\0\xff"[..]));
    assert_eq!(getxattr(&s.root().join("t"), "trusted.secret"), None);
    assert_eq!(getxattr(&s.root().join("t"), "trusted.overlay.redirect"), None);
    assert_eq!(r.skipped_xattrs, 2);
    assert!(fs::symlink_metadata(s.root().join("fifo")).unwrap().file_type().is_fifo());
}

#[test]
fn devices_only_when_allowed_and_ownership_as_root() {
    if !need_root("devices_only_when_allowed_and_ownership_as_root") {
        return;
    }
    let dev = |t: &mut Tar, name: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Char);
        h.set_path(name).unwrap();
        h.set_mode(0o666);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_cksum();
        t.bytes.extend_from_slice(h.as_bytes());
    };
    let mut t = Tar::new();
    dev(&mut t, "null");
    let mut h = tar::Header::new_gnu();
    h.set_path("owned").unwrap();
    h.set_mode(0o2755);
    h.set_uid(1234);
    h.set_gid(5678);
    h.set_mtime(0);
    h.set_size(0);
    h.set_cksum();
    t.bytes.extend_from_slice(h.as_bytes());
    t.pax(&[("SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])]);
    t.file("cap", b"bin");
    t.pax(&[("SCHILY.xattr.trusted.keep", b"1")]);
    t.file("trusted", b"");
    let a = t.finish();

    let s = Scratch::new();
    let r = unpack(&a[..], &s.root(), &opts()).unwrap();
    assert_eq!(r.skipped_devices, 1);
    assert!(!s.root().join("null").exists());
    let md = fs::metadata(s.root().join("owned")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1234, 5678, 0o2755), "setgid survives the chown");
    assert!(getxattr(&s.root().join("cap"), "security.capability").is_some());

    let s = Scratch::new();
    let o = UnpackOptions {
        allow_devices: true,
        allow_trusted_xattrs: true,
        id_map: Some(thaw_oci::IdMap { uid_base: 100_000, gid_base: 200_000, size: 65536 }),
        ..opts()
    };
    unpack(&a[..], &s.root(), &o).unwrap();
    let md = fs::symlink_metadata(s.root().join("null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), libc::makedev(1, 3));
    let md = fs::metadata(s.root().join("owned")).unwrap();
    assert_eq!((md.uid(), md.gid()), (101_234, 205_678));
    assert_eq!(getxattr(&s.root().join("trusted"), "trusted.keep").as_deref(), Some(&b"1"[..]));

    let o = UnpackOptions { id_map: Some(thaw_oci::IdMap { uid_base: 100_000, gid_base: 100_000, size: 1000 }), ..opts() };
    let e = unpack(&a[..], &Scratch::new().root(), &o).unwrap_err();
    assert!(matches!(e, UnpackError::IdOutOfRange { id: 1234, .. }), "{e}");
}

#[test]
fn overlay_mode_whiteouts() {
    if !need_root("overlay_mode_whiteouts") {
        return;
    }
    let s = Scratch::new();
    let a = Tar::new().dir("d/").file("d/.wh..wh..opq", b"").file("d/keep", b"k").file(".wh.gone", b"").file("e/.wh.deep", b"").finish();
    let o = UnpackOptions { mode: WhiteoutMode::Overlay, ..opts() };
    let r = unpack(&a[..], &s.root(), &o).unwrap();
    assert_eq!(r.whiteouts, 3);
    let md = fs::symlink_metadata(s.root().join("gone")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), 0);
    assert!(fs::symlink_metadata(s.root().join("e/deep")).unwrap().file_type().is_char_device());
    assert_eq!(getxattr(&s.root().join("d"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    // the mark an overlay inside a user namespace (a template runtime's, mounted with userxattr) reads
    assert_eq!(getxattr(&s.root().join("d"), "user.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(fs::read(s.root().join("d/keep")).unwrap(), b"k");
    assert!(!s.root().join(".wh.gone").exists());
}

pub fn getxattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: NUL-terminated strings and a buffer pointer/length from one Vec.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

#[test]
fn old_style_directories_and_root_entry() {
    let s = Scratch::new();
    let a = Tar::new()
        .raw(EntryType::Directory, b"./", b"", 0o750, b"")
        .raw(EntryType::Regular, b"v7dir/", b"", 0o700, b"")
        .file("v7dir/f", b"in")
        .file("./a//b/./c", b"normalised")
        .raw(EntryType::Regular, b"open", b"", 0o666, b"w")
        .raw(EntryType::Regular, b"none", b"", 0o000, b"n")
        .finish();
    let r = unpack(&a[..], &s.root(), &opts()).unwrap();
    assert_eq!(r.entries, 6);
    assert_eq!(fs::metadata(s.root().join("open")).unwrap().permissions().mode() & 0o7777, 0o666, "not narrowed by the umask");
    assert_eq!(fs::metadata(s.root().join("none")).unwrap().permissions().mode() & 0o7777, 0);
    assert!(fs::metadata(s.root().join("v7dir")).unwrap().is_dir());
    assert_eq!(fs::metadata(s.root().join("v7dir")).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(fs::read(s.root().join("a/b/c")).unwrap(), b"normalised");
    assert_eq!(fs::metadata(s.root()).unwrap().permissions().mode() & 0o777, 0o750, "./ sets the root's mode");
    // A non-directory for the root itself is refused.
    let e = unpack(&Tar::new().symlink("./", "x").finish()[..], &Scratch::new().root(), &opts()).unwrap_err();
    assert!(matches!(e, UnpackError::Unsupported { .. }), "{e}");
}

mod random_hostile {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![Just(".."), Just("."), Just("a"), Just("l"), Just(""), Just(".wh.a"), Just(".wh..wh..opq")], 1..5)
            .prop_map(|v| v.join("/"))
    }

    fn target() -> impl Strategy<Value = String> {
        prop_oneof![Just("..".to_string()), Just("/".to_string()), Just("../outside".to_string()), Just("../outside/secret".to_string()), name()]
    }

    #[derive(Debug, Clone)]
    enum E {
        File(String),
        Dir(String),
        Sym(String, String),
        Hard(String, String),
        Abs(String),
    }

    fn entry() -> impl Strategy<Value = E> {
        prop_oneof![
            name().prop_map(E::File),
            name().prop_map(E::Dir),
            (name(), target()).prop_map(|(n, t)| E::Sym(n, t)),
            (name(), target()).prop_map(|(n, t)| E::Hard(n, t)),
            name().prop_map(E::Abs),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever mix of `..`, absolute paths, symlinks and hard links pointing anywhere, and
        /// whiteouts a layer holds, in either mode, nothing outside the root changes.
        #[test]
        fn nothing_outside_ever_changes(entries in proptest::collection::vec(entry(), 1..12), overlay in any::<bool>()) {
            let mut t = Tar::new();
            for e in &entries {
                match e {
                    E::File(n) => t.file(n, b"pwned"),
                    E::Dir(n) => t.dir(&format!("{n}/")),
                    E::Sym(n, tg) => t.symlink(n, tg),
                    E::Hard(n, tg) => t.hardlink(n, tg),
                    E::Abs(n) => t.file(&format!("/{n}"), b"pwned"),
                };
            }
            let s = Scratch::new();
            let before = s.outside_snapshot();
            let mode = if overlay && support::is_root() { WhiteoutMode::Overlay } else { WhiteoutMode::Apply };
            let _ = unpack(&t.finish()[..], &s.root(), &UnpackOptions { mode, ..opts() });
            prop_assert_eq!(s.outside_snapshot(), before);
            let beside: Vec<_> = fs::read_dir(s.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            prop_assert_eq!(beside.len(), 2);
        }
    }
}

#[test]
fn a_refused_layer_is_not_read_to_its_end() {
    // A hostile entry first, then a gigabyte the unpacker must not spend time reading.
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    struct Endless(Arc<AtomicU64>);
    impl std::io::Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.load(Ordering::SeqCst) >= 1 << 30 {
                return Ok(0);
            }
            buf.fill(0);
            self.0.fetch_add(buf.len() as u64, Ordering::SeqCst);
            Ok(buf.len())
        }
    }
    let read = Arc::new(AtomicU64::new(0));
    let mut head = Tar::new().file("../evil", b"x").bytes.clone();
    head.extend_from_slice(&[1u8; 512]); // not an end-of-archive block
    let s = Scratch::new();
    let e = unpack(std::io::Read::chain(&head[..], Endless(read.clone())), &s.root(), &opts()).unwrap_err();
    assert!(matches!(e, UnpackError::DotDot { .. }), "{e}");
    assert!(read.load(Ordering::SeqCst) < 64 << 20, "read {} bytes after the refusal", read.load(Ordering::SeqCst));
}

#[test]
fn rewriting_one_name_of_a_hard_link_leaves_the_other() {
    let s = Scratch::new();
    let a = Tar::new().file("a", b"original").hardlink("b", "a").file("b", b"rewritten").hardlink("c", "./a").finish();
    unpack(&a[..], &s.root(), &opts()).unwrap();
    assert_eq!(fs::read(s.root().join("a")).unwrap(), b"original");
    assert_eq!(fs::read(s.root().join("b")).unwrap(), b"rewritten");
    let (ma, mc) = (fs::metadata(s.root().join("a")).unwrap(), fs::metadata(s.root().join("c")).unwrap());
    assert_eq!(ma.ino(), mc.ino(), "c is a hard link to a");
    assert_eq!(ma.nlink(), 2);
}
