//! Reads a sandbox's cgroup files from the host on either cgroup layout, so the same
//! daemon tests assert the same behaviour on v1 (one hierarchy per controller, this
//! machine) and v2 (the unified hierarchy: `scripts/cgroup-v2-vm.sh` runs these tests
//! in a guest booted with `cgroup_no_v1=all`).
//!
//! Each reader maps one v1 file to its v2 counterpart:
//!
//! | what                | v1                                        | v2                          |
//! |---------------------|-------------------------------------------|-----------------------------|
//! | memory limit        | `memory.limit_in_bytes`                   | `memory.max`                |
//! | swap limit          | `memory.memsw.limit_in_bytes` (mem+swap)  | `memory.swap.max` (swap)    |
//! | cpu quota / period  | `cpu.cfs_quota_us`, `cpu.cfs_period_us`   | `cpu.max`                   |
//! | cpu weight          | `cpu.shares`                              | `cpu.weight`                |
//! | pids limit          | `pids.max`                                | `pids.max`                  |
//! | io weight           | `blkio.bfq.weight` / `blkio.weight`       | `io.bfq.weight` / `io.weight` |
//! | OOM kills           | `memory.oom_control` `oom_kill`           | `memory.events` `oom_kill`  |
//! | processes           | `pids/…/cgroup.procs`                     | `cgroup.procs`              |
//!
//! (Killing the whole cgroup, freezer on v1 and `cgroup.kill` on v2, is checked by its
//! effect: no process of the cgroup survives a Stop.)

use std::path::{Path, PathBuf};

/// Whether `/sys/fs/cgroup` is the unified (v2) hierarchy.
pub fn unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The layout's name for messages.
pub fn layout() -> &'static str {
    if unified() {
        "cgroup v2"
    } else {
        "cgroup v1"
    }
}

/// Directory of the cgroup `/berth/<site>/<id>` for `controller` (v1: under the
/// controller's hierarchy; v2: the one unified directory). An empty `id` gives the
/// site's parent cgroup.
pub fn dir(controller: &str, site: &str, id: &str) -> PathBuf {
    let base = if unified() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        Path::new("/sys/fs/cgroup").join(controller)
    };
    let site_dir = base.join("berth").join(site);
    if id.is_empty() {
        site_dir
    } else {
        site_dir.join(id)
    }
}

/// Contents of `file` in the cgroup's `controller` directory; panics naming the path.
pub fn read(controller: &str, site: &str, id: &str, file: &str) -> String {
    let path = dir(controller, site, id).join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {} ({}): {e}", path.display(), layout()))
}

fn number(controller: &str, site: &str, id: &str, file: &str) -> Option<u64> {
    let s = read(controller, site, id, file);
    match s.trim() {
        "max" => None,
        v => Some(
            v.parse()
                .unwrap_or_else(|e| panic!("{file} holds {v:?}, not a number: {e}")),
        ),
    }
}

/// The memory controller's directory (v1) or the unified directory (v2).
pub fn memory_dir(site: &str, id: &str) -> PathBuf {
    dir("memory", site, id)
}

/// The memory limit in bytes (None: unlimited).
pub fn memory_limit(site: &str, id: &str) -> Option<u64> {
    if unified() {
        number("memory", site, id, "memory.max")
    } else {
        // v1 shows "unlimited" as a huge page-aligned number.
        number("memory", site, id, "memory.limit_in_bytes").filter(|v| *v < (1 << 62))
    }
}

/// The swap a sandbox may use on top of its memory limit, in bytes (None: unlimited).
/// v1 limits memory+swap together (`memsw`); v2 limits swap alone.
pub fn swap_limit(site: &str, id: &str) -> Option<u64> {
    if unified() {
        number("memory", site, id, "memory.swap.max")
    } else {
        let memsw =
            number("memory", site, id, "memory.memsw.limit_in_bytes").filter(|v| *v < (1 << 62));
        let mem = memory_limit(site, id);
        memsw.map(|memsw| memsw - mem.expect("memsw limited but memory is not"))
    }
}

