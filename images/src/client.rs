//! OCI distribution (registry API v2) client.
//!
//! Resolves a reference to a verified manifest and image config, and streams layer blobs
//! to files while hashing them. Every manifest, config and blob is checked against its
//! sha256 digest and size; nothing unverified is ever returned. Indexes and manifest
//! lists are resolved to this machine's platform. Authentication: anonymous, HTTP basic,
//! and the bearer-token challenge flow (`WWW-Authenticate: Bearer realm=...`).
//!
//! Transport: HTTPS with the system's roots (plus a CA file when given); plain HTTP only
//! for registries marked insecure. Requests that fail on the way (connection refused or
//! reset, timeouts, 5xx, 429) are retried with exponential backoff ([`RetryPolicy`]); an
//! interrupted blob download resumes where it stopped with a `Range` request
//! ([`RegistryClient::download_blob_to`]).
//!
//! Errors are shaped for users: an unreachable registry, a missing image, a refused login,
//! a bad manifest and a digest mismatch are distinct variants with advice in the message.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tracing::{debug, instrument, warn};

use crate::manifest::{
    self, media_types, Descriptor, ImageConfig, Manifest, ManifestDocument, ManifestError,
    MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
};
use crate::reference::{Digest, Reference};

/// Where Debian keeps the system's CA certificates (`SSL_CERT_FILE` overrides it).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Index -> manifest is one level; a nested index is refused.
const MAX_INDEX_DEPTH: usize = 1;

/// How to talk to a registry.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Use plain `http://` instead of `https://` (for loopback and test registries).
    pub insecure: bool,
    /// User name and password, sent as basic auth or exchanged for a bearer token.
    pub auth: Option<(String, String)>,
    /// PEM file of extra CA certificates trusted for HTTPS, on top of the system roots.
    pub ca_file: Option<PathBuf>,
}

/// How often and how patiently requests are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub tries: u32,
    /// Wait before the second attempt; doubled before each further one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            tries: 4,
            backoff: Duration::from_millis(250),
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("insecure", &self.insecure)
            .field("auth", &self.auth.as_ref().map(|(u, _)| (u, "<redacted>")))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Errors from talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("registry {registry} unreachable: {detail}: check the address and that the registry is running")]
    Unreachable { registry: String, detail: String },
    #[error("image {image} not found in registry: check the name and tag")]
    NotFound { image: String },
    #[error("not authorized to pull {image}: {detail}: log in with `berth registry login {registry}` as a user allowed to pull it")]
    Unauthorized {
        image: String,
        registry: String,
        detail: String,
    },
    #[error("registry {registry}: its TLS certificate is not trusted ({detail}): give the CA certificate that signed it (PEM) with --registry-ca FILE (berth up, berth-agent, berth-controller); only a plain-HTTP registry may be marked insecure")]
    Untrusted { registry: String, detail: String },
    #[error("bad manifest for {image}: {source}")]
    BadManifest {
        image: String,
        #[source]
        source: ManifestError,
    },
    #[error("bad image config for {image}: {source}")]
    BadConfig {
        image: String,
        #[source]
        source: ManifestError,
    },
    #[error("{what} of {image}: digest mismatch: expected {expected}, got {actual}: the registry served corrupt or tampered content")]
    DigestMismatch {
        image: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what} of {image}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        image: String,
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} of {image} is larger than the limit of {limit} bytes")]
    TooLarge {
        image: String,
        what: String,
        limit: u64,
    },
    #[error("registry {registry} answered {status} for {what}: {detail}")]
    Registry {
        registry: String,
        what: String,
        status: u16,
        detail: String,
    },
    #[error("transfer of {what} from registry {registry} failed: {detail}")]
    Transfer {
        registry: String,
        what: String,
        detail: String,
    },
    #[error("writing {what} to disk failed: {source}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the http client failed: {0}")]
    Setup(String),
    #[error("reading CA file {path}: {detail}: give a PEM file of CA certificates")]
    CaFile { path: PathBuf, detail: String },
}

