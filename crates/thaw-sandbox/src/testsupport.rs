//! Test and benchmark support: busybox root filesystems, a static probe program, and the
//! "needs root" gate. Public so the CLI's tests and the benchmarks use the same pieces.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's busybox-static installs the static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether a test that needs root, cgroups, overlayfs and a static busybox can run. When it
/// cannot: panics if `CI` is set (CI must provide all of it), otherwise prints
/// `skipping <test>: <why>` and returns false.
pub fn require_privileges(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not running as root")
    } else if !Path::new("/sys/fs/cgroup").exists() {
        Some("no cgroup filesystem at /sys/fs/cgroup")
    } else if !is_static_busybox(Path::new(BUSYBOX)) {
        Some("no static busybox at /bin/busybox (install busybox-static)")
    } else {
        None
    };
    match why {
        None => true,
        Some(w) => {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {w}, and CI is set: CI must run these tests as root with busybox-static installed");
            }
            eprintln!("skipping {test}: {w}");
            false
        }
    }
}

fn is_static_busybox(p: &Path) -> bool {
    // A static ELF has no PT_INTERP; checking for the interpreter path string is enough here.
    match fs::read(p) {
        Ok(b) => b.starts_with(b"\x7fELF") && !b.windows(14).any(|w| w == b"/lib64/ld-linu"),
        Err(_) => false,
    }
}

/// Builds a busybox root filesystem in `dir`: `bin/busybox`, a symlink per applet, the usual
/// empty directories, `/etc/passwd` and `/etc/group`.
pub fn busybox_rootfs(dir: &Path) -> io::Result<()> {
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "mnt", "var"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    let out = Command::new(BUSYBOX).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", link)?;
        }
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")?;
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    fs::write(dir.join("etc/hostname"), "thaw\n")?;
    Ok(())
}

/// A scratch directory on tmpfs (`/dev/shm`), removed on drop. Unpack-heavy and upper-layer
/// work must not land on the slow disk.
pub fn tmpfs_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(prefix).tempdir_in("/dev/shm")
}

/// Source of the probe: a tiny static C program that tries things a sandbox must refuse and
/// prints what happened, one `key value...` line per attempt.
pub const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

static void res(const char *what, long r) {
    printf("%s %ld %d\n", what, r, r < 0 ? errno : 0);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) return 2;
    const char *cmd = argv[1];
    if (!strcmp(cmd, "syscalls")) {
        /* name:number pairs; every call gets zero arguments, which is harmless when allowed. */
        for (int i = 2; i < argc; i++) {
            char name[64]; long nr;
            if (sscanf(argv[i], "%63[^:]:%ld", name, &nr) != 2) continue;
            errno = 0;
            long r = syscall(nr, 0, 0, 0, 0, 0, 0);
            res(name, r);
        }
        return 0;
    }
    if (!strcmp(cmd, "getpid")) { res("getpid", getpid()); return 0; }
    if (!strcmp(cmd, "chroot-escape") && argc > 2) {
        mkdir("/tmp/esc", 0755);
        long r = chroot("/tmp/esc");
        res("chroot", r);
        for (int i = 0; i < 64; i++) chdir("..");
        res("chroot-dot", chroot("."));
        struct stat st;
        printf("marker %s\n", stat(argv[2], &st) == 0 ? "escaped" : "contained");
        return 0;
    }
    if (!strcmp(cmd, "mount")) {
        res("mount", mount("none", "/mnt", "tmpfs", 0, NULL));
        res("umount", umount2("/proc", MNT_DETACH));
        return 0;
    }
    if (!strcmp(cmd, "module")) {
        static char img[64];
        res("init_module", syscall(SYS_init_module, img, sizeof img, ""));
        int fd = open("/bin/busybox", O_RDONLY);
        res("finit_module", syscall(SYS_finit_module, fd, "", 0));
        return 0;
    }
    if (!strcmp(cmd, "ptrace") && argc > 2) {
        res("ptrace", ptrace(PTRACE_ATTACH, atoi(argv[2]), NULL, NULL));
        res("kill", kill(atoi(argv[2]), 0));
        return 0;
    }
    if (!strcmp(cmd, "open") && argc > 3) {
        int w = argv[3][0] == 'w';
        int fd = open(argv[2], w ? O_WRONLY : O_RDONLY);
        res("open", fd);
        if (fd >= 0) {
            char buf[256];
            long n = w ? write(fd, "1", 1) : read(fd, buf, sizeof buf);
            res(w ? "write" : "read", n);
        }
        return 0;
    }
    if (!strcmp(cmd, "hog") && argc > 2) {
        long mb = atol(argv[2]);
        for (long i = 0; i < mb; i++) {
            char *p = malloc(1 << 20);
            if (!p) { printf("malloc-failed %ld\n", i); return 3; }
            memset(p, 1, 1 << 20);
        }
        printf("survived %ld\n", mb);
        return 0;
    }
    if (!strcmp(cmd, "forkbomb") && argc > 2) {
        int n = atoi(argv[2]), ok = 0, err = 0;
        for (int i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) { pause(); _exit(0); }
            if (p < 0) { err = errno; break; }
            ok++;
        }
        printf("forked %d %d\n", ok, err);
        return 0;
    }
    if (!strcmp(cmd, "connect") && argc > 2) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons(atoi(argv[2]));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        res("connect", connect(s, (struct sockaddr *)&a, sizeof a));
        return 0;
    }
    if (!strcmp(cmd, "mknod")) {
        res("mknod", mknod("/tmp/mem", S_IFCHR | 0600, makedev(1, 1)));
        return 0;
    }
    return 2;
}
"#;

