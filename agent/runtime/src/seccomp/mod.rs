//! Seccomp from the OCI spec without libseccomp: compiles `linux.seccomp` into a classic
//! BPF program for x86_64, aarch64 or arm and installs it with `seccomp(2)`.
//!
//! Semantics follow runc: rules are tried in order and the first matching one decides;
//! otherwise `defaultAction` applies. Syscall names unknown to the target architecture are
//! ignored (like runc does); names unknown to every supported architecture are an error.
//! Calls made through a foreign ABI (x32, or 32-bit x86 on x86_64) kill the process.

pub mod bpf;

use crate::error::{Error, Result};
use bpf::{JMP_JEQ_K, JMP_JGE_K, JMP_JGT_K, Program, SockFilter, Target};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use std::str::FromStr;

/// Architectures whose syscall tables we carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 (64-bit).
    X86_64,
    /// AArch64 (64-bit).
    Aarch64,
    /// 32-bit ARM (EABI).
    Arm,
}

impl Arch {
    /// The architecture this binary runs on.
    pub const fn native() -> Arch {
        #[cfg(target_arch = "x86_64")]
        {
            Arch::X86_64
        }
        #[cfg(target_arch = "aarch64")]
        {
            Arch::Aarch64
        }
        #[cfg(target_arch = "arm")]
        {
            Arch::Arm
        }
    }

    fn audit_arch(self) -> u32 {
        match self {
            Arch::X86_64 => 0xC000_003E,
            Arch::Aarch64 => 0xC000_00B7,
            Arch::Arm => 0x4000_0028,
        }
    }

    fn is_64bit(self) -> bool {
        !matches!(self, Arch::Arm)
    }

    /// The number of syscall `name` on this architecture.
    pub fn syscall(self, name: &str) -> Option<u32> {
        match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
            Arch::Aarch64 => syscalls::aarch64::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
            Arch::Arm => syscalls::arm::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
        }
    }
}

const ALL_ARCHES: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Arm];

/// A compiled filter, ready to install.
#[derive(Clone, Debug)]
pub struct Filter {
    program: Vec<SockFilter>,
    flags: u32,
}

// seccomp_data offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: usize) -> u32 {
    16 + 8 * i as u32
}

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn action(
    field: &str,
    action: LinuxSeccompAction,
    errno: Option<u32>,
    default_errno: Option<u32>,
) -> Result<u32> {
    match action {
        LinuxSeccompAction::ScmpActNotify => Err(Error::config(
            field,
            "SCMP_ACT_NOTIFY is not supported (no seccomp agent support)",
        )),
        LinuxSeccompAction::ScmpActErrno => {
            let e = errno.or(default_errno).unwrap_or(libc::EPERM as u32);
            if e > 0xffff {
                return Err(Error::config(field, format!("errno {e} is out of range")));
            }
            Ok(action.as_u32(Some(e)))
        }
        LinuxSeccompAction::ScmpActTrace => Ok(action.as_u32(Some(errno.unwrap_or(0) & 0xffff))),
        other => Ok(other.as_u32(None)),
    }
}

impl Filter {
    /// Compiles the spec's seccomp section for the architecture we run on.
    pub fn compile(spec: &LinuxSeccomp) -> Result<Filter> {
        Self::compile_for(spec, Arch::native())
    }

    /// Compiles the spec's seccomp section for `arch`.
    pub fn compile_for(spec: &LinuxSeccomp, arch: Arch) -> Result<Filter> {
        let default_errno = spec.default_errno_ret();
        let default = action(
            "linux.seccomp.defaultAction",
            spec.default_action(),
            default_errno,
            None,
        )?;
        let mut flags = 0u32;
        for (i, f) in spec.flags().iter().flatten().enumerate() {
            flags |= match f {
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
                LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                    return Err(Error::config(
                        format!("linux.seccomp.flags[{i}]"),
                        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs SCMP_ACT_NOTIFY, which is not supported",
                    ));
                }
            };
        }

        let mut p = Program::default();
        // Wrong ABI: kill.
        p.load(OFF_ARCH);
        let arch_ok = p.label();
        p.jump(
            JMP_JEQ_K,
            arch.audit_arch(),
            Target::Label(arch_ok),
            Target::Next,
        );
        p.ret(RET_KILL_PROCESS);
        p.place(arch_ok);
        p.load(OFF_NR);
        if arch == Arch::X86_64 {
            let native = p.label();
            p.jump(
                JMP_JGE_K,
                X32_SYSCALL_BIT,
                Target::Next,
                Target::Label(native),
            );
            p.ret(RET_KILL_PROCESS);
            p.place(native);
        }

