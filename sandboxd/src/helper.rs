//! libcontainer operations run in a short-lived, single-threaded helper process.
//!
//! libcontainer clones the container's processes from the caller. Doing that from the
//! multi-threaded tokio daemon risks a child that inherits a lock (allocator, tracing)
//! held by another thread at clone time and deadlocks; `Container::start` also
//! `chdir`s the whole process. So the daemon re-executes itself
//! (`/proc/self/exe __helper <json>`) for create, start and delete. The helper prints
//! one JSON line with the result and exits; a created container's init, orphaned when
//! the helper exits, is re-parented to the daemon (a child subreaper, see
//! [`crate::reaper`]), which reaps it.
//!
//! [`helper_main`] is the helper side; it must run before any thread is started.
//! [`run`] is the daemon side.
//!
//! A standby helper: starting a helper (exec, dynamic linking, runtime set-up) costs
//! about 2 ms, which used to sit on every create. The daemon keeps one helper
//! already started and blocked reading its request from stdin ([`STDIN_REQUEST`]);
//! a request goes to it when it is there, and once it is answered a new one is started
//! in the background for the next request. A standby that is gone (killed, or the daemon restarted)
//! is replaced by a helper started for the request, as before. It exits when its
//! stdin closes without a request (the daemon stopped).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::reaper::Reaper;
use crate::seccomp::bpf::Program;

/// First argument that selects the helper mode of the binary.
pub const HELPER_ARG: &str = "__helper";

/// Second argument of a standby helper: read the request from stdin.
pub const STDIN_REQUEST: &str = "-";

/// A helper started ahead of its request.
struct Standby {
    exe: PathBuf,
    pid: i32,
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
}

/// The one standby helper (taken by the next request).
static STANDBY: std::sync::Mutex<Option<Standby>> = std::sync::Mutex::new(None);

/// Starts a standby helper of `exe` unless one is waiting. Call only after the
/// reaper runs (it reaps every helper). Failures are logged: requests then start
/// their own helper.
pub fn prepare_standby(exe: &Path) {
    if STANDBY.lock().expect("standby lock poisoned").is_some() {
        return;
    }
    // Started without the lock held: a request meanwhile starts its own helper.
    let mut child = match Command::new(exe)
        .arg(HELPER_ARG)
        .arg(STDIN_REQUEST)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            tracing::warn!(exe = %exe.display(), %err, "starting a standby helper");
            return;
        }
    };
    // The reaper owns waiting: dropping `child` neither waits nor kills.
    let standby = Standby {
        exe: exe.to_path_buf(),
        pid: child.id() as i32,
        stdin: child.stdin.take().expect("stdin is piped"),
        stdout: child.stdout.take().expect("stdout is piped"),
    };
    let mut slot = STANDBY.lock().expect("standby lock poisoned");
    if slot.is_none() {
        *slot = Some(standby);
    }
    // Else another one won the race: dropping this one's stdin makes it exit.
}

/// Hands `json` to the standby helper of `exe`, if one is there and alive; its pid
/// and stdout then.
fn take_standby(
    exe: &Path,
    json: &str,
    reaper: &Arc<Reaper>,
) -> Option<(i32, std::process::ChildStdout)> {
    let taken = STANDBY
        .lock()
        .expect("standby lock poisoned")
        .take()
        .filter(|s| s.exe == exe);
    let mut s = taken?;
    let written = s
        .stdin
        .write_all(json.as_bytes())
        .and_then(|()| s.stdin.write_all(b"\n"));
    drop(s.stdin);
    match written {
        Ok(()) => Some((s.pid, s.stdout)),
        Err(err) => {
            tracing::warn!(pid = s.pid, %err, "the standby helper is gone; starting one for the request");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            reaper.forget(s.pid);
            None
        }
    }
}

