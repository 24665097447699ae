//! The default seccomp profile, compiled to a classic BPF filter by swarmlet itself:
//! libcontainer's seccomp support needs libseccomp, a C library that does not link
//! statically here, and is off. The profile travels in the spec's `linux.seccomp` (so
//! `inspect` and the bundle show it); the container's executor compiles and installs
//! it right before `execve`.
//!
//! Like Docker's profile in effect, it refuses (EPERM) the system calls a container has
//! no business making: kernel modules, kexec, reboot, clock setting, mount and the new
//! mount API, namespaces (unshare, setns, and clone with a namespace flag), keyrings,
//! ptrace and cross-process memory access, BPF, perf, swap, accounting, quotas, NUMA
//! policy, file handles, userfaultfd. `clone3` answers ENOSYS so libcs fall back to
//! `clone`, whose flags a filter can see. Everything else is allowed. A system call
//! from another architecture's table (x32 on x86_64) is refused; a foreign audit arch
//! kills the process.

use serde_json::{json, Value};

use libcontainer::oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Names refused outright.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// clone(2) flags that make namespaces.
const CLONE_NS_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// The profile as it goes into `config.json`.
pub fn default_profile() -> Value {
    let mut syscalls = vec![
        json!({"names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}),
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    ];
    for f in CLONE_NS_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{"index": 0, "value": f, "valueTwo": f, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [audit_arch_name()],
        "syscalls": syscalls,
    })
}

fn audit_arch_name() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "SCMP_ARCH_AARCH64"
    } else {
        "SCMP_ARCH_X86_64"
    }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: u32 = 0;

/// The number of a system call on this architecture; None where it does not exist.
fn syscall_nr(name: &str) -> Option<i64> {
    macro_rules! table {
        ($name:expr; $($n:ident),* ; x86_64: $($x:ident),*) => {{
            $(if $name == stringify!($n) { return Some(libc::$n as i64); })*
            #[cfg(target_arch = "x86_64")]
            { $(if $name == stringify!($x) { return Some(libc::$x as i64); })* }
        }};
    }
    // musl's aarch64 table in the libc crate lacks this one (asm-generic number 294).
    #[cfg(target_arch = "aarch64")]
    if name == "kexec_file_load" {
        return Some(294);
    }
    let sys = format!("SYS_{name}");
    table!(sys.as_str();
        SYS_acct, SYS_add_key, SYS_bpf, SYS_clock_adjtime, SYS_clock_settime,
        SYS_delete_module, SYS_finit_module, SYS_fsconfig, SYS_fsmount, SYS_fsopen, SYS_fspick,
        SYS_get_mempolicy, SYS_init_module, SYS_kcmp, SYS_kexec_load,
        SYS_keyctl, SYS_lookup_dcookie, SYS_mbind, SYS_mount, SYS_mount_setattr, SYS_move_mount,
        SYS_move_pages, SYS_name_to_handle_at, SYS_nfsservctl, SYS_open_by_handle_at,
        SYS_open_tree, SYS_perf_event_open, SYS_pivot_root, SYS_process_vm_readv,
        SYS_process_vm_writev, SYS_ptrace, SYS_quotactl, SYS_reboot, SYS_request_key,
        SYS_set_mempolicy, SYS_setns, SYS_settimeofday, SYS_swapoff, SYS_swapon, SYS_umount2,
        SYS_unshare, SYS_userfaultfd, SYS_clone, SYS_clone3
        ; x86_64: SYS_ioperm, SYS_iopl, SYS_sysfs, SYS__sysctl, SYS_uselib, SYS_ustat,
        SYS_kexec_file_load
    );
    None
}

// Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// Compiles the profile. Only what [`default_profile`] uses is understood: an allow
/// default, errno actions, and masked-equal tests of the low 32 bits of argument 0;
/// anything else is refused rather than silently weakened.
pub fn compile(p: &LinuxSeccomp) -> Result<Vec<Insn>, String> {
    if p.default_action() != LinuxSeccompAction::ScmpActAllow {
        return Err("seccomp: only an allow-by-default profile is supported".into());
    }
    let mut prog = vec![
        insn(LD_W_ABS, 0, 0, OFF_ARCH),
        insn(JEQ_K, 1, 0, AUDIT_ARCH),
        insn(RET_K, 0, 0, RET_KILL_PROCESS),
        insn(LD_W_ABS, 0, 0, OFF_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        // x32 system calls have bit 30 set: refuse them all.
        prog.push(insn(JGE_K, 0, 1, 0x4000_0000));
        prog.push(insn(RET_K, 0, 0, RET_ERRNO | EPERM));
    }
    for rule in p.syscalls().iter().flatten() {
        let errno = match rule.action() {
            LinuxSeccompAction::ScmpActErrno => rule.errno_ret().unwrap_or(EPERM) & 0xffff,
            other => return Err(format!("seccomp: action {other:?} is not supported")),
        };
        for name in rule.names() {
            let Some(nr) = syscall_nr(name) else {
                continue; // not on this architecture
            };
            let nr = u32::try_from(nr).map_err(|_| format!("seccomp: bad number for {name}"))?;
            match rule.args().as_deref() {
                None | Some([]) => {
                    prog.push(insn(JEQ_K, 0, 1, nr));
                    prog.push(insn(RET_K, 0, 0, RET_ERRNO | errno));
                }
                Some([a]) if a.index() == 0 && a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    let (mask, want) = (a.value(), a.value_two().unwrap_or(0));
                    let (mask, want) = (
                        u32::try_from(mask)
                            .map_err(|_| "seccomp: mask above 32 bits".to_string())?,
                        u32::try_from(want)
                            .map_err(|_| "seccomp: value above 32 bits".to_string())?,
                    );
                    // if nr == N && (arg0 & mask) == want: errno; then reload nr.
                    prog.push(insn(JEQ_K, 0, 4, nr));
                    prog.push(insn(LD_W_ABS, 0, 0, OFF_ARG0));
                    prog.push(insn(AND_K, 0, 0, mask));
                    prog.push(insn(JEQ_K, 0, 1, want));
                    prog.push(insn(RET_K, 0, 0, RET_ERRNO | errno));
                    prog.push(insn(LD_W_ABS, 0, 0, OFF_NR));
                }
                Some(_) => {
                    return Err(format!(
                        "seccomp: argument rules for {name} are not supported"
                    ))
                }
            }
        }
    }
    prog.push(insn(RET_K, 0, 0, RET_ALLOW));
    if prog.len() > 4096 {
        return Err("seccomp: filter too long".into());
    }
    Ok(prog)
}

/// Installs `prog` on the calling thread (inherited across execve and fork). The
/// caller must have set no-new-privileges or hold CAP_SYS_ADMIN.
pub fn install(prog: &[Insn]) -> Result<(), String> {
    let filters: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: u16::try_from(filters.len()).map_err(|_| "seccomp: filter too long".to_string())?,
        filter: filters.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points at `filters`, alive for the duration of the call.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(format!(
            "seccomp: installing the filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter the way the kernel would, for one call.
    fn eval(prog: &[Insn], arch: u32, nr: u32, arg0: u32) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            match i.code {
                LD_W_ABS => {
                    acc = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0 => arg0,
                        _ => panic!("load of {}", i.k),
                    }
                }
                AND_K => acc &= i.k,
                JEQ_K => {
                    pc += usize::from(if acc == i.k { i.jt } else { i.jf });
                }
                JGE_K => {
                    pc += usize::from(if acc >= i.k { i.jt } else { i.jf });
                }
                RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
            pc += 1;
        }
    }

    fn profile() -> LinuxSeccomp {
        serde_json::from_value(default_profile()).unwrap()
    }

    #[test]
    fn the_default_profile_refuses_what_it_lists_and_allows_the_rest() {
        let prog = compile(&profile()).unwrap();
        let nr = |n: &str| u32::try_from(syscall_nr(n).unwrap()).unwrap();
        assert_eq!(eval(&prog, AUDIT_ARCH, nr("mount"), 0), RET_ERRNO | EPERM);
        assert_eq!(eval(&prog, AUDIT_ARCH, nr("unshare"), 0), RET_ERRNO | EPERM);
        assert_eq!(eval(&prog, AUDIT_ARCH, nr("clone3"), 0), RET_ERRNO | ENOSYS);
        // clone: a thread or a fork is fine, a new namespace is not.
        assert_eq!(eval(&prog, AUDIT_ARCH, nr("clone"), 0x0001_1f00), RET_ALLOW);
        assert_eq!(
            eval(&prog, AUDIT_ARCH, nr("clone"), 0x1000_0011),
            RET_ERRNO | EPERM
        );
        assert_eq!(
            eval(&prog, AUDIT_ARCH, nr("clone"), 0x4000_0000),
            RET_ERRNO | EPERM
        );
        for ok in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_execve,
            libc::SYS_openat,
        ] {
            assert_eq!(
                eval(&prog, AUDIT_ARCH, u32::try_from(ok).unwrap(), 0),
                RET_ALLOW
            );
        }
        assert_eq!(
            eval(&prog, 0x4000_0003, 0, 0),
            RET_KILL_PROCESS,
            "a foreign arch"
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                eval(&prog, AUDIT_ARCH, 0x4000_0000 | 165, 0),
                RET_ERRNO | EPERM,
                "x32"
            );
        }
    }

    #[test]
    fn unsupported_profiles_are_refused() {
        let mut v = default_profile();
        v["defaultAction"] = json!("SCMP_ACT_ERRNO");
        assert!(compile(&serde_json::from_value(v).unwrap()).is_err());
        let mut v = default_profile();
        v["syscalls"][0]["action"] = json!("SCMP_ACT_LOG");
        assert!(compile(&serde_json::from_value(v).unwrap()).is_err());
    }
}
