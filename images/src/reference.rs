//! Image references and content digests.
//!
//! A reference names an image in a registry: `host[:port]/repo/path[:tag][@sha256:hex]`.
//! Docker-style short names (`busybox`, `library/busybox:1.36`) are accepted too and
//! point at `docker.io`. Parsing is strict (lower-case repository components, bounded
//! tags, 64-hex sha256 digests) because references come from users: a bad one gets an
//! error that says which part is wrong, never a guess.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Registry used for Docker-style references that name no host.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

/// Errors from parsing references and digests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference is empty: give one like 127.0.0.1:5000/hello:1")]
    Empty,
    #[error("image reference {reference:?} is invalid: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("digest {digest:?} is invalid: {reason} (expected sha256:<64 lower-case hex digits>)")]
    BadDigest { digest: String, reason: String },
}

/// A sha256 content digest (`sha256:<64 hex>`), the only algorithm Berth accepts.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(data).into())
    }

    /// Digest from a finished sha256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest {
            hex: hex::encode(hash),
        }
    }

    /// The 64 lower-case hex digits, without the `sha256:` prefix (used for file names).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Short form for logs: `sha256:` and the first 12 hex digits.
    pub fn short(&self) -> String {
        format!("sha256:{}", &self.hex[..12])
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ReferenceError::BadDigest {
            digest: s.to_string(),
            reason: reason.to_string(),
        };
        let (algo, hex) = s.split_once(':').ok_or_else(|| bad("missing algorithm"))?;
        if algo != "sha256" {
            return Err(bad("only sha256 is supported"));
        }
        if hex.len() != 64 {
            return Err(bad("wrong length"));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("not lower-case hex"));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

impl TryFrom<String> for Digest {
    type Error = ReferenceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Registry address, `host` or `host:port` (`docker.io` for short names).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Host and port to connect to: `docker.io` maps to its API host.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// Repository path inside the registry (`hello`, `team/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference names one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference is pinned.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the
    /// tag (`latest` when none was given).
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same image pinned to `digest`: `host/repo@sha256:...` (no tag).
    pub fn pinned(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The same repository with another digest or tag; used for child manifests.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

fn invalid(reference: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

/// A repository path component: `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        // A bracketed IPv6 literal without port, e.g. [::1].
        Some((_, p)) if r.starts_with('[') && r.ends_with(']') && p.ends_with(']') => (r, None),
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if p.parse::<u32>().map_or(true, |n| n == 0 || n > 65535) {
            return false;
        }
    }
    if host.starts_with('[') {
        return host.ends_with(']') && host.len() > 2;
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() > 512 {
            return Err(invalid(s, "longer than 512 characters"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(s, "contains whitespace or control characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // The tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(i) if last_slash.is_none_or(|sl| i > sl) => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(invalid(
                    s,
                    format!("tag {t:?} must be 1-128 of [A-Za-z0-9_.-], not starting with . or -"),
                ));
            }
        }
        if name.is_empty() {
            return Err(invalid(s, "missing repository name"));
        }
        let (registry, repo) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(invalid(
                s,
                format!("registry {registry:?} is not host[:port]"),
            ));
        }
        if repo.is_empty() {
            return Err(invalid(s, "missing repository name after the registry"));
        }
        for c in repo.split('/') {
            if !valid_path_component(c) {
                return Err(invalid(
                    s,
                    format!(
                        "repository component {c:?} must be lower-case letters and digits, \
                         separated by '.', '_', '__' or '-'"
                    ),
                ));
            }
        }
        let repository = if registry == DEFAULT_REGISTRY && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        if registry.len() + 1 + repository.len() > 255 {
            return Err(invalid(s, "name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl TryFrom<String> for Reference {
    type Error = ReferenceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Reference> for String {
    fn from(r: Reference) -> String {
        r.to_string()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_valid_references() {
        type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, bool, &'a str);
        let cases: &[Case<'_>] = &[
            // input, registry, repository, tag, has digest, display
            (
                "127.0.0.1:5000/hello:1",
                "127.0.0.1:5000",
                "hello",
                Some("1"),
                false,
                "127.0.0.1:5000/hello:1",
            ),
            (
                "127.0.0.1:5000/team/app",
                "127.0.0.1:5000",
                "team/app",
                Some("latest"),
                false,
                "127.0.0.1:5000/team/app:latest",
            ),
            (
                "localhost/app:v1.2-rc_3",
                "localhost",
                "app",
                Some("v1.2-rc_3"),
                false,
                "localhost/app:v1.2-rc_3",
            ),
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
                "docker.io/library/busybox:latest",
            ),
            (
                "docker.io/org/img:2",
                "docker.io",
                "org/img",
                Some("2"),
                false,
                "docker.io/org/img:2",
            ),
            (
                "ghcr.io/a/b-c/d__e:t",
                "ghcr.io",
                "a/b-c/d__e",
                Some("t"),
                false,
                "ghcr.io/a/b-c/d__e:t",
            ),
        ];
        for (input, reg, repo, tag, has_digest, display) in cases {
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), *reg, "{input}");
            assert_eq!(r.repository(), *repo, "{input}");
            assert_eq!(r.tag(), *tag, "{input}");
            assert_eq!(r.digest().is_some(), *has_digest, "{input}");
            assert_eq!(r.to_string(), *display, "{input}");
            // Display output parses back to the same reference.
            assert_eq!(display.parse::<Reference>().unwrap(), r);
        }
    }

    #[test]
    fn digests_and_pinning() {
        let s = format!("127.0.0.1:5000/hello:1@sha256:{HEX}");
        let r: Reference = s.parse().unwrap();
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert_eq!(r.to_string(), s);
        let only: Reference = format!("127.0.0.1:5000/hello@sha256:{HEX}")
            .parse()
            .unwrap();
        assert_eq!(only.tag(), None);
        let d = Digest::of(b"abc");
        let p = r.pinned(d.clone());
        assert_eq!(p.to_string(), format!("127.0.0.1:5000/hello@{d}"));
        assert_eq!(p.digest(), Some(&d));
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rejects_bad_references() {
        let cases = [
            "",
            "127.0.0.1:5000/Hello:1",
            "127.0.0.1:5000/hello:",
            "127.0.0.1:5000/hello:-x",
            "127.0.0.1:5000/",
            "127.0.0.1:99999/hello",
            "127.0.0.1:5000/hello world",
            "127.0.0.1:5000//hello",
            "127.0.0.1:5000/hello/",
            "127.0.0.1:5000/hel..lo",
            "127.0.0.1:5000/hello@sha256:abc",
            "127.0.0.1:5000/hello@md5:0123",
            "127.0.0.1:5000/_hello",
        ];
        for c in cases {
            assert!(c.parse::<Reference>().is_err(), "{c:?} should be rejected");
        }
        let e = "127.0.0.1:5000/Hello".parse::<Reference>().unwrap_err();
        assert!(e.to_string().contains("\"Hello\""), "{e}");
    }
}