/// How long a helper may take before it is killed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// One libcontainer operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HelperRequest {
    /// Build the container from `bundle` (init waits for start); stdio to `log_path`.
    /// The helper first joins the network namespace at `netns` (if any): the spec
    /// does not name it, because libcontainer enters named namespaces only after
    /// creating the user namespace, from where the host's namespaces cannot be joined.
    Create {
        id: String,
        bundle: PathBuf,
        state_root: PathBuf,
        log_path: PathBuf,
        #[serde(default)]
        netns: Option<PathBuf>,
        /// The spec's seccomp profile, compiled by the daemon and taken out of the
        /// bundle ([`crate::seccomp::bpf`]): the init loads it before it reports ready.
        #[serde(default)]
        seccomp: Option<Program>,
    },
    /// Let a created container's init exec the process.
    Start { id: String, state_root: PathBuf },
    /// Kill what is left, remove the cgroups and the libcontainer state.
    Delete { id: String, state_root: PathBuf },
}

/// What a helper prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HelperResponse {
    /// Host pid of the container's init (create).
    pub pid: Option<i32>,
    /// Set when the operation failed.
    pub error: Option<String>,
}

/// Errors of running a helper (from the daemon side).
#[derive(Debug, Error)]
pub enum HelperError {
    #[error("spawning the sandboxd helper {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the sandboxd helper's answer: {0}")]
    Read(String),
    #[error("sandboxd helper gave no answer within {0:?} and was killed")]
    Timeout(Duration),
    #[error("sandboxd helper answered garbage {line:?}: {source}")]
    Parse {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{op} failed: {message}")]
    Failed { op: &'static str, message: String },
}

impl HelperRequest {
    fn op(&self) -> &'static str {
        match self {
            Self::Create { .. } => "creating the container",
            Self::Start { .. } => "starting the container",
            Self::Delete { .. } => "deleting the container",
        }
    }
}

/// Runs `req` in a helper process (`exe __helper <json>`) and returns its answer.
pub async fn run(
    exe: &Path,
    req: &HelperRequest,
    reaper: &Arc<Reaper>,
) -> Result<HelperResponse, HelperError> {
    let json = serde_json::to_string(req).expect("helper request serializes");
    let (pid, stdout) = match take_standby(exe, &json, reaper) {
        Some(standby) => standby,
        None => {
            let mut child = Command::new(exe)
                .arg(HELPER_ARG)
                .arg(json)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|source| HelperError::Spawn {
                    exe: exe.to_path_buf(),
                    source,
                })?;
            let stdout = child.stdout.take().expect("stdout is piped");
            // The reaper owns waiting: dropping `child` neither waits nor kills.
            (child.id() as i32, stdout)
        }
    };

    let read = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
            .map_err(|e| e.to_string())
    });
    let line = match tokio::time::timeout(HELPER_TIMEOUT, read).await {
        Ok(joined) => joined
            .map_err(|e| HelperError::Read(e.to_string()))?
            .map_err(HelperError::Read)?,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            reaper.wait(pid, Some(Duration::from_secs(5))).await;
            reaper.forget(pid);
            return Err(HelperError::Timeout(HELPER_TIMEOUT));
        }
    };
    // The next standby starts once this request is answered, so its exec does not
    // compete for the CPU with the work of this one.
    let next = exe.to_path_buf();
    tokio::task::spawn_blocking(move || prepare_standby(&next));
    if !line.trim().is_empty() {
        // Answered: the helper's exit is collected in the background, off the
        // request's path (its teardown takes a while).
        let reaper = reaper.clone();
        tokio::spawn(async move {
            reaper.wait(pid, Some(Duration::from_secs(10))).await;
            reaper.forget(pid);
        });
    } else {
        let code = reaper.wait(pid, Some(Duration::from_secs(10))).await;
        reaper.forget(pid);
        return Err(HelperError::Failed {
            op: req.op(),
            message: format!(
                "the helper exited ({}) without an answer; see sandboxd's log",
                code.map_or("still running".to_string(), |c| format!("code {c}"))
            ),
        });
    }
    let resp: HelperResponse =
        serde_json::from_str(line.trim()).map_err(|source| HelperError::Parse {
            line: line.clone(),
            source,
        })?;
    if let Some(message) = resp.error {
        return Err(HelperError::Failed {
            op: req.op(),
            message,
        });
    }
    Ok(resp)
}