        for (ri, rule) in spec.syscalls().iter().flatten().enumerate() {
            let field = format!("linux.seccomp.syscalls[{ri}]");
            let act = action(
                &format!("{field}.action"),
                rule.action(),
                rule.errno_ret(),
                default_errno,
            )?;
            let args = rule.args().as_deref().unwrap_or(&[]);
            for (ai, a) in args.iter().enumerate() {
                if a.index() > 5 {
                    return Err(Error::config(
                        format!("{field}.args[{ai}].index"),
                        format!("{} is not a syscall argument index (0-5)", a.index()),
                    ));
                }
                if a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq && a.value_two().is_none() {
                    return Err(Error::config(
                        format!("{field}.args[{ai}].valueTwo"),
                        "SCMP_CMP_MASKED_EQ needs valueTwo (the value to compare the masked argument with)",
                    ));
                }
            }
            if rule.names().is_empty() {
                return Err(Error::config(format!("{field}.names"), "is empty"));
            }
            for (ni, name) in rule.names().iter().enumerate() {
                let Some(nr) = arch.syscall(name) else {
                    if ALL_ARCHES.iter().any(|a| a.syscall(name).is_some()) {
                        continue; // another architecture's syscall: ignored, as runc does
                    }
                    return Err(Error::config(
                        format!("{field}.names[{ni}]"),
                        format!("unknown syscall {name:?}"),
                    ));
                };
                if args.is_empty() {
                    let skip = p.label();
                    p.jump(JMP_JEQ_K, nr, Target::Next, Target::Label(skip));
                    p.ret(act);
                    p.place(skip);
                } else {
                    let body = p.label();
                    let next = p.label();
                    let reload = p.label();
                    p.jump(JMP_JEQ_K, nr, Target::Label(body), Target::Next);
                    p.goto(next);
                    p.place(body);
                    for a in args {
                        emit_arg_check(&mut p, arch, a, reload);
                    }
                    p.ret(act);
                    p.place(reload);
                    p.load(OFF_NR);
                    p.place(next);
                }
            }
        }
        p.ret(default);
        let program = p
            .assemble()
            .map_err(|e| Error::config("linux.seccomp", e))?;
        Ok(Filter { program, flags })
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// Whether the program is empty (never: there is always a default action).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread. Needs `no_new_privs` or CAP_SYS_ADMIN.
    /// Async-signal-safe: no allocation.
    pub fn install(&self) -> std::io::Result<()> {
        #[repr(C)]
        struct SockFprog {
            len: u16,
            filter: *const SockFilter,
        }
        let prog = SockFprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr(),
        };
        const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
        // SAFETY: prog points to a valid, live filter array for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                self.flags as libc::c_ulong,
                &prog as *const SockFprog,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Emits the comparison of one argument; falls through when it matches and jumps to
/// `fail` when it does not. On 32-bit architectures only the low word exists.
fn emit_arg_check(p: &mut Program, arch: Arch, a: &LinuxSeccompArg, fail: usize) {
    let lo_off = off_arg_lo(a.index());
    let hi_off = lo_off + 4;
    let fail = Target::Label(fail);
    let next = Target::Next;
    let (value, mask) = match a.op() {
        LinuxSeccompOperator::ScmpCmpMaskedEq => (a.value_two().unwrap_or(0), Some(a.value())),
        _ => (a.value(), None),
    };
    let (vhi, vlo) = ((value >> 32) as u32, value as u32);
    let wide = arch.is_64bit();
    match a.op() {
        LinuxSeccompOperator::ScmpCmpEq | LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let (mhi, mlo) =
                mask.map_or((None, None), |m| (Some((m >> 32) as u32), Some(m as u32)));
            if wide {
                p.load(hi_off);
                if let Some(m) = mhi {
                    p.and(m);
                }
                p.jump(JMP_JEQ_K, vhi, next, fail);
            }
            p.load(lo_off);
            if let Some(m) = mlo {
                p.and(m);
            }
            p.jump(JMP_JEQ_K, vlo, next, fail);
        }
        LinuxSeccompOperator::ScmpCmpNe => {
            let pass = p.label();
            if wide {
                p.load(hi_off);
                p.jump(JMP_JEQ_K, vhi, next, Target::Label(pass));
            }
            p.load(lo_off);
            p.jump(JMP_JEQ_K, vlo, fail, next);
            p.place(pass);
        }
        op => {
            // Unsigned ordering, high word first.
            let pass = p.label();
            if wide {
                p.load(hi_off);
                match op {
                    LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe => {
                        p.jump(JMP_JGT_K, vhi, Target::Label(pass), next);
                        p.jump(JMP_JEQ_K, vhi, next, fail);
                    }
                    _ => {
                        // LT / LE: hi < vhi passes, hi > vhi fails.
                        p.jump(JMP_JGE_K, vhi, next, Target::Label(pass));
                        p.jump(JMP_JEQ_K, vhi, next, fail);
                    }
                }
            }
            p.load(lo_off);
            match op {
                LinuxSeccompOperator::ScmpCmpGt => p.jump(JMP_JGT_K, vlo, next, fail),
                LinuxSeccompOperator::ScmpCmpGe => p.jump(JMP_JGE_K, vlo, next, fail),
                LinuxSeccompOperator::ScmpCmpLt => p.jump(JMP_JGE_K, vlo, fail, next),
                _ => p.jump(JMP_JGT_K, vlo, fail, next), // LE
            }
            p.place(pass);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn names_resolve_per_architecture() {
        assert_eq!(Arch::X86_64.syscall("unshare"), Some(272));
        assert_eq!(Arch::Aarch64.syscall("unshare"), Some(97));
        assert_eq!(Arch::Arm.syscall("unshare"), Some(337));
        assert_eq!(
            Arch::Aarch64.syscall("open"),
            None,
            "aarch64 has only openat"
        );
    }

    #[test]
    fn unknown_syscall_is_named_and_foreign_one_ignored() {
        let err = Filter::compile_for(
            &spec(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["open","frobnicate"],"action":"SCMP_ACT_ERRNO"}]}"#),
            Arch::Aarch64,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("linux.seccomp.syscalls[0].names[1]"), "{err}");
        assert!(err.contains("frobnicate"), "{err}");
    }