/// Compiles [`PROBE_C`] statically to `out`. Errors name what is missing (gcc, static libc).
pub fn compile_probe(out: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let src = dir.path().join("probe.c");
    fs::write(&src, PROBE_C).map_err(|e| e.to_string())?;
    let o = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .map_err(|e| format!("running gcc: {e} (install gcc and libc6-dev)"))?;
    if !o.status.success() {
        return Err(format!("gcc failed: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

/// Whether gcc can build static programs; same CI rule as [`require_privileges`].
pub fn require_gcc(test: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("thaw-probe-{}", std::process::id()));
    let _ = fs::create_dir_all(&dir);
    let out = dir.join("probe");
    match compile_probe(&out) {
        Ok(()) => Some(out),
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: cannot build the static probe ({e}), and CI is set");
            }
            eprintln!("skipping {test}: cannot build the static probe: {e}");
            None
        }
    }
}

/// Parses probe output into `(key, return value, errno)` triples.
pub fn parse_probe(out: &str) -> Vec<(String, i64, i32)> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?.to_string();
            let r = it.next()?.parse().ok()?;
            let e = it.next()?.parse().ok()?;
            Some((k, r, e))
        })
        .collect()
}

/// Debian's python3: `/usr/bin/python3` names the versioned interpreter (`python3.11` on
/// Debian 12, package `python3`, which brings the full standard library that
/// `python3-minimal` lacks).
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// The host's Debian interpreter and its standard library (`/usr/bin/python3.X`,
/// `/usr/lib/python3.X`), or `None` when they are not installed.
pub fn debian_python() -> Option<(PathBuf, PathBuf)> {
    let target = fs::read_link(DEBIAN_PYTHON).ok()?;
    let name = target.file_name()?.to_str()?.to_string();
    if !name.starts_with("python3.") {
        return None;
    }
    let bin = Path::new("/usr/bin").join(&name);
    let lib = Path::new("/usr/lib").join(&name);
    (bin.is_file() && lib.join("json").is_dir()).then_some((bin, lib))
}

