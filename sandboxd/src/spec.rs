//! Turns a validated [`CreateRequest`] into an OCI runtime spec (`config.json`).
//!
//! What every sandbox gets: pid, mount, uts and ipc namespaces of its own, and a user
//! namespace whenever the request carries an id mapping (container root is an
//! unprivileged host id range); the Docker default capability set with
//! `no_new_privileges`; the default seccomp profile ([`crate::seccomp`]); masked and
//! read-only `/proc` and `/sys` paths; a minimal `/dev` (libcontainer's default
//! devices, no block devices); `/tmp` as a size-limited tmpfs; an optional read-only
//! root; and resources under `/berth/<site>/<id>` with every field set so the v1 and
//! v2 managers of libcgroups apply the same limits.
//!
//! A cgroup namespace rooted at the sandbox's own cgroup hides the host's hierarchy
//! (`/proc/self/cgroup` shows `/`). It never asks for rlimits above the daemon's own,
//! and never names the network namespace: the helper joins it before libcontainer
//! creates the user namespace ([`crate::helper`]), because a process inside a new user
//! namespace may not `setns` into a namespace owned by the host's.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use berth_api::sandbox::CreateRequest;
use libcontainer::oci_spec::runtime::{
    Capability, LinuxBlockIoBuilder, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use libcontainer::oci_spec::OciSpecError;
use thiserror::Error;

use crate::cgroup::IoWeightSupport;

/// CPU period the quota derived from `cpu_millis` is expressed in (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Open-files limit given to every sandbox (soft and hard); below the worker's own.
pub const NOFILE_LIMIT: u64 = 1024;

/// Size of `/tmp` when the request gives none.
pub const DEFAULT_TMP_BYTES: u64 = 64 << 20;

/// Block io weight when the request gives none (the kernel's default).
pub const DEFAULT_IO_WEIGHT: u16 = 100;

/// Default `PATH` when the request carries none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths a tenant must not read: kernel memory, keys, timers, scheduler internals,
/// firmware and hardware tables. Docker's list.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths a tenant may read but never write.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Errors of building a spec.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("building the oci spec for sandbox {id}: {source}")]
    Build {
        id: String,
        #[source]
        source: OciSpecError,
    },
}

/// Cgroup path of a sandbox, relative to every controller's mount point.
pub fn cgroup_path(site: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("/berth/{site}/{id}"))
}

/// Cgroup path of a site: the parent of its sandboxes' cgroups.
pub fn site_cgroup_path(site: &str) -> PathBuf {
    PathBuf::from(format!("/berth/{site}"))
}

/// Docker's default capability set less `CAP_NET_RAW` (raw and packet sockets let a
/// tenant forge traffic on its veth; ping-style ICMP sockets need no capability):
/// enough for ordinary images (chown, setuid daemons, binding low ports), nothing
/// that reaches the host. Inside a user
/// namespace these only act on what the namespace owns.
pub fn default_capabilities() -> HashSet<Capability> {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// Builds the spec for `req`. The request must already be validated
/// ([`crate::validate::create_request`]).
pub fn build(req: &CreateRequest) -> Result<Spec, SpecError> {
    let id = req.id.clone();
    let err = |source| SpecError::Build {
        id: id.clone(),
        source,
    };
    let defaults = Spec::default();

    let mut env = req.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let cwd = if req.cwd.is_empty() { "/" } else { &req.cwd };
    let caps = default_capabilities();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(err)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(req.uid)
                .gid(req.gid)
                .build()
                .map_err(err)?,
        )
        .args(req.args.clone())
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(NOFILE_LIMIT)
            .hard(NOFILE_LIMIT)
            .build()
            .map_err(err)?])
        .build()
        .map_err(err)?;

    let root = RootBuilder::default()
        .path(&req.rootfs)
        .readonly(req.read_only_rootfs)
        .build()
        .map_err(err)?;

    let userns = req.id_mapping.is_some_and(|m| m.size > 0);
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(userns).map_err(err)?)
        .cgroups_path(cgroup_path(&req.site, &req.id))
        .resources(resources(req).map_err(err)?)
        .seccomp(crate::seccomp::default_profile().map_err(err)?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
        );
    if let Some(m) = req.id_mapping.filter(|m| m.size > 0) {
        let mapping = id_mapping(m.host_id, m.size).map_err(err)?;
        linux = linux
            .uid_mappings(vec![mapping])
            .gid_mappings(vec![mapping]);
    }
    let linux = linux.build().map_err(err)?;

    let hostname = if req.hostname.is_empty() {
        req.id.clone()
    } else {
        req.hostname.clone()
    };
    SpecBuilder::default()
        .version(defaults.version().clone())
        .root(root)
        .process(process)
        .hostname(hostname)
        .mounts(mounts(req, userns, defaults.mounts().clone().unwrap_or_default()).map_err(err)?)
        .linux(linux)
        .build()
        .map_err(err)
}