    #[test]
    fn notify_is_rejected_with_field() {
        let err = Filter::compile_for(
            &spec(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#),
            Arch::X86_64,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("syscalls[0].action"), "{err}");
    }

    #[test]
    fn compiles_for_every_arch() {
        let s = spec(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read","write","exit_group","openat"],"action":"SCMP_ACT_ALLOW"},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_LE"}]},
            {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        for a in ALL_ARCHES {
            let f = Filter::compile_for(&s, a).unwrap();
            assert!(f.len() > 10);
        }
    }

    /// Installs a real filter in a forked child and checks what the kernel returns.
    /// Only where the tests run natively: under qemu-user (how cross-built tests run
    /// here) the filter would apply to the emulator's host syscalls, not the guest's.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn filter_denies_with_errno_and_matches_arguments() {
        let s = spec(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getpriority"],"action":"SCMP_ACT_ERRNO","errnoRet":42,"args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
            {"names":["getpriority"],"action":"SCMP_ACT_ERRNO","errnoRet":43,"args":[{"index":1,"value":4294967296,"op":"SCMP_CMP_GE"}]},
            {"names":["getpgid"],"action":"SCMP_ACT_ERRNO","errnoRet":44}]}"#,
        );
        let f = Filter::compile(&s).unwrap();
        // SAFETY: the child only makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if f.install().is_err() {
                    libc::_exit(10);
                }
                let errno = || *libc::__errno_location();
                // which=PRIO_PROCESS (0) matches the first rule.
                if libc::syscall(libc::SYS_getpriority, 0, 0) != -1 || errno() != 42 {
                    libc::_exit(11);
                }
                // which=PRIO_PGRP, who=0: allowed.
                if libc::syscall(libc::SYS_getpriority, 1, 0) == -1 {
                    libc::_exit(12);
                }
                // who >= 2^32 on 64-bit hits the second rule.
                #[cfg(target_pointer_width = "64")]
                if libc::syscall(libc::SYS_getpriority, 1, 1u64 << 32) != -1 || errno() != 43 {
                    libc::_exit(13);
                }
                if libc::syscall(libc::SYS_getpgid, 0) != -1 || errno() != 44 {
                    libc::_exit(14);
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "failed check (see exit code)");
    }
}
