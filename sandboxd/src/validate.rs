//! Checks on what the agent sends before anything touches the kernel: ids become
//! directory and cgroup names, paths must exist. Every error says what to fix; the
//! service maps them to `InvalidArgument`.

use std::path::Path;

use berth_api::sandbox::CreateRequest;
use thiserror::Error;

/// A request the daemon refuses.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValidationError {
    #[error("sandbox id {0:?} is invalid: use 1-64 characters a-z, 0-9 and '-'")]
    Id(String),
    #[error("site {0:?} is invalid: use 1-64 characters a-z, 0-9 and '-'")]
    Site(String),
    #[error("rootfs {0:?} is not an existing directory: prepare the root filesystem first")]
    Rootfs(String),
    #[error("netns_path {0:?} does not exist: create the network namespace first")]
    Netns(String),
    #[error("args are empty: give the command to run")]
    NoArgs,
    #[error("log_path {0:?} is invalid: give an absolute path in an existing directory")]
    LogPath(String),
    #[error("{field} {value:?} must be an absolute path")]
    NotAbsolute { field: &'static str, value: String },
    #[error("bind mount source {0:?} does not exist")]
    BindSource(String),
    #[error("env entry {0:?} is not KEY=VALUE")]
    Env(String),
    #[error("id mapping to host ids {host_id}+{size} is invalid: give a size of at least 1 and a range above host id 0 that fits in 32 bits")]
    IdMapping { host_id: u32, size: u32 },
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks a sandbox id: `[a-z0-9-]{1,64}`.
pub fn id(id: &str) -> Result<(), ValidationError> {
    if is_name(id) {
        Ok(())
    } else {
        Err(ValidationError::Id(id.to_string()))
    }
}

fn absolute(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if Path::new(value).is_absolute() {
        Ok(())
    } else {
        Err(ValidationError::NotAbsolute {
            field,
            value: value.to_string(),
        })
    }
}

/// Checks a whole create request, including that its host paths exist.
pub fn create_request(req: &CreateRequest) -> Result<(), ValidationError> {
    id(&req.id)?;
    if !is_name(&req.site) {
        return Err(ValidationError::Site(req.site.clone()));
    }
    absolute("rootfs", &req.rootfs)?;
    if !Path::new(&req.rootfs).is_dir() {
        return Err(ValidationError::Rootfs(req.rootfs.clone()));
    }
    absolute("netns_path", &req.netns_path)?;
    if !Path::new(&req.netns_path).exists() {
        return Err(ValidationError::Netns(req.netns_path.clone()));
    }
    if req.args.is_empty() || req.args[0].is_empty() {
        return Err(ValidationError::NoArgs);
    }
    let log = Path::new(&req.log_path);
    if !log.is_absolute() || !log.parent().is_some_and(Path::is_dir) || log.is_dir() {
        return Err(ValidationError::LogPath(req.log_path.clone()));
    }
    if !req.cwd.is_empty() {
        absolute("cwd", &req.cwd)?;
    }
    if let Some(m) = req.id_mapping {
        if m.size == 0 || m.host_id == 0 || m.host_id.checked_add(m.size).is_none() {
            return Err(ValidationError::IdMapping {
                host_id: m.host_id,
                size: m.size,
            });
        }
    }
    for e in &req.env {
        if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(ValidationError::Env(e.clone()));
        }
    }
    for m in &req.mounts {
        absolute("bind mount source", &m.source)?;
        absolute("bind mount destination", &m.destination)?;
        if !Path::new(&m.source).exists() {
            return Err(ValidationError::BindSource(m.source.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::sandbox::BindMount;

    #[test]
    fn ids() {
        for good in ["a", "web-1", "0", &"a".repeat(64)] {
            assert_eq!(id(good), Ok(()), "{good}");
        }
        for bad in ["", "A", "a_b", "a.b", "../x", "a/b", " a", &"a".repeat(65)] {
            assert!(id(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    fn good_request(dir: &Path) -> CreateRequest {
        CreateRequest {
            id: "web-1".into(),
            site: "hello".into(),
            rootfs: dir.to_str().unwrap().into(),
            netns_path: dir.to_str().unwrap().into(),
            args: vec!["/bin/sh".into()],
            env: vec!["A=b".into(), "EMPTY=".into()],
            log_path: dir.join("log").to_str().unwrap().into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_requests() {
        let dir = tempfile::tempdir().unwrap();
        let ok = good_request(dir.path());
        assert_eq!(create_request(&ok), Ok(()));

        let mut r = ok.clone();
        r.rootfs = dir.path().join("missing").to_str().unwrap().into();
        assert!(matches!(
            create_request(&r),
            Err(ValidationError::Rootfs(_))
        ));

        let mut r = ok.clone();
        r.netns_path = "/run/netns/definitely-not-here-berth".into();
        assert!(matches!(create_request(&r), Err(ValidationError::Netns(_))));

        let mut r = ok.clone();
        r.site = "Bad".into();
        assert!(matches!(create_request(&r), Err(ValidationError::Site(_))));

        let mut r = ok.clone();
        r.args.clear();
        assert_eq!(create_request(&r), Err(ValidationError::NoArgs));

        let mut r = ok.clone();
        r.log_path = "relative.log".into();
        assert!(matches!(
            create_request(&r),
            Err(ValidationError::LogPath(_))
        ));

        let mut r = ok.clone();
        r.env.push("NOEQUALS".into());
        assert!(matches!(create_request(&r), Err(ValidationError::Env(_))));

        let mut r = ok.clone();
        r.mounts.push(BindMount {
            source: "/definitely/not/here".into(),
            destination: "/home".into(),
            read_only: false,
        });
        assert!(matches!(
            create_request(&r),
            Err(ValidationError::BindSource(_))
        ));

        let mut r = ok;
        r.mounts.push(BindMount {
            source: dir.path().to_str().unwrap().into(),
            destination: "home".into(),
            read_only: false,
        });
        assert!(matches!(
            create_request(&r),
            Err(ValidationError::NotAbsolute { .. })
        ));
    }
}
