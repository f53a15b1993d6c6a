//! The seccomp profile compiled to a BPF program once per daemon, and loaded by the
//! sandbox's init itself.
//!
//! libcontainer compiles a spec's profile with libseccomp inside every container's
//! init, after the init is cloned. For the default profile (about 350 syscall names,
//! about 970 BPF instructions) that compilation was the largest single cost of a
//! create: 8–15 ms of a 20–30 ms create on the benchmark machine. The program depends
//! only on the profile, the kernel and libseccomp, all the same for every sandbox of a
//! daemon, so the daemon compiles it once ([`Program::compile`], the translation of
//! libcontainer 0.7's `initialize_seccomp` with the same libseccomp, laid out as a
//! binary tree, through [`compiled_for`]'s cache) and removes the profile from the bundle it hands to
//! libcontainer. The helper passes the program to the init through its executor,
//! which loads it with `seccomp(SECCOMP_SET_MODE_FILTER)` ([`Program::load`]) where
//! libcontainer would have: in the init, after the capabilities are dropped and with
//! `no_new_privs` set, before the init reports ready (a create whose filter cannot be
//! loaded fails, as before).
//!
//! This module must never weaken the filter: a profile it cannot translate exactly
//! (filter flags, notify actions) or a spec without `no_new_privileges` (the load
//! would then need capabilities the init has already dropped) stays in the spec and
//! is compiled by libcontainer as before.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use libcontainer::oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, Spec,
};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors of compiling or loading a seccomp program.
#[derive(Debug, Error)]
pub enum BpfError {
    #[error("the seccomp profile uses {0}, which only libcontainer's own loading supports")]
    Unsupported(&'static str),
    #[error("compiling the seccomp profile with libseccomp ({what}): {source}")]
    Libseccomp {
        what: &'static str,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("reading the compiled seccomp program back from a memory file: {0}")]
    Export(#[source] std::io::Error),
    #[error("the compiled seccomp program has {0} bytes, not a whole number of instructions")]
    Length(usize),
    #[error("the seccomp program has {0} instructions, more than the kernel takes (65535)")]
    TooLong(usize),
    #[error("a seccomp program in hex is malformed: {0}")]
    Hex(String),
    #[error("loading the seccomp filter (seccomp(SECCOMP_SET_MODE_FILTER)): {0}")]
    Load(#[source] std::io::Error),
}

/// A classic BPF seccomp program: `struct sock_filter` instructions, 8 bytes each in
/// the machine's byte order. Travels to the helper as hex inside its JSON request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Program {
    instructions: Vec<u64>,
}

impl Program {
    /// Compiles `profile` with the rules of libcontainer 0.7's `initialize_seccomp`,
    /// without loading it.
    pub fn compile(profile: &LinuxSeccomp) -> Result<Self, BpfError> {
        if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(BpfError::Unsupported("filter flags"));
        }
        if profile.default_action() == LinuxSeccompAction::ScmpActNotify
            || profile.syscalls().as_ref().is_some_and(|s| {
                s.iter()
                    .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify)
            })
        {
            return Err(BpfError::Unsupported("the notify action"));
        }
        let lib = |what| move |source| BpfError::Libseccomp { what, source };
        let default_action = action(profile.default_action(), profile.default_errno_ret())?;
        let mut ctx = ScmpFilterContext::new(default_action).map_err(lib("new filter"))?;
        for &arch in profile.architectures().iter().flatten() {
            ctx.add_arch(scmp_arch(arch))
                .map_err(lib("adding an architecture"))?;
        }
        // libcontainer sets no_new_privs itself (prctl) before loading.
        ctx.set_ctl_nnp(false).map_err(lib("clearing CTL_NNP"))?;
        // libseccomp's binary-tree layout (level 2) instead of its default linear one:
        // the same decisions (libseccomp guarantees it), in a program the kernel
        // loads about 3x faster (it runs the filter for every syscall number to build
        // its action cache: 0.25 instead of 0.73 ms here) and that decides each of
        // the sandbox's syscalls in O(log n) instead of O(n) comparisons.
        ctx.set_ctl_optimize(2)
            .map_err(lib("choosing the binary-tree layout"))?;
        for rule in profile.syscalls().iter().flatten() {
            let act = action(rule.action(), rule.errno_ret())?;
            if act == default_action {
                continue;
            }
            for name in rule.names() {
                // Unknown to libseccomp on this machine: libcontainer skips it too.
                let Ok(sc) = ScmpSyscall::from_name(name) else {
                    tracing::debug!(name, "seccomp: syscall unknown to libseccomp; skipped");
                    continue;
                };
                match rule.args() {
                    Some(args) => {
                        let cmps: Vec<ScmpArgCompare> = args
                            .iter()
                            .map(|a| {
                                ScmpArgCompare::new(
                                    a.index() as u32,
                                    compare_op(a.op(), a.value_two()),
                                    a.value(),
                                )
                            })
                            .collect();
                        let mut seen = std::collections::HashSet::new();
                        let duplicate = args.iter().any(|a| !seen.insert(a.index()));
                        if duplicate {
                            // One comparison per argument per rule: one rule each.
                            for cmp in &cmps {
                                ctx.add_rule_conditional(act, sc, std::slice::from_ref(cmp))
                                    .map_err(lib("adding a conditional rule"))?;
                            }
                        } else {
                            ctx.add_rule_conditional(act, sc, &cmps)
                                .map_err(lib("adding a conditional rule"))?;
                        }
                    }
                    None => {
                        ctx.add_rule(act, sc).map_err(lib("adding a rule"))?;
                    }
                }
            }
        }
        // libseccomp 2.5 exports to a file descriptor only: an anonymous memory file.
        let file = memfd().map_err(BpfError::Export)?;
        ctx.export_bpf(&file)
            .map_err(lib("exporting the program"))?;
        let mut file = std::fs::File::from(file);
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(BpfError::Export)?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, BpfError> {
        if !bytes.len().is_multiple_of(8) {
            return Err(BpfError::Length(bytes.len()));
        }
        let instructions: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().expect("chunks of 8")))
            .collect();
        if instructions.is_empty() || instructions.len() > usize::from(u16::MAX) {
            return Err(BpfError::TooLong(instructions.len()));
        }
        Ok(Self { instructions })
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.instructions.len()
    }

