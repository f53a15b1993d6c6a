//! The default seccomp profile of every sandbox, with the semantics of Docker's
//! default: an allowlist, everything else fails with `EPERM`.
//!
//! Compared with Docker it is stricter in three places, because a Berth tenant never
//! gets extra capabilities that would unlock them: `ptrace`, `process_vm_readv` and
//! `process_vm_writev` are denied (Docker allows them on kernels >= 4.8), and the
//! `io_uring_*` calls are denied (a large kernel attack surface that seccomp cannot
//! see through). `clone` is allowed only without namespace flags, `clone3` answers
//! `ENOSYS` so libc falls back to `clone`, `socket(AF_VSOCK)` and every `personality`
//! other than the harmless ones are denied. Syscalls libseccomp does not know on this
//! kernel are skipped by libcontainer (with a warning), never a reason to fail.
//!
//! libcontainer only applies the profile when built with its `libseccomp` feature;
//! without it a profile is silently ignored. The integration tests prove a denied
//! syscall fails inside a real sandbox.
//!
//! [`bpf`] compiles the profile once per daemon; the init then loads the program
//! instead of having libcontainer compile it in every sandbox.

pub mod bpf;

use libcontainer::oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use libcontainer::oci_spec::OciSpecError;

/// errno of a denied syscall.
pub const DENY_ERRNO: u32 = libc::EPERM as u32;

/// Namespace flags `clone` may not carry (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC |
/// NEWUSER | NEWPID | NEWNET), Docker's mask.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `socket` address family that reaches the hypervisor.
const AF_VSOCK: u64 = 40;

/// `personality` values a program may set: PER_LINUX, UNAME26, PER_LINUX32,
/// UNAME26|PER_LINUX32, and the query 0xffffffff.
const PERSONALITIES: [u64; 5] = [0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Syscalls allowed with any arguments: Docker's default list without `io_uring_*`.
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "chroot",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Architecture-specific calls glibc needs.
#[cfg(target_arch = "x86_64")]
const ARCH_ALLOWED: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
const ARCH_ALLOWED: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_ALLOWED: &[&str] = &[];

#[cfg(target_arch = "x86_64")]
fn architectures() -> Vec<Arch> {
    vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
}
#[cfg(target_arch = "aarch64")]
fn architectures() -> Vec<Arch> {
    vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn architectures() -> Vec<Arch> {
    vec![Arch::ScmpArchNative]
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn allow(list: &[&str]) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(names(list))
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()
}

fn allow_if(
    name: &str,
    index: usize,
    value: u64,
    op: LinuxSeccompOperator,
) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .op(op)
            .build()?])
        .build()
}

/// The profile put into every sandbox's spec.
pub fn default_profile() -> Result<LinuxSeccomp, OciSpecError> {
    let mut syscalls = vec![allow(ALLOWED)?, allow(ARCH_ALLOWED)?];
    syscalls.push(allow_if(
        "socket",
        0,
        AF_VSOCK,
        LinuxSeccompOperator::ScmpCmpNe,
    )?);
    for p in PERSONALITIES {
        syscalls.push(allow_if(
            "personality",
            0,
            p,
            LinuxSeccompOperator::ScmpCmpEq,
        )?);
    }
    // clone(flags, ...) with none of the namespace flags: (flags & mask) == 0.
    // libcontainer 0.7 reads the mask from `valueTwo` and the datum from `value`
    // (runc and Docker's JSON the other way round).
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone".to_string()])
            .action(LinuxSeccompAction::ScmpActAllow)
            .args(vec![LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(0u64)
                .value_two(CLONE_NAMESPACE_FLAGS)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?])
            .build()?,
    );
    // clone3 passes its flags in memory seccomp cannot read: make libc fall back.
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()?,
    );
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(DENY_ERRNO)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_syscalls_are_not_allowed() {
        let profile = default_profile().unwrap();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(profile.default_errno_ret(), Some(DENY_ERRNO));
        let allowed: Vec<&String> = profile
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names())
            .collect();
        for denied in [
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "settimeofday",
            "clock_settime",
            "open_by_handle_at",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "ptrace",
            "process_vm_writev",
            "io_uring_setup",
            "fsopen",
            "open_tree",
            "move_mount",
            "mount_setattr",
            "acct",
            "iopl",
            "ioperm",
            "syslog",
            "clone",
            "clone3",
            "socket",
            "personality",
        ] {
            assert!(
                !allowed.iter().any(|n| n.as_str() == denied),
                "{denied} is allowed unconditionally"
            );
        }
        for needed in ["read", "execve", "futex", "openat", "arch_prctl", "chroot"] {
            #[cfg(not(target_arch = "x86_64"))]
            if needed == "arch_prctl" {
                continue;
            }
            assert!(allowed.iter().any(|n| n.as_str() == needed), "{needed}");
        }
    }

    #[test]
    fn clone_only_without_namespace_flags() {
        let profile = default_profile().unwrap();
        let clone = profile
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names() == &["clone".to_string()])
            .unwrap();
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value(), 0);
        assert_eq!(arg.value_two(), Some(CLONE_NAMESPACE_FLAGS));
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUTS,
        ] {
            assert_ne!(flag as u64 & CLONE_NAMESPACE_FLAGS, 0, "{flag:#x}");
        }
    }
}
