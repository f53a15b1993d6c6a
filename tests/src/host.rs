//! Looks at the host the way an operator would: processes, mounts, cgroups, network
//! namespaces and links, to prove that a deleted site left nothing behind.

use std::path::Path;

/// Pids whose command line contains every one of `needles`.
pub fn pids_with_cmdline(needles: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if needles.iter().all(|n| cmd.contains(n)) {
            out.push(pid);
        }
    }
    out
}

/// Pids whose environment holds `BERTH_INSTANCE_ID=<id>` (sandboxed apps).
pub fn pids_of_instance(id: &str) -> Vec<i32> {
    let needle = format!("BERTH_INSTANCE_ID={id}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if raw.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Mount points (from our mountinfo) containing `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("reading mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.contains(needle))
        .collect()
}

/// Cgroup directories (any controller, v1 or v2) whose path contains `needle`.
pub fn cgroups_containing(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(dir: &Path, needle: &str, depth: usize, out: &mut Vec<String>) {
        if depth > 6 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if p.to_string_lossy().contains(needle) {
                    out.push(p.display().to_string());
                }
                walk(&p, needle, depth + 1, out);
            }
        }
    }
    walk(Path::new("/sys/fs/cgroup"), needle, 0, &mut out);
    out
}

/// Named network namespaces (`/run/netns`) containing `needle`.
pub fn netns_containing(needle: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(needle))
                .collect()
        })
        .unwrap_or_default()
}

/// Host network links whose name contains `needle`.
pub fn links_containing(needle: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .expect("reading /sys/class/net")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(needle))
        .collect()
}
