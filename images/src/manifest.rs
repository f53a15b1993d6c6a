//! OCI and Docker v2 manifest, index and image-config documents.
//!
//! Only the fields Berth uses are modelled; unknown fields are ignored. Everything here
//! parses untrusted registry output, so it checks shapes and limits (schema version,
//! layer count, known layer media types, platform) and never panics on bad input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reference::Digest;

/// Media types Berth understands.
pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    pub const OCI_NONDIST_LAYER: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_NONDIST_LAYER_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

    /// The `Accept` header for manifest requests: OCI and Docker v2, images and indexes.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
        application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.docker.distribution.manifest.v2+json";
}

/// Most layers an image may have (overlayfs stacks at most 500 lower dirs; fewer keeps
/// mount options and pull times sane).
pub const MAX_LAYERS: usize = 128;
/// Largest manifest or index accepted.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest single (compressed) layer accepted.
pub const MAX_LAYER_BYTES: u64 = 8 << 30;

/// Errors in manifest, index or config documents.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported schema version {0} (only schemaVersion 2 is supported)")]
    SchemaVersion(u32),
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("image has {0} layers, more than the limit of {MAX_LAYERS}")]
    TooManyLayers(usize),
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    LayerMediaType { digest: Digest, media_type: String },
    #[error("layer {digest} is a foreign (non-distributable) layer ({media_type}): Berth only pulls layers the registry itself serves; rebuild the image without foreign layers")]
    ForeignLayer { digest: Digest, media_type: String },
    #[error("{what} {digest} declares size {size}, more than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("image is for {found}, this machine runs {wanted}: push an image built for {wanted}")]
    Platform { found: String, wanted: String },
    #[error("index has no manifest for {wanted} (it has: {available}): push an image built for {wanted}")]
    NoPlatform { wanted: String, available: String },
    #[error("config lists {diff_ids} layer diff ids but the manifest has {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
}

/// A content descriptor: what a manifest says about a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A platform entry of an index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An image index / manifest list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// A manifest document as fetched: an image manifest or an index.
#[derive(Clone, Debug)]
pub enum ManifestDocument {
    Image(Manifest),
    Index(Index),
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Compression of a layer media type, or `None` if the type is not a layer Berth can
    /// unpack (foreign and non-distributable layers included: see [`is_foreign_layer`]).
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        use media_types::*;
        match media_type {
            OCI_LAYER => Some(Compression::None),
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(Compression::Gzip),
            OCI_LAYER_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// The parts of an image config that decide how a container runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` strings, in image order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `port/proto` strings such as `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
}

impl ImageConfig {
    /// The process to run: entrypoint followed by cmd, or `None` when the image names
    /// neither (such an image cannot be run and must be rejected).
    pub fn command(&self) -> Option<Vec<String>> {
        let mut argv: Vec<String> = self.entrypoint.clone().unwrap_or_default();
        argv.extend(self.cmd.clone().unwrap_or_default());
        if argv.is_empty() {
            None
        } else {
            Some(argv)
        }
    }
}

/// The raw JSON shape of an image config blob (only what Berth reads).
#[derive(Deserialize)]
struct RawConfigFile {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// The platform this machine runs, in OCI terms (`linux/amd64`).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

fn platform_string(os: &str, arch: &str, variant: Option<&str>) -> String {
    match variant {
        Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
        _ => format!("{os}/{arch}"),
    }
}

/// Parse a manifest or index. `content_type` is the registry's `Content-Type` header,
/// used when the document has no `mediaType` field.
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<ManifestDocument, ManifestError> {
    use media_types::*;
    let probe: Probe = serde_json::from_slice(bytes)?;
    if probe.schema_version != 2 {
        return Err(ManifestError::SchemaVersion(probe.schema_version));
    }
    let header_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let media_type = probe.media_type.clone().or(header_type).unwrap_or_default();
    let is_index = match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        // OCI allows omitting mediaType; decide by shape.
        _ if probe.media_type.is_none() => probe.manifests.is_some(),
        other => return Err(ManifestError::MediaType(other.to_string())),
    };
    if is_index {
        let index: Index = serde_json::from_slice(bytes)?;
        return Ok(ManifestDocument::Index(index));
    }
    let manifest: Manifest = serde_json::from_slice(bytes)?;
    if manifest.layers.len() > MAX_LAYERS {
        return Err(ManifestError::TooManyLayers(manifest.layers.len()));
    }
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(ManifestError::TooLarge {
            what: "config",
            digest: manifest.config.digest.clone(),
            size: manifest.config.size,
            limit: MAX_CONFIG_BYTES,
        });
    }
    for l in &manifest.layers {
        if is_foreign_layer(&l.media_type) {
            return Err(ManifestError::ForeignLayer {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
            });
        }
        if Compression::from_media_type(&l.media_type).is_none() {
            return Err(ManifestError::LayerMediaType {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
            });
        }
        if l.size > MAX_LAYER_BYTES {
            return Err(ManifestError::TooLarge {
                what: "layer",
                digest: l.digest.clone(),
                size: l.size,
                limit: MAX_LAYER_BYTES,
            });
        }
    }
    Ok(ManifestDocument::Image(manifest))
}

/// True for Docker foreign layers and OCI non-distributable layers: blobs a registry may
/// not serve (they name external URLs instead), which Berth refuses.
pub fn is_foreign_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
        || media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
}

