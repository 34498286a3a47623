//! Thin wrappers over the `*at` system calls the unpacker uses, each returning `io::Result`.
//!
//! Every call here takes a directory file descriptor and a single path component (never a
//! path with `/`), so the kernel never walks a path on the unpacker's behalf: the walk is done
//! one component at a time, with `O_NOFOLLOW`, in `mod.rs`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is a live descriptor for the duration of the call, `name` is NUL-terminated,
    // and the variadic mode argument is passed as the kernel expects (an unsigned int).
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat, is valid and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory below `dir` without following a symlink in its place.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: live descriptor and NUL-terminated name; mkdirat does not retain either.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: live descriptor and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated and `dir` is live.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// `linkat` with no flags: a symlink at the old path is linked itself, never followed.
pub fn link_at(old_dir: BorrowedFd<'_>, old: &CStr, new_dir: BorrowedFd<'_>, new: &CStr) -> io::Result<()> {
    // SAFETY: live descriptors and NUL-terminated names.
    check(unsafe { libc::linkat(old_dir.as_raw_fd(), old.as_ptr(), new_dir.as_raw_fd(), new.as_ptr(), 0) })
}

pub fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: live descriptor and NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) })
}

/// Changes owner of `name` itself (a symlink is not followed).
pub fn lchown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: live descriptor and NUL-terminated name.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: live descriptor.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: live descriptor.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

/// `fchmodat` follows a symlink in the last component; callers use it only on entries they
/// have just created as a non-symlink in a directory nothing else writes to.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: live descriptor and NUL-terminated name.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
}

fn timespec(secs: i64, nanos: u32) -> libc::timespec {
    libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nanos as libc::c_long }
}

/// Sets atime and mtime of `name` itself (not following a symlink); with an empty name, of `dir`.
pub fn utimens_at(dir: BorrowedFd<'_>, name: &CStr, secs: i64, nanos: u32) -> io::Result<()> {
    let t = [timespec(secs, nanos), timespec(secs, nanos)];
    let flags = if name.is_empty() { libc::AT_EMPTY_PATH } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: live descriptor, NUL-terminated name, and a two-element timespec array as the
    // kernel reads it.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), t.as_ptr(), flags) })
}

pub fn futimens(fd: BorrowedFd<'_>, secs: i64, nanos: u32) -> io::Result<()> {
    let t = [timespec(secs, nanos), timespec(secs, nanos)];
    // SAFETY: live descriptor and a two-element timespec array.
    check(unsafe { libc::futimens(fd.as_raw_fd(), t.as_ptr()) })
}

/// `lstat` of `name` below `dir`; `Ok(None)` when it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: live descriptor, NUL-terminated name, and `st` points to writable memory the
    // size of a stat structure.
    let ret = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) { Ok(None) } else { Err(e) };
    }
    // SAFETY: fstatat succeeded, so it filled the whole structure.
    Ok(Some(unsafe { st.assume_init() }))
}

pub fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: live descriptor, NUL-terminated name, value pointer and length from one slice.
    check(unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

/// Sets an xattr on `name` below `dir` without following a symlink there. Linux has no
/// `setxattrat` before 6.13, so this goes through the directory's `/proc/self/fd` entry: the
/// kernel resolves that magic link to the very directory we hold open, and `lsetxattr` does not
/// follow the last component.
pub fn lsetxattr_at(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr, value: &[u8]) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.to_bytes());
    let path = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: NUL-terminated strings and a value pointer/length from one slice.
    check(unsafe { libc::lsetxattr(path.as_ptr(), attr.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

/// The `/proc/self/fd` path of `name` below `dir`, for std functions that take paths
/// (`remove_dir_all`, which itself works with `openat` and never follows symlinks).
pub fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(std::ffi::OsStr::from_bytes(name.to_bytes()));
    p
}

/// Flushes the whole filesystem holding `fd` (one call instead of an fsync per file).
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: live descriptor.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
