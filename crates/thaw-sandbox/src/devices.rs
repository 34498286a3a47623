//! Device rules on cgroup v2: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE` attached to
//! the sandbox's cgroup. cgroup v2 has no `devices.allow` file; the kernel asks the attached
//! program about every open and mknod of a device node instead.
//!
//! The program evaluates the rules from the last to the first and returns at the first that
//! matches, which is the "last matching rule wins" meaning of the v1 files (thaw's lists start
//! with "deny everything"). No rule matching means deny.

use crate::error::{Error, Result};
use crate::spec::DeviceRule;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One eBPF instruction, as the kernel lays it out (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
const AND32_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RSH32_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV32_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

fn access_mask(access: &str) -> i32 {
    access.chars().fold(0, |m, c| match c {
        'r' => m | ACC_READ,
        'w' => m | ACC_WRITE,
        'm' => m | ACC_MKNOD,
        _ => m,
    })
}

/// Compiles device rules into a program. Registers: r2 = device type, r3 = requested access,
/// r4 = major, r5 = minor (from `struct bpf_cgroup_dev_ctx` in r1), r6 = scratch.
pub fn compile(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let mut block = Vec::new();
        // Each test jumps past the rest of the block (fixed up below) when it fails.
        if r.kind == 'c' || r.kind == 'b' {
            block.push(insn(JNE_K, 2, 0, 0, if r.kind == 'c' { DEV_CHAR } else { DEV_BLOCK }));
        }
        let mask = access_mask(&r.access);
        if mask != ACC_READ | ACC_WRITE | ACC_MKNOD {
            block.push(insn(MOV32_X, 6, 3, 0, 0));
            if r.allow {
                // An allow rule covers a request only if it grants all of it: (r3 & !mask) == 0.
                block.push(insn(AND32_K, 6, 0, 0, !mask & 7));
                block.push(insn(JNE_K, 6, 0, 0, 0));
            } else {
                // A deny rule refuses a request that asks for any of its accesses.
                block.push(insn(AND32_K, 6, 0, 0, mask));
                block.push(insn(JEQ_K, 6, 0, 0, 0));
            }
        }
        if r.kind != 'a' {
            if let Some(m) = r.major {
                block.push(insn(JNE_K, 4, 0, 0, m as i32));
            }
            if let Some(m) = r.minor {
                block.push(insn(JNE_K, 5, 0, 0, m as i32));
            }
        }
        block.push(insn(MOV64_K, 0, 0, 0, i32::from(r.allow)));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        let mut conditional = false;
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K || ins.code == JEQ_K {
                // Jump to the first instruction after this block.
                ins.off = (len - i - 1) as i16;
                conditional = true;
            }
        }
        p.extend(block);
        if !conditional {
            // A rule matching everything ends the program: anything after it is unreachable,
            // which the verifier refuses.
            return p;
        }
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Whether `dir` is on a cgroup2 filesystem (a fake root in a test is not).
pub fn is_cgroup2(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC).unwrap_or(false)
}

/// Loads the program for `rules` and attaches it to the cgroup2 directory `dir`.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    attach_program(dir, load(rules)?.as_fd())
}

/// Loads the program for `rules` into the kernel. One program can be attached to any number of
/// cgroups, so a runtime loads it once per rule set (the kernel verifies each load, and each
/// loaded copy holds kernel memory for as long as a cgroup uses it).
pub fn load(rules: &[DeviceRule]) -> Result<OwnedFd> {
    let prog = compile(rules);
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u8; 128];
    let put32 = |a: &mut [u8; 128], off: usize, v: u32| a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    let put64 = |a: &mut [u8; 128], off: usize, v: u64| a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    // log_size, log_buf.
    put32(&mut attr, 0, 15); // BPF_PROG_TYPE_CGROUP_DEVICE
    put32(&mut attr, 4, prog.len() as u32);
    put64(&mut attr, 8, prog.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    put32(&mut attr, 24, 1);
    put32(&mut attr, 28, log.len() as u32);
    put64(&mut attr, 32, log.as_mut_ptr() as u64);
    // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` and the instruction, license and log buffers it
    // points to, all alive and sized as declared for the duration of the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        let errno = nix::errno::Errno::last();
        let msg = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
        return Err(Error::Cgroup(format!("loading the device program failed ({errno}): {msg}")));
    }
    // SAFETY: the kernel just returned this new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches a loaded device program (see [`load`]) to the cgroup2 directory `dir`.
pub fn attach_program(dir: &Path, prog_fd: BorrowedFd<'_>) -> Result<()> {
    let put32 = |a: &mut [u8; 128], off: usize, v: u32| a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    let cg = std::fs::File::open(dir).map_err(|e| Error::io("open cgroup", dir, e))?;
    let mut attr = [0u8; 128];
    put32(&mut attr, 0, cg.as_raw_fd() as u32); // target_fd
    put32(&mut attr, 4, prog_fd.as_raw_fd() as u32); // attach_bpf_fd
    put32(&mut attr, 8, 6); // BPF_CGROUP_DEVICE
    // SAFETY: bpf(BPF_PROG_ATTACH) reads `attr` only.
    if unsafe { libc::syscall(libc::SYS_bpf, 8, attr.as_ptr(), attr.len()) } != 0 {
        return Err(Error::sys(format!("attaching the device program to {}", dir.display()), nix::errno::Errno::last()));
    }
    // The attachment keeps the program alive, whatever happens to the descriptor.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interpreter of exactly the instructions `compile` emits, to check the program's
    /// meaning without a kernel.
    fn run(p: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access as u32) << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => r[dst] = ctx[i.off as usize / 4] as u64,
                AND32_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                RSH32_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                MOV32_X => r[dst] = r[src] as u32 as u64,
                MOV64_K => r[dst] = i.imm as i64 as u64,
                JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                JEQ_K => {
                    if r[dst] == i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0],
                c => panic!("unknown opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn default_rules_allow_the_standard_devices_only() {
        let p = compile(&crate::spec::default_device_rules());
        let rw = ACC_READ | ACC_WRITE;
        assert_eq!(run(&p, DEV_CHAR, rw, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 1, 9), 1, "mknod urandom");
        assert_eq!(run(&p, DEV_CHAR, rw, 136, 7), 1, "a pty");
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 1), 0, "/dev/mem");
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 1, 3), 0, "block 1:3 is not char 1:3");
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 0, "/dev/sda");
    }

    #[test]
    fn later_rules_win_and_access_is_checked() {
        let mut rules = crate::spec::default_device_rules();
        rules.push(DeviceRule { allow: true, kind: 'b', major: Some(8), minor: None, access: "r".into() });
        rules.push(DeviceRule { allow: false, kind: 'c', major: Some(1), minor: Some(3), access: "rwm".into() });
        let p = compile(&rules);
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 1), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_WRITE, 8, 1), 0, "only read was allowed");
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 0, "the later deny wins");
        let mut rules = crate::spec::default_device_rules();
        rules.push(DeviceRule { allow: false, kind: 'c', major: Some(1), minor: Some(5), access: "w".into() });
        let p = compile(&rules);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 5), 1, "read of /dev/zero still allowed");
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 5), 0, "a request including write is denied");
    }
}
