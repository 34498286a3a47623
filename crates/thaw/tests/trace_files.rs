//! `thaw trace files` end to end: a two-layer busybox image whose command's file reads are
//! known, run under runc (and crun) with fanotify; readiness by exit, log line and port; the
//! timeout, a missing command, SIGTERM; and that nothing is left behind (work directory,
//! cgroups). Then `thaw trace report --files` on the result.
//!
//! The recording tests need root, runc (crun for its test), overlayfs and busybox-static.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use thaw_sandbox::testsupport;

const THAW: &str = env!("CARGO_BIN_EXE_thaw");

/// 300 bytes the command reads, and 5000 it never touches.
const A_TXT: usize = 300;
const B_TXT: usize = 5000;

struct Env {
    dir: tempfile::TempDir,
    image: String,
    base: String,
    top: String,
}

impl Env {
    /// The image: base = busybox rootfs; top = /data/a.txt, /data/b.txt and a new /etc/hostname
    /// (shadowing the base's).
    fn new(test: &str, runtime: &str) -> Option<Env> {
        if !testsupport::require_privileges(test) || !thaw_testkit::have(runtime, test) {
            return None;
        }
        let dir = testsupport::tmpfs_dir("thaw-trace-files-").unwrap();
        let rootfs = dir.path().join("rootfs");
        testsupport::busybox_rootfs(&rootfs).unwrap();
        let top_dir = dir.path().join("top");
        std::fs::create_dir_all(top_dir.join("data")).unwrap();
        std::fs::create_dir_all(top_dir.join("etc")).unwrap();
        std::fs::write(top_dir.join("data/a.txt"), vec![b'a'; A_TXT]).unwrap();
        std::fs::write(top_dir.join("data/b.txt"), vec![b'b'; B_TXT]).unwrap();
        std::fs::write(top_dir.join("etc/hostname"), "traced\n").unwrap();
        let tar_of = |d: &Path| -> Vec<u8> {
            let o = Command::new("tar").arg("-C").arg(d).args(["-cf", "-", "."]).output().unwrap();
            assert!(o.status.success());
            o.stdout
        };
        let (base, top) = (tar_of(&rootfs), tar_of(&top_dir));
        let (bd, td) = (thaw_oci::Digest::sha256_of(&base), thaw_oci::Digest::sha256_of(&top));
        let layout = dir.path().join("layout");
        let mut w = thaw_oci::layout::LayoutWriter::create(&layout).unwrap();
        let media = "application/vnd.oci.image.layer.v1.tar";
        let config = serde_json::json!({"config": {"Env": ["PATH=/bin"], "Cmd": ["sh", "-c", "cat /data/a.txt /etc/hostname; /bin/busybox true"]}});
        w.add_image("v1", &[(base, bd.clone(), media), (top, td.clone(), media)], config).unwrap();
        std::fs::create_dir(dir.path().join("scratch")).unwrap();
        Some(Env { image: format!("oci:{}:v1", layout.display()), base: bd.to_string(), top: td.to_string(), dir })
    }

    fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    fn cmd(&self, extra: &[&str]) -> Command {
        let mut c = Command::new(THAW);
        c.args(["trace", "files", "--json", "--data"])
            .arg(self.dir.path().join("data"))
            .arg("--scratch")
            .arg(self.scratch())
            .env_remove("THAW_DATA")
            .args(extra);
        c
    }

    /// Runs thaw, then checks that the invocation left nothing behind.
    fn run(&self, extra: &[&str]) -> Output {
        let child = self.cmd(extra).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let o = child.wait_with_output().unwrap();
        self.assert_clean(pid);
        o
    }

