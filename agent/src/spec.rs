//! Pure composition of what a sandbox runs: arguments, environment and the sandboxd
//! `CreateRequest`, from the image's config and the controller's assignment.
//!
//! Docker semantics: `args = entrypoint ++ cmd` (cmd alone without an entrypoint).
//! Environment precedence, lowest first: image env, assignment env, platform variables
//! (`PORT`, `BERTH_SITE`, `BERTH_INSTANCE_ID`).

use std::collections::BTreeMap;
use std::path::Path;

use berth_api::control::Assignment;
use berth_api::sandbox::{BindMount, CreateRequest, IdMapping, Resources};
use thiserror::Error;

/// The parts of an OCI image config the agent needs to start a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
}

/// Errors of this module.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("image has neither an entrypoint nor a cmd: set one in the image (ENTRYPOINT or CMD) and redeploy")]
    NoCommand,
    #[error(
        "instance {instance} has no valid port ({port}): the controller must assign one in 1-65535"
    )]
    NoPort { instance: String, port: u32 },
}

/// `entrypoint ++ cmd`, or `cmd` alone when there is no entrypoint.
pub fn compose_args(image: &ProcessConfig) -> Result<Vec<String>, SpecError> {
    let args: Vec<String> = image
        .entrypoint
        .iter()
        .chain(image.cmd.iter())
        .cloned()
        .collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// Image env, overridden by the assignment's env, overridden by the platform variables.
/// The order of the image's keys is kept; new keys follow sorted by name.
pub fn compose_env(image_env: &[String], assignment: &Assignment) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |key: &str, value: &str| {
        if !values.contains_key(key) {
            order.push(key.to_string());
        }
        values.insert(key.to_string(), value.to_string());
    };
    for entry in image_env {
        let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        if !key.is_empty() {
            set(key, value);
        }
    }
    let assignment_env: BTreeMap<&String, &String> = assignment.env.iter().collect();
    for (key, value) in assignment_env {
        set(key, value);
    }
    set("PORT", &assignment.port.to_string());
    set("BERTH_SITE", &assignment.site);
    set("BERTH_INSTANCE_ID", &assignment.instance_id);
    order
        .into_iter()
        .map(|k| {
            let v = &values[&k];
            format!("{k}={v}")
        })
        .collect()
}

/// Paths prepared on the worker for one instance.
#[derive(Debug, Clone)]
pub struct PreparedPaths<'a> {
    pub rootfs: &'a Path,
    pub netns: &'a Path,
    /// Host directory mounted as `/home`, if the instance has a volume.
    pub home: Option<&'a Path>,
    pub log: &'a Path,
    /// Host id range the sandbox's root maps to (its own user namespace).
    pub id_mapping: Option<IdMapping>,
}

/// The sandboxd request that creates the instance's sandbox.
pub fn create_request(
    assignment: &Assignment,
    image: &ProcessConfig,
    paths: &PreparedPaths<'_>,
) -> Result<CreateRequest, SpecError> {
    if assignment.port == 0 || assignment.port > u32::from(u16::MAX) {
        return Err(SpecError::NoPort {
            instance: assignment.instance_id.clone(),
            port: assignment.port,
        });
    }
    let args = compose_args(image)?;
    let cwd = image
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_string());
    let mounts = paths
        .home
        .map(|home| BindMount {
            source: home.display().to_string(),
            destination: "/home".to_string(),
            read_only: false,
        })
        .into_iter()
        .collect();
    Ok(CreateRequest {
        id: assignment.instance_id.clone(),
        site: assignment.site.clone(),
        rootfs: paths.rootfs.display().to_string(),
        netns_path: paths.netns.display().to_string(),
        args,
        env: compose_env(&image.env, assignment),
        cwd,
        hostname: assignment.instance_id.clone(),
        mounts,
        resources: Some(Resources {
            memory_bytes: assignment.memory_mb.saturating_mul(1024 * 1024),
            cpu_millis: assignment.cpu_millis,
            pids_max: assignment.pids_max,
            ..Default::default()
        }),
        log_path: paths.log.display().to_string(),
        uid: 0,
        gid: 0,
        id_mapping: paths.id_mapping,
        ..Default::default()
    })
}

