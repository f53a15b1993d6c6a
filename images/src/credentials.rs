//! Registry credentials on the user's machine.
//!
//! Two files share docker's `config.json` shape (`{"auths": {"<host>": {...}}}`, each entry
//! holding either `auth` = base64 of `user:password` or `username` + `password`):
//! - Berth's own `$BERTH_CONFIG_DIR/auth.json` (default `$HOME/.config/berth/auth.json`),
//!   written by `berth registry login`;
//! - docker's `$DOCKER_CONFIG/config.json` (default `$HOME/.docker/config.json`), only read.
//!
//! [`lookup`] prefers Berth's file. [`store`] rewrites Berth's file atomically (a 0600
//! temporary file renamed over it, in a 0700 directory) so a crash never leaves half a file
//! and the password is never readable by other users, not even for a moment. Other keys of
//! either file (docker's `credsStore`, `HttpHeaders`, ...) are kept as they are and ignored.
//!
//! This module never logs or prints a password. The `*_in` functions take explicit paths
//! (tests use them); the others read the environment.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

/// Errors reading or writing credential files.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading credentials file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("credentials file {path} is not valid JSON ({source}); fix it or delete it")]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "credentials file {path}: entry for {host:?} is malformed: {why}; fix it or delete it"
    )]
    BadEntry {
        path: PathBuf,
        host: String,
        why: String,
    },
    #[error("writing credentials file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot find the credentials files: neither {var} nor HOME is set")]
    NoHome { var: &'static str },
    #[error("registry host must not be empty")]
    EmptyHost,
    #[error("user name must not be empty or contain ':'")]
    BadUser,
}

/// Berth's credentials file: `$BERTH_CONFIG_DIR/auth.json`, else `$HOME/.config/berth/auth.json`.
pub fn berth_file() -> Result<PathBuf, CredentialsError> {
    if let Some(d) = std::env::var_os("BERTH_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("auth.json"));
    }
    let home = home("BERTH_CONFIG_DIR")?;
    Ok(home.join(".config/berth/auth.json"))
}

/// Docker's credentials file: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn docker_file() -> Result<PathBuf, CredentialsError> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("config.json"));
    }
    Ok(home("DOCKER_CONFIG")?.join(".docker/config.json"))
}

fn home(var: &'static str) -> Result<PathBuf, CredentialsError> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or(CredentialsError::NoHome { var })
}

/// Credentials for `host` (e.g. `registry.example.com:5000`): Berth's file first, then docker's.
pub fn lookup(host: &str) -> Result<Option<(String, String)>, CredentialsError> {
    lookup_in(&[berth_file()?, docker_file()?], host)
}

/// Credentials for `host` from the first of `files` that has an entry for it. Missing files
/// are skipped; an unreadable or malformed file is an error (silently ignoring it would
/// send a deploy off without the credentials the user thinks they gave).
pub fn lookup_in<P: AsRef<Path>>(
    files: &[P],
    host: &str,
) -> Result<Option<(String, String)>, CredentialsError> {
    for f in files {
        let f = f.as_ref();
        let Some(doc) = read(f)? else { continue };
        if let Some(entry) = find_entry(&doc, host) {
            if let Some(c) = decode_entry(f, host, entry)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

/// Saves credentials for `host` in Berth's file; returns its path.
pub fn store(host: &str, user: &str, pass: &str) -> Result<PathBuf, CredentialsError> {
    let path = berth_file()?;
    store_in(&path, host, user, pass)?;
    Ok(path)
}

/// Removes `host` from Berth's file; returns its path and whether there was an entry.
pub fn remove(host: &str) -> Result<(PathBuf, bool), CredentialsError> {
    let path = berth_file()?;
    let had = remove_in(&path, host)?;
    Ok((path, had))
}

/// Saves credentials for `host` in the file at `path` (Berth's `auths` shape).
pub fn store_in(path: &Path, host: &str, user: &str, pass: &str) -> Result<(), CredentialsError> {
    if host.is_empty() {
        return Err(CredentialsError::EmptyHost);
    }
    if user.is_empty() || user.contains(':') {
        return Err(CredentialsError::BadUser);
    }
    let mut doc = read(path)?.unwrap_or_else(|| Value::Object(Map::new()));
    let auths = auths_mut(path, &mut doc)?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut entry = Map::new();
    entry.insert("auth".into(), Value::String(token));
    auths.insert(host.to_string(), Value::Object(entry));
    write_atomic(path, &doc)
}

/// Removes `host` from the file at `path`; returns whether it had an entry.
pub fn remove_in(path: &Path, host: &str) -> Result<bool, CredentialsError> {
    let Some(mut doc) = read(path)? else {
        return Ok(false);
    };
    let auths = auths_mut(path, &mut doc)?;
    if auths.remove(host).is_none() {
        return Ok(false);
    }
    write_atomic(path, &doc)?;
    Ok(true)
}

fn read(path: &Path) -> Result<Option<Value>, CredentialsError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.into(),
                source,
            })
        }
    };
    let doc: Value =
        serde_json::from_slice(&text).map_err(|source| CredentialsError::Malformed {
            path: path.into(),
            source,
        })?;
    if !doc.is_object() {
        return Err(CredentialsError::BadEntry {
            path: path.into(),
            host: String::new(),
            why: "the file is not a JSON object".into(),
        });
    }
    Ok(Some(doc))
}

