//! Interop with real image tools: images built by `umoci`, rewritten by `skopeo`
//! (Docker v2 schema 2 manifest, zstd layers) and built by `buildah` (vfs storage), with
//! several layers, whiteouts, an opaque directory, symlinks, hardlinks, modes and owners,
//! and a two-platform index, pushed to Debian's `docker-registry` — one of them requiring
//! bearer-token auth from a token server run by this test (ES256 JWTs the registry checks
//! against a certificate bundle). For every image, the tree Berth shows (ImageStore pull ->
//! snapshots -> overlay root) must equal `umoci unpack` of the same image: paths, file
//! types, modes, owners, sizes, content hashes, symlink targets and hardlink groups.
//!
//! Needs root, docker-registry, umoci, skopeo, buildah and GNU tar
//! (scripts/install-deps.sh); panics loudly when something is missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;

use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use berth_images::{
    mount_rootfs, unmount_rootfs, ClientError, ClientOptions, ImageStore, Reference, StoreError,
};
use sha2::{Digest as _, Sha256};

mod common;
use common::{need, Registry};

/// Runs a command, panicking with its output if it fails; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// Registry and token server

/// docker-registry's `auth: token` settings.
struct TokenAuth {
    realm: String,
    service: String,
    issuer: String,
    cert_bundle: PathBuf,
}

impl Registry {
    fn start(auth: Option<&TokenAuth>) -> Registry {
        let auth = auth.map_or(String::new(), |a| {
            format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                a.realm,
                a.service,
                a.issuer,
                a.cert_bundle.display()
            )
        });
        Registry::start_with(&auth)
    }
}

const TOKEN_USER: &str = "berth";
const TOKEN_PASS: &str = "interop-secret";

struct TokenState {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    cert_der_b64: String,
    issuer: String,
    service: String,
    issued: AtomicUsize,
    refused: AtomicUsize,
}