/// Health path to probe: the assignment's, `/` when empty, always starting with `/`.
pub fn health_path(assignment: &Assignment) -> String {
    let p = assignment.health_path.trim();
    if p.is_empty() {
        "/".to_string()
    } else if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn assignment() -> Assignment {
        Assignment {
            instance_id: "hello-1".into(),
            site: "hello".into(),
            image: "127.0.0.1:5000/hello@sha256:00".into(),
            port: 8080,
            memory_mb: 256,
            cpu_millis: 500,
            pids_max: 100,
            volume: "hello-home".into(),
            generation: 3,
            env: [
                ("GREETING".to_string(), "hi".to_string()),
                ("PATH".to_string(), "/custom/bin".to_string()),
                ("PORT".to_string(), "1".to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        }
    }

    fn image() -> ProcessConfig {
        ProcessConfig {
            entrypoint: vec!["/bin/server".into(), "--flag".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
            working_dir: Some("/app".into()),
        }
    }

    #[test]
    fn args_are_entrypoint_then_cmd() {
        assert_eq!(
            compose_args(&image()).unwrap(),
            vec!["/bin/server", "--flag", "serve"]
        );
    }

    #[test]
    fn args_cmd_alone_or_entrypoint_alone() {
        let cmd_only = ProcessConfig {
            cmd: vec!["/bin/httpd".into(), "-f".into()],
            ..Default::default()
        };
        assert_eq!(compose_args(&cmd_only).unwrap(), vec!["/bin/httpd", "-f"]);
        let ep_only = ProcessConfig {
            entrypoint: vec!["/bin/app".into()],
            ..Default::default()
        };
        assert_eq!(compose_args(&ep_only).unwrap(), vec!["/bin/app"]);
        assert_eq!(
            compose_args(&ProcessConfig::default()),
            Err(SpecError::NoCommand)
        );
    }

    #[test]
    fn env_precedence_image_then_assignment_then_platform() {
        let env = compose_env(&image().env, &assignment());
        assert_eq!(
            env,
            vec![
                "PATH=/custom/bin",
                "LANG=C.UTF-8",
                "GREETING=hi",
                "PORT=8080",
                "BERTH_SITE=hello",
                "BERTH_INSTANCE_ID=hello-1",
            ]
        );
    }

    #[test]
    fn env_keeps_values_with_equals_and_skips_empty_keys() {
        let a = Assignment {
            port: 1,
            ..Default::default()
        };
        let env = compose_env(&["A=b=c".into(), "=x".into(), "FLAG".into()], &a);
        assert_eq!(&env[..2], &["A=b=c".to_string(), "FLAG=".to_string()]);
    }

    #[test]
    fn create_request_fills_everything() {
        let rootfs = PathBuf::from("/s/instances/hello-1/rootfs");
        let netns = PathBuf::from("/run/netns/berth-hello-1");
        let home = PathBuf::from("/s/volumes/hello-home");
        let log = PathBuf::from("/s/logs/hello-1.log");
        let req = create_request(
            &assignment(),
            &image(),
            &PreparedPaths {
                rootfs: &rootfs,
                netns: &netns,
                home: Some(&home),
                log: &log,
                id_mapping: Some(IdMapping {
                    host_id: 1_000_000,
                    size: 65_536,
                }),
            },
        )
        .unwrap();
        assert_eq!(req.id, "hello-1");
        assert_eq!(req.hostname, "hello-1");
        assert_eq!(req.cwd, "/app");
        assert_eq!(req.rootfs, "/s/instances/hello-1/rootfs");
        assert_eq!(req.netns_path, "/run/netns/berth-hello-1");
        assert_eq!(req.mounts.len(), 1);
        assert_eq!(req.mounts[0].source, "/s/volumes/hello-home");
        assert_eq!(req.mounts[0].destination, "/home");
        let res = req.resources.unwrap();
        assert_eq!(res.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(res.cpu_millis, 500);
        assert_eq!(res.pids_max, 100);
        assert_eq!(req.log_path, "/s/logs/hello-1.log");
        assert_eq!((req.uid, req.gid), (0, 0));
        assert_eq!(req.id_mapping.unwrap().host_id, 1_000_000);
    }

    #[test]
    fn create_request_defaults_cwd_and_requires_port() {
        let p = PathBuf::from("/x");
        let paths = PreparedPaths {
            rootfs: &p,
            netns: &p,
            home: None,
            log: &p,
            id_mapping: None,
        };
        let img = ProcessConfig {
            cmd: vec!["/bin/sh".into()],
            ..Default::default()
        };
        let req = create_request(&assignment(), &img, &paths).unwrap();
        assert_eq!(req.cwd, "/");
        assert!(req.mounts.is_empty());
        let no_port = Assignment {
            port: 0,
            ..assignment()
        };
        assert!(matches!(
            create_request(&no_port, &img, &paths),
            Err(SpecError::NoPort { .. })
        ));
    }

    #[test]
    fn health_path_defaults() {
        let mut a = assignment();
        assert_eq!(health_path(&a), "/");
        a.health_path = "healthz".into();
        assert_eq!(health_path(&a), "/healthz");
        a.health_path = "/ready?x=1".into();
        assert_eq!(health_path(&a), "/ready?x=1");
    }
}
