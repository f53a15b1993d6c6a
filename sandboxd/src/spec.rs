//! Turns a validated [`CreateRequest`] into an OCI runtime spec (`config.json`).
//!
//! The spec starts from `oci_spec`'s default (masked and read-only paths, `/proc`,
//! `/dev`, …) and then pins what Berth relies on: the agent's rootfs and network
//! namespace, a private `/tmp`, the caller's bind mounts, a Docker-like capability set,
//! `no_new_privileges`, and resources under `/berth/<site>/<id>`. It never adds a user
//! or cgroup namespace and never asks for rlimits above the daemon's own.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use berth_api::sandbox::CreateRequest;
use libcontainer::oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use thiserror::Error;

/// CPU period the quota derived from `cpu_millis` is expressed in (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Open-files limit given to every sandbox (soft and hard); below the worker's own.
pub const NOFILE_LIMIT: u64 = 1024;

/// Default `PATH` when the request carries none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors of building a spec.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("building the oci spec for sandbox {id}: {source}")]
    Build {
        id: String,
        #[source]
        source: libcontainer::oci_spec::OciSpecError,
    },
}

/// Cgroup path of a sandbox, relative to every controller's mount point.
pub fn cgroup_path(site: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("/berth/{site}/{id}"))
}

/// The Docker default capability set: enough for ordinary images (chown, setuid
/// daemons, binding low ports), nothing that reaches the host.
fn default_capabilities() -> HashSet<Capability> {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
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
        .readonly(false)
        .build()
        .map_err(err)?;

    let linux_defaults = defaults.linux().clone().unwrap_or_default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces(&req.netns_path).map_err(err)?)
        .cgroups_path(cgroup_path(&req.site, &req.id))
        .resources(resources(req).map_err(err)?)
        .masked_paths(linux_defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(linux_defaults.readonly_paths().clone().unwrap_or_default())
        .build()
        .map_err(err)?;

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
        .mounts(mounts(req, defaults.mounts().clone().unwrap_or_default()).map_err(err)?)
        .linux(linux)
        .build()
        .map_err(err)
}

fn namespaces(
    netns_path: &str,
) -> Result<Vec<LinuxNamespace>, libcontainer::oci_spec::OciSpecError> {
    let plain = |typ| LinuxNamespaceBuilder::default().typ(typ).build();
    Ok(vec![
        plain(LinuxNamespaceType::Pid)?,
        plain(LinuxNamespaceType::Mount)?,
        plain(LinuxNamespaceType::Uts)?,
        plain(LinuxNamespaceType::Ipc)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(netns_path)
            .build()?,
    ])
}

fn resources(
    req: &CreateRequest,
) -> Result<libcontainer::oci_spec::runtime::LinuxResources, libcontainer::oci_spec::OciSpecError> {
    let r = req.resources.unwrap_or_default();
    let mut builder = LinuxResourcesBuilder::default();
    if r.memory_bytes > 0 {
        let limit = i64::try_from(r.memory_bytes).unwrap_or(i64::MAX);
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()?,
        );
    }
    if r.cpu_millis > 0 {
        let quota = i64::from(r.cpu_millis) * (CPU_PERIOD_US as i64) / 1000;
        builder = builder.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    if r.pids_max > 0 {
        builder = builder.pids(
            LinuxPidsBuilder::default()
                .limit(i64::from(r.pids_max))
                .build()?,
        );
    }
    builder.build()
}

fn mounts(
    req: &CreateRequest,
    defaults: Vec<Mount>,
) -> Result<Vec<Mount>, libcontainer::oci_spec::OciSpecError> {
    // Keep /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue and /sys; drop the cgroup
    // mount (no cgroup namespace: it would show the host's hierarchy).
    let mut mounts: Vec<Mount> = defaults
        .into_iter()
        .filter(|m| !m.destination().starts_with(Path::new("/sys/fs/cgroup")))
        .collect();
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(
                ["nosuid", "nodev", "mode=1777", "size=64m"]
                    .map(String::from)
                    .to_vec(),
            )
            .build()?,
    );
    for bind in &req.mounts {
        let mut options = vec!["rbind".to_string(), "rslave".to_string()];
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
            }),
            log_path: "/tmp/log".into(),
            uid: 1000,
            gid: 1000,
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
        assert!(!types.contains(&LinuxNamespaceType::User));
        assert!(!types.contains(&LinuxNamespaceType::Cgroup));
        let net = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(
            net.path().as_deref(),
            Some(Path::new("/run/netns/berth-web-1"))
        );

        let res = linux.resources().as_ref().unwrap();
        let mem = res.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(mem.swap(), Some(64 << 20));
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 100);
        assert!(!linux.masked_paths().as_ref().unwrap().is_empty());

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
        let home = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/home"))
            .unwrap();
        assert_eq!(
            home.options().as_deref().unwrap(),
            ["rbind".to_string(), "rslave".to_string()]
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
        let spec = build(&req).unwrap();
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert!(res.memory().is_none());
        assert!(res.cpu().is_none());
        assert!(res.pids().is_none());
        assert_eq!(spec.hostname().as_deref(), Some("web-1"));
    }
}