/// Entry point of the helper process: runs the request in `arg` (or, when `arg` is
/// [`STDIN_REQUEST`], the one line read from stdin: a standby helper), prints one
/// JSON line, and returns the process exit code. Call before starting any thread.
pub fn helper_main(arg: &str) -> i32 {
    let stdin_line;
    let arg = if arg == STDIN_REQUEST {
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            // Stdin closed without a request: the daemon stopped; nothing to do.
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) => {
                eprintln!("sandboxd helper: reading the request from stdin: {e}");
                return 1;
            }
        }
        stdin_line = line;
        stdin_line.trim_end()
    } else {
        arg
    };
    let result = serde_json::from_str::<HelperRequest>(arg)
        .map_err(|e| format!("parsing the helper request: {e}"))
        .and_then(|req| execute(&req));
    let (resp, code) = match result {
        Ok(pid) => (HelperResponse { pid, error: None }, 0),
        Err(error) => (
            HelperResponse {
                pid: None,
                error: Some(error),
            },
            1,
        ),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(&resp).expect("helper response serializes")
    );
    let _ = out.flush();
    code
}

/// Moves this (single-threaded) helper into the network namespace at `path`; the
/// container's processes, cloned from here, inherit it.
fn join_netns(path: &Path) -> Result<(), String> {
    let ns = File::open(path)
        .map_err(|e| format!("opening the network namespace {}: {e}", path.display()))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("joining the network namespace {}: {e}", path.display()))
}

/// libcontainer's default executor (exec of `process.args` from `PATH`), plus the
/// precompiled seccomp filter loaded in the init.
#[derive(Clone)]
struct SandboxExecutor {
    seccomp: Option<Program>,
}

impl Executor for SandboxExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    /// The last step libcontainer runs in the init before it reports ready (and
    /// waits for start): capabilities are dropped and `no_new_privs` is set, which is
    /// where libcontainer itself loads a profile when `no_new_privileges` is on. A
    /// filter that fails to load fails the create.
    fn setup_envs(
        &self,
        envs: std::collections::HashMap<String, String>,
    ) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)?;
        if let Some(program) = &self.seccomp {
            program
                .load()
                .map_err(|e| ExecutorSetEnvsError::Other(e.to_string()))?;
        }
        Ok(())
    }
}

fn execute(req: &HelperRequest) -> Result<Option<i32>, String> {
    match req {
        HelperRequest::Create {
            id,
            bundle,
            state_root,
            log_path,
            netns,
            seccomp,
        } => {
            if let Some(netns) = netns {
                join_netns(netns)?;
            }
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .map_err(|e| format!("opening the log file {}: {e}", log_path.display()))?;
            let log_err = log
                .try_clone()
                .map_err(|e| format!("duplicating the log file descriptor: {e}"))?;
            let null = File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
            let container = ContainerBuilder::new(id.clone(), SyscallType::default())
                .with_root_path(state_root)
                .map_err(|e| format!("using state root {}: {e}", state_root.display()))?
                .with_executor(SandboxExecutor {
                    seccomp: seccomp.clone(),
                })
                .with_stdin(null)
                .with_stdout(log)
                .with_stderr(log_err)
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("libcontainer create of {id}: {e}"))?;
            let pid = container
                .pid()
                .ok_or_else(|| format!("libcontainer created {id} but reported no init pid"))?;
            Ok(Some(pid.as_raw()))
        }
        HelperRequest::Start { id, state_root } => {
            let mut container = Container::load(state_root.join(id))
                .map_err(|e| format!("loading the state of {id}: {e}"))?;
            container
                .start()
                .map_err(|e| format!("libcontainer start of {id}: {e}"))?;
            Ok(container.pid().map(|p| p.as_raw()))
        }
        HelperRequest::Delete { id, state_root } => {
            let dir = state_root.join(id);
            if !dir.exists() {
                return Ok(None);
            }
            let mut container =
                Container::load(dir).map_err(|e| format!("loading the state of {id}: {e}"))?;
            container
                .delete(true)
                .map_err(|e| format!("libcontainer delete of {id}: {e}"))?;
            Ok(None)
        }
    }
}
