//! The daemon is a child subreaper: sandbox inits orphaned by the short-lived helper
//! processes are re-parented here, and this module reaps every child with
//! `waitpid(-1, WNOHANG)` on SIGCHLD, recording exit codes per pid.
//!
//! It is the only place in the daemon that waits for children: nothing else may call
//! `wait` (std's `Child::wait` or `tokio::process` would race with it and lose
//! statuses). Exit codes follow the shell convention: 128+signal when killed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

/// How long an exit status nobody asked for is kept.
const KEEP_UNCLAIMED: Duration = Duration::from_secs(600);

/// Errors of setting up the reaper.
#[derive(Debug, Error)]
pub enum ReaperError {
    #[error("making sandboxd a child subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(#[source] std::io::Error),
    #[error("installing the SIGCHLD handler: {0}")]
    Signal(#[source] std::io::Error),
}

#[derive(Default)]
struct Exits {
    by_pid: HashMap<i32, (i32, Instant)>,
}

/// Reaps children and hands out their exit codes.
pub struct Reaper {
    exits: Mutex<Exits>,
    notify: Notify,
}

impl Reaper {
    /// Makes this process a child subreaper and starts reaping on SIGCHLD. Must be
    /// called inside a tokio runtime, before any child is spawned.
    pub fn start() -> Result<Arc<Self>, ReaperError> {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(ReaperError::Subreaper(std::io::Error::last_os_error()));
        }
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let reaper = Arc::new(Self {
            exits: Mutex::new(Exits::default()),
            notify: Notify::new(),
        });
        let weak = Arc::downgrade(&reaper);
        tokio::spawn(async move {
            // The tick covers a SIGCHLD that arrived before the handler was installed.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                let Some(reaper) = weak.upgrade() else { break };
                reaper.reap_all();
            }
        });
        Ok(reaper)
    }

    /// Collects every exited child without blocking.
    pub fn reap_all(&self) {
        let mut reaped = 0;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.record(pid.as_raw(), code);
                    reaped += 1;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.record(pid.as_raw(), 128 + sig as i32);
                    reaped += 1;
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed while reaping children");
                    break;
                }
            }
        }
        if reaped > 0 {
            let mut exits = self.exits.lock().expect("reaper lock poisoned");
            exits
                .by_pid
                .retain(|_, (_, at)| at.elapsed() < KEEP_UNCLAIMED);
            drop(exits);
            self.notify.notify_waiters();
        }
    }

    fn record(&self, pid: i32, code: i32) {
        tracing::debug!(pid, code, "reaped child");
        self.exits
            .lock()
            .expect("reaper lock poisoned")
            .by_pid
            .insert(pid, (code, Instant::now()));
    }

    /// The exit code of `pid` if it has been reaped, without consuming it.
    pub fn exit_code(&self, pid: i32) -> Option<i32> {
        self.exits
            .lock()
            .expect("reaper lock poisoned")
            .by_pid
            .get(&pid)
            .map(|(code, _)| *code)
    }

    /// Drops the recorded status of `pid` (once its owner no longer needs it).
    pub fn forget(&self, pid: i32) {
        self.exits
            .lock()
            .expect("reaper lock poisoned")
            .by_pid
            .remove(&pid);
    }

    /// Waits until `pid` (a child of this process) has exited, at most `timeout`
    /// (`None`: forever). Returns its exit code, or `None` on timeout.
    pub async fn wait(&self, pid: i32, timeout: Option<Duration>) -> Option<i32> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(code) = self.exit_code(pid) {
                return Some(code);
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return self.exit_code(pid);
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns a command and leaves the waiting to the reaper.
    fn spawn(program: &str, args: &[&str]) -> i32 {
        std::process::Command::new(program)
            .args(args)
            .spawn()
            .unwrap()
            .id() as i32
    }

    #[tokio::test]
    async fn reaps_exit_codes_and_signals() {
        let reaper = Reaper::start().unwrap();
        let ok = spawn("/bin/sh", &["-c", "exit 3"]);
        let killed = spawn("/bin/sh", &["-c", "kill -9 $$"]);
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(reaper.wait(ok, secs(10)).await, Some(3));
        assert_eq!(reaper.wait(killed, secs(10)).await, Some(128 + 9));
        reaper.forget(ok);
        assert_eq!(reaper.exit_code(ok), None);

        let slow = spawn("/bin/sleep", &["5"]);
        let code = reaper.wait(slow, Some(Duration::from_millis(50))).await;
        assert_eq!(code, None);
        nix::sys::signal::kill(Pid::from_raw(slow), nix::sys::signal::Signal::SIGKILL).unwrap();
        assert_eq!(reaper.wait(slow, secs(10)).await, Some(137));
    }
}
