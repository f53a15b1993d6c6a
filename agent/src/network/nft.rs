//! The host firewall for sandbox egress, as nftables scripts fed to `nft -f -`.
//!
//! Why a generated script and the `nft` binary rather than netlink from Rust: a script is
//! one kernel transaction (the whole base ruleset or one instance's rules appear or vanish
//! atomically, never half), it reads exactly like what an operator sees in
//! `nft list table inet berth`, and the nftables netlink encoding of expressions such as
//! `ct count` and verdict maps is large and has no maintained Rust crate; `nft` is the
//! reference implementation of that encoding. The cost is one process per change
//! (a few milliseconds), only on instance start and stop.
//!
//! Everything lives in Berth's own table `inet berth`, shared by every agent on the host:
//! the base chains are flushed and refilled in one transaction at agent start (idempotent,
//! no window without rules), per-instance state is one chain, one named counter and one
//! map element keyed by the veth name. Nothing outside this table is touched.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use thiserror::Error;

use super::pool::Ipv4Net;

/// Berth's table (family `inet`).
pub const TABLE: &str = "berth";

/// Errors of running `nft`.
#[derive(Debug, Error)]
pub enum NftError {
    #[error("running nft (install the Debian package nftables): {0}")]
    Spawn(std::io::Error),
    #[error("nft {what} failed: {stderr}")]
    Failed { what: String, stderr: String },
}

/// Base chains: what every sandbox may and may not reach.
///
/// - input: nothing from a sandbox veth reaches the host itself (every address of the
///   worker, so every platform port listening on it, and the host end of the veth);
/// - forward: replies pass; new flows from a sandbox go to `sandbox_out`; nothing from
///   outside may open a flow into a sandbox;
/// - sandbox_out: no IPv6, no other sandbox (by interface and by pool address), no
///   loopback or link-local (cloud metadata) destinations; then the instance's own chain
///   through the `sandboxes` map (anti-spoofing, connection limit); an unknown veth is
///   dropped;
/// - postrouting: masquerade pool addresses leaving through any other interface.
pub fn base_ruleset(pool: Ipv4Net) -> String {
    format!(
        r#"add table inet {TABLE}
add chain inet {TABLE} input {{ type filter hook input priority filter; policy accept; }}
add chain inet {TABLE} forward {{ type filter hook forward priority filter; policy accept; }}
add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain inet {TABLE} sandbox_out
add map inet {TABLE} sandboxes {{ type ifname : verdict; }}
flush chain inet {TABLE} input
flush chain inet {TABLE} forward
flush chain inet {TABLE} postrouting
flush chain inet {TABLE} sandbox_out
add rule inet {TABLE} input iifname "bv*" counter reject with icmpx type admin-prohibited
add rule inet {TABLE} forward ct state established,related accept
add rule inet {TABLE} forward iifname "bv*" jump sandbox_out
add rule inet {TABLE} forward oifname "bv*" counter drop
add rule inet {TABLE} forward ip daddr {pool} counter drop
add rule inet {TABLE} sandbox_out ct state invalid drop
add rule inet {TABLE} sandbox_out meta nfproto != ipv4 counter drop
add rule inet {TABLE} sandbox_out oifname "bv*" counter reject with icmpx type admin-prohibited
add rule inet {TABLE} sandbox_out ip daddr {{ {pool}, 127.0.0.0/8, 169.254.0.0/16, 0.0.0.0/8, 224.0.0.0/4, 255.255.255.255 }} counter reject with icmpx type admin-prohibited
add rule inet {TABLE} sandbox_out iifname vmap @sandboxes
add rule inet {TABLE} sandbox_out counter drop
add rule inet {TABLE} postrouting ip saddr {pool} oifname != "bv*" masquerade
"#
    )
}

/// Names of one instance's nftables objects, derived from its veth name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceObjects {
    pub veth: String,
    pub chain: String,
    pub counter: String,
}