/// The cpu quota and period in microseconds (quota None: unlimited).
pub fn cpu_max(site: &str, id: &str) -> (Option<u64>, u64) {
    if unified() {
        let s = read("cpu", site, id, "cpu.max");
        let (quota, period) = s
            .trim()
            .split_once(' ')
            .unwrap_or_else(|| panic!("cpu.max holds {s:?}"));
        let quota = (quota != "max").then(|| quota.parse().unwrap());
        (quota, period.parse().unwrap())
    } else {
        let quota = read("cpu", site, id, "cpu.cfs_quota_us");
        let quota: i64 = quota.trim().parse().unwrap();
        let period = number("cpu", site, id, "cpu.cfs_period_us").unwrap();
        (u64::try_from(quota).ok(), period)
    }
}

/// The cpu weight file's value: `cpu.shares` (v1, default 1024) or `cpu.weight`
/// (v2, default 100).
pub fn cpu_weight_raw(site: &str, id: &str) -> u64 {
    let file = if unified() {
        "cpu.weight"
    } else {
        "cpu.shares"
    };
    number("cpu", site, id, file).unwrap()
}

/// What the cpu weight file must hold for `shares` given to libcgroups: the shares
/// themselves on v1; on v2 libcgroups (like runc) converts them with
/// `ceil(10^((l² + 125 l) / 612 − 7/34))`, `l = log2(shares)`, which maps the v1
/// default 1024 to the v2 default 100 and keeps the order.
pub fn expected_cpu_weight_raw(shares: u64) -> u64 {
    if !unified() {
        return shares;
    }
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    (10f64.powf(exponent).ceil() as u64).clamp(1, 10_000)
}

/// The pids limit (None: unlimited).
pub fn pids_max(site: &str, id: &str) -> Option<u64> {
    number("pids", site, id, "pids.max")
}

/// The io weight in the BFQ scale (10-1000) when the BFQ weight file exists (v1
/// `blkio.bfq.weight`, v2 `io.bfq.weight`, which read "default N"), else the
/// generic file's value as the kernel shows it (v1 `blkio.weight`; v2 `io.weight`,
/// on the 1-10000 scale). Returns (file, value), or `None` when the cgroup has
/// neither file (a v1 host whose kernel has no BFQ or CFQ scheduler: no io weight
/// exists to set).
pub fn io_weight(site: &str, id: &str) -> Option<(&'static str, u64)> {
    let (controller, bfq, generic) = if unified() {
        ("io", "io.bfq.weight", "io.weight")
    } else {
        ("blkio", "blkio.bfq.weight", "blkio.weight")
    };
    let file = if dir(controller, site, id).join(bfq).exists() {
        bfq
    } else if dir(controller, site, id).join(generic).exists() {
        generic
    } else {
        return None;
    };
    let s = read(controller, site, id, file);
    // "default 300" (+ per-device lines) or a bare "300".
    let first = s.lines().next().unwrap_or_default();
    let value = first
        .strip_prefix("default ")
        .unwrap_or(first)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{file} holds {s:?}: {e}"));
    Some((file, value))
}

/// How many processes the kernel OOM-killed in the cgroup.
pub fn oom_kills(site: &str, id: &str) -> u64 {
    let file = if unified() {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    let s = read("memory", site, id, file);
    s.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .unwrap_or_else(|| panic!("no oom_kill line in {file}: {s:?}"))
        .trim()
        .parse()
        .unwrap()
}

/// Pids in the cgroup (`cgroup.procs` of the pids hierarchy on v1).
pub fn procs(site: &str, id: &str) -> Vec<i32> {
    read("pids", site, id, "cgroup.procs")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

/// Removes the site's parent cgroup everywhere (test cleanup; empty cgroups only).
pub fn remove_site(site: &str) {
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup/berth").join(site));
    for controller in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(controller.path().join("berth").join(site));
    }
}