/// Container ids `0..size` are host ids `host_id..host_id + size`.
pub fn id_mapping(host_id: u32, size: u32) -> Result<LinuxIdMapping, OciSpecError> {
    LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(host_id)
        .size(size)
        .build()
}

fn namespaces(userns: bool) -> Result<Vec<LinuxNamespace>, OciSpecError> {
    let plain = |typ| LinuxNamespaceBuilder::default().typ(typ).build();
    let mut ns = vec![
        plain(LinuxNamespaceType::Pid)?,
        plain(LinuxNamespaceType::Mount)?,
        plain(LinuxNamespaceType::Uts)?,
        plain(LinuxNamespaceType::Ipc)?,
        plain(LinuxNamespaceType::Cgroup)?,
    ];
    if userns {
        ns.push(plain(LinuxNamespaceType::User)?);
    }
    Ok(ns)
}

/// cgroup v1 `cpu.shares` for a cpu weight on the v2 scale (1-10000, 100 = default):
/// 100 is the v1 default of 1024 shares. libcgroups' v2 manager converts shares back
/// to `cpu.weight` with runc's curve, which maps 1024 to 100 and keeps the order.
pub fn weight_to_shares(weight: u32) -> u64 {
    (u64::from(weight.clamp(1, 10_000)) * 1024 / 100).clamp(2, 262_144)
}

/// The cpu weight (v2 scale) for a request: given, or proportional to the cpu quota
/// (1000 millis = 100, the default), so a bigger plan also wins under contention.
pub fn cpu_weight(r: &berth_api::sandbox::Resources) -> u32 {
    if r.cpu_weight > 0 {
        r.cpu_weight.clamp(1, 10_000)
    } else if r.cpu_millis > 0 {
        (r.cpu_millis / 10).clamp(1, 10_000)
    } else {
        100
    }
}

/// Every resource field set, so v1 (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`,
/// `cpu.cfs_quota_us`, `cpu.shares`, `pids.max`, `blkio.weight` / `blkio.bfq.weight`)
/// and v2 (`memory.max`, `memory.swap.max`, `cpu.max`, `cpu.weight`, `pids.max`,
/// `io.weight` / `io.bfq.weight`) get the same limits from libcgroups. On v2 without
/// BFQ the io weight goes in the `unified` map as `io.weight` (see
/// [`IoWeightSupport::IoWeight`] for why not through libcgroups' conversion), and
/// `memory.swap.max` is given there too (libcgroups never writes a swap limit of 0).
pub fn resources(req: &CreateRequest) -> Result<LinuxResources, OciSpecError> {
    let r = req.resources.unwrap_or_default();
    let mut builder = LinuxResourcesBuilder::default();
    // Files written as they are on v2, after libcgroups' own.
    let mut unified = HashMap::new();
    if r.memory_bytes > 0 {
        let limit = i64::try_from(r.memory_bytes).unwrap_or(i64::MAX);
        // OCI `swap` is memory + swap (v1 memsw); libcgroups' v2 manager subtracts
        // the limit to get memory.swap.max.
        let swap = limit.saturating_add(i64::try_from(r.swap_bytes).unwrap_or(i64::MAX));
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(swap)
                .build()?,
        );
        // libcgroups 0.7 skips writing a v2 swap limit of 0 (its "unset"), which
        // left memory.swap.max at "max": no swap must be written explicitly.
        if crate::cgroup::v2_swap_limits() {
            unified.insert("memory.swap.max".to_string(), r.swap_bytes.to_string());
        }
    }
    let mut cpu = LinuxCpuBuilder::default().shares(weight_to_shares(cpu_weight(&r)));
    if r.cpu_millis > 0 {
        let quota = i64::from(r.cpu_millis) * (CPU_PERIOD_US as i64) / 1000;
        cpu = cpu.quota(quota).period(CPU_PERIOD_US);
    }
    builder = builder.cpu(cpu.build()?);
    if r.pids_max > 0 {
        builder = builder.pids(
            LinuxPidsBuilder::default()
                .limit(i64::from(r.pids_max))
                .build()?,
        );
    }
    let io_weight = if r.io_weight == 0 {
        DEFAULT_IO_WEIGHT
    } else {
        u16::try_from(r.io_weight.clamp(10, 1000)).unwrap_or(DEFAULT_IO_WEIGHT)
    };
    builder = match crate::cgroup::io_weight_support() {
        IoWeightSupport::Blkio => {
            builder.block_io(LinuxBlockIoBuilder::default().weight(io_weight).build()?)
        }
        IoWeightSupport::IoWeight => {
            unified.insert(
                "io.weight".to_string(),
                crate::cgroup::blkio_to_io_weight(io_weight).to_string(),
            );
            builder
        }
        IoWeightSupport::Unsupported => builder,
    };
    if !unified.is_empty() {
        builder = builder.unified(unified);
    }
    // Deny every device first: a new v1 devices cgroup inherits its parent's
    // `a *:* rwm`, and libcgroups only appends its allow-list (null, zero, full, tty,
    // random, urandom, ptmx, pts) after the spec's rules. Without this, CAP_MKNOD
    // makes a node for the worker's disk that opens and reads.
    builder = builder.devices(vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?]);
    builder.build()
}