impl InstanceObjects {
    pub fn for_veth(veth: &str) -> Self {
        Self {
            veth: veth.to_string(),
            chain: format!("i_{veth}"),
            counter: format!("rej_{veth}"),
        }
    }
}

/// One instance's rules: only its own source address leaves its veth, and a new flow
/// over `limit` open ones is rejected and counted.
pub fn instance_ruleset(o: &InstanceObjects, sandbox_ip: Ipv4Addr, limit: u32) -> String {
    let InstanceObjects {
        veth,
        chain,
        counter,
    } = o;
    format!(
        r#"add chain inet {TABLE} {chain}
add counter inet {TABLE} {counter}
flush chain inet {TABLE} {chain}
add rule inet {TABLE} {chain} ip saddr != {sandbox_ip} counter drop
add rule inet {TABLE} {chain} ct state new ct count over {limit} counter name "{counter}" reject with icmpx type admin-prohibited
add rule inet {TABLE} {chain} accept
add element inet {TABLE} sandboxes {{ "{veth}" : jump {chain} }}
"#
    )
}

/// Runs `script` as one `nft -f -` transaction.
pub fn apply(what: &str, script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Failed {
            what: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `nft <args>`, returning stdout.
fn run(args: &[&str]) -> Result<String, NftError> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Failed {
            what: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn missing(e: &NftError) -> bool {
    matches!(e, NftError::Failed { stderr, .. } if stderr.contains("No such file or directory"))
}

/// Removes one instance's objects; each step tolerates objects already gone, so a
/// half-made instance is cleaned as well as a whole one.
pub fn remove_instance(o: &InstanceObjects) -> Result<(), NftError> {
    let element = format!("{{ \"{}\" }}", o.veth);
    let steps: [&[&str]; 4] = [
        &["delete", "element", "inet", TABLE, "sandboxes", &element],
        &["flush", "chain", "inet", TABLE, &o.chain],
        &["delete", "chain", "inet", TABLE, &o.chain],
        &["delete", "counter", "inet", TABLE, &o.counter],
    ];
    for args in steps {
        match run(args) {
            Ok(_) => {}
            Err(e) if missing(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Packets counted by every named counter of the table (`rej_<veth>` -> rejected flows).
pub fn counters() -> Result<Vec<(String, u64)>, NftError> {
    let out = match run(&["-j", "list", "counters", "table", "inet", TABLE]) {
        Ok(out) => out,
        Err(e) if missing(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse_counters(&out))
}

fn parse_counters(json: &str) -> Vec<(String, u64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    v["nftables"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    let c = i.get("counter")?;
                    Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True if anything of `o` is still in the table (for tests and leak checks).
pub fn instance_present(o: &InstanceObjects) -> Result<bool, NftError> {
    let out = match run(&["list", "table", "inet", TABLE]) {
        Ok(out) => out,
        Err(e) if missing(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(out.contains(&o.chain) || out.contains(&o.counter) || out.contains(&o.veth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_only_berth_objects() {
        let pool: Ipv4Net = "10.240.0.0/16".parse().unwrap();
        let base = base_ruleset(pool);
        assert!(base
            .lines()
            .all(|l| l.contains(&format!("inet {TABLE}")) || l.is_empty()));
        assert!(base.contains("masquerade"));
        let o = InstanceObjects::for_veth("bvabc123");
        let inst = instance_ruleset(&o, Ipv4Addr::new(10, 240, 0, 2), 1920);
        assert!(inst.contains("ct count over 1920"));
        assert!(inst.contains("ip saddr != 10.240.0.2"));
        assert!(inst.contains("\"bvabc123\" : jump i_bvabc123"));
    }

    #[test]
    fn parses_counter_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "rej_bvx", "table": "berth", "handle": 19, "packets": 3, "bytes": 180}}]}"#;
        assert_eq!(parse_counters(json), vec![("rej_bvx".to_string(), 3)]);
        assert!(parse_counters("garbage").is_empty());
    }
}
