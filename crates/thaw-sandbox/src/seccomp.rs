//! The default seccomp profile, compiled once into BPF and shipped to every sandbox.
//!
//! The common container default is an allow list of ~350 system calls; thaw states the same
//! effect as a deny list: the calls that list leaves out for an unprivileged container, each
//! answered with `EPERM`. A deny list is shorter to audit, and the calls it names are exactly
//! what the isolation suite probes. Three filters are installed:
//!
//! 1. the deny list (with argument checks on `clone`, which may not create namespaces);
//! 2. `clone3` answered with `ENOSYS`: its flags live in memory a filter cannot read, and `ENOSYS`
//!    makes the C library fall back to `clone`, which filter 1 checks;
//! 3. on x86-64, every x32-ABI call number (bit 30 set) refused, so the deny list cannot be
//!    sidestepped through the second numbering.
//!
//! When several filters match, the kernel takes the most restrictive action, so their order
//! does not matter.

use crate::error::{Error, Result};
use crate::spec::SeccompOptions;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// System calls the default profile refuses with `EPERM`, by name and number.
pub fn denied_syscalls(opts: SeccompOptions) -> Vec<(&'static str, i64)> {
    let mut v: Vec<(&'static str, i64)> = vec![
        ("acct", libc::SYS_acct),
        ("add_key", libc::SYS_add_key),
        ("bpf", libc::SYS_bpf),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("clock_settime", libc::SYS_clock_settime),
        ("delete_module", libc::SYS_delete_module),
        ("finit_module", libc::SYS_finit_module),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fsopen", libc::SYS_fsopen),
        ("fspick", libc::SYS_fspick),
        ("get_mempolicy", libc::SYS_get_mempolicy),
        ("init_module", libc::SYS_init_module),
        ("ioperm", libc::SYS_ioperm),
        ("iopl", libc::SYS_iopl),
        ("kcmp", libc::SYS_kcmp),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("kexec_load", libc::SYS_kexec_load),
        ("keyctl", libc::SYS_keyctl),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("mbind", libc::SYS_mbind),
        ("mount", libc::SYS_mount),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("move_mount", libc::SYS_move_mount),
        ("move_pages", libc::SYS_move_pages),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("nfsservctl", libc::SYS_nfsservctl),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("open_tree", libc::SYS_open_tree),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("pivot_root", libc::SYS_pivot_root),
        ("quotactl", libc::SYS_quotactl),
        ("quotactl_fd", libc::SYS_quotactl_fd),
        ("reboot", libc::SYS_reboot),
        ("request_key", libc::SYS_request_key),
        ("set_mempolicy", libc::SYS_set_mempolicy),
        ("setns", libc::SYS_setns),
        ("settimeofday", libc::SYS_settimeofday),
        ("swapoff", libc::SYS_swapoff),
        ("swapon", libc::SYS_swapon),
        ("sysfs", libc::SYS_sysfs),
        ("_sysctl", libc::SYS__sysctl),
        ("syslog", libc::SYS_syslog),
        ("umount2", libc::SYS_umount2),
        ("unshare", libc::SYS_unshare),
        ("uselib", libc::SYS_uselib),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("ustat", libc::SYS_ustat),
        ("vhangup", libc::SYS_vhangup),
    ];
    if !opts.allow_ptrace {
        v.push(("ptrace", libc::SYS_ptrace));
        v.push(("process_vm_readv", libc::SYS_process_vm_readv));
        v.push(("process_vm_writev", libc::SYS_process_vm_writev));
    }
    v
}

/// `clone` flags that create namespaces; a sandboxed `clone` carrying any of them is refused.
pub const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// A compiled profile: BPF programs, each instruction packed into a `u64` so the programs cross
/// the helper protocol as plain numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledSeccomp {
    /// Programs to install, in order. Empty: no filter.
    pub programs: Vec<Vec<u64>>,
}

fn target_arch() -> Result<TargetArch> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| Error::Seccomp(format!("architecture {} is not supported: {e:?}", std::env::consts::ARCH)))
}

fn pack(p: &BpfProgram) -> Vec<u64> {
    p.iter()
        .map(|i| (i.code as u64) << 48 | (i.jt as u64) << 40 | (i.jf as u64) << 32 | i.k as u64)
        .collect()
}

/// The inverse of [`pack`] for one instruction, in the kernel's layout.
fn unpack_one(w: u64) -> libc::sock_filter {
    libc::sock_filter { code: (w >> 48) as u16, jt: (w >> 40) as u8, jf: (w >> 32) as u8, k: w as u32 }
}

#[cfg(test)]
fn unpack(p: &[u64]) -> BpfProgram {
    p.iter()
        .map(|&w| {
            let i = unpack_one(w);
            seccompiler::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }
        })
        .collect()
}

