//! The profile: sandboxd's own helper (`berth-sandboxd __helper <json>`) run directly
//! by the benchmark, without the daemon, to split Berth's time into what
//! libcontainer in a re-executed helper costs and what the daemon adds (gRPC,
//! records, reaping, polling). Also times a helper that does nothing, and a runc
//! that does nothing, to show process start-up costs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_sandboxd::helper::{HelperResponse, HELPER_ARG};
use serde_json::{json, Value};

use crate::setup::{self, Target};
use crate::stats::Iteration;

/// Site name of the profile's sandboxes.
pub const SITE: &str = "bench-helper";

/// Runs sandboxd's helper the way the daemon does.
pub struct Helper {
    pub exe: PathBuf,
    pub state_root: PathBuf,
    pub bundles: PathBuf,
    pub target: Target,
}

impl Helper {
    /// Runs one helper request (the JSON of `berth_sandboxd::helper::HelperRequest`,
    /// written out so that fields the daemon adds keep their defaults); returns its
    /// answer.
    pub fn call(&self, req: &Value) -> anyhow::Result<HelperResponse> {
        call(&self.exe, req)
    }

    /// Bundle + helper create, helper start, wait for the init, helper delete +
    /// bundle removal: sandboxd's path minus the daemon.
    pub fn lifecycle(&self, id: &str) -> anyhow::Result<Iteration> {
        let bundle = self.bundles.join(id);
        let t0 = Instant::now();
        // The bundle and request sandboxd makes: the seccomp profile compiled (once,
        // cached) and passed beside the bundle.
        let mut spec = berth_sandboxd::spec::build(&self.target.request(SITE, id, &["/bin/true"]))
            .context("building the oci spec")?;
        let seccomp = berth_sandboxd::seccomp::bpf::compiled_for(&mut spec);
        std::fs::create_dir_all(&bundle)
            .and_then(|()| {
                spec.save(bundle.join("config.json"))
                    .map_err(std::io::Error::other)
            })
            .with_context(|| format!("writing the bundle {}", bundle.display()))?;
        let created = self.call(&json!({
            "op": "create",
            "id": id,
            "bundle": bundle,
            "state_root": self.state_root,
            "log_path": self.target.log_path,
            "netns": self.target.netns_path,
            "seccomp": seccomp.as_deref(),
        }))?;
        let pid = created
            .pid
            .context("the helper's create answer has no pid")?;
        let t1 = Instant::now();
        self.call(&json!({"op": "start", "id": id, "state_root": self.state_root}))?;
        let t2 = Instant::now();
        let code = setup::wait_pid(pid)?;
        let t3 = Instant::now();
        self.call(&json!({"op": "delete", "id": id, "state_root": self.state_root}))?;
        std::fs::remove_dir_all(&bundle)
            .with_context(|| format!("removing the bundle {}", bundle.display()))?;
        let t4 = Instant::now();
        setup::reap_strays();
        if code != 0 {
            bail!("helper sandbox {id}: /bin/true exited {code}");
        }
        Ok(Iteration {
            phases: [t1 - t0, t2 - t1, t3 - t2, t4 - t3],
        })
    }

    /// A helper that loads nothing: delete of a container that does not exist.
    pub fn noop(&self) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.call(&json!({
            "op": "delete",
            "id": "absent",
            "state_root": self.state_root.join("absent"),
        }))?;
        Ok(t0.elapsed())
    }
}

/// `runc --version`: the start-up cost of the Go binary.
pub fn runc_noop(runc: &Path) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let out = Command::new(runc)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", runc.display()))?;
    if !out.status.success() {
        bail!("{} --version failed", runc.display());
    }
    Ok(t0.elapsed())
}

/// Spawns `exe __helper <json>` and reads its one-line answer, as
/// `berth_sandboxd::helper::run` does (the answer line, not EOF: a created init
/// may keep inherited descriptors open).
fn call(exe: &Path, req: &Value) -> anyhow::Result<HelperResponse> {
    let json = req.to_string();
    let mut child = Command::new(exe)
        .arg(HELPER_ARG)
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {} {HELPER_ARG}", exe.display()))?;
    let stdout = child
        .stdout
        .take()
        .context("the helper's stdout is piped")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the helper's answer")?;
    child.wait().context("waiting for the helper")?;
    let resp: HelperResponse = serde_json::from_str(line.trim())
        .with_context(|| format!("parsing the helper's answer {line:?}"))?;
    if let Some(err) = resp.error {
        bail!("helper {req} failed: {err}");
    }
    Ok(resp)
}
