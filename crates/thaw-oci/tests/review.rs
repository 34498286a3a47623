//! Regression tests for the review findings on the unpacker (11: memory for remembered paths,
//! 14: unprivileged unpacks of `security.*` xattrs).

mod support;

use std::fs;

use support::{Scratch, Tar};
use thaw_oci::unpack::{unpack, Limits, Ownership, UnpackError, UnpackOptions};

/// Review finding 11.
#[test]
fn remembered_path_bytes_are_bounded() {
    let limits = Limits { max_path_bytes: 100, ..Limits::default() };
    let o = UnpackOptions { limits, ownership: Ownership::Ignore, ..UnpackOptions::default() };

    // 20 distinct 3-byte paths: 60 bytes, under the limit.
    let mut t = Tar::new();
    for i in 0..20 {
        t.file(&format!("f{i:02}"), b"");
    }
    let s = Scratch::new();
    unpack(&t.finish()[..], &s.root(), &o).expect("a layer under max_path_bytes unpacks");

    // 40 of them: 120 bytes. Each entry is well within max_path_len and max_entries; only the
    // total is too much.
    let mut t = Tar::new();
    for i in 0..40 {
        t.file(&format!("f{i:02}"), b"");
    }
    let s = Scratch::new();
    let e = unpack(&t.finish()[..], &s.root(), &o).unwrap_err();
    assert!(matches!(e, UnpackError::Limit { limit: "max_path_bytes", max: 100, .. }), "{e}");
    assert!(e.to_string().contains("raise Limits::max_path_bytes"), "{e}");

    // Implied parent directories are remembered too: one entry with a deep path costs every
    // prefix of it ("a", "a/b", ...), not just its own bytes.
    let deep = (0..20).map(|i| format!("d{i:02}")).collect::<Vec<_>>().join("/");
    let deep_file = format!("{deep}/x");
    assert!(deep_file.len() < 100);
    let s = Scratch::new();
    let e = unpack(&Tar::new().file(&deep_file, b"").finish()[..], &s.root(), &o).unwrap_err();
    assert!(matches!(e, UnpackError::Limit { limit: "max_path_bytes", .. }), "{e}");

    // Listing the same path again costs nothing more for the set, so a small tree that names
    // its files repeatedly still unpacks.
    let mut t = Tar::new();
    for _ in 0..50 {
        t.file("same", b"1");
    }
    let s = Scratch::new();
    unpack(&t.finish()[..], &s.root(), &o).expect("re-listing one file stays under max_path_bytes");
    assert_eq!(fs::read(s.root().join("same")).unwrap(), b"1");

    // The default is generous enough for ordinary layers.
    assert!(Limits::default().max_path_bytes >= 64 << 20);
}

/// A valid VFS_CAP_REVISION_2 `security.capability` value: effective, with cap_net_bind_service
/// permitted (the kernel checks the format before the privilege, so a garbage value would give
/// EINVAL instead of the EPERM under test).
fn net_bind_capability() -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, low word
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted, high word
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, high word
    v
}

fn capability_layer() -> Vec<u8> {
    let cap = net_bind_capability();
    let mut t = Tar::new();
    t.pax(&[("SCHILY.xattr.security.capability", &cap)]);
    t.file("ping", b"binary");
    t.pax(&[("SCHILY.xattr.user.kept", b"yes")]);
    t.file("plain", b"text");
    t.finish()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_SETFCAP: u32 = 31;

/// Removes CAP_SETFCAP from the calling thread's effective set. Capabilities are per thread in
/// the kernel and the raw syscall (unlike libcap's process-wide helpers) changes only this one,
/// so the rest of the test binary keeps running as full root.
fn drop_setfcap_on_this_thread() {
    let mut hdr = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: `hdr` and `data` are the v3 header and the two data words the syscall expects;
    // both outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_SETFCAP);
    // SAFETY: as above; capset reads both structures and changes only the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

/// Review finding 14.
#[test]
fn unprivileged_unpack_skips_security_xattrs() {
    let layer = capability_layer();
    // Run on a thread of its own that cannot set file capabilities: as root that is what an
    // unprivileged unpacker sees (EPERM from setxattr), and a non-root user sees it anyway.
    let (ignore, preserve) = std::thread::spawn(move || {
        if support::is_root() {
            drop_setfcap_on_this_thread();
        }
        let s = Scratch::new();
        let o = UnpackOptions { ownership: Ownership::Ignore, ..UnpackOptions::default() };
        let ignore = unpack(&layer[..], &s.root(), &o).map(|r| {
            let cap = getxattr(&s.root().join("ping"), "security.capability");
            let kept = getxattr(&s.root().join("plain"), "user.kept");
            let data = fs::read(s.root().join("ping")).unwrap();
            (r.skipped_xattrs, cap, kept, data)
        });
        // Asked for a faithful copy (chown), the same EPERM must stay an error.
        let s = Scratch::new();
        let o = UnpackOptions { ownership: Ownership::Preserve, ..UnpackOptions::default() };
        let preserve = unpack(&layer[..], &s.root(), &o).map(|_| ());
        (ignore, preserve)
    })
    .join()
    .expect("unpack thread");

    let (skipped, cap, kept, data) = ignore.expect("an unprivileged unpack with a security.capability xattr succeeds");
    assert_eq!(skipped, 1, "the capability is counted as skipped");
    assert_eq!(cap, None, "no capability was set");
    assert_eq!(data, b"binary");
    // user.* xattrs are unaffected (tmpfs and most file systems have them).
    if let Some(kept) = kept {
        assert_eq!(kept, b"yes");
    }
    let e = preserve.expect_err("a chowning unpack without the privilege must not silently drop capabilities");
    // As root only CAP_SETFCAP was dropped, so the chown works and setxattr is what fails;
    // a real unprivileged user already fails at the chown.
    let op = if support::is_root() { "set xattr" } else { "chown" };
    assert!(matches!(e, UnpackError::Io { op: o, .. } if o == op), "{e}");
}

fn getxattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}