impl ClientError {
    /// True for errors worth retrying later (network trouble, registry 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } | ClientError::Transfer { .. } => true,
            ClientError::Registry { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// A manifest fetched and verified, with any index already resolved to this platform.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// Digest of the image manifest (not of the index, when there was one).
    pub digest: Digest,
    pub manifest: Manifest,
    /// The exact manifest bytes, whose sha256 is `digest`.
    pub bytes: Bytes,
}

/// A reference resolved to a pinned, verified manifest and image config.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The input reference pinned to `manifest_digest` (`host/repo@sha256:...`).
    pub pinned: Reference,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub manifest_bytes: Bytes,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub config_bytes: Bytes,
    /// Layer descriptors, lowest layer first.
    pub layers: Vec<Descriptor>,
}

#[derive(Clone)]
enum Credential {
    Basic,
    Bearer(String),
}

/// A registry client. Cheap to share (`&self` everywhere); caches bearer tokens per repository.
pub struct RegistryClient {
    http: reqwest::Client,
    opts: ClientOptions,
    retry: RetryPolicy,
    credentials: Mutex<HashMap<String, Credential>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("opts", &self.opts)
            .finish()
    }
}

/// The full error chain of `e`, without repeated parts.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// Whether a transport error chain says the server's certificate failed verification
/// (rustls: `invalid peer certificate: UnknownIssuer`, `... NotValidForName`, ...).
/// reqwest does not expose rustls' error type, so its text is what there is to go on.
fn is_untrusted_certificate(chain: &str) -> bool {
    chain.contains("invalid peer certificate")
}

/// Parse `Bearer realm="...",service="...",scope="..."` into scheme and parameters.
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_ascii_lowercase(), params)
}

