//! The veth pair of one sandbox, made with iproute2 (`ip -batch`, two processes per
//! instance): the host end `bv<suffix>` keeps the /30's first address, the sandbox end is
//! moved into the instance's namespace as `eth0` with the second address and a default
//! route through the host end.
//!
//! It must never touch a link it did not name: every command names `bv<suffix>` or runs
//! inside the instance's own namespace.

use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

use super::pool::Block;

/// Name of the sandbox end inside the namespace.
pub const SANDBOX_IF: &str = "eth0";

/// Errors of link setup.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("running ip (install the Debian package iproute2): {0}")]
    Spawn(std::io::Error),
    #[error("ip {what} failed: {stderr}")]
    Failed { what: String, stderr: String },
}

fn ip_batch(netns: Option<&str>, script: &str, what: &str) -> Result<(), LinkError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LinkError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(LinkError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(LinkError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LinkError::Failed {
            what: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Creates the pair `veth` (host) / `eth0` (in `netns`, a name under /run/netns) and
/// configures both ends for `block`.
pub fn create(veth: &str, netns: &str, block: Block) -> Result<(), LinkError> {
    let host = format!(
        "link add {veth} type veth peer name {SANDBOX_IF} netns {netns}\n\
         addr add {}/30 dev {veth}\n\
         link set {veth} up\n",
        block.host()
    );
    ip_batch(None, &host, &format!("creating veth {veth}"))?;
    // The sandbox end needs no IPv6 (the host drops it anyway): no link-local chatter.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{veth}/disable_ipv6"), "1");
    let inside = format!(
        "addr add {}/30 dev {SANDBOX_IF}\n\
         link set {SANDBOX_IF} up\n\
         route add default via {}\n",
        block.sandbox(),
        block.host()
    );
    ip_batch(
        Some(netns),
        &inside,
        &format!("configuring {SANDBOX_IF} in {netns}"),
    )
}

/// Deletes `veth` (its peer goes with it); a missing link is not an error.
pub fn delete(veth: &str) -> Result<(), LinkError> {
    if !exists(veth) {
        return Ok(());
    }
    match ip_batch(
        None,
        &format!("link del {veth}\n"),
        &format!("deleting {veth}"),
    ) {
        Err(LinkError::Failed { stderr, .. }) if stderr.contains("Cannot find device") => Ok(()),
        other => other,
    }
}

/// True if a host link named `name` exists.
pub fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}
