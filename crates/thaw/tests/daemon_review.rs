//! Regression tests for the review findings on the daemon: 8 (abandoned uploads are expired on a
//! timer) and 16 (the API socket and its fallback directory are private to the daemon's user).
//! The real `thaw serve` binary; every test gives it its own XDG_RUNTIME_DIR so that none of
//! them touches /run/thaw or /tmp.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thaw_testkit::{shm, ThawDaemon};

fn thaw() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_thaw"))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// For the parts that need root (to own a file as another user): `true` to go on; otherwise fails
/// under CI and skips elsewhere.
fn need_root(test: &str) -> bool {
    if euid() == 0 {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test} needs root, and CI is set: CI must run the tests as root");
    eprintln!("skipping {test}: needs root");
    false
}

fn serve_command(runtime: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(thaw());
    c.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--print-address"])
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime)
        .env_remove("THAW_SOCKET")
        .env_remove("THAW_CONFIG")
        .env_remove("THAW_DATA");
    c
}

/// Starts `thaw serve` with its own runtime directory; the returned daemon is stopped by PID on
/// drop (ThawDaemon::start cannot set the environment, so it is built here from the child).
fn start(runtime: &Path, args: &[&str]) -> ThawDaemon {
    use std::io::BufRead;
    let mut child = serve_command(runtime, args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start thaw serve");
    let stdout = child.stdout.take().unwrap();
    // The guard owns the child from here on, so a panic below still stops it.
    let mut daemon = ThawDaemon { addr: "127.0.0.1:0".parse().unwrap(), child: Some(child) };
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
    daemon.addr = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("thaw serve did not print its address (got {line:?})")).parse().unwrap();
    daemon
}

