//! Reading processes from `/proc`: resident memory and process trees.

use std::collections::HashMap;

/// `VmRSS` of `pid` in KiB (0 when the process is gone).
pub fn rss_kib(pid: i32) -> u64 {
    status_field(pid, "VmRSS:").unwrap_or(0)
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_field(pid: i32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Parent pid and command name of every process.
fn table() -> HashMap<i32, (i32, String)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        out.insert(pid, (ppid, comm));
    }
    out
}

/// Every descendant of `root` (not `root` itself), with its command name.
pub fn descendants(root: i32) -> Vec<(i32, String)> {
    let table = table();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (&pid, (ppid, comm)) in &table {
            if *ppid == parent {
                out.push((pid, comm.clone()));
                frontier.push(pid);
            }
        }
    }
    out.sort();
    out
}