/// The registry's error text: the first `errors[].message` of its JSON body, or the body.
fn registry_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errs {
        errors: Vec<Err>,
    }
    #[derive(serde::Deserialize)]
    struct Err {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errs>(body) {
        if let Some(first) = e.errors.first() {
            return format!("{} {}", first.code, first.message)
                .trim()
                .to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "no details".to_string()
    } else {
        text.chars().take(200).collect()
    }
}

impl RegistryClient {
    /// A client with the given options.
    pub fn new(opts: ClientOptions) -> Result<RegistryClient, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("berth-images/", env!("CARGO_PKG_VERSION")));
        if !opts.insecure {
            // The system's roots (Debian: ca-certificates), so a CA the operator installed
            // is trusted like it is by curl; rustls' built-in Mozilla roots stay on too.
            let system = std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
            if let Ok(pem) = std::fs::read(&system) {
                match reqwest::Certificate::from_pem_bundle(&pem) {
                    Ok(certs) => {
                        for cert in certs {
                            builder = builder.add_root_certificate(cert);
                        }
                    }
                    Err(e) => {
                        warn!(path = %system.display(), error = %e, "ignoring unreadable system CA bundle")
                    }
                }
            }
        }
        if let Some(path) = &opts.ca_file {
            let ca_err = |detail: String| ClientError::CaFile {
                path: path.clone(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(chain(&e)))?;
            if certs.is_empty() {
                return Err(ca_err("no certificate in the file".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| ClientError::Setup(chain(&e)))?;
        Ok(RegistryClient {
            http,
            opts,
            retry: RetryPolicy::default(),
            credentials: Mutex::new(HashMap::new()),
        })
    }

    /// Use another retry policy (tests use short backoffs).
    pub fn with_retry(mut self, retry: RetryPolicy) -> RegistryClient {
        self.retry = RetryPolicy {
            tries: retry.tries.max(1),
            ..retry
        };
        self
    }

    /// Run `op` until it succeeds, fails for good, or runs out of tries; transient
    /// failures ([`ClientError::is_transient`]) wait with exponential backoff.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.retry.tries => {
                    let wait = self.retry.backoff * 2u32.pow(attempt - 1);
                    warn!(what, attempt, ?wait, error = %e, "retrying after a transient failure");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    fn base_url(&self, r: &Reference) -> String {
        let scheme = if self.opts.insecure { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", r.api_host(), r.repository())
    }

    fn cred_key(r: &Reference) -> String {
        format!("{}/{}", r.registry(), r.repository())
    }

    fn transport_error(&self, r: &Reference, what: &str, e: reqwest::Error) -> ClientError {
        let detail = chain(&e);
        if is_untrusted_certificate(&detail) {
            return ClientError::Untrusted {
                registry: r.registry().to_string(),
                detail,
            };
        }
        if e.is_connect() || (e.is_timeout() && !e.is_body()) {
            ClientError::Unreachable {
                registry: r.registry().to_string(),
                detail,
            }
        } else {
            ClientError::Transfer {
                registry: r.registry().to_string(),
                what: what.to_string(),
                detail,
            }
        }
    }

    fn apply_credential(
        &self,
        r: &Reference,
        req: reqwest::RequestBuilder,
    ) -> reqwest::RequestBuilder {
        let cred = self
            .credentials
            .lock()
            .expect("credential cache poisoned")
            .get(&Self::cred_key(r))
            .cloned();
        match (cred, &self.opts.auth) {
            (Some(Credential::Bearer(token)), _) => req.bearer_auth(token),
            (Some(Credential::Basic), Some((user, pass))) => req.basic_auth(user, Some(pass)),
            _ => req,
        }
    }

    /// GET `url`, answering an auth challenge once. Returns the response whatever its status
    /// except 401, which becomes `Unauthorized`.
    async fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<Response, ClientError> {
        self.get_with(r, url, accept, timeout, None, what).await
    }

    /// [`Self::get`] with an optional `Range` header.
    async fn get_with(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        timeout: Option<Duration>,
        range: Option<&str>,
        what: &str,
    ) -> Result<Response, ClientError> {
        let mut answered_challenge = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(range) = range {
                req = req.header(reqwest::header::RANGE, range);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            req = self.apply_credential(r, req);
            let resp = req
                .send()
                .await
                .map_err(|e| self.transport_error(r, what, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if answered_challenge {
                let body = resp.bytes().await.unwrap_or_default();
                return Err(ClientError::Unauthorized {
                    image: r.to_string(),
                    registry: r.registry().to_string(),
                    detail: format!("credentials refused ({})", registry_detail(&body)),
                });
            }
            answered_challenge = true;
            self.answer_challenge(r, challenge.as_deref()).await?;
        }
    }

    async fn answer_challenge(
        &self,
        r: &Reference,
        challenge: Option<&str>,
    ) -> Result<(), ClientError> {
        let unauthorized = |detail: String| ClientError::Unauthorized {
            image: r.to_string(),
            registry: r.registry().to_string(),
            detail,
        };
        let Some(challenge) = challenge else {
            return Err(unauthorized(
                "registry answered 401 without a WWW-Authenticate challenge".into(),
            ));
        };
        let (scheme, params) = parse_challenge(challenge);
        let cred = match scheme.as_str() {
            "basic" => {
                if self.opts.auth.is_none() {
                    return Err(unauthorized(
                        "registry requires a user name and password".into(),
                    ));
                }
                Credential::Basic
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| unauthorized("bearer challenge without a realm".into()))?;
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", r.repository()));
                let mut query: Vec<(&str, &str)> = vec![("scope", &scope)];
                if let Some(service) = params.get("service") {
                    query.push(("service", service));
                }
                let mut req = self
                    .http
                    .get(realm)
                    .query(&query)
                    .timeout(SMALL_REQUEST_TIMEOUT);
                if let Some((user, pass)) = &self.opts.auth {
                    req = req.basic_auth(user, Some(pass));
                }
                let resp = req.send().await.map_err(|e| ClientError::Unauthorized {
                    image: r.to_string(),
                    registry: r.registry().to_string(),
                    detail: format!("token service {realm} failed: {}", chain(&e)),
                })?;
                let status = resp.status();
                let body = resp.bytes().await.unwrap_or_default();
                if !status.is_success() {
                    return Err(unauthorized(format!(
                        "token service {realm} answered {status}: {}",
                        registry_detail(&body)
                    )));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let t: Token = serde_json::from_slice(&body).map_err(|e| {
                    unauthorized(format!("token service {realm} sent bad json: {e}"))
                })?;
                let token = t
                    .token
                    .or(t.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| unauthorized(format!("token service {realm} sent no token")))?;
                Credential::Bearer(token)
            }
            other => {
                return Err(unauthorized(format!(
                    "unsupported authentication scheme {other:?}"
                )))
            }
        };
        self.credentials
            .lock()
            .expect("credential cache poisoned")
            .insert(Self::cred_key(r), cred);
        Ok(())
    }

    /// Read a whole body, refusing more than `limit` bytes.
    async fn read_limited(
        &self,
        r: &Reference,
        mut resp: Response,
        limit: u64,
        what: &str,
    ) -> Result<Bytes, ClientError> {
        let too_large = || ClientError::TooLarge {
            image: r.to_string(),
            what: what.to_string(),
            limit,
        };
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.transport_error(r, what, e))?
        {
            if buf.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    fn status_error(
        &self,
        r: &Reference,
        what: &str,
        status: StatusCode,
        body: &[u8],
    ) -> ClientError {
        if status == StatusCode::FORBIDDEN {
            return ClientError::Unauthorized {
                image: r.to_string(),
                registry: r.registry().to_string(),
                detail: format!("access denied ({})", registry_detail(body)),
            };
        }
        ClientError::Registry {
            registry: r.registry().to_string(),
            what: what.to_string(),
            status: status.as_u16(),
            detail: registry_detail(body),
        }
    }

    /// Fetch one manifest document by tag or digest and verify its digest, with retries.
    async fn fetch_document(
        &self,
        r: &Reference,
        expected: Option<&Descriptor>,
    ) -> Result<(Digest, ManifestDocument, Bytes), ClientError> {
        self.retrying("manifest", || self.fetch_document_once(r, expected))
            .await
    }

    async fn fetch_document_once(
        &self,
        r: &Reference,
        expected: Option<&Descriptor>,
    ) -> Result<(Digest, ManifestDocument, Bytes), ClientError> {
        let what = "manifest";
        let url = format!("{}/manifests/{}", self.base_url(r), r.manifest_ref());
        let resp = self
            .get(
                r,
                &url,
                Some(media_types::MANIFEST_ACCEPT),
                Some(SMALL_REQUEST_TIMEOUT),
                what,
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(ClientError::NotFound {
                image: r.to_string(),
            });
        }
        let headers: HeaderMap = resp.headers().clone();
        let body = self.read_limited(r, resp, MAX_MANIFEST_BYTES, what).await?;
        if !status.is_success() {
            return Err(self.status_error(r, what, status, &body));
        }
        let actual = Digest::of(&body);
        let mismatch = |expected: String| ClientError::DigestMismatch {
            image: r.to_string(),
            what: what.to_string(),
            expected,
            actual: actual.to_string(),
        };
        if let Some(want) = r.digest() {
            if *want != actual {
                return Err(mismatch(want.to_string()));
            }
        }
        if let Some(header) = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if let Ok(d) = header.parse::<Digest>() {
                if d != actual {
                    return Err(mismatch(d.to_string()));
                }
            }
        }
        if let Some(desc) = expected {
            if desc.size != body.len() as u64 {
                return Err(ClientError::SizeMismatch {
                    image: r.to_string(),
                    what: what.to_string(),
                    expected: desc.size,
                    actual: body.len() as u64,
                });
            }
        }
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let doc = manifest::parse_manifest(&body, content_type).map_err(|source| {
            ClientError::BadManifest {
                image: r.to_string(),
                source,
            }
        })?;
        Ok((actual, doc, body))
    }

    /// Fetch and verify the image manifest for `r`, resolving an index to this platform.
    #[instrument(skip_all, fields(image = %r))]
    pub async fn fetch_manifest(&self, r: &Reference) -> Result<FetchedManifest, ClientError> {
        let mut current = r.clone();
        let mut expected: Option<Descriptor> = None;
        for depth in 0..=MAX_INDEX_DEPTH {
            let (digest, doc, bytes) = self.fetch_document(&current, expected.as_ref()).await?;
            match doc {
                ManifestDocument::Image(manifest) => {
                    debug!(%digest, layers = manifest.layers.len(), "manifest resolved");
                    return Ok(FetchedManifest {
                        digest,
                        manifest,
                        bytes,
                    });
                }
                ManifestDocument::Index(index) if depth < MAX_INDEX_DEPTH => {
                    let desc = manifest::select_platform(&index)
                        .map_err(|source| ClientError::BadManifest {
                            image: r.to_string(),
                            source,
                        })?
                        .clone();
                    if desc.size > MAX_MANIFEST_BYTES {
                        return Err(ClientError::TooLarge {
                            image: r.to_string(),
                            what: "manifest".into(),
                            limit: MAX_MANIFEST_BYTES,
                        });
                    }
                    debug!(index = %digest, manifest = %desc.digest, "index resolved to platform");
                    current = r.with_digest(desc.digest.clone());
                    expected = Some(desc);
                }
                ManifestDocument::Index(_) => {
                    return Err(ClientError::BadManifest {
                        image: r.to_string(),
                        source: ManifestError::MediaType("nested image index".into()),
                    })
                }
            }
        }
        unreachable!("loop returns on every path at the last depth")
    }

    /// Fetch, verify and parse the image config named by `manifest`.
    #[instrument(skip_all, fields(image = %r))]
    pub async fn fetch_config(
        &self,
        r: &Reference,
        manifest: &Manifest,
    ) -> Result<(ImageConfig, Bytes), ClientError> {
        self.retrying("config", || self.fetch_config_once(r, manifest))
            .await
    }

    async fn fetch_config_once(
        &self,
        r: &Reference,
        manifest: &Manifest,
    ) -> Result<(ImageConfig, Bytes), ClientError> {
        let desc = &manifest.config;
        let what = "config";
        let url = format!("{}/blobs/{}", self.base_url(r), desc.digest);
        let resp = self
            .get(r, &url, None, Some(SMALL_REQUEST_TIMEOUT), what)
            .await?;
        let status = resp.status();
        let body = self.read_limited(r, resp, MAX_CONFIG_BYTES, what).await?;
        if !status.is_success() {
            return Err(self.status_error(r, what, status, &body));
        }
        let actual = Digest::of(&body);
        if actual != desc.digest {
            return Err(ClientError::DigestMismatch {
                image: r.to_string(),
                what: what.into(),
                expected: desc.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        let config =
            manifest::parse_config(&body, manifest).map_err(|source| ClientError::BadConfig {
                image: r.to_string(),
                source,
            })?;
        Ok((config, body))
    }

    /// Resolve `r` to a pinned manifest digest, the manifest, the image config and layers.
    /// Used by the controller to validate an image before accepting a site.
    #[instrument(skip_all, fields(image = %r))]
    pub async fn resolve(&self, r: &Reference) -> Result<Resolved, ClientError> {
        let m = self.fetch_manifest(r).await?;
        let (config, config_bytes) = self.fetch_config(r, &m.manifest).await?;
        Ok(Resolved {
            pinned: r.pinned(m.digest.clone()),
            manifest_digest: m.digest,
            config_digest: m.manifest.config.digest.clone(),
            layers: m.manifest.layers.clone(),
            manifest: m.manifest,
            manifest_bytes: m.bytes,
            config,
            config_bytes,
        })
    }
}

impl RegistryClient {
    /// Download blob `desc` into the file at `path`, verifying size and digest, retrying
    /// transient failures with backoff. Whatever `path` already holds is taken as the
    /// start of the blob and resumed with `Range: bytes=N-` (a 206 answer appends, a 200
    /// answer restarts from zero). On a digest or size mismatch the file is emptied; on a
    /// transient error it keeps what arrived so a later call resumes. The caller syncs and
    /// renames the file once this returns `Ok`.
    #[instrument(skip_all, fields(image = %r, blob = %desc.digest))]
    pub async fn download_blob_to(
        &self,
        r: &Reference,
        desc: &Descriptor,
        path: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ClientError> {
        let what = format!("layer {}", desc.digest);
        let result = self
            .retrying(&what, || self.download_attempt(r, desc, path, progress))
            .await;
        if let Err(e) = &result {
            if !e.is_transient() {
                // Nothing of it can be trusted: start over next time.
                let _ = std::fs::remove_file(path);
            }
        }
        result
    }

    async fn download_attempt(
        &self,
        r: &Reference,
        desc: &Descriptor,
        path: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), ClientError> {
        let what = format!("layer {}", desc.digest);
        let write_err = |source: std::io::Error| ClientError::Write {
            what: what.clone(),
            source,
        };
        let mut out = tokio::fs::File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .await
            .map_err(write_err)?;
        let mut have = out.metadata().await.map_err(write_err)?.len();
        if have > desc.size {
            out.set_len(0).await.map_err(write_err)?;
            have = 0;
        }
        // Hash what an earlier attempt left, so the digest covers the whole blob.
        let mut hasher = Sha256::new();
        if have > 0 {
            let mut buf = vec![0u8; 1 << 20];
            let mut left = have;
            while left > 0 {
                let n = out.read(&mut buf).await.map_err(write_err)?;
                if n == 0 {
                    break;
                }
                let n = n.min(left as usize);
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            debug!(offset = have, "resuming download");
        }
        out.seek(std::io::SeekFrom::Start(have))
            .await
            .map_err(write_err)?;
        let url = format!("{}/blobs/{}", self.base_url(r), desc.digest);
        let mut written = have;
        if have < desc.size || desc.size == 0 {
            let range = (have > 0).then(|| format!("bytes={have}-"));
            let mut resp = self
                .get_with(r, &url, None, None, range.as_deref(), &what)
                .await?;
            let status = resp.status();
            match status {
                StatusCode::PARTIAL_CONTENT if have > 0 => {
                    let start = resp
                        .headers()
                        .get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if start != Some(have) {
                        out.set_len(0).await.map_err(write_err)?;
                        return Err(ClientError::Transfer {
                            registry: r.registry().to_string(),
                            what,
                            detail: format!(
                                "asked to resume at byte {have}, got content range {start:?}: restarting"
                            ),
                        });
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
                    out.set_len(0).await.map_err(write_err)?;
                    return Err(ClientError::Transfer {
                        registry: r.registry().to_string(),
                        what,
                        detail: format!("registry cannot resume at byte {have}: restarting"),
                    });
                }
                s if s.is_success() => {
                    if have > 0 {
                        debug!("registry ignored the range request: restarting from zero");
                        out.set_len(0).await.map_err(write_err)?;
                        out.seek(std::io::SeekFrom::Start(0))
                            .await
                            .map_err(write_err)?;
                        hasher = Sha256::new();
                        written = 0;
                    }
                }
                _ => {
                    let body = self
                        .read_limited(r, resp, 64 << 10, &what)
                        .await
                        .unwrap_or_default();
                    return Err(self.status_error(r, &what, status, &body));
                }
            }
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| self.transport_error(r, &what, e))?
            {
                if written + chunk.len() as u64 > desc.size {
                    return Err(ClientError::SizeMismatch {
                        image: r.to_string(),
                        what: what.clone(),
                        expected: desc.size,
                        actual: written + chunk.len() as u64,
                    });
                }
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(write_err)?;
                written += chunk.len() as u64;
                progress(written);
            }
        }
        out.flush().await.map_err(write_err)?;
        if written != desc.size {
            return Err(ClientError::SizeMismatch {
                image: r.to_string(),
                what,
                expected: desc.size,
                actual: written,
            });
        }
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != desc.digest {
            return Err(ClientError::DigestMismatch {
                image: r.to_string(),
                what,
                expected: desc.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod resume_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn registry_error_detail() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(registry_detail(body), "MANIFEST_UNKNOWN manifest unknown");
        assert_eq!(registry_detail(b""), "no details");
    }

    #[test]
    fn options_debug_redacts_password() {
        let o = ClientOptions {
            insecure: true,
            auth: Some(("u".into(), "hunter2".into())),
            ca_file: None,
        };
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn bad_ca_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        for path in [dir.path().join("missing.pem"), empty] {
            let e = RegistryClient::new(ClientOptions {
                ca_file: Some(path.clone()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(matches!(e, ClientError::CaFile { .. }), "{e}");
            assert!(e.to_string().contains("give a PEM file"), "{e}");
        }
    }

    #[tokio::test]
    async fn unreachable_registry_is_reported() {
        // Bind then drop to get a loopback port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = RegistryClient::new(ClientOptions {
            insecure: true,
            ..Default::default()
        })
        .unwrap()
        .with_retry(RetryPolicy {
            tries: 2,
            backoff: Duration::from_millis(10),
        });
        let r: Reference = format!("127.0.0.1:{port}/hello:1").parse().unwrap();
        let e = c.resolve(&r).await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("registry 127.0.0.1:{port} unreachable: "))
                && msg.ends_with("check the address and that the registry is running"),
            "{msg}"
        );
    }
}
