//! runc's side: the same OCI spec (built by sandboxd's own spec code from the same
//! request) in a bundle per sandbox, `runc create`, `runc start`, wait for the init
//! (re-parented to this subreaper, as to a containerd shim), `runc delete`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::setup::{self, Target};
use crate::stats::Iteration;

/// Site name of runc's benchmark sandboxes (cgroups under `/berth/bench-runc/`).
pub const SITE: &str = "bench-runc";

/// Runs runc with a private state root.
pub struct Runc {
    pub bin: PathBuf,
    /// `runc --root`.
    pub root: PathBuf,
    /// Bundles are written under here, one per sandbox.
    pub bundles: PathBuf,
    pub target: Target,
}

impl Runc {
    fn log(&self) -> anyhow::Result<(File, File)> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.target.log_path)
            .with_context(|| format!("opening {}", self.target.log_path.display()))?;
        let err = log.try_clone().context("duplicating the log descriptor")?;
        Ok((log, err))
    }

    /// Runs `runc --root <root> <args>` with stdio like sandboxd's helper gives a
    /// container: stdin /dev/null, stdout and stderr appended to the log.
    fn runc(&self, args: &[&str]) -> anyhow::Result<()> {
        let (out, err) = self.log()?;
        let status = Command::new(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .with_context(|| format!("running {} {args:?}", self.bin.display()))?;
        if !status.success() {
            let log = std::fs::read_to_string(&self.target.log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "runc {args:?} failed ({status}); last log lines: {:?}",
                tail.into_iter().rev().collect::<Vec<_>>()
            );
        }
        Ok(())
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    /// Writes the bundle and runs `runc create`; returns the init's pid.
    fn create(&self, id: &str, args: &[&str]) -> anyhow::Result<i32> {
        let bundle = self.bundle(id);
        setup::write_bundle(&self.target.request(SITE, id, args), &bundle, true)?;
        let pid_file = bundle.join("init.pid");
        self.runc(&[
            "create",
            "--bundle",
            path_str(&bundle)?,
            "--pid-file",
            path_str(&pid_file)?,
            id,
        ])?;
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        pid.trim()
            .parse()
            .with_context(|| format!("parsing the pid {pid:?} runc wrote"))
    }

    fn delete(&self, id: &str) -> anyhow::Result<()> {
        self.runc(&["delete", id])?;
        std::fs::remove_dir_all(self.bundle(id))
            .with_context(|| format!("removing the bundle of {id}"))
    }

    /// Bundle + create, start, wait for exit, delete + bundle removal of `/bin/true`.
    pub fn lifecycle(&self, id: &str) -> anyhow::Result<Iteration> {
        let t0 = Instant::now();
        let pid = self.create(id, &["/bin/true"])?;
        let t1 = Instant::now();
        self.runc(&["start", id])?;
        let t2 = Instant::now();
        let code = setup::wait_pid(pid)?;
        let t3 = Instant::now();
        self.delete(id)?;
        let t4 = Instant::now();
        setup::reap_strays();
        if code != 0 {
            bail!("runc sandbox {id}: /bin/true exited {code}; see the sandbox log");
        }
        Ok(Iteration {
            phases: [t1 - t0, t2 - t1, t3 - t2, t4 - t3],
        })
    }

    /// Creates and starts a sandbox running `sleep 3600`; returns its init's pid.
    pub fn start_idle(&self, id: &str) -> anyhow::Result<i32> {
        let pid = self.create(id, &["/bin/sleep", "3600"])?;
        self.runc(&["start", id])?;
        Ok(pid)
    }

    /// Kills and deletes an idle sandbox. (Not `delete --force`: it polls the init
    /// with signal 0 for up to 10 s, and a zombie answers until this process reaps it.)
    pub fn remove(&self, id: &str, pid: i32) -> anyhow::Result<()> {
        self.runc(&["kill", id, "KILL"])?;
        setup::wait_pid(pid)?;
        self.delete(id)?;
        setup::reap_strays();
        Ok(())
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}
