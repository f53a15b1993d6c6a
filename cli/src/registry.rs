//! `berth registry login/logout`: checking registry credentials before they are saved.
//!
//! [`verify`] does what `docker login` does: `GET /v2/` without credentials, then answers
//! the registry's challenge, basic auth directly or, for `Bearer realm=...,service=...`,
//! a token request to the realm with basic auth. A 401/403 there means wrong credentials.
//! Saving is [`berth_images::credentials`]'s job. Passwords are never logged or printed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::StatusCode;

/// Errors verifying credentials against a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryLoginError {
    #[error("contacting registry {host}: {source}; check the host name and port, --registry-ca FILE for a registry whose certificate a private CA signed, and --insecure for a plain-HTTP registry")]
    Http {
        host: String,
        source: reqwest::Error,
    },
    #[error("registry {host} refused the credentials for {user:?} ({status}); check the user name and password")]
    Denied {
        host: String,
        user: String,
        status: StatusCode,
    },
    #[error("registry {host} answered {status} to {url}; is it a container registry (distribution API v2)?")]
    Unexpected {
        host: String,
        url: String,
        status: StatusCode,
    },
    #[error(
        "registry {host} asked for authentication with an unsupported challenge {challenge:?}"
    )]
    Challenge { host: String, challenge: String },
    #[error("reading CA file {path}: {detail}: give a PEM file of CA certificates")]
    CaFile { path: PathBuf, detail: String },
}

/// What [`verify`] found out.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// The registry accepted the credentials.
    Accepted,
    /// The registry needs no credentials for `/v2/`, so they could not be checked.
    NotChecked,
}

/// Whether `host` (`name[:port]`) is a loopback registry, reached over plain HTTP.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks `user`/`pass` against the registry at `host`.
#[tracing::instrument(skip(pass))]
pub async fn verify(
    host: &str,
    user: &str,
    pass: &str,
    insecure: bool,
    ca_file: Option<&Path>,
) -> Result<Verified, RegistryLoginError> {
    let http = |source| RegistryLoginError::Http {
        host: host.to_string(),
        source,
    };
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let ca = |detail: String| RegistryLoginError::CaFile {
            path: path.to_path_buf(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca("no certificate in the file".into()));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    let client = builder.build().map_err(http)?;
    let scheme = if insecure { "http" } else { "https" };
    let url = format!("{scheme}://{host}/v2/");
    let resp = client.get(&url).send().await.map_err(http)?;
    match resp.status() {
        s if s.is_success() => return Ok(Verified::NotChecked),
        StatusCode::UNAUTHORIZED => {}
        status => {
            return Err(RegistryLoginError::Unexpected {
                host: host.into(),
                url,
                status,
            })
        }
    }
    let challenge = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (scheme_name, params) = challenge.split_once(' ').unwrap_or((&challenge, ""));
    let (check_url, query) = if scheme_name.eq_ignore_ascii_case("basic") {
        (url.clone(), Vec::new())
    } else if scheme_name.eq_ignore_ascii_case("bearer") {
        let params = parse_params(params);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let Some(realm) = get("realm") else {
            return Err(RegistryLoginError::Challenge {
                host: host.into(),
                challenge,
            });
        };
        let mut q = vec![("account".to_string(), user.to_string())];
        if let Some(service) = get("service") {
            q.push(("service".into(), service));
        }
        (realm, q)
    } else {
        return Err(RegistryLoginError::Challenge {
            host: host.into(),
            challenge,
        });
    };
    let resp = client
        .get(&check_url)
        .query(&query)
        .basic_auth(user, Some(pass))
        .send()
        .await
        .map_err(http)?;
    match resp.status() {
        s if s.is_success() => Ok(Verified::Accepted),
        status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            Err(RegistryLoginError::Denied {
                host: host.into(),
                user: user.into(),
                status,
            })
        }
        status => Err(RegistryLoginError::Unexpected {
            host: host.into(),
            url: check_url,
            status,
        }),
    }
}

/// `realm="https://auth",service="registry"` -> pairs (quoted values may hold commas).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some((name, after)) = rest.split_once('=') {
        let name = name
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (q.to_string(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v.trim().to_string(), n),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((name, value));
        rest = next.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "registry.example",
            "10.0.0.1:5000",
            "ghcr.io",
            "[2001:db8::1]:443",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn bearer_params() {
        let p = parse_params(r#"realm="https://a.example/token?x=1,y",service="reg",scope=repo"#);
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://a.example/token?x=1,y".into()),
                ("service".into(), "reg".into()),
                ("scope".into(), "repo".into()),
            ]
        );
    }
}