/// System calls a template runtime (zygote) may make although the default profile refuses them:
/// its forked instances build their own mount, network, UTS, IPC, PID and cgroup namespaces
/// inside the template's user namespace, mount their root and switch into it. None of them
/// reaches beyond that user namespace (the kernel checks every one against it), and every
/// instance installs the full default profile on top before the function's handler runs.
pub const TEMPLATE_ALLOWED: &[&str] = &["mount", "umount2", "pivot_root", "unshare"];

/// Compiles the default profile. Call once per set of options and reuse the result.
pub fn compile(opts: SeccompOptions) -> Result<CompiledSeccomp> {
    compile_with(opts, &[], CLONE_NAMESPACE_FLAGS)
}

/// The profile of a template process: the default profile without [`TEMPLATE_ALLOWED`], and
/// with `unshare` and `clone` refused only when they would create a user namespace (a nested
/// one would give the template's code a fresh set of capabilities to probe the kernel with).
pub fn compile_template(opts: SeccompOptions) -> Result<CompiledSeccomp> {
    compile_with(opts, TEMPLATE_ALLOWED, &[libc::CLONE_NEWUSER as u64])
}

fn compile_with(opts: SeccompOptions, allowed: &[&str], refused_clone_flags: &[u64]) -> Result<CompiledSeccomp> {
    if opts.disabled {
        return Ok(CompiledSeccomp::default());
    }
    let arch = target_arch()?;
    let se = |e: seccompiler::BackendError| Error::Seccomp(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (name, nr) in denied_syscalls(opts) {
        if !allowed.contains(&name) {
            rules.insert(nr, vec![]);
        }
    }
    // A rule per flag: the call is refused when any one of them is set. x86-64 passes the
    // flags in the first argument of both clone and unshare.
    let flag_rules = || -> Result<Vec<SeccompRule>> {
        let mut v = Vec::new();
        for &flag in refused_clone_flags {
            let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag).map_err(se)?;
            v.push(SeccompRule::new(vec![cond]).map_err(se)?);
        }
        Ok(v)
    };
    rules.insert(libc::SYS_clone, flag_rules()?);
    if allowed.contains(&"unshare") {
        rules.insert(libc::SYS_unshare, flag_rules()?);
    }
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .map_err(se)?;
    let deny: BpfProgram = deny.try_into().map_err(se)?;

    let mut c3 = BTreeMap::new();
    c3.insert(libc::SYS_clone3, vec![]);
    let clone3 = SeccompFilter::new(c3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)
        .map_err(se)?;
    let clone3: BpfProgram = clone3.try_into().map_err(se)?;

    let mut programs = vec![pack(&deny), pack(&clone3)];
    if cfg!(target_arch = "x86_64") {
        programs.push(pack(&x32_guard()));
    }
    Ok(CompiledSeccomp { programs })
}

