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