/// Kills a child by PID on drop unless it has exited.
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `thaw serve` expecting it to refuse to start; returns its stderr.
fn refused(runtime: &Path, args: &[&str]) -> String {
    let child = serve_command(runtime, args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start thaw serve");
    let mut r = Reaper(Some(child));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = r.0.as_mut().unwrap();
        if let Some(status) = c.try_wait().unwrap() {
            let mut err = String::new();
            c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            r.0 = None;
            assert!(!status.success(), "thaw serve exited successfully: {err}");
            return err;
        }
        assert!(Instant::now() < deadline, "thaw serve started although it should have refused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, headers, body).
fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::Builder::new().prefix("thaw-daemon-review").tempdir_in(shm()).unwrap();
    let runtime = base.path().join("xdg");
    std::fs::DirBuilder::new().mode(0o700).create(&runtime).unwrap();
    (base, runtime)
}

/// Review finding 8.
#[test]
fn abandoned_uploads_expire_after_their_ttl() {
    let (base, runtime) = scratch();
    let cfg = base.path().join("thaw.toml");
    std::fs::write(&cfg, "[store]\nupload_ttl = \"1s\"\n").unwrap();
    let data = base.path().join("data");
    let mut daemon = start(&runtime, &["--standalone", "--config", cfg.to_str().unwrap(), "--data", data.to_str().unwrap()]);

    let (status, head, body) = http(daemon.addr, "POST", "/v2/review/app/blobs/uploads/");
    assert_eq!(status, 202, "{head}\n{body}");
    let location = header(&head, "location").expect("a Location for the upload").to_string();
    let path = match location.find("/v2/") {
        Some(i) => location[i..].to_string(),
        None => panic!("unexpected Location {location}"),
    };
    let started = Instant::now();
    // The upload exists...
    let (status, head, _) = http(daemon.addr, "GET", &path);
    assert_eq!(status, 204, "{head}");
    // ...and, with nobody sending to it, is gone a little after its second of idleness.
    let deadline = started + Duration::from_secs(15);
    loop {
        let (status, head, _) = http(daemon.addr, "GET", &path);
        if status == 404 {
            break;
        }
        assert_eq!(status, 204, "{head}");
        assert!(Instant::now() < deadline, "the abandoned upload {path} is still there after {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "expired before its ttl: {:?}", started.elapsed());
    assert!(daemon.stop().success());

    // A ttl of zero would delete uploads while they are being sent: refused, as is a bad value.
    for (ttl, want) in [("0s", "longer than 0s"), ("soon", "bad duration")] {
        std::fs::write(&cfg, format!("[store]\nupload_ttl = \"{ttl}\"\n")).unwrap();
        let err = refused(&runtime, &["--standalone", "--config", cfg.to_str().unwrap(), "--data", data.to_str().unwrap()]);
        assert!(err.contains(want), "{ttl}: {err}");
    }
}

/// Review finding 16.
#[test]
fn long_data_dir_gets_a_private_fallback_socket() {
    let (base, runtime) = scratch();
    let data = base.path().join("d".repeat(110));
    let mut daemon = start(&runtime, &["--standalone", "--data", data.to_str().unwrap()]);

    let dir = runtime.join("thaw");
    let md = std::fs::symlink_metadata(&dir).expect("the fallback directory was created");
    assert!(md.is_dir());
    assert_eq!(md.mode() & 0o7777, 0o700, "the fallback directory is private");
    assert_eq!(md.uid(), euid());
    let socks: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(socks.len(), 1, "{socks:?}");
    let sock = &socks[0];
    assert!(sock.extension().is_some_and(|e| e == "sock"), "{}", sock.display());
    let md = std::fs::symlink_metadata(sock).unwrap();
    assert_eq!(md.mode() & 0o077, 0, "the socket is not group/other accessible: {:o}", md.mode());
    assert_eq!(md.uid(), euid());

    // It is the daemon's API.
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: thaw\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"version\""), "{out}");

    assert!(daemon.stop().success());
    assert!(!sock.exists(), "the socket is removed on exit");
}

/// Review finding 16.
#[test]
fn runtime_dir_of_another_user_is_refused() {
    if !need_root("runtime_dir_of_another_user_is_refused") {
        return;
    }
    let (base, runtime) = scratch();
    // Someone else got there first and left the directory open to all.
    let dir = runtime.join("thaw");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let data = base.path().join("d".repeat(110));
    let err = refused(&runtime, &["--standalone", "--data", data.to_str().unwrap()]);
    assert!(err.contains("belongs to uid 65534") && err.contains(dir.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing was created in it");
}

/// Review finding 16.
#[test]
fn stale_sockets_are_replaced_only_when_ours() {
    let (base, runtime) = scratch();
    let data = base.path().join("data");
    let sock = base.path().join("api.sock");
    let args = ["--standalone", "--data", data.to_str().unwrap(), "--socket", sock.to_str().unwrap()];

    // Not a socket at all: left alone.
    std::fs::write(&sock, b"precious").unwrap();
    let err = refused(&runtime, &args);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
    std::fs::remove_file(&sock).unwrap();

    // A stale socket (its listener is gone).
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    if need_root("stale_sockets_are_replaced_only_when_ours (another user's socket)") {
        std::os::unix::fs::chown(&sock, Some(65534), Some(65534)).unwrap();
        let err = refused(&runtime, &args);
        assert!(err.contains("belongs to uid 65534"), "{err}");
        assert_eq!(std::fs::symlink_metadata(&sock).unwrap().uid(), 65534, "another user's socket was replaced");
        std::os::unix::fs::chown(&sock, Some(euid()), None).unwrap();
    }

    // Ours: replaced by the daemon's own, which only we can use.
    let mut daemon = start(&runtime, &args);
    let md = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(md.mode() & 0o777, 0o600);
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());

    // A second daemon on the same socket is refused while the first answers.
    let data2 = base.path().join("data2");
    let err = refused(&runtime, &["--standalone", "--data", data2.to_str().unwrap(), "--socket", sock.to_str().unwrap()]);
    assert!(err.contains("another thaw daemon"), "{err}");
    assert!(daemon.stop().success());
}
