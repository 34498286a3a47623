//! What a sandbox should look like, in thaw's own terms.
//!
//! An OCI runtime bundle (`config.json`) or a root directory plus a command is converted once, at
//! the edge, into a [`SandboxSpec`]. The spec is split the way the pools are split:
//!
//! * [`Profile`]: the image-independent parts (hostname, cgroup limits, seccomp options) — one pooled
//!   "shell" holds namespaces and a cgroup built from a profile;
//! * [`RootfsConfig`]: the per-image part (the layers under the overlay root and the mounts on it);
//! * [`ProcessConfig`]: what is only known when a request arrives (command, environment, user...).

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Hostname of a sandbox unless configured.
pub const DEFAULT_HOSTNAME: &str = "thaw";
/// Size limit of a sandbox's writable upper layer (a tmpfs) unless configured.
pub const DEFAULT_UPPER_SIZE: u64 = 256 << 20;

/// Paths masked in addition to the runtime-spec defaults, following the common container default
/// (they expose host hardware and interrupt state).
const EXTRA_MASKED_PATHS: &[&str] = &["/proc/interrupts", "/sys/devices/virtual/powercap"];

/// The image-independent part of a sandbox: everything a pooled shell is built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Hostname set in the sandbox's UTS namespace.
    pub hostname: String,
    /// Cgroup limits.
    pub limits: Limits,
    /// Seccomp options (the profile itself is compiled once per runtime).
    pub seccomp: SeccompOptions,
    /// Loopback only (the default), or `eth0` on the runtime's bridge.
    #[serde(default)]
    pub network: crate::net::NetworkMode,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            hostname: DEFAULT_HOSTNAME.into(),
            limits: Limits::default(),
            seccomp: SeccompOptions::default(),
            network: crate::net::NetworkMode::Loopback,
        }
    }
}

/// Options of the default seccomp profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeccompOptions {
    /// Install no filter at all (only for tests that need a control run, and for debugging).
    pub disabled: bool,
    /// Allow `ptrace`, `process_vm_readv` and `process_vm_writev` (debuggers inside the sandbox).
    pub allow_ptrace: bool,
}

/// Cgroup limits of a sandbox. `None` leaves the kernel default (unlimited).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// Memory plus swap limit in bytes (the OCI meaning); equal to `memory_bytes` when unset, so a
    /// sandbox with a memory limit cannot escape it into swap.
    pub memory_swap_bytes: Option<i64>,
    /// CPU time in microseconds per period.
    pub cpu_quota_us: Option<i64>,
    /// Length of a CPU period in microseconds.
    pub cpu_period_us: Option<u64>,
    /// Relative CPU weight in cgroup v1 shares (2..=262144).
    pub cpu_shares: Option<u64>,
    /// Maximum number of tasks.
    pub pids_max: Option<i64>,
    /// Device access rules applied after "deny everything" and the default allow list.
    pub devices: Vec<DeviceRule>,
}

impl Limits {
    /// Every device rule in force: the defaults, then the profile's own (later rules win).
    pub fn device_rules(&self) -> Vec<DeviceRule> {
        default_device_rules().into_iter().chain(self.devices.iter().cloned()).collect()
    }
}

/// One device cgroup rule, as in the runtime spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// Allow (true) or deny (false).
    pub allow: bool,
    /// `'a'` (all), `'c'` (character) or `'b'` (block).
    pub kind: char,
    /// Major number, `None` for any.
    pub major: Option<i64>,
    /// Minor number, `None` for any.
    pub minor: Option<i64>,
    /// Any of `r`, `w`, `m`.
    pub access: String,
}

impl DeviceRule {
    /// Rule in the syntax of cgroup v1's `devices.allow` / `devices.deny`.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<i64>| n.map_or_else(|| "*".to_string(), |v| v.to_string());
        if self.kind == 'a' {
            return "a".to_string();
        }
        format!("{} {}:{} {}", self.kind, num(self.major), num(self.minor), self.access)
    }

    fn allow_char(major: i64, minor: Option<i64>) -> Self {
        DeviceRule { allow: true, kind: 'c', major: Some(major), minor, access: "rwm".into() }
    }
}

/// The devices every sandbox may use: null, zero, full, random, urandom, tty, ptmx and the
/// pseudo-terminals of its own devpts.
pub fn default_device_rules() -> Vec<DeviceRule> {
    vec![
        DeviceRule { allow: false, kind: 'a', major: None, minor: None, access: "rwm".into() },
        DeviceRule::allow_char(1, Some(3)),
        DeviceRule::allow_char(1, Some(5)),
        DeviceRule::allow_char(1, Some(7)),
        DeviceRule::allow_char(1, Some(8)),
        DeviceRule::allow_char(1, Some(9)),
        DeviceRule::allow_char(5, Some(0)),
        DeviceRule::allow_char(5, Some(2)),
        DeviceRule::allow_char(136, None),
    ]
}