/// A token server as registries use (`GET realm?service=..&scope=..` with basic auth,
/// answering `{"token": JWT}`), signing ES256 JWTs with a self-signed rcgen certificate
/// that the registry trusts through `rootcertbundle`.
struct TokenServer {
    auth: TokenAuth,
    state: Arc<TokenState>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl TokenServer {
    async fn start() -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["berth-interop-token".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_bundle = dir.path().join("token-ca.pem");
        fs::write(&cert_bundle, cert.pem()).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let signing = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(TokenState {
            key: signing,
            rng,
            cert_der_b64: STANDARD.encode(cert.der()),
            issuer: "berth-interop-issuer".into(),
            service: "berth-interop-registry".into(),
            issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/token", get(token_handler))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TokenServer {
            auth: TokenAuth {
                realm: format!("http://{addr}/token"),
                service: state.service.clone(),
                issuer: state.issuer.clone(),
                cert_bundle,
            },
            state,
            _dir: dir,
            task,
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ")?;
    let raw = String::from_utf8(STANDARD.decode(b64).ok()?).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

async fn token_handler(
    State(st): State<Arc<TokenState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if basic_credentials(&headers) != Some((TOKEN_USER.into(), TOKEN_PASS.into())) {
        st.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad user name or password"}]}"#,
        )
            .into_response();
    }
    let mut access = Vec::new();
    let mut service_ok = true;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "service" => service_ok = v == st.service,
            "scope" => {
                // "repository:NAME:ACTIONS", several scopes separated by spaces.
                for scope in v.split(' ') {
                    let Some((kind, rest)) = scope.split_once(':') else {
                        continue;
                    };
                    let Some((name, actions)) = rest.rsplit_once(':') else {
                        continue;
                    };
                    access.push(serde_json::json!({
                        "type": kind,
                        "name": name,
                        "actions": actions.split(',').collect::<Vec<_>>(),
                    }));
                }
            }
            _ => {}
        }
    }
    if !service_ok {
        return (StatusCode::BAD_REQUEST, "unknown service").into_response();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [st.cert_der_b64]});
    let n = st.issued.fetch_add(1, Ordering::Relaxed);
    let claims = serde_json::json!({
        "iss": st.issuer,
        "sub": TOKEN_USER,
        "aud": st.service,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now - 10,
        "jti": format!("interop-{now}-{n}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = st.key.sign(&st.rng, signing_input.as_bytes()).unwrap();
    let jwt = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    (
        [("content-type", "application/json")],
        serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300}).to_string(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Trees

/// Deterministic pseudo-random bytes (xorshift), so big files do not compress to nothing.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(root: &Path, rel: &str, data: &[u8], mode: u32, owner: (u32, u32)) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, data).unwrap();
    chown(&p, Some(owner.0), Some(owner.1)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn dir(root: &Path, rel: &str, mode: u32, owner: (u32, u32)) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    chown(&p, Some(owner.0), Some(owner.1)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    symlink(target, root.join(rel)).unwrap();
}

/// The first layer's tree: every kind of entry and attribute the unpackers must agree on.
fn base_tree(root: &Path, flavour: &str) {
    dir(root, "etc", 0o755, (0, 0));
    write(
        root,
        "etc/hostname",
        format!("{flavour}\n").as_bytes(),
        0o644,
        (0, 0),
    );
    write(root, "etc/secret", b"s3cret", 0o600, (0, 42));
    dir(root, "bin", 0o755, (0, 0));
    write(root, "bin/tool", &noise(20_000, 7), 0o4755, (0, 0));
    write(root, "bin/group-tool", b"#!/bin/sh\n", 0o2711, (0, 5));
    link(root, "bin/tool-link", "tool");
    link(root, "bin/abs-link", "/etc/hostname");
    link(root, "bin/dangling", "/nonexistent/target");
    link(root, "bin/up-link", "../etc/secret");
    dir(root, "data", 0o750, (1000, 1000));
    write(
        root,
        "data/big.bin",
        &noise(1 << 20, 99),
        0o644,
        (1000, 1000),
    );
    write(root, "data/empty", b"", 0o444, (1000, 1000));
    write(
        root,
        "data/hard-a",
        b"one inode, three names",
        0o640,
        (1000, 1000),
    );
    fs::hard_link(root.join("data/hard-a"), root.join("data/hard-b")).unwrap();
    dir(root, "share", 0o755, (0, 0));
    fs::hard_link(root.join("data/hard-a"), root.join("share/hard-c")).unwrap();
    dir(root, "tmp", 0o1777, (0, 0));
    dir(root, "shared", 0o2775, (0, 100));
    dir(root, "users/alice", 0o700, (12345, 54321));
    write(
        root,
        "users/alice/notes.txt",
        b"private",
        0o600,
        (12345, 54321),
    );
    write(
        root,
        "gone-file",
        b"deleted by a later layer",
        0o644,
        (0, 0),
    );
    write(root, "gone-dir/a", b"a", 0o644, (0, 0));
    write(root, "gone-dir/b/c", b"c", 0o644, (7, 7));
    write(
        root,
        "opaque/old1",
        b"hidden by an opaque whiteout",
        0o644,
        (0, 0),
    );
    write(root, "opaque/sub/old2", b"also hidden", 0o644, (0, 0));
    write(root, "swap-file", b"becomes a directory", 0o644, (0, 0));
    write(root, "swap-dir/x", b"becomes a file", 0o644, (0, 0));
    link(root, "link-dir", "data");
    write(
        root,
        "odd name with spaces & ümlauts",
        b"names",
        0o644,
        (0, 0),
    );
    write(
        root,
        &format!("{}/deep", "d/".repeat(30)),
        b"deep",
        0o644,
        (0, 0),
    );
}

/// The second layer's changes (made on an unpacked tree, diffed by the tool): deletions
/// (whiteouts), changed contents, modes and owners, a broken hardlink pair, new files.
fn second_layer_changes(root: &Path) {
    fs::remove_file(root.join("gone-file")).unwrap();
    fs::remove_dir_all(root.join("gone-dir")).unwrap();
    fs::remove_file(root.join("data/hard-b")).unwrap();
    write(
        root,
        "etc/hostname",
        b"changed in layer two\n",
        0o644,
        (0, 0),
    );
    fs::set_permissions(root.join("data/empty"), fs::Permissions::from_mode(0o640)).unwrap();
    chown(root.join("users/alice/notes.txt"), Some(1), Some(1)).unwrap();
    write(root, "etc/added", b"layer two", 0o664, (33, 33));
    link(root, "bin/new-link", "tool-link");
}

/// A hand-made third layer (GNU tar, `./` prefixed names) added with
/// `umoci raw add-layer`: an opaque directory, a file that becomes a directory, a
/// directory that becomes a file, and an explicit whiteout.
fn third_layer(stage: &Path) -> PathBuf {
    dir(stage, "opaque", 0o755, (0, 0));
    write(stage, "opaque/.wh..wh..opq", b"", 0o644, (0, 0));
    write(
        stage,
        "opaque/fresh.txt",
        b"only this survives",
        0o644,
        (0, 0),
    );
    dir(stage, "swap-file", 0o711, (3, 3));
    write(stage, "swap-file/inside", b"now a dir", 0o644, (0, 0));
    write(stage, "swap-dir", b"now a file", 0o600, (4, 4));
    dir(stage, "bin", 0o755, (0, 0));
    write(stage, "bin/.wh.dangling", b"", 0o644, (0, 0));
    fs::set_permissions(stage, fs::Permissions::from_mode(0o755)).unwrap();
    let tar = stage.with_extension("tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--format=posix", "-C"])
        .arg(stage)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

/// One entry of a walked tree.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    sha256: Option<String>,
    target: Option<String>,
}

/// Walks `root` (not following symlinks): every entry, plus the hardlink groups (names
/// of one inode seen more than once inside the tree).
fn walk(root: &Path) -> (BTreeMap<String, Node>, BTreeSet<Vec<String>>) {
    let mut nodes = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let ft = md.file_type();
        let name = format!("/{}", rel.display());
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else {
            '?'
        };
        let mut node = Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: None,
            sha256: None,
            target: None,
        };
        match kind {
            'd' => {
                for e in fs::read_dir(&p).unwrap() {
                    stack.push(rel.join(e.unwrap().file_name()));
                }
            }
            'l' => {
                node.mode = 0;
                node.target = Some(fs::read_link(&p).unwrap().display().to_string());
            }
            'f' => {
                node.size = Some(md.len());
                node.sha256 = Some(hex::encode(Sha256::digest(fs::read(&p).unwrap())));
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(name.clone());
            }
            _ => node.target = Some(format!("{:?} rdev {}", ft, md.rdev())),
        }
        nodes.insert(name, node);
    }
    let groups = inodes
        .into_values()
        .filter(|names| names.len() > 1)
        .map(|mut names| {
            names.sort();
            names
        })
        .collect();
    (nodes, groups)
}

fn assert_same_tree(what: &str, berth: &Path, reference: &Path) -> usize {
    let (b, bg) = walk(berth);
    let (r, rg) = walk(reference);
    let mut diffs = Vec::new();
    for (path, rn) in &r {
        match b.get(path) {
            None => diffs.push(format!("{path}: missing in Berth's tree (umoci: {rn:?})")),
            Some(bn) if bn != rn => diffs.push(format!("{path}: Berth {bn:?} != umoci {rn:?}")),
            _ => {}
        }
    }
    for (path, bn) in &b {
        if !r.contains_key(path) {
            diffs.push(format!("{path}: only in Berth's tree: {bn:?}"));
        }
    }
    if bg != rg {
        diffs.push(format!(
            "hardlink groups differ: Berth {bg:?} != umoci {rg:?}"
        ));
    }
    assert!(
        diffs.is_empty(),
        "{what}: Berth's tree differs from umoci unpack ({} differences):\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    r.len()
}

// ---------------------------------------------------------------------------------------
// Building images with the tools

struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// umoci: layer one from `base_tree`, layer two from `umoci repack` after
/// `second_layer_changes`, layer three a GNU tar layer with an opaque directory.
/// Pushed with skopeo three ways: OCI + gzip, Docker v2 schema 2, OCI + zstd.
fn build_with_umoci(w: &Work, reg: &str) {
    let layout = w.path("umoci-oci");
    let image = format!("{}:1", layout.display());
    let bundle = w.path("umoci-bundle");
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    base_tree(&rootfs, "umoci");
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    // `umoci repack` diffs against the image the bundle was unpacked from: unpack again
    // so the changes become a second layer instead of replacing the first.
    let bundle = w.path("umoci-bundle2");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    second_layer_changes(&bundle.join("rootfs"));
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    let tar = third_layer(&w.path("umoci-layer3"));
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &image])
        .arg(&tar));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/tool",
        "--os",
        "linux",
        "--architecture",
        "amd64",
    ]));
    let src = format!("oci:{image}");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &src,
        &format!("docker://{reg}/interop/umoci:1"),
    ]));
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &src,
        &format!("docker://{reg}/interop/skopeo-v2s2:1"),
    ]));
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-compress-format",
        "zstd",
        &src,
        &format!("docker://{reg}/interop/skopeo-zstd:1"),
    ]));
}

struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
}

impl Buildah {
    fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn out(&self, args: &[&str]) -> String {
        run(self.cmd().args(args)).trim().to_string()
    }

    /// A scratch (or `from`-based) container, changed on its mounted tree by `f`,
    /// committed as `image`.
    fn commit(&self, from: &str, image: &str, arch: &str, f: impl FnOnce(&Path)) {
        let ctr = self.out(&["from", "--quiet", from]);
        let mnt = PathBuf::from(self.out(&["mount", &ctr]));
        f(&mnt);
        self.out(&["config", "--arch", arch, "--os", "linux", &ctr]);
        self.out(&["config", "--entrypoint", r#"["/bin/tool"]"#, &ctr]);
        self.out(&["unmount", &ctr]);
        self.out(&["commit", "--quiet", "--format", "oci", &ctr, image]);
        self.out(&["rm", &ctr]);
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        // vfs keeps no mounts after `unmount`; remove what buildah left for this test.
        let _ = self.cmd().args(["rm", "--all"]).output();
    }
}

/// buildah (vfs): a two-layer image (the second layer deletes a file and a directory),
/// and a two-platform index whose arm64 variant is a different tree.
fn build_with_buildah(w: &Work, reg: &str) {
    need("buildah", "buildah");
    let b = Buildah {
        root: w.path("buildah-root"),
        runroot: w.path("buildah-runroot"),
    };
    b.commit("scratch", "interop-base", "amd64", |root| {
        base_tree(root, "buildah");
        write(root, "arch", b"amd64\n", 0o644, (0, 0));
    });
    b.commit(
        "interop-base",
        "interop-amd64",
        "amd64",
        second_layer_changes,
    );
    b.commit("scratch", "interop-arm64", "arm64", |root| {
        write(root, "arch", b"arm64\n", 0o644, (0, 0));
        write(root, "bin/tool", &noise(5000, 3), 0o755, (0, 0));
        write(root, "only-on-arm64", b"wrong platform", 0o644, (0, 0));
    });
    b.out(&[
        "push",
        "--quiet",
        "--tls-verify=false",
        "interop-amd64",
        &format!("docker://{reg}/interop/buildah:1"),
    ]);
    b.out(&["manifest", "create", "interop-list"]);
    b.out(&["manifest", "add", "interop-list", "interop-arm64"]);
    b.out(&["manifest", "add", "interop-list", "interop-amd64"]);
    b.out(&[
        "manifest",
        "push",
        "--quiet",
        "--all",
        "--tls-verify=false",
        "interop-list",
        &format!("docker://{reg}/interop/multi:1"),
    ]);
}

/// `skopeo copy` the image (resolving an index to this machine's platform) into an OCI
/// layout and `umoci unpack` it: the reference tree.
fn umoci_reference(w: &Work, image: &str, tag: &str, creds: Option<&str>) -> PathBuf {
    let layout = w.path("ref-oci");
    let bundle = w.path(&format!("ref-{tag}"));
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--src-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--src-creds", c]);
    }
    run(cmd
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:{tag}", layout.display())));
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

/// Unmounts an instance root when dropped, so a failed assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount_rootfs(&self.0) {
            if !std::thread::panicking() {
                panic!("unmounting {}: {e}", self.0.display());
            }
        }
    }
}