/// Builds a Python root filesystem in `dir` from the host's Debian python3 (see
/// [`debian_python`]): the interpreter (also as `/usr/bin/python3`), its standard library
/// without `test/`, `site-packages/` and `dist-packages/`, and every shared library `ldd` lists
/// for the interpreter and its extension modules, each at the path `ldd` printed (real
/// directories, no merged-/usr symlinks, so the tree stacks over a busybox root without hiding
/// its `/bin`).
pub fn python_rootfs(dir: &Path) -> io::Result<()> {
    let (bin, lib) = debian_python().ok_or_else(|| io::Error::other(format!("no Debian python3 behind {DEBIAN_PYTHON}")))?;
    let name = bin.file_name().expect("a file name").to_owned();
    for d in ["usr/bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::copy(&bin, dir.join("usr/bin").join(&name))?;
    symlink(&name, dir.join("usr/bin/python3"))?;
    let lib = lib.as_path();
    copy_tree(lib, &dir.join(lib.strip_prefix("/").expect("absolute")), &|rel| {
        matches!(rel.to_str(), Some("test" | "site-packages" | "dist-packages"))
    })?;
    let mut objects = vec![bin.clone()];
    for e in fs::read_dir(lib.join("lib-dynload"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "so") {
            objects.push(p);
        }
    }
    let out = Command::new("ldd").args(&objects).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.ends_with(':') {
                return None; // the header ldd prints before each object's list
            }
            let path = match l.split_once("=> ") {
                Some((_, r)) => r.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then_some(path)
        })
        .collect();
    libs.sort_unstable();
    libs.dedup();
    if !libs.iter().any(|l| l.contains("libc.so")) {
        return Err(io::Error::other(format!("ldd listed no libc for {}: {text}", bin.display())));
    }
    for l in libs {
        let to = dir.join(l.trim_start_matches('/'));
        fs::create_dir_all(to.parent().expect("a library path has a parent"))?;
        if !to.exists() {
            fs::copy(l, &to)?;
        }
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(())
}

/// Copies a tree, keeping symbolic links as links; `skip` sees paths relative to `from`.
fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> io::Result<()> {
    fn walk(root: &Path, from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> io::Result<()> {
        fs::create_dir_all(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            let src = e.path();
            if skip(src.strip_prefix(root).unwrap_or(&src)) {
                continue;
            }
            let dst = to.join(e.file_name());
            let t = e.file_type()?;
            if t.is_dir() {
                walk(root, &src, &dst, skip)?;
            } else if t.is_symlink() {
                symlink(fs::read_link(&src)?, &dst)?;
            } else if t.is_file() {
                fs::copy(&src, &dst)?;
                // Python trusts a cached .pyc only while its source keeps the mtime recorded in
                // it: without this every import would compile again (and a benchmark of a fresh
                // interpreter would measure the compiler).
                let mtime = e.metadata()?.modified()?;
                fs::File::open(&dst)?.set_times(fs::FileTimes::new().set_modified(mtime))?;
            }
        }
        Ok(())
    }
    walk(from, from, to, skip)
}

static PYROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Removes this process's cached Python root at exit (the test harness exits normally).
extern "C" fn remove_python_rootfs() {
    if let Some(p) = PYROOT.get() {
        let _ = fs::remove_dir_all(p);
    }
}

/// The Python root filesystem of this process, built once on /dev/shm (see [`python_rootfs`])
/// and shared by every test of the binary, removed when the process exits; directories left by
/// processes that did not exit normally are removed on the next build. `None` (after printing `skipping <test>: <why>`) when the host has no
/// Debian python3; panics instead when `CI` is set.
pub fn cached_python_rootfs(test: &str) -> Option<PathBuf> {
    static ROOT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let r = ROOT.get_or_init(|| {
        if debian_python().is_none() {
            return Err(format!("no Debian python3 behind {DEBIAN_PYTHON} (install the apt package python3)"));
        }
        for e in fs::read_dir("/dev/shm").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("thaw-pyroot-") {
                let pid = rest.split('.').next().unwrap_or_default();
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = PathBuf::from(format!("/dev/shm/thaw-pyroot-{}", std::process::id()));
        let tmp = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&tmp);
        // The interpreter exists: failing to copy it is a bug, not a reason to skip.
        python_rootfs(&tmp).unwrap_or_else(|e| panic!("{test}: building the python rootfs in {}: {e}", tmp.display()));
        fs::rename(&tmp, &dir).unwrap_or_else(|e| panic!("{test}: renaming the python rootfs into place: {e}"));
        if PYROOT.set(dir.clone()).is_ok() {
            // SAFETY: atexit stores the function pointer; the function only reads a static.
            unsafe { libc::atexit(remove_python_rootfs) };
        }
        Ok(dir)
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {why}, and CI is set");
            }
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// `program args` to run chrooted into `root` (cwd `/`): the floor the sandbox benchmarks
/// compare with — the same command in an already-made root, without any isolation.
pub fn chrooted(root: &Path, program: &str, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    // Made before the fork: between fork and exec only async-signal-safe calls may run, so no
    // allocation there.
    let root = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).expect("no NUL in a path");
    let mut c = Command::new(program);
    c.args(args);
    // SAFETY: the closure only calls chroot and chdir, which are async-signal-safe, on C strings
    // made before the fork.
    unsafe {
        c.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// Prints the median, p99 and minimum of `v` as one benchmark line and returns the median in
/// milliseconds.
pub fn print_latencies(name: &str, mut v: Vec<std::time::Duration>) -> f64 {
    assert!(!v.is_empty(), "no samples for {name}");
    v.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let med = ms(v[v.len() / 2]);
    let p99 = ms(v[(v.len() * 99 / 100).min(v.len() - 1)]);
    println!("{name:<40} n={:<5} median {med:>9.3} ms   p99 {p99:>9.3} ms   min {:>9.3} ms", v.len(), ms(v[0]));
    med
}