/// The per-image part: the root filesystem and what is mounted on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsConfig {
    /// Read-only lower directories of the overlay root, topmost first.
    pub lowers: Vec<PathBuf>,
    /// Mount the root read-only (the upper layer still exists but cannot be written).
    pub readonly: bool,
    /// Size limit of the writable upper layer in bytes.
    pub upper_size_bytes: u64,
    /// Mounts in order, destinations inside the sandbox.
    pub mounts: Vec<MountEntry>,
    /// Paths hidden from the sandbox (an empty read-only tmpfs on directories, /dev/null on files).
    pub masked_paths: Vec<String>,
    /// Paths made read-only.
    pub readonly_paths: Vec<String>,
    /// Device nodes to create in /dev besides the standard ones.
    pub devices: Vec<DeviceNode>,
}

/// One mount, as in the runtime spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// Where, inside the sandbox.
    pub destination: String,
    /// Filesystem type (`proc`, `tmpfs`, `bind`, ...).
    pub typ: String,
    /// Source (a host path for binds).
    pub source: String,
    /// Options (`ro`, `nosuid`, `mode=755`, `rbind`, ...).
    pub options: Vec<String>,
}

/// A device node to create in the sandbox's /dev.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Path inside the sandbox, under /dev.
    pub path: String,
    /// `'c'` or `'b'`.
    pub kind: char,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
    /// File mode bits.
    pub mode: u32,
}

/// What runs in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessConfig {
    /// Program and arguments; the program is looked up in the sandbox's `PATH` unless absolute.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Capability sets (names like `CAP_KILL`).
    pub capabilities: CapabilitySets,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
    /// Set `no_new_privs` before exec.
    pub no_new_privs: bool,
    /// Give the workload a terminal: PID 1 opens a pseudo-terminal pair in the sandbox's own
    /// devpts, makes it the workload's stdin, stdout, stderr and controlling terminal (the
    /// stdio passed in is not used), and hands the controlling end back to the caller (see
    /// [`crate::tty`]).
    #[serde(default)]
    pub terminal: bool,
    /// The terminal's size as (rows, columns), set before the workload starts.
    #[serde(default)]
    pub terminal_size: Option<(u16, u16)>,
    /// Run a minimal init as PID 1 that forwards signals to the workload and reaps orphans
    /// (`thaw run --init`); otherwise the workload itself is PID 1.
    #[serde(default)]
    pub init: bool,
}

/// The five capability sets of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySets {
    /// Bounding set.
    pub bounding: Vec<String>,
    /// Effective set.
    pub effective: Vec<String>,
    /// Permitted set.
    pub permitted: Vec<String>,
    /// Inheritable set.
    pub inheritable: Vec<String>,
    /// Ambient set.
    pub ambient: Vec<String>,
}

impl CapabilitySets {
    /// The same capabilities in every set.
    pub fn uniform(names: &[&str]) -> Self {
        let v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        CapabilitySets {
            bounding: v.clone(),
            effective: v.clone(),
            permitted: v.clone(),
            inheritable: v.clone(),
            ambient: v,
        }
    }

    /// The runtime-spec default: `CAP_AUDIT_WRITE`, `CAP_KILL`, `CAP_NET_BIND_SERVICE`.
    pub fn runtime_spec_default() -> Self {
        Self::uniform(&["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"])
    }
}

/// One resource limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Name as in the runtime spec (`RLIMIT_NOFILE`).
    pub resource: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            args: vec!["sh".into()],
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "TERM=xterm".into(),
            ],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            capabilities: CapabilitySets::runtime_spec_default(),
            rlimits: vec![Rlimit { resource: "RLIMIT_NOFILE".into(), soft: 1024, hard: 1024 }],
            no_new_privs: true,
            terminal: false,
            terminal_size: None,
            init: false,
        }
    }
}

/// Everything needed to build and start one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Image-independent parts.
    pub profile: Profile,
    /// Per-image part.
    pub rootfs: RootfsConfig,
    /// The workload.
    pub process: ProcessConfig,
}

impl RootfsConfig {
    /// The default mounts, masked and read-only paths around the given layers (topmost first).
    pub fn with_defaults(lowers: Vec<PathBuf>) -> Self {
        let mut masked = oci_spec::runtime::get_default_maskedpaths();
        masked.extend(EXTRA_MASKED_PATHS.iter().map(|s| s.to_string()));
        RootfsConfig {
            lowers,
            readonly: false,
            upper_size_bytes: DEFAULT_UPPER_SIZE,
            mounts: oci_spec::runtime::get_default_mounts().iter().map(mount_from_oci).collect(),
            masked_paths: masked,
            readonly_paths: oci_spec::runtime::get_default_readonly_paths(),
            devices: Vec::new(),
        }
    }
}