fn mounts(
    req: &CreateRequest,
    userns: bool,
    defaults: Vec<Mount>,
) -> Result<Vec<Mount>, OciSpecError> {
    // Keep /proc, /dev, /dev/pts, /dev/shm and /dev/mqueue; drop the cgroup mount (the
    // app has no use for its cgroup files, and on v1 the mount would need one per
    // controller). sysfs can only be
    // mounted by the owner of the network namespace, which in a user namespace the
    // sandbox is not: there /sys is an empty read-only tmpfs.
    let mut mounts: Vec<Mount> = defaults
        .into_iter()
        .filter(|m| !m.destination().starts_with(Path::new("/sys/fs/cgroup")))
        .filter(|m| !(userns && m.destination() == Path::new("/sys")))
        .collect();
    if userns {
        mounts.push(
            MountBuilder::default()
                .destination("/sys")
                .typ("tmpfs")
                .source("tmpfs")
                .options(
                    ["nosuid", "nodev", "noexec", "ro", "size=4k", "mode=555"]
                        .map(String::from)
                        .to_vec(),
                )
                .build()?,
        );
    }
    let tmp_bytes = if req.tmp_bytes == 0 {
        DEFAULT_TMP_BYTES
    } else {
        req.tmp_bytes
    };
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".to_string(),
                "nodev".to_string(),
                "mode=1777".to_string(),
                format!("size={tmp_bytes}"),
            ])
            .build()?,
    );
    for bind in &req.mounts {
        let mut options = vec![
            "rbind".to_string(),
            "rslave".to_string(),
            "nosuid".to_string(),
            "nodev".to_string(),
        ];
        if bind.read_only {
            options.push("ro".to_string());
        }
        mounts.push(
            MountBuilder::default()
                .destination(&bind.destination)
                .typ("bind")
                .source(&bind.source)
                .options(options)
                .build()?,
        );
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::sandbox::{BindMount, Resources};

    fn request() -> CreateRequest {
        CreateRequest {
            id: "web-1".into(),
            site: "hello".into(),
            rootfs: "/tmp/rootfs".into(),
            netns_path: "/run/netns/berth-web-1".into(),
            args: vec!["/bin/app".into(), "--port".into(), "8080".into()],
            env: vec!["PORT=8080".into()],
            cwd: "/srv".into(),
            hostname: "web".into(),
            mounts: vec![
                BindMount {
                    source: "/var/home".into(),
                    destination: "/home".into(),
                    read_only: false,
                },
                BindMount {
                    source: "/etc/ro".into(),
                    destination: "/etc/ro".into(),
                    read_only: true,
                },
            ],
            resources: Some(Resources {
                memory_bytes: 64 << 20,
                cpu_millis: 500,
                pids_max: 100,
                swap_bytes: 16 << 20,
                cpu_weight: 0,
                io_weight: 500,
            }),
            log_path: "/tmp/log".into(),
            uid: 1000,
            gid: 1000,
            id_mapping: Some(berth_api::sandbox::IdMapping {
                host_id: 1_000_000,
                size: 65_536,
            }),
            read_only_rootfs: true,
            tmp_bytes: 8 << 20,
        }
    }

    /// The io weight is in the file this host's cgroups offer.
    fn assert_io_weight(res: &LinuxResources, weight: u16) {
        match crate::cgroup::io_weight_support() {
            IoWeightSupport::Blkio => {
                assert_eq!(res.block_io().as_ref().unwrap().weight(), Some(weight))
            }
            IoWeightSupport::IoWeight => {
                assert!(res.block_io().is_none());
                let unified = res.unified().as_ref().unwrap();
                assert_eq!(
                    unified["io.weight"],
                    crate::cgroup::blkio_to_io_weight(weight).to_string()
                );
            }
            IoWeightSupport::Unsupported => assert!(res.block_io().is_none()),
        }
    }

    #[test]
    fn spec_has_berth_shape() {
        let spec = build(&request()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/berth/hello/web-1"))
        );
        let ns = linux.namespaces().as_ref().unwrap();
        let types: Vec<_> = ns.iter().map(|n| n.typ()).collect();
        assert!(types.contains(&LinuxNamespaceType::User));
        assert!(types.contains(&LinuxNamespaceType::Cgroup));
        // The helper joins the network namespace before libcontainer runs.
        assert!(!types.contains(&LinuxNamespaceType::Network));
        let uid_map = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (uid_map.container_id(), uid_map.host_id(), uid_map.size()),
            (0, 1_000_000, 65_536)
        );
        assert_eq!(linux.gid_mappings().as_ref().unwrap()[0], *uid_map);
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(seccomp.default_errno_ret(), Some(libc::EPERM as u32));
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/proc/sched_debug",
        ] {
            assert!(linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&p.to_string()));
        }
        assert!(linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".to_string()));

        let res = linux.resources().as_ref().unwrap();
        let mem = res.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(mem.swap(), Some(80 << 20));
        if crate::cgroup::v2_swap_limits() {
            let unified = res.unified().as_ref().unwrap();
            assert_eq!(unified["memory.swap.max"], (16u64 << 20).to_string());
        }
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        // 500 millis -> weight 50 -> 512 shares.
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 100);
        assert_io_weight(res, 500);

        let mounts = spec.mounts().as_ref().unwrap();
        let dests: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/tmp",
        ] {
            assert!(dests.contains(&PathBuf::from(d)), "missing {d}");
        }
        assert!(!dests.iter().any(|d| d.starts_with("/sys/fs/cgroup")));
        let sys = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert_eq!(sys.typ().as_deref(), Some("tmpfs"), "no sysfs in a userns");
        let tmp = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/tmp"))
            .unwrap();
        assert!(tmp
            .options()
            .as_ref()
            .unwrap()
            .contains(&format!("size={}", 8 << 20)));
        let home = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/home"))
            .unwrap();
        assert_eq!(
            home.options().as_deref().unwrap(),
            ["rbind", "rslave", "nosuid", "nodev"].map(String::from)
        );
        let ro = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/etc/ro"))
            .unwrap();
        assert!(ro.options().as_ref().unwrap().contains(&"ro".to_string()));

        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(process.cwd(), Path::new("/srv"));
        let env = process.env().as_ref().unwrap();
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        let rl = &process.rlimits().as_ref().unwrap()[0];
        assert_eq!(rl.hard(), NOFILE_LIMIT);
        let caps = process.capabilities().as_ref().unwrap();
        assert!(caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::Chown));
        assert!(!caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert_eq!(spec.hostname().as_deref(), Some("web"));
    }

    #[test]
    fn zero_resources_mean_unlimited() {
        let mut req = request();
        req.resources = None;
        req.hostname.clear();
        req.id_mapping = None;
        let spec = build(&req).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        assert!(res.memory().is_none());
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.shares()), (None, Some(1024)));
        assert!(res.pids().is_none());
        assert_io_weight(res, 100);
        assert!(linux.uid_mappings().is_none());
        let types: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(!types.contains(&LinuxNamespaceType::User));
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap()
            .clone();
        assert_eq!(sys.typ().as_deref(), Some("sysfs"));
        assert_eq!(spec.hostname().as_deref(), Some("web-1"));
    }
}