    /// No work directory, no cgroup of a container started by thaw process `pid`.
    fn assert_clean(&self, pid: u32) {
        let left: Vec<_> = std::fs::read_dir(self.scratch()).unwrap().flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "work directories left behind: {left:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = cgroups_of(pid);
            if found.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "cgroups left behind: {found:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a recording of a container that prints `started` and sleeps; returns once it
    /// printed, with the container's cgroups checked to exist.
    fn start_sleeper(&self) -> (std::process::Child, std::process::ChildStderr) {
        let mut child = self
            .cmd(&["--ready-log", "never", "--timeout", "60s", &self.image, "--", "sh", "-c", "echo started; exec sleep 60"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let mut buf = [0u8; 8];
        std::io::Read::read_exact(&mut err, &mut buf).unwrap();
        assert_eq!(&buf, b"started\n");
        assert!(!cgroups_of(child.id()).is_empty(), "the container's cgroups were not found where the leak check looks");
        (child, err)
    }
}

/// Cgroup directories of containers started by thaw process `pid` (v1 controllers and v2).
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("thaw-trace-{pid}-");
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.to_path_buf()];
    dirs.extend(std::fs::read_dir(root).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn summary(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "thaw trace files failed: {}\n{}", text(&o.stderr), text(&o.stdout));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not json ({e}): {}", text(&o.stdout)))
}

fn file<'a>(s: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    s["files"].as_array().unwrap().iter().find(|f| f["path"] == path)
}

/// The command reads /data/a.txt (top layer) and /etc/hostname (top layer, shadowing the base's)
/// and executes busybox (base layer); /data/b.txt is never touched.
fn check_known_reads(e: &Env, s: &serde_json::Value) {
    let a = file(s, "/data/a.txt").expect("a.txt recorded");
    assert_eq!(a["layer"], e.top.as_str(), "a.txt comes from the top layer");
    assert!(a["reads"].as_u64().unwrap() >= 1, "{a}");
    assert_eq!(a["bytes"].as_u64(), Some(A_TXT as u64));
    assert_eq!(file(s, "/etc/hostname").expect("hostname recorded")["layer"], e.top.as_str(), "the top layer's copy shadows the base's");
    let bb = file(s, "/bin/busybox").expect("busybox recorded");
    assert_eq!(bb["layer"], e.base.as_str());
    assert!(bb["executed"].as_u64().unwrap() >= 2, "sh and busybox true are both execs of busybox: {bb}");
    assert!(file(s, "/data/b.txt").is_none(), "b.txt was never read");
    // Inventory: base = busybox, passwd, group (its hostname is shadowed); top = a, b, hostname.
    let layers = s["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!((layers[0]["id"].as_str(), layers[0]["files"].as_u64()), (Some(e.base.as_str()), Some(3)));
    assert_eq!((layers[1]["id"].as_str(), layers[1]["files"].as_u64()), (Some(e.top.as_str()), Some(3)));
    assert_eq!(s["image_files"].as_u64(), Some(6));
    let busybox = std::fs::metadata(testsupport::BUSYBOX).unwrap().len();
    let top_bytes = (A_TXT + B_TXT + "traced\n".len()) as u64;
    assert_eq!(layers[1]["bytes"].as_u64(), Some(top_bytes));
    // Shares follow from the files list.
    let files = s["files"].as_array().unwrap();
    let from_layers: Vec<_> = files.iter().filter(|f| !f["layer"].is_null()).collect();
    let bytes: u64 = from_layers.iter().map(|f| f["bytes"].as_u64().unwrap()).sum();
    assert_eq!(s["accessed_files"].as_u64(), Some(from_layers.len() as u64));
    assert_eq!(s["accessed_bytes"].as_u64(), Some(bytes));
    assert!(bytes >= busybox + A_TXT as u64 + 7);
    let image_bytes = s["image_bytes"].as_u64().unwrap();
    assert!((s["byte_share"].as_f64().unwrap() - bytes as f64 / image_bytes as f64).abs() < 1e-9);
    let top_acc = (A_TXT + "traced\n".len()) as f64;
    assert!((layers[1]["byte_share"].as_f64().unwrap() - top_acc / top_bytes as f64).abs() < 1e-9, "{}", layers[1]);
    // Hot-file list in first-access order: busybox (the exec of sh) before a.txt.
    let order: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    let pos = |p: &str| order.iter().position(|x| *x == p).unwrap();
    assert!(pos("/bin/busybox") < pos("/data/a.txt"), "{order:?}");
    assert!(files.windows(2).all(|w| w[0]["first_us"].as_u64() <= w[1]["first_us"].as_u64()));
    assert!(s["definition"].as_str().unwrap().contains("upper bound"));
}

#[test]
fn records_known_reads_and_maps_layers() {
    let Some(e) = Env::new("records_known_reads_and_maps_layers", "runc") else { return };
    let records = e.dir.path().join("records.jsonl");
    let o = e.run(&["-o", records.to_str().unwrap(), &e.image]);
    assert_eq!(text(&o.stderr), "aaaa".repeat(A_TXT / 4) + "traced\n", "the container's output goes to stderr");
    let s = summary(&o);
    assert_eq!(s["ready"]["by"], "exit");
    assert_eq!(s["ready"]["code"], 0);
    assert_eq!(s["runtime"], "runc");
    check_known_reads(&e, &s);
    // The records: JSON lines of thaw trace records, with the image, layer and operation.
    let lines = std::fs::read_to_string(&records).unwrap();
    let recs: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(recs.iter().all(|r| r["type"] == "file" && r["image"] == e.image.as_str()));
    let ops: BTreeSet<&str> = recs.iter().filter(|r| r["path"] == "/data/a.txt").map(|r| r["op"].as_str().unwrap()).collect();
    assert!(ops.contains("open") && ops.contains("access"), "{ops:?}");
    assert!(recs.iter().any(|r| r["path"] == "/bin/busybox" && r["op"] == "open_exec"));
    assert!(!lines.contains("/data/b.txt"));

    // The report accepts both the summary and the records.
    let sum = e.dir.path().join("summary.json");
    std::fs::write(&sum, &o.stdout).unwrap();
    for input in [&sum, &records] {
        let html = e.dir.path().join("r.html");
        let r = Command::new(THAW).args(["trace", "report", "--files"]).arg(input).arg("--html").arg(&html).output().unwrap();
        assert!(r.status.success(), "{}", text(&r.stderr));
        let page = std::fs::read_to_string(&html).unwrap();
        assert_eq!(page.matches("<svg").count(), 2, "layer bars and cumulative bytes");
        assert!(page.contains("/data/a.txt"));
        assert!(text(&r.stdout).contains("/data/a.txt"));
    }
}

#[test]
fn crun_records_the_same_reads() {
    let Some(e) = Env::new("crun_records_the_same_reads", "crun") else { return };
    let s = summary(&e.run(&["--runtime", "crun", &e.image]));
    assert_eq!(s["runtime"], "crun");
    check_known_reads(&e, &s);
}

#[test]
fn ready_by_log_line_stops_a_running_container() {
    let Some(e) = Env::new("ready_by_log_line_stops_a_running_container", "runc") else { return };
    let t = Instant::now();
    let o = e.run(&["--ready-log", "^server (up|ready)$", "--timeout", "20s", &e.image, "--", "sh", "-c", "cat /data/a.txt >/dev/null; echo made >/tmp/made; cat /tmp/made >/dev/null; echo server up; exec sleep 30"]);
    let s = summary(&o);
    assert!(t.elapsed() < Duration::from_secs(15), "did not stop at the log line");
    assert_eq!(s["ready"]["by"], "log");
    assert_eq!(s["ready"]["line"], "server up");
    assert!(file(&s, "/data/a.txt").is_some());
    // A file the container made is its own, not a layer's, and stays out of the image's shares.
    let made = file(&s, "/tmp/made").expect("the container's file recorded");
    assert!(made["layer"].is_null(), "{made}");
    assert_eq!(s["written_files"], 1);
    assert_eq!(s["accessed_files"].as_u64().unwrap() + 1, s["files"].as_array().unwrap().len() as u64);
    assert!(file(&s, "/data/b.txt").is_none());
}

#[test]
fn ready_by_port_inside_the_container_network() {
    let Some(e) = Env::new("ready_by_port_inside_the_container_network", "runc") else { return };
    // Port 80 inside the container's own network namespace: no clash with the host.
    let o = e.run(&["--ready-port", "80", "--timeout", "20s", &e.image, "--", "sh", "-c", "cat /data/a.txt >/dev/null; exec httpd -f -p 80"]);
    let s = summary(&o);
    assert_eq!(s["ready"]["by"], "port");
    assert_eq!(s["ready"]["port"], 80);
    assert!(file(&s, "/data/a.txt").is_some());
    // A command that ends before the port opens is a failure, not a hang.
    let o = e.run(&["--ready-port", "81", "--timeout", "20s", &e.image, "--", "true"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("before it was ready"), "{}", text(&o.stderr));
}

#[test]
fn timeout_fails_and_cleans_up() {
    let Some(e) = Env::new("timeout_fails_and_cleans_up", "runc") else { return };
    let t = Instant::now();
    let o = e.run(&["--ready-log", "never printed", "--timeout", "1s", &e.image, "--", "sleep", "30"]);
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(text(&o.stderr).contains("not ready within"), "{}", text(&o.stderr));
}

#[test]
fn missing_command_is_a_clear_error() {
    let Some(e) = Env::new("missing_command_is_a_clear_error", "runc") else { return };
    let o = e.run(&[&e.image, "--", "/no/such/program"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("runc create failed") && err.contains("/no/such/program"), "{err}");
    // A plain directory that does not exist, and a hostile image name.
    let o = e.run(&[e.dir.path().join("missing").to_str().unwrap(), "--", "true"]);
    assert!(text(&o.stderr).contains("neither a directory nor an image"), "{}", text(&o.stderr));
    let o = e.run(&["oci:/dev/null/../../etc:latest", "--", "true"]);
    assert!(!o.status.success());
}

#[test]
fn sigterm_deletes_the_container() {
    let Some(e) = Env::new("sigterm_deletes_the_container", "runc") else { return };
    let (mut child, mut err) = e.start_sleeper();
    let pid = child.id();
    // SAFETY: kill with the pid of our own unreaped child and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(!status.success());
    assert!(rest.contains("interrupted"), "{rest}");
    e.assert_clean(pid);
}

#[test]
fn next_recording_cleans_up_after_a_killed_one() {
    let Some(e) = Env::new("next_recording_cleans_up_after_a_killed_one", "runc") else { return };
    let (mut child, _err) = e.start_sleeper();
    let pid = child.id();
    // A crash: SIGKILL gives thaw no chance to tear down; the container lives on.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!cgroups_of(pid).is_empty());
    let s = summary(&e.run(&[&e.image]));
    assert_eq!(s["ready"]["code"], 0);
    e.assert_clean(pid);
}

#[test]
fn plain_root_directory_is_one_layer() {
    let Some(e) = Env::new("plain_root_directory_is_one_layer", "runc") else { return };
    let root = e.dir.path().join("rootfs");
    let s = summary(&e.run(&[root.to_str().unwrap(), "--", "cat", "/etc/passwd"]));
    let p = file(&s, "/etc/passwd").unwrap();
    assert_eq!(p["layer"], root.to_str().unwrap());
    assert_eq!(s["layers"].as_array().unwrap().len(), 1);
    assert_eq!(s["image_files"].as_u64(), Some(4), "busybox, passwd, group, hostname");
}

/// Whiteouts and opaque directories as the layer store really unpacks them (0/0 character
/// devices, `trusted.overlay.opaque`): a deleted file the container recreates is its own, a file
/// under an opaque directory comes from the top layer, hidden files are not in the inventory.
#[test]
fn whiteouts_and_opaque_directories_from_the_layer_store() {
    let Some(e) = Env::new("whiteouts_and_opaque_directories_from_the_layer_store", "runc") else { return };
    let base_dir = e.dir.path().join("rootfs");
    std::fs::create_dir_all(base_dir.join("opt/x")).unwrap();
    std::fs::write(base_dir.join("opt/x/old.txt"), "old").unwrap();
    std::fs::write(base_dir.join("etc/motd"), "base motd").unwrap();
    let top_dir = e.dir.path().join("top2");
    std::fs::create_dir_all(top_dir.join("opt/x")).unwrap();
    std::fs::create_dir_all(top_dir.join("etc")).unwrap();
    std::fs::write(top_dir.join("opt/x/.wh..wh..opq"), "").unwrap();
    std::fs::write(top_dir.join("opt/x/new.txt"), "new").unwrap();
    std::fs::write(top_dir.join("etc/.wh.motd"), "").unwrap();
    let tar_of = |d: &Path| -> Vec<u8> {
        let o = Command::new("tar").arg("-C").arg(d).args(["-cf", "-", "."]).output().unwrap();
        assert!(o.status.success());
        o.stdout
    };
    let (base, top) = (tar_of(&base_dir), tar_of(&top_dir));
    let (bd, td) = (thaw_oci::Digest::sha256_of(&base), thaw_oci::Digest::sha256_of(&top));
    let layout = e.dir.path().join("layout2");
    let mut w = thaw_oci::layout::LayoutWriter::create(&layout).unwrap();
    let media = "application/vnd.oci.image.layer.v1.tar";
    w.add_image("v1", &[(base, bd.clone(), media), (top, td.clone(), media)], serde_json::json!({"config": {"Env": ["PATH=/bin"]}}))
        .unwrap();
    let image = format!("oci:{}:v1", layout.display());
    let s = summary(&e.run(&[&image, "--", "sh", "-c", "cat /opt/x/new.txt; ls /opt/x; echo mine >/etc/motd; cat /etc/motd"]));
    assert_eq!(file(&s, "/opt/x/new.txt").unwrap()["layer"], td.to_string());
    assert!(file(&s, "/etc/motd").unwrap()["layer"].is_null(), "whited out below, so the container's own file");
    assert!(file(&s, "/opt/x/old.txt").is_none());
    let layers = s["layers"].as_array().unwrap();
    // base: busybox, passwd, group, hostname (old.txt under the opaque dir, motd whited out);
    // top: new.txt.
    assert_eq!(layers[0]["files"].as_u64(), Some(4), "{}", layers[0]);
    assert_eq!(layers[1]["files"].as_u64(), Some(1), "{}", layers[1]);
    assert_eq!(s["image_files"].as_u64(), Some(5));
    assert_eq!(s["written_files"].as_u64(), Some(1));
}

/// No root needed: a records file written by hand goes through the report.
#[test]
fn report_from_records_without_root() {
    let dir = tempfile::tempdir().unwrap();
    let rec = |ts: u64, path: &str, op: &str, size: u64, layer: Option<&str>| {
        let mut v = serde_json::json!({"type": "file", "v": 1, "ts_us": ts, "image": "img", "path": path, "op": op, "size": size});
        if let Some(l) = layer {
            v["layer"] = l.into();
        }
        v.to_string() + "\n"
    };
    let mut text_in = String::new();
    text_in += &rec(1_000, "/bin/app", "open_exec", 4096, Some("sha256:aaaa"));
    text_in += &rec(1_500, "/etc/conf", "open", 10, Some("sha256:bbbb"));
    text_in += &rec(1_600, "/etc/conf", "access", 10, Some("sha256:bbbb"));
    text_in += "not json\n";
    let p = dir.path().join("r.jsonl");
    std::fs::write(&p, text_in).unwrap();
    let html = dir.path().join("r.html");
    let json = dir.path().join("r.json");
    let o = Command::new(THAW).args(["trace", "report", "--files"]).arg(&p).arg("--html").arg(&html).arg("--json").arg(&json).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("1 malformed"), "{}", text(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(j["files"]["accessed_bytes"], 4106);
    assert!(j.get("analysis").is_none());
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("/etc/conf") && page.contains("where accessed files come from"));
    // With a registry trace too, the page has both parts.
    let trace = dir.path().join("g.jsonl");
    let g = Command::new(THAW).args(["trace", "gen", "--requests", "3000", "--days", "1", "-o"]).arg(&trace).output().unwrap();
    assert!(g.status.success(), "{}", text(&g.stderr));
    let o = Command::new(THAW).args(["trace", "report", "--no-progress", "-t"]).arg(&trace).arg("--files").arg(&p).arg("--html").arg(&html).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<h2>Summary</h2>") && page.contains("<h2>File accesses"));
    // Nothing to report is an error that says what to give.
    let o = Command::new(THAW).args(["trace", "report", "--html"]).arg(&html).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--files"), "{}", text(&o.stderr));
}