impl SandboxSpec {
    /// A sandbox over one root directory running `args`, with the runtime-spec defaults.
    pub fn for_rootfs(rootfs: &Path, args: Vec<String>) -> Self {
        let mut process = ProcessConfig::default();
        if !args.is_empty() {
            process.args = args;
        }
        SandboxSpec {
            profile: Profile::default(),
            rootfs: RootfsConfig::with_defaults(vec![rootfs.to_path_buf()]),
            process,
        }
    }

    /// Reads `config.json` of an OCI runtime bundle.
    pub fn from_bundle(bundle: &Path) -> Result<Self> {
        let path = bundle.join("config.json");
        let spec = Spec::load(&path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_oci(&spec, bundle)
    }

    /// Converts a runtime spec; relative paths are relative to `bundle`.
    pub fn from_oci(spec: &Spec, bundle: &Path) -> Result<Self> {
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| Error::Config("config.json has no root; add \"root\": {\"path\": \"rootfs\"}".into()))?;
        let root_path = if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
        if !root_path.is_dir() {
            return Err(Error::Config(format!("root path {} is not a directory", root_path.display())));
        }
        let mut rootfs = RootfsConfig::with_defaults(vec![root_path]);
        rootfs.readonly = root.readonly().unwrap_or(false);
        rootfs.mounts = spec.mounts().as_deref().unwrap_or_default().iter().map(mount_from_oci).collect();
        let mut profile = Profile::default();
        if let Some(h) = spec.hostname() {
            profile.hostname = h.clone();
        }
        if let Some(linux) = spec.linux() {
            for ns in linux.namespaces().as_deref().unwrap_or_default() {
                if ns.path().is_some() {
                    return Err(Error::Config(format!(
                        "joining an existing {:?} namespace by path is not supported; remove its \"path\"",
                        ns.typ()
                    )));
                }
                if ns.typ() == LinuxNamespaceType::User {
                    return Err(Error::Config(
                        "user namespaces are not supported by `thaw run`; remove the \"user\" namespace".into(),
                    ));
                }
            }
            rootfs.masked_paths = linux.masked_paths().clone().unwrap_or_default();
            rootfs.readonly_paths = linux.readonly_paths().clone().unwrap_or_default();
            for d in linux.devices().as_deref().unwrap_or_default() {
                rootfs.devices.push(DeviceNode {
                    path: d.path().to_string_lossy().into_owned(),
                    kind: device_kind(d.typ()),
                    major: d.major(),
                    minor: d.minor(),
                    mode: d.file_mode().unwrap_or(0o666),
                });
            }
            if let Some(res) = linux.resources() {
                let l = &mut profile.limits;
                if let Some(m) = res.memory() {
                    l.memory_bytes = m.limit();
                    l.memory_swap_bytes = m.swap();
                }
                if let Some(c) = res.cpu() {
                    l.cpu_quota_us = c.quota();
                    l.cpu_period_us = c.period();
                    l.cpu_shares = c.shares();
                }
                if let Some(p) = res.pids() {
                    l.pids_max = Some(p.limit());
                }
                for d in res.devices().as_deref().unwrap_or_default() {
                    l.devices.push(DeviceRule {
                        allow: d.allow(),
                        kind: d.typ().map_or('a', device_kind),
                        major: d.major(),
                        minor: d.minor(),
                        access: d.access().clone().unwrap_or_else(|| "rwm".into()),
                    });
                }
            }
            if let Some(sc) = linux.seccomp() {
                // thaw compiles its own default profile once; a bundle's custom profile would have
                // to be compiled per start, which defeats that. Refuse instead of silently ignoring.
                if !sc.syscalls().as_deref().unwrap_or_default().is_empty() {
                    return Err(Error::Config(
                        "custom seccomp profiles in config.json are not supported; remove \"linux.seccomp\" to get thaw's default profile".into(),
                    ));
                }
            }
        }
        let mut process = ProcessConfig::default();
        if let Some(p) = spec.process() {
            process.args = p.args().clone().unwrap_or_default();
            if process.args.is_empty() {
                return Err(Error::Config("process.args is empty; name the program to run".into()));
            }
            process.env = p.env().clone().unwrap_or_default();
            process.cwd = p.cwd().to_string_lossy().into_owned();
            process.uid = p.user().uid();
            process.gid = p.user().gid();
            process.additional_gids = p.user().additional_gids().clone().unwrap_or_default();
            process.no_new_privs = p.no_new_privileges().unwrap_or(false);
            process.terminal = p.terminal().unwrap_or(false);
            process.capabilities = match p.capabilities() {
                Some(c) => CapabilitySets {
                    bounding: cap_names(c.bounding()),
                    effective: cap_names(c.effective()),
                    permitted: cap_names(c.permitted()),
                    inheritable: cap_names(c.inheritable()),
                    ambient: cap_names(c.ambient()),
                },
                None => CapabilitySets::default(),
            };
            process.rlimits = p
                .rlimits()
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|r| Rlimit { resource: enum_name(&r.typ()), soft: r.soft(), hard: r.hard() })
                .collect();
            let allow_ptrace = process.capabilities.effective.iter().any(|c| c == "CAP_SYS_PTRACE");
            profile.seccomp.allow_ptrace = allow_ptrace;
        }
        Ok(SandboxSpec { profile, rootfs, process })
    }
}