fn auths_mut<'a>(
    path: &Path,
    doc: &'a mut Value,
) -> Result<&'a mut Map<String, Value>, CredentialsError> {
    let obj = doc.as_object_mut().expect("read() only returns objects");
    let auths = obj
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    auths
        .as_object_mut()
        .ok_or_else(|| CredentialsError::BadEntry {
            path: path.into(),
            host: String::new(),
            why: "\"auths\" is not an object".into(),
        })
}

/// Docker writes keys as bare hosts, `https://host`, or `https://host/v1/`; accept all.
fn find_entry<'a>(doc: &'a Value, host: &str) -> Option<&'a Value> {
    let auths = doc.get("auths")?.as_object()?;
    if let Some(e) = auths.get(host) {
        return Some(e);
    }
    auths.iter().find_map(|(k, v)| {
        let bare = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let bare = bare.split('/').next().unwrap_or(bare);
        (bare == host).then_some(v)
    })
}

fn decode_entry(
    path: &Path,
    host: &str,
    entry: &Value,
) -> Result<Option<(String, String)>, CredentialsError> {
    let bad = |why: &str| CredentialsError::BadEntry {
        path: path.into(),
        host: host.into(),
        why: why.into(),
    };
    let entry = entry.as_object().ok_or_else(|| bad("not an object"))?;
    if let Some(auth) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("\"auth\" is not base64"))?;
        let s = String::from_utf8(raw).map_err(|_| bad("\"auth\" is not UTF-8"))?;
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| bad("\"auth\" is not base64 of user:password"))?;
        return Ok(Some((u.to_string(), p.to_string())));
    }
    let user = entry.get("username").and_then(Value::as_str);
    let pass = entry.get("password").and_then(Value::as_str);
    match (user, pass) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some((u.to_string(), p.to_string()))),
        // e.g. an entry managed by a credential helper: nothing usable here.
        _ => Ok(None),
    }
}

fn write_atomic(path: &Path, doc: &Value) -> Result<(), CredentialsError> {
    let werr = |source: io::Error| CredentialsError::Write {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(werr)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut text = serde_json::to_vec_pretty(doc).map_err(io::Error::other)?;
        text.push(b'\n');
        f.write_all(&text)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn store_then_lookup_roundtrip_with_private_modes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("berth/sub/auth.json");
        store_in(&f, "reg.example:5000", "alice", "s3:cr:et").unwrap();
        assert_eq!(
            lookup_in(&[&f], "reg.example:5000").unwrap(),
            Some(("alice".into(), "s3:cr:et".into()))
        );
        assert_eq!(lookup_in(&[&f], "other").unwrap(), None);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(f.parent().unwrap()), 0o700);
        // Overwrite keeps other hosts and other keys.
        store_in(&f, "b.example", "bob", "pw").unwrap();
        store_in(&f, "reg.example:5000", "alice", "new").unwrap();
        assert_eq!(
            lookup_in(&[&f], "reg.example:5000").unwrap(),
            Some(("alice".into(), "new".into()))
        );
        assert_eq!(
            lookup_in(&[&f], "b.example").unwrap(),
            Some(("bob".into(), "pw".into()))
        );
        assert!(remove_in(&f, "b.example").unwrap());
        assert!(!remove_in(&f, "b.example").unwrap());
        assert_eq!(lookup_in(&[&f], "b.example").unwrap(), None);
        assert_eq!(mode(&f), 0o600);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(f.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn docker_config_shapes_and_precedence() {
        let d = tempfile::tempdir().unwrap();
        let docker = d.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("dk:dpass");
        fs::write(
            &docker,
            format!(
                r#"{{"auths": {{
                    "a.example": {{"auth": "{auth}"}},
                    "https://b.example/v1/": {{"username": "bu", "password": "bp"}},
                    "c.example": {{}}
                }}, "credsStore": "desktop"}}"#
            ),
        )
        .unwrap();
        let berth = d.path().join("berth/auth.json");
        let files = [&berth, &docker];
        assert_eq!(
            lookup_in(&files, "a.example").unwrap(),
            Some(("dk".into(), "dpass".into()))
        );
        assert_eq!(
            lookup_in(&files, "b.example").unwrap(),
            Some(("bu".into(), "bp".into()))
        );
        assert_eq!(lookup_in(&files, "c.example").unwrap(), None);
        store_in(&berth, "a.example", "mine", "mp").unwrap();
        assert_eq!(
            lookup_in(&files, "a.example").unwrap(),
            Some(("mine".into(), "mp".into()))
        );
    }

    #[test]
    fn malformed_files_name_the_file_and_say_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("config.json");
        fs::write(&f, "{not json").unwrap();
        let e = lookup_in(&[&f], "x").unwrap_err().to_string();
        assert!(e.contains(&f.display().to_string()), "{e}");
        assert!(e.contains("fix it or delete it"), "{e}");
        // store refuses too rather than clobbering the user's file.
        assert!(store_in(&f, "x", "u", "p").is_err());
        assert_eq!(fs::read_to_string(&f).unwrap(), "{not json");

        fs::write(&f, r#"{"auths": {"x": {"auth": "!!!"}}}"#).unwrap();
        let e = lookup_in(&[&f], "x").unwrap_err().to_string();
        assert!(e.contains("not base64") && e.contains("\"x\""), "{e}");
        fs::write(&f, r#"{"auths": []}"#).unwrap();
        assert!(store_in(&f, "x", "u", "p").is_err());
        assert!(store_in(&d.path().join("n.json"), "", "u", "p").is_err());
        assert!(store_in(&d.path().join("n.json"), "h", "a:b", "p").is_err());
    }
}