    /// Whether the program is empty (never, for a compiled one).
    pub fn is_empty(&self) -> bool {
        self.instructions.is_empty()
    }

    /// Loads the program as this thread's seccomp filter (flags 0, as libseccomp does
    /// for a profile without flags). Needs `no_new_privs` or CAP_SYS_ADMIN.
    pub fn load(&self) -> Result<(), BpfError> {
        let len = u16::try_from(self.instructions.len())
            .map_err(|_| BpfError::TooLong(self.instructions.len()))?;
        let prog = libc::sock_fprog {
            len,
            // u64 storage: 8-byte aligned, 8 bytes per `struct sock_filter`.
            filter: self.instructions.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `len` instructions that live for the whole call;
        // the kernel copies them and keeps no pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0 as libc::c_uint,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(BpfError::Load(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl From<Program> for String {
    fn from(p: Program) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(p.instructions.len() * 16);
        for b in p.instructions.iter().flat_map(|i| i.to_ne_bytes()) {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

impl TryFrom<String> for Program {
    type Error = BpfError;

    fn try_from(s: String) -> Result<Self, BpfError> {
        if !s.len().is_multiple_of(2) || !s.is_ascii() {
            return Err(BpfError::Hex("odd length or not ascii".to_string()));
        }
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|e| BpfError::Hex(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

/// The last profile compiled and its program: every sandbox of a daemon has the
/// same profile, so this is compiled once.
static CACHE: Mutex<Option<(LinuxSeccomp, Arc<Program>)>> = Mutex::new(None);

/// The compiled program of `profile`, from the cache or compiled now.
pub fn compiled(profile: &LinuxSeccomp) -> Result<Arc<Program>, BpfError> {
    if let Some((cached, program)) = CACHE.lock().expect("seccomp cache poisoned").as_ref() {
        if cached == profile {
            return Ok(program.clone());
        }
    }
    let program = Arc::new(Program::compile(profile)?);
    *CACHE.lock().expect("seccomp cache poisoned") = Some((profile.clone(), program.clone()));
    Ok(program)
}

/// Takes the seccomp profile out of `spec` and returns it compiled, when the init can
/// load it itself (the spec sets `no_new_privileges`) and it compiles exactly; else
/// leaves `spec` as it is (libcontainer compiles and loads the profile) and returns
/// `None`.
pub fn compiled_for(spec: &mut Spec) -> Option<Arc<Program>> {
    let nnp = spec.process().as_ref().and_then(|p| p.no_new_privileges()) == Some(true);
    let profile = spec.linux().as_ref()?.seccomp().as_ref()?;
    if !nnp {
        return None;
    }
    match compiled(profile) {
        Ok(program) => {
            if let Some(linux) = spec.linux_mut() {
                linux.set_seccomp(None);
            }
            Some(program)
        }
        Err(err) => {
            tracing::warn!(%err, "seccomp profile left to libcontainer");
            None
        }
    }
}

/// An anonymous, close-on-exec memory file.
fn memfd() -> std::io::Result<OwnedFd> {
    // SAFETY: the name is a valid C string; the flags are plain bits.
    let fd = unsafe { libc::memfd_create(c"berth-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, BpfError> {
    let errno = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno).map_err(|_| BpfError::Unsupported("a trace errno over 65535"))?,
        ),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(BpfError::Unsupported("the notify action"))
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
    })
}

fn compare_op(op: LinuxSeccompOperator, datum_b: Option<u64>) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(datum_b.unwrap_or(0)),
    }
}

fn scmp_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles_and_round_trips_as_hex() {
        let profile = crate::seccomp::default_profile().unwrap();
        let program = Program::compile(&profile).unwrap();
        assert!(program.len() > 100, "{} instructions", program.len());
        let json = serde_json::to_string(&program).unwrap();
        let back: Program = serde_json::from_str(&json).unwrap();
        assert_eq!(back, program);
        assert!(serde_json::from_str::<Program>("\"abc\"").is_err());
    }

    #[test]
    fn spec_without_no_new_privileges_keeps_its_profile() {
        let profile = crate::seccomp::default_profile().unwrap();
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_seccomp(Some(profile));
        spec.set_linux(Some(linux));
        if let Some(p) = spec.process_mut() {
            p.set_no_new_privileges(None);
        }
        assert!(compiled_for(&mut spec).is_none());
        assert!(spec.linux().as_ref().unwrap().seccomp().is_some());
        if let Some(p) = spec.process_mut() {
            p.set_no_new_privileges(Some(true));
        }
        assert!(compiled_for(&mut spec).is_some());
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
    }

    /// The program really filters: loaded in a forked child (the filter is
    /// per-process and cannot be removed), a denied syscall fails with EPERM and an
    /// allowed one works.
    #[test]
    fn loaded_program_denies_what_the_profile_denies() {
        let program = Program::compile(&crate::seccomp::default_profile().unwrap()).unwrap();
        // SAFETY: the child only makes raw syscalls and exits; no locks, no allocation.
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                // SAFETY: prctl with integer arguments.
                let code = unsafe {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        10
                    } else if program.load().is_err() {
                        11
                    } else if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1
                        || *libc::__errno_location() != libc::EPERM
                    {
                        12
                    } else if libc::getppid() <= 0 {
                        13
                    } else {
                        0
                    }
                };
                // SAFETY: _exit never returns and runs no destructors.
                unsafe { libc::_exit(code) };
            }
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                assert!(libc::WIFEXITED(status), "child status {status:#x}");
                assert_eq!(libc::WEXITSTATUS(status), 0, "child failed a check");
            }
        }
    }
}