/// Pulls `image` into `store`, mounts its overlay root and compares it with `reference`.
async fn berth_matches(
    store: &ImageStore,
    image: &str,
    opts: &ClientOptions,
    reference: &Path,
    instance: &Path,
) -> (usize, usize) {
    let r: Reference = image.parse().unwrap();
    let img = store
        .pull(&r, opts, |_| {})
        .await
        .unwrap_or_else(|e| panic!("pulling {image}: {e}"));
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .args(opts.auth.as_ref().map(|(u, p)| format!("--creds={u}:{p}")))
        .arg(format!("docker://{image}")));
    let doc: serde_json::Value = serde_json::from_str(&raw).unwrap();
    if let Some(layers) = doc["layers"].as_array() {
        assert_eq!(
            img.snapshot_dirs.len(),
            layers.len(),
            "{image}: one snapshot per manifest layer"
        );
    }
    let rootfs = mount_rootfs(&img.snapshot_dirs, instance).unwrap();
    let _guard = Mounted(instance.to_path_buf());
    let n = assert_same_tree(image, &rootfs, reference);
    (n, img.snapshot_dirs.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_unpacks_what_umoci_unpacks() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test chowns files, runs buildah and mounts overlayfs: it needs root"
    );
    for (tool, pkg) in [("umoci", "umoci"), ("skopeo", "skopeo"), ("tar", "tar")] {
        need(tool, pkg);
    }
    let started = Instant::now();
    let w = Work {
        dir: tempfile::Builder::new()
            .prefix("berth-interop-")
            .tempdir_in("/var/tmp")
            .unwrap(),
    };
    let reg = Registry::start(None);
    build_with_umoci(&w, &reg.addr);
    build_with_buildah(&w, &reg.addr);
    eprintln!("images built and pushed in {:?}", started.elapsed());

    let store = ImageStore::open(&w.path("store")).unwrap();
    let anon = ClientOptions {
        insecure: true,
        ..Default::default()
    };

    // umoci's image, pushed as OCI + gzip and as Docker v2 schema 2: same tree.
    let umoci_ref = umoci_reference(&w, &format!("{}/interop/umoci:1", reg.addr), "umoci", None);
    assert!(
        fs::symlink_metadata(umoci_ref.join("opaque/old1")).is_err()
            && umoci_ref.join("opaque/fresh.txt").is_file()
            && umoci_ref.join("swap-file/inside").is_file(),
        "umoci applied the opaque whiteout and the type changes"
    );
    for (i, name) in ["umoci", "skopeo-v2s2", "skopeo-zstd"].iter().enumerate() {
        let image = format!("{}/interop/{name}:1", reg.addr);
        let (n, layers) = berth_matches(
            &store,
            &image,
            &anon,
            &umoci_ref,
            &w.path(&format!("instances/{i}")),
        )
        .await;
        assert!(layers >= 3, "{image}: {layers} layers");
        eprintln!("{image}: {n} entries equal umoci unpack");
    }

    // buildah's two-layer image.
    let image = format!("{}/interop/buildah:1", reg.addr);
    let buildah_ref = umoci_reference(&w, &image, "buildah", None);
    assert!(!buildah_ref.join("gone-dir").exists() && !buildah_ref.join("gone-file").exists());
    let (n, layers) =
        berth_matches(&store, &image, &anon, &buildah_ref, &w.path("instances/b")).await;
    assert!(layers >= 2, "{image}: {layers} layers");
    eprintln!("{image}: {n} entries equal umoci unpack");

    // The two-platform index: Berth picks linux/amd64, the tree skopeo picks for this host.
    let image = format!("{}/interop/multi:1", reg.addr);
    let multi_ref = umoci_reference(&w, &image, "multi", None);
    assert_eq!(
        fs::read_to_string(multi_ref.join("arch")).unwrap(),
        "amd64\n"
    );
    let (n, _) = berth_matches(&store, &image, &anon, &multi_ref, &w.path("instances/m")).await;
    eprintln!("{image}: {n} entries equal umoci unpack (amd64 picked)");

    // A registry requiring bearer tokens from the token server.
    let tokens = TokenServer::start().await;
    let treg = Registry::start(Some(&tokens.auth));
    let creds = format!("{TOKEN_USER}:{TOKEN_PASS}");
    let image = format!("{}/interop/private:1", treg.addr);
    run(Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
        ])
        .arg(format!("oci:{}:1", w.path("umoci-oci").display()))
        .arg(format!("docker://{image}")));
    let private_ref = umoci_reference(&w, &image, "private", Some(&creds));
    let issued_before = tokens.state.issued.load(Ordering::Relaxed);
    let fresh = ImageStore::open(&w.path("store-private")).unwrap();
    let r: Reference = image.parse().unwrap();
    let e = fresh.pull(&r, &anon, |_| {}).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Client(ClientError::Unauthorized { .. })),
        "no credentials: {e}"
    );
    let wrong = ClientOptions {
        insecure: true,
        auth: Some((TOKEN_USER.into(), "wrong".into())),
        ..Default::default()
    };
    let e = fresh.pull(&r, &wrong, |_| {}).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Client(ClientError::Unauthorized { .. })),
        "wrong password: {e}"
    );
    assert!(tokens.state.refused.load(Ordering::Relaxed) >= 1);
    let good = ClientOptions {
        insecure: true,
        auth: Some((TOKEN_USER.into(), TOKEN_PASS.into())),
        ..Default::default()
    };
    let (n, _) = berth_matches(&fresh, &image, &good, &private_ref, &w.path("instances/p")).await;
    assert!(
        tokens.state.issued.load(Ordering::Relaxed) > issued_before,
        "Berth got a token from the token server"
    );
    assert!(
        !treg.log().contains("panic"),
        "token registry log:\n{}",
        treg.log()
    );
    eprintln!("{image} (token auth): {n} entries equal umoci unpack");
    eprintln!("interop test took {:?}", started.elapsed());
}
