//! The API token: 32 random bytes, hex, in `<state-dir>/token` (mode 0600, created
//! with that mode so it is never readable by others, not even briefly). Every `/v1`
//! request must carry `Authorization: Bearer <token>`; the comparison is constant
//! time. The token is never logged.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("reading API token {path}: {source}: check permissions of the state directory")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing API token {path}: {source}: check that the state directory is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API token {path} is empty or not hex: delete it to have a new one generated")]
    Corrupt { path: PathBuf },
}

#[derive(Clone)]
pub struct Token {
    value: String,
    path: PathBuf,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Reads `<state_dir>/token`, generating it on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, AuthError> {
        let path = state_dir.join("token");
        let mut value = String::new();
        match OpenOptions::new().read(true).open(&path) {
            Ok(mut f) => {
                f.read_to_string(&mut value)
                    .map_err(|source| AuthError::Read {
                        path: path.clone(),
                        source,
                    })?;
                let value = value.trim().to_string();
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(AuthError::Corrupt { path });
                }
                return Ok(Self { value, path });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(AuthError::Read { path, source }),
        }
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let value = hex::encode(bytes);
        let write = |value: &str| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(format!("{value}\n").as_bytes())?;
            f.sync_all()
        };
        write(&value).map_err(|source| AuthError::Write {
            path: path.clone(),
            source,
        })?;
        tracing::info!(path = %path.display(), "generated a new API token");
        Ok(Self { value, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        constant_time_eq(given.trim_ascii(), self.value.as_bytes())
    }
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let t = Token::load_or_create(dir.path()).unwrap();
        assert_eq!(t.value.len(), 64);
        let mode = std::fs::metadata(t.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Token::load_or_create(dir.path()).unwrap();
        assert_eq!(again.value, t.value);
        let header = format!("Bearer {}", t.value);
        assert!(t.check(Some(header.as_bytes())));
        assert!(!t.check(Some(b"Bearer nope")));
        assert!(!t.check(Some(t.value.as_bytes())));
        assert!(!t.check(None));
    }
}