/// Pick the manifest for this machine's platform from an index.
pub fn select_platform(index: &Index) -> Result<&Descriptor, ManifestError> {
    let (os, arch) = host_platform();
    let wanted = platform_string(os, arch, None);
    let candidates = index.manifests.iter().filter(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    });
    // Prefer an entry without a variant, then arm64's "v8", then any.
    let mut best: Option<&Descriptor> = None;
    for d in candidates {
        let variant = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        let score = match variant {
            None | Some("") => 2,
            Some("v8") => 1,
            _ => 0,
        };
        let best_score = best.map_or(-1, |b| {
            match b.platform.as_ref().and_then(|p| p.variant.as_deref()) {
                None | Some("") => 2,
                Some("v8") => 1,
                _ => 0,
            }
        });
        if score > best_score {
            best = Some(d);
        }
    }
    best.ok_or_else(|| {
        let available: Vec<String> = index
            .manifests
            .iter()
            .map(|d| match &d.platform {
                Some(p) => platform_string(&p.os, &p.architecture, p.variant.as_deref()),
                None => "unknown".to_string(),
            })
            .collect();
        ManifestError::NoPlatform {
            wanted,
            available: if available.is_empty() {
                "nothing".to_string()
            } else {
                available.join(", ")
            },
        }
    })
}

/// Parse an image config blob and check it matches this machine and the manifest.
pub fn parse_config(bytes: &[u8], manifest: &Manifest) -> Result<ImageConfig, ManifestError> {
    let raw: RawConfigFile = serde_json::from_slice(bytes)?;
    let (os, arch) = host_platform();
    let found_os = raw.os.as_deref().unwrap_or(os);
    let found_arch = raw.architecture.as_deref().unwrap_or(arch);
    if found_os != os || found_arch != arch {
        return Err(ManifestError::Platform {
            found: platform_string(found_os, found_arch, raw.variant.as_deref()),
            wanted: platform_string(os, arch, None),
        });
    }
    if let Some(rootfs) = &raw.rootfs {
        if !rootfs.diff_ids.is_empty() && rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ManifestError::LayerCount {
                diff_ids: rootfs.diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
    }
    let c = raw.config.unwrap_or_default();
    Ok(ImageConfig {
        entrypoint: c.entrypoint.filter(|v| !v.is_empty()),
        cmd: c.cmd.filter(|v| !v.is_empty()),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|w| !w.is_empty()),
        user: c.user.filter(|u| !u.is_empty()),
        exposed_ports: c
            .exposed_ports
            .map(|m| m.into_keys().collect())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn manifest_json(layer_type: &str, layers: usize) -> Vec<u8> {
        let layers: Vec<_> = (0..layers)
            .map(|i| {
                serde_json::json!({"mediaType": layer_type, "digest": d(i as u8).to_string(), "size": 10})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {"mediaType": media_types::OCI_CONFIG, "digest": d(200).to_string(), "size": 100},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn parses_and_limits_manifests() {
        let ok = parse_manifest(&manifest_json(media_types::OCI_LAYER_GZIP, 2), None).unwrap();
        assert!(matches!(ok, ManifestDocument::Image(m) if m.layers.len() == 2));
        let too_many = parse_manifest(&manifest_json(media_types::OCI_LAYER, 129), None);
        assert!(matches!(too_many, Err(ManifestError::TooManyLayers(129))));
        let bad_type = parse_manifest(&manifest_json("application/x-foo", 1), None);
        assert!(matches!(
            bad_type,
            Err(ManifestError::LayerMediaType { .. })
        ));
        for foreign in [
            media_types::DOCKER_FOREIGN_LAYER_GZIP,
            media_types::OCI_NONDIST_LAYER,
            media_types::OCI_NONDIST_LAYER_GZIP,
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        ] {
            let e = parse_manifest(&manifest_json(foreign, 1), None).unwrap_err();
            assert!(matches!(e, ManifestError::ForeignLayer { .. }), "{e}");
            assert!(e.to_string().contains("foreign (non-distributable)"), "{e}");
        }
        let v1 = parse_manifest(br#"{"schemaVersion":1,"name":"x"}"#, None);
        assert!(matches!(v1, Err(ManifestError::SchemaVersion(1))));
        assert!(parse_manifest(b"not json", None).is_err());
    }

    #[test]
    fn selects_host_platform_from_index() {
        let (_, arch) = host_platform();
        let index: Index = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": media_types::OCI_MANIFEST, "digest": d(1).to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "s390x"}},
                {"mediaType": media_types::OCI_MANIFEST, "digest": d(2).to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": arch}},
            ]
        }))
        .unwrap();
        assert_eq!(select_platform(&index).unwrap().digest, d(2));
        let other = Index {
            manifests: vec![index.manifests[0].clone()],
            ..index
        };
        let e = select_platform(&other).unwrap_err().to_string();
        assert!(e.contains("linux/s390x"), "{e}");
    }

    #[test]
    fn config_command() {
        let m: Manifest =
            serde_json::from_slice(&manifest_json(media_types::OCI_LAYER, 1)).unwrap();
        let (_, arch) = host_platform();
        let cfg = parse_config(
            serde_json::json!({"os": "linux", "architecture": arch,
                "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["PATH=/bin"],
                           "ExposedPorts": {"8080/tcp": {}}}})
            .to_string()
            .as_bytes(),
            &m,
        )
        .unwrap();
        assert_eq!(cfg.command().unwrap(), vec!["/bin/sh", "-c", "echo hi"]);
        assert_eq!(cfg.exposed_ports, vec!["8080/tcp"]);
        let empty = parse_config(
            serde_json::json!({"os": "linux", "architecture": arch, "config": {"Entrypoint": null}})
                .to_string()
                .as_bytes(),
            &m,
        )
        .unwrap();
        assert_eq!(empty.command(), None);
        let wrong = parse_config(
            serde_json::json!({"os": "linux", "architecture": "s390x"})
                .to_string()
                .as_bytes(),
            &m,
        );
        assert!(matches!(wrong, Err(ManifestError::Platform { .. })));
    }
}
