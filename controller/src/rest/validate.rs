//! Checks on REST request bodies, before anything touches the registry or the
//! database. Messages say what is wrong and what would be accepted.

use std::collections::BTreeMap;

use berth_api::names::validate_site_name;
use berth_api::rest::CreateSite;

use super::error::ApiFailure;

pub const MAX_INSTANCES: i64 = 100;
pub const DEFAULT_PORT: u32 = 8080;

/// A create request that passed validation (image not yet resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCreate {
    pub name: String,
    pub image: String,
    pub instances: u32,
    pub port: u32,
    pub env: BTreeMap<String, String>,
    pub insecure_registry: Option<bool>,
    pub registry_auth: String,
    pub local_cache: bool,
}

pub fn instances(n: i64) -> Result<u32, ApiFailure> {
    if n < 0 {
        return Err(ApiFailure::invalid(format!(
            "instance count {n} is invalid: instance counts must be >= 0 (0 stops the site)"
        )));
    }
    if n > MAX_INSTANCES {
        return Err(ApiFailure::invalid(format!(
            "instance count {n} is too large: at most {MAX_INSTANCES} instances per site"
        )));
    }
    Ok(n as u32)
}

fn env_key(key: &str) -> Result<(), ApiFailure> {
    let mut bytes = key.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiFailure::invalid(format!(
            "env name {key:?} is invalid: use letters, digits and '_', not starting with a digit"
        )))
    }
}

pub fn create(req: CreateSite) -> Result<ValidCreate, ApiFailure> {
    validate_site_name(&req.name).map_err(|e| ApiFailure::invalid(e.to_string()))?;
    if req.image.trim().is_empty() {
        return Err(ApiFailure::invalid(
            "image is empty: give a reference like 127.0.0.1:5000/hello:1",
        ));
    }
    let instances = instances(req.instances.unwrap_or(1))?;
    let port = req.port.unwrap_or(DEFAULT_PORT);
    if !(1..=65535).contains(&port) {
        return Err(ApiFailure::invalid(format!(
            "port {port} is invalid: use 1-65535 (the port the app listens on)"
        )));
    }
    for (k, v) in &req.env {
        env_key(k)?;
        if v.contains('\0') {
            return Err(ApiFailure::invalid(format!(
                "env value of {k:?} contains a NUL byte: remove it"
            )));
        }
    }
    let registry_auth = req.registry_auth.unwrap_or_default();
    if !registry_auth.is_empty() && !registry_auth.contains(':') {
        return Err(ApiFailure::invalid(
            "registry_auth is invalid: use user:password",
        ));
    }
    Ok(ValidCreate {
        name: req.name,
        image: req.image.trim().to_string(),
        instances,
        port,
        env: req.env,
        insecure_registry: req.insecure_registry,
        registry_auth,
        local_cache: req.local_cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> CreateSite {
        CreateSite {
            name: name.into(),
            image: "127.0.0.1:5000/hello:1".into(),
            instances: None,
            env: BTreeMap::new(),
            port: None,
            insecure_registry: None,
            registry_auth: None,
            local_cache: false,
        }
    }

    #[test]
    fn defaults() {
        let v = create(req("hello")).unwrap();
        assert_eq!(
            (v.instances, v.port, v.registry_auth.as_str()),
            (1, 8080, "")
        );
    }

    #[test]
    fn rejects_bad_names_counts_ports_env() {
        assert_eq!(create(req("Bad_Name")).unwrap_err().code, "invalid_request");
        let mut r = req("a");
        r.instances = Some(-1);
        let e = create(r).unwrap_err();
        assert!(
            e.message.contains("instance counts must be >= 0"),
            "{}",
            e.message
        );
        let mut r = req("a");
        r.instances = Some(101);
        assert!(create(r).is_err());
        let mut r = req("a");
        r.instances = Some(100);
        assert!(create(r).is_ok());
        let mut r = req("a");
        r.port = Some(70000);
        assert!(create(r).is_err());
        let mut r = req("a");
        r.env.insert("1BAD".into(), "x".into());
        assert!(create(r).is_err());
        let mut r = req("a");
        r.registry_auth = Some("nocolon".into());
        assert!(create(r).is_err());
        let mut r = req("a");
        r.image = " ".into();
        assert!(create(r).is_err());
    }
}