fn mount_from_oci(m: &oci_spec::runtime::Mount) -> MountEntry {
    MountEntry {
        destination: m.destination().to_string_lossy().into_owned(),
        typ: m.typ().clone().unwrap_or_else(|| "bind".into()),
        source: m.source().as_ref().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        options: m.options().clone().unwrap_or_default(),
    }
}

fn device_kind(t: oci_spec::runtime::LinuxDeviceType) -> char {
    use oci_spec::runtime::LinuxDeviceType as T;
    match t {
        T::B => 'b',
        T::C | T::U => 'c',
        T::P => 'p',
        T::A => 'a',
    }
}

/// The serialized name of an oci-spec enum value (`CAP_KILL`, `RLIMIT_NOFILE`).
fn enum_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn cap_names(set: &Option<oci_spec::runtime::Capabilities>) -> Vec<String> {
    let mut v: Vec<String> = set.iter().flatten().map(enum_name).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rule_lines() {
        let rules = default_device_rules();
        assert_eq!(rules[0].v1_line(), "a");
        assert_eq!(rules[1].v1_line(), "c 1:3 rwm");
        assert_eq!(rules.last().unwrap().v1_line(), "c 136:* rwm");
    }

    #[test]
    fn oci_conversion_reads_resources_caps_and_rlimits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let json = r#"{
          "ociVersion": "1.0.2",
          "root": {"path": "rootfs", "readonly": true},
          "hostname": "box",
          "process": {"args": ["/bin/echo", "hi"], "cwd": "/tmp", "user": {"uid": 7, "gid": 8},
            "env": ["A=1"], "noNewPrivileges": true,
            "capabilities": {"bounding": ["CAP_KILL", "CAP_SYS_PTRACE"], "effective": ["CAP_SYS_PTRACE"]},
            "rlimits": [{"type": "RLIMIT_NPROC", "soft": 5, "hard": 6}]},
          "linux": {"resources": {"memory": {"limit": 1048576}, "pids": {"limit": 9},
                                  "cpu": {"quota": 5000, "period": 10000}},
                    "namespaces": [{"type": "pid"}, {"type": "mount"}],
                    "maskedPaths": ["/proc/kcore"]}
        }"#;
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let s = SandboxSpec::from_bundle(dir.path()).unwrap();
        assert_eq!(s.profile.hostname, "box");
        assert_eq!(s.profile.limits.memory_bytes, Some(1 << 20));
        assert_eq!(s.profile.limits.pids_max, Some(9));
        assert_eq!(s.profile.limits.cpu_quota_us, Some(5000));
        assert!(s.profile.seccomp.allow_ptrace);
        assert!(s.rootfs.readonly);
        assert_eq!(s.rootfs.masked_paths, vec!["/proc/kcore".to_string()]);
        assert_eq!(s.process.args, vec!["/bin/echo", "hi"]);
        assert_eq!((s.process.uid, s.process.gid), (7, 8));
        assert_eq!(s.process.capabilities.bounding, vec!["CAP_KILL", "CAP_SYS_PTRACE"]);
        assert_eq!(s.process.rlimits[0].resource, "RLIMIT_NPROC");
    }

    #[test]
    fn oci_conversion_refuses_user_namespaces_and_missing_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let json = r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
          "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
          "linux": {"namespaces": [{"type": "user"}]}}"#;
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let e = SandboxSpec::from_bundle(dir.path()).unwrap_err().to_string();
        assert!(e.contains("user namespaces"), "{e}");
        let json = r#"{"ociVersion": "1.0.2", "root": {"path": "nope"}}"#;
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let e = SandboxSpec::from_bundle(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn defaults_mask_the_usual_paths() {
        let s = SandboxSpec::for_rootfs(Path::new("/x"), vec!["true".into()]);
        for p in ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/interrupts"] {
            assert!(s.rootfs.masked_paths.iter().any(|m| m == p), "{p} not masked");
        }
        assert!(s.rootfs.readonly_paths.iter().any(|m| m == "/proc/sysrq-trigger"));
        assert_eq!(s.process.capabilities.effective.len(), 3);
    }
}