/// Refuses every call number with the x32 bit set (the arch check of filter 1 already ran).
fn x32_guard() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const X32_BIT: u32 = 0x4000_0000;
    let ins = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    vec![
        ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        ins(JGE_K, 0, 1, X32_BIT),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

impl CompiledSeccomp {
    /// Installs the programs on the calling thread. Needs `no_new_privs` or `CAP_SYS_ADMIN`,
    /// and leaves `no_new_privs` as it was (seccompiler's `apply_filter` always sets it, which
    /// would break a workload configured with `noNewPrivileges: false`).
    ///
    /// Installing costs far more than it looks: the kernel runs the new filter once for every
    /// system call number to build its allow cache, about 0.5 ms for the default profile here.
    /// So sandboxes install it ahead of time, in the parked PID 1 of a pooled part.
    pub fn apply(&self) -> Result<()> {
        for p in &self.programs {
            let prog: Vec<libc::sock_filter> = p.iter().map(|&w| unpack_one(w)).collect();
            let len = u16::try_from(prog.len()).map_err(|_| Error::Seccomp(format!("a program of {} instructions is too long", prog.len())))?;
            let fprog = libc::sock_fprog { len, filter: prog.as_ptr().cast_mut() };
            // SAFETY: seccomp reads `len` instructions from the program we own for the duration
            // of the call.
            if unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog) } != 0 {
                return Err(Error::Seccomp(format!("installing: {}", std::io::Error::last_os_error())));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compiles_and_lists_ptrace_only_when_denied() {
        let p = compile(SeccompOptions::default()).unwrap();
        assert_eq!(p.programs.len(), if cfg!(target_arch = "x86_64") { 3 } else { 2 });
        assert!(p.programs[0].len() > 50);
        assert!(denied_syscalls(SeccompOptions::default()).iter().any(|(n, _)| *n == "ptrace"));
        let allow = SeccompOptions { allow_ptrace: true, ..Default::default() };
        assert!(!denied_syscalls(allow).iter().any(|(n, _)| *n == "ptrace"));
        assert!(compile(SeccompOptions { disabled: true, ..Default::default() }).unwrap().programs.is_empty());
    }

    /// Sets no_new_privs and installs `progs` with raw system calls (safe in a child forked
    /// from the multithreaded test process), or exits with code 10.
    fn install_or_exit(progs: &[BpfProgram]) {
        // SAFETY: prctl and seccomp read only the program memory we pass; _exit never returns.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            for prog in progs {
                let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
                if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0 {
                    libc::_exit(10);
                }
            }
        }
    }

    /// Applies the profile in a forked child (seccomp cannot be removed once installed) and
    /// checks a denied call fails with EPERM while an allowed one works. The test process is
    /// multithreaded; the child only makes raw system calls before `_exit`.
    #[test]
    fn applied_profile_denies_keyctl_and_allows_getpid() {
        let p = compile(SeccompOptions::default()).unwrap();
        let progs: Vec<BpfProgram> = p.programs.iter().map(|x| unpack(x)).collect();
        // SAFETY: the child only calls async-signal-safe functions (prctl, seccomp via
        // syscall, syscall, waitpid, _exit) on memory prepared before the fork.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: raw system calls with valid arguments; `_exit` never returns.
                unsafe {
                    install_or_exit(&progs);
                    let r = libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0);
                    let e = *libc::__errno_location();
                    if r != -1 || e != libc::EPERM {
                        libc::_exit(11);
                    }
                    let r = libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER);
                    if r != -1 || *libc::__errno_location() != libc::EPERM {
                        libc::_exit(12);
                    }
                    // clone creating a user namespace: refused by its flag argument.
                    let r = libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0);
                    if r == 0 {
                        libc::_exit(0);
                    }
                    if r != -1 || *libc::__errno_location() != libc::EPERM {
                        libc::_exit(15);
                    }
                    // A plain fork-like clone is still allowed.
                    let r = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0);
                    if r == 0 {
                        libc::_exit(0);
                    }
                    if r < 0 {
                        libc::_exit(16);
                    }
                    libc::waitpid(r as i32, std::ptr::null_mut(), 0);
                    if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || *libc::__errno_location() != libc::ENOSYS {
                        libc::_exit(17);
                    }
                    if cfg!(target_arch = "x86_64")
                        && (libc::syscall(0x4000_0000 | libc::SYS_getpid) != -1 || *libc::__errno_location() != libc::EPERM)
                    {
                        libc::_exit(13);
                    }
                    if libc::getpid() <= 0 {
                        libc::_exit(14);
                    }
                    libc::_exit(0);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    /// The template profile lets a forked instance build namespaces and mounts, but not a
    /// nested user namespace, and still refuses the rest of the default list.
    #[test]
    fn template_profile_allows_namespaces_but_not_user_namespaces() {
        let p = compile_template(SeccompOptions::default()).unwrap();
        let progs: Vec<BpfProgram> = p.programs.iter().map(|x| unpack(x)).collect();
        // SAFETY: the child only makes raw system calls on memory prepared before the fork.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: raw system calls with valid arguments; `_exit` never returns.
                unsafe {
                    install_or_exit(&progs);
                    let errno = || *libc::__errno_location();
                    if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
                        libc::_exit(11);
                    }
                    if libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) != -1 || errno() != libc::EPERM {
                        libc::_exit(12);
                    }
                    if libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS | libc::CLONE_NEWUSER) != -1 || errno() != libc::EPERM {
                        libc::_exit(13);
                    }
                    // Allowed by the filter: whatever the kernel answers root, it is not seccomp's
                    // EPERM (a mount with a null target fails with EFAULT; root may unshare UTS).
                    let r = libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0);
                    if r == -1 && errno() == libc::EPERM && libc::geteuid() == 0 {
                        libc::_exit(14);
                    }
                    if libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUTS) != 0 && errno() == libc::EPERM && libc::geteuid() == 0 {
                        libc::_exit(15);
                    }
                    let r = libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0);
                    if r == 0 {
                        libc::_exit(0);
                    }
                    if r != -1 || errno() != libc::EPERM {
                        libc::_exit(16);
                    }
                    libc::_exit(0);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        assert!(compile_template(SeccompOptions { disabled: true, ..Default::default() }).unwrap().programs.is_empty());
    }

    proptest! {
        #[test]
        fn pack_roundtrips(code: u16, jt: u8, jf: u8, k: u32) {
            let p = vec![seccompiler::sock_filter { code, jt, jf, k }];
            prop_assert_eq!(unpack(&pack(&p)), p);
        }
    }
}
