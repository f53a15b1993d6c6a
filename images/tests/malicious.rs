//! Malicious images against the real store and a real registry.
//!
//! Every case is generated here (hand-built tar headers, crafted manifests and indexes),
//! pushed to Debian's `docker-registry` with plain HTTP PUTs (the real peer; where the
//! registry itself would refuse to store the attack, its storage is edited on disk) and
//! pulled through `ImageStore::pull`. Each case either fails with an error naming the
//! problem, or is neutralised where that is the documented semantics (absolute paths and
//! symlinks resolve inside the snapshot, device nodes are skipped, a later entry replaces
//! an earlier one). After every case: nothing outside the store changed (a canary tree
//! with a secret file), and a failed pull left no image record, snapshot, blob, temp or
//! partial file. At the end a good image still pulls. Needs root and docker-registry.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use std::time::Instant;

use berth_images::manifest::{host_platform, media_types};

mod common;
use berth_images::{ClientOptions, Digest, ImageStore, Reference, UnpackLimits};
use common::Registry;

// ---------------------------------------------------------------- registry

/// Foreign layers need an allowed URL, or the registry refuses the manifest itself.
const ALLOW_FOREIGN_URLS: &str =
    "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n";

impl Registry {
    /// Where the registry keeps the bytes of `digest`.
    fn blob_file(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

async fn push_blob(http: &reqwest::Client, addr: &str, repo: &str, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    let resp = http
        .post(format!("http://{addr}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "starting an upload to {repo}");
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("http://{addr}{location}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{url}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "finishing the upload of {digest}");
    digest
}

async fn push_manifest(
    http: &reqwest::Client,
    addr: &str,
    repo: &str,
    tag: &str,
    media_type: &str,
    body: &[u8],
) -> Digest {
    let resp = http
        .put(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 201, "pushing manifest {repo}:{tag}: {text}");
    Digest::of(body)
}

/// A server answering every request with `body` as an OCI manifest; returns its address.
async fn serve_forever(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
                media_types::OCI_MANIFEST,
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        }
    });
    addr
}

// ---------------------------------------------------------------- tar building

/// One raw tar entry: a ustar header (with a PAX header first when the name or link
/// does not fit), then the data padded to 512 bytes. Nothing is validated: that is the point.
struct Entry {
    name: Vec<u8>,
    kind: u8,
    link: Vec<u8>,
    data: Vec<u8>,
    mode: u32,
    /// The size the header claims (defaults to the data length).
    size: Option<u64>,
    dev: (u32, u32),
}

fn entry(name: impl AsRef<[u8]>, kind: u8) -> Entry {
    Entry {
        name: name.as_ref().to_vec(),
        kind,
        link: Vec::new(),
        data: Vec::new(),
        mode: if kind == b'5' { 0o755 } else { 0o644 },
        size: None,
        dev: (0, 0),
    }
}

fn file(name: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Entry {
    Entry {
        data: data.as_ref().to_vec(),
        ..entry(name, b'0')
    }
}

fn dir(name: &str) -> Entry {
    entry(name, b'5')
}

fn symlink(name: &str, target: impl AsRef<[u8]>) -> Entry {
    Entry {
        link: target.as_ref().to_vec(),
        ..entry(name, b'2')
    }
}

fn hardlink(name: &str, target: impl AsRef<[u8]>) -> Entry {
    Entry {
        link: target.as_ref().to_vec(),
        ..entry(name, b'1')
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}", v, width = field.len() - 1);
    if s.len() >= field.len() {
        // GNU base-256: a leading 0x80, then the value big-endian.
        field.fill(0);
        field[0] = 0x80;
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        return;
    }
    let n = field.len() - 1;
    field[..n].copy_from_slice(s.as_bytes());
    field[n] = 0;
}

fn header(name: &[u8], kind: u8, link: &[u8], size: u64, mode: u32, dev: (u32, u32)) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], dev.0 as u64);
    octal(&mut h[337..345], dev.1 as u64);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> key=value\n" where len counts itself.
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if e.name.len() > 100 || e.link.len() > 100 || e.name.contains(&0) {
            let mut pax = pax_record("path", &e.name);
            if !e.link.is_empty() {
                pax.extend(pax_record("linkpath", &e.link));
            }
            out.extend_from_slice(&header(
                b"PaxHeader",
                b'x',
                b"",
                pax.len() as u64,
                0o644,
                (0, 0),
            ));
            out.extend_from_slice(&pax);
            pad(&mut out);
        }
        let size = e.size.unwrap_or(e.data.len() as u64);
        out.extend_from_slice(&header(&e.name, e.kind, &e.link, size, e.mode, e.dev));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

// ---------------------------------------------------------------- images

/// A layer as pushed: the blob and the media type the manifest gives it.
struct Layer {
    blob: Vec<u8>,
    media_type: String,
    /// Size the manifest declares (defaults to the blob's).
    size: Option<u64>,
}

fn layer(entries: Vec<Entry>) -> Layer {
    Layer {
        blob: gzip(&tar(&entries)),
        media_type: media_types::OCI_LAYER_GZIP.into(),
        size: None,
    }
}

fn config_json(layers: usize, marker: &str) -> Vec<u8> {
    let (_, arch) = host_platform();
    let zero = format!("sha256:{}", "0".repeat(64));
    serde_json::to_vec(&serde_json::json!({
        "os": "linux", "architecture": arch,
        "config": {"Cmd": ["/bin/true"], "Labels": {"case": marker}},
        "rootfs": {"type": "layers", "diff_ids": vec![zero; layers]},
    }))
    .unwrap()
}

fn manifest_json(config: &Digest, config_size: usize, layers: &[(String, Digest, u64)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(mt, d, size)| {
            serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": size})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": media_types::OCI_CONFIG, "digest": config.to_string(), "size": config_size},
        "layers": layers,
    }))
    .unwrap()
}

/// Push blobs and config of an image; returns (layer digests, manifest bytes), the
/// manifest not pushed yet.
async fn push_parts(
    http: &reqwest::Client,
    addr: &str,
    repo: &str,
    layers: &[Layer],
) -> (Vec<Digest>, Vec<u8>) {
    let mut descs = Vec::new();
    for l in layers {
        let d = push_blob(http, addr, repo, &l.blob).await;
        descs.push((
            l.media_type.clone(),
            d,
            l.size.unwrap_or(l.blob.len() as u64),
        ));
    }
    let config = config_json(layers.len(), repo);
    let cd = push_blob(http, addr, repo, &config).await;
    let m = manifest_json(&cd, config.len(), &descs);
    (descs.into_iter().map(|(_, d, _)| d).collect(), m)
}

// ---------------------------------------------------------------- cases

/// What a case must end in.
enum Expect {
    /// The pull fails and the error message contains this (lower-cased).
    Fails(&'static str),
    /// The pull succeeds because the attack is neutralised; the check looks at the
    /// snapshots (lowest first).
    Neutralised(fn(&[PathBuf], &Path)),
}

/// How a case gets into the registry.
enum Build {
    Layers(Vec<Layer>),
    /// Push, then flip a byte of the first layer in the registry's storage.
    TamperFirstLayer(Vec<Layer>),
    /// Push, then delete the first layer from the registry's storage.
    DeleteFirstLayer(Vec<Layer>),
    /// Push a small manifest, then grow its stored bytes past the 4 MiB limit.
    OversizedManifest,
    /// An index whose only entry is another index (the closest a content-addressed index
    /// can get to pointing at itself: its own digest cannot be inside it).
    IndexOfIndex,
    /// One good layer listed this many times.
    ManyLayers(usize),
}

struct Case {
    name: &'static str,
    build: Build,
    expect: Expect,
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn cases(canary: &Path) -> Vec<Case> {
    let canary_s = canary.to_str().unwrap().to_string();
    let secret = format!("{canary_s}/secret");
    let through_root = format!("evil{canary_s}/pwned");
    // A gzip bomb: one member holding a tar entry of 4 MiB of zeros, repeated: each
    // member is a few KiB and unpacks to 4 MiB; 32 of them exceed the 64 MiB test limit.
    let member = gzip(&{
        let mut t = header(b"zeros", b'0', b"", 4 << 20, 0o644, (0, 0)).to_vec();
        t.resize(512 + (4 << 20), 0);
        t
    });
    let bomb: Vec<u8> = member.repeat(32);
    let mut truncated = gzip(&tar(&[file(
        "big",
        (0..300_000u32)
            .map(|i| (i * 31 % 253) as u8)
            .collect::<Vec<u8>>(),
    )]));
    truncated.truncate(truncated.len() / 2);
    let mut many_files: Vec<Entry> = (0..1_001).map(|i| file(format!("f{i}"), "")).collect();
    many_files.insert(0, dir("many"));
    let fifo = Entry {
        mode: 0o600,
        ..entry("pipe", b'6')
    };
    let chardev = Entry {
        dev: (1, 3),
        ..entry("dev/null2", b'3')
    };
    let blockdev = Entry {
        dev: (8, 0),
        ..entry("dev/sda2", b'4')
    };
    let huge = Entry {
        size: Some(1 << 40),
        ..file("huge", "tiny")
    };
    vec![
        Case {
            name: "dotdot traversal",
            build: Build::Layers(vec![layer(vec![file("../../escape", "x")])]),
            expect: Expect::Fails("path contains '..'"),
        },
        Case {
            name: "dotdot inside a path",
            build: Build::Layers(vec![layer(vec![dir("a"), file("a/../../escape", "x")])]),
            expect: Expect::Fails("path contains '..'"),
        },
        Case {
            name: "absolute path",
            build: Build::Layers(vec![layer(vec![file(format!("{canary_s}/abs"), "x")])]),
            expect: Expect::Neutralised(|snaps, canary| {
                let inside = snaps[0].join(canary.strip_prefix("/").unwrap()).join("abs");
                assert!(
                    lstat(&inside).is_file(),
                    "absolute path lands inside the snapshot"
                );
            }),
        },
        Case {
            name: "symlink to / then a file written through it",
            build: Build::Layers(vec![layer(vec![
                symlink("evil", "/"),
                file(&through_root, "x"),
            ])]),
            expect: Expect::Neutralised(|snaps, canary| {
                assert!(lstat(&snaps[0].join("evil")).file_type().is_symlink());
                let inside = snaps[0]
                    .join(canary.strip_prefix("/").unwrap())
                    .join("pwned");
                assert!(
                    lstat(&inside).is_file(),
                    "write through the link stays inside"
                );
            }),
        },
        Case {
            name: "symlink to the canary then a file written through it",
            build: Build::Layers(vec![layer(vec![
                symlink("evil", &canary_s),
                file("evil/pwned", "x"),
            ])]),
            // The link resolves inside the snapshot, where the canary's path does not
            // exist: refused rather than created.
            expect: Expect::Fails("opening parent directory failed: no such file"),
        },
        Case {
            name: "symlink loop",
            build: Build::Layers(vec![layer(vec![
                symlink("a", "b"),
                symlink("b", "a"),
                file("a/x", "x"),
            ])]),
            expect: Expect::Fails("too many levels of symbolic links"),
        },
        Case {
            name: "hardlink to outside with dotdot",
            build: Build::Layers(vec![layer(vec![hardlink("h", "../../../../etc/passwd")])]),
            expect: Expect::Fails("path contains '..'"),
        },
        Case {
            name: "hardlink to an absolute path outside",
            build: Build::Layers(vec![layer(vec![hardlink("h", &secret)])]),
            expect: Expect::Fails("hard link target directory"),
        },
        Case {
            name: "hardlink to a symlink pointing outside",
            build: Build::Layers(vec![layer(vec![symlink("s", &secret), hardlink("h", "s")])]),
            expect: Expect::Neutralised(|snaps, canary| {
                let h = lstat(&snaps[0].join("h"));
                assert!(
                    h.file_type().is_symlink(),
                    "the link is to the symlink itself"
                );
                assert_eq!(lstat(&canary.join("secret")).nlink(), 1);
            }),
        },
        Case {
            name: "whiteout of ../x",
            build: Build::Layers(vec![layer(vec![file("../.wh.secret", "")])]),
            expect: Expect::Fails("path contains '..'"),
        },
        Case {
            name: "whiteout named ..",
            build: Build::Layers(vec![layer(vec![file(".wh...", "")])]),
            expect: Expect::Fails("bad whiteout name"),
        },
        Case {
            name: "whiteout through a symlink to /",
            build: Build::Layers(vec![layer(vec![
                symlink("evil", "/"),
                file(format!("evil{canary_s}/.wh.secret"), ""),
            ])]),
            expect: Expect::Neutralised(|snaps, canary| {
                let wh = snaps[0]
                    .join(canary.strip_prefix("/").unwrap())
                    .join("secret");
                assert!(
                    lstat(&wh).file_type().is_char_device(),
                    "whiteout made inside"
                );
            }),
        },
        Case {
            name: "device nodes",
            build: Build::Layers(vec![layer(vec![
                dir("dev"),
                chardev,
                blockdev,
                file("ok", "x"),
            ])]),
            expect: Expect::Neutralised(|snaps, _| {
                assert!(!snaps[0].join("dev/null2").exists(), "char device skipped");
                assert!(!snaps[0].join("dev/sda2").exists(), "block device skipped");
                assert!(snaps[0].join("ok").is_file());
            }),
        },
        Case {
            name: "fifo",
            build: Build::Layers(vec![layer(vec![fifo])]),
            // A fifo only ever talks to processes of the same sandbox: kept, inside.
            expect: Expect::Neutralised(|snaps, _| {
                assert!(lstat(&snaps[0].join("pipe")).file_type().is_fifo());
            }),
        },
        Case {
            name: "gzip bomb",
            build: Build::Layers(vec![Layer {
                blob: bomb,
                media_type: media_types::OCI_LAYER_GZIP.into(),
                size: None,
            }]),
            expect: Expect::Fails("unpacks to more than"),
        },
        Case {
            name: "tar header with a huge size",
            build: Build::Layers(vec![layer(vec![huge])]),
            expect: Expect::Fails("unpacks to more than"),
        },
        Case {
            name: "truncated layer",
            build: Build::Layers(vec![Layer {
                blob: truncated,
                media_type: media_types::OCI_LAYER_GZIP.into(),
                size: None,
            }]),
            expect: Expect::Fails("the layer is corrupt or not a tar stream"),
        },
        Case {
            name: "too many entries",
            build: Build::Layers(vec![layer(many_files)]),
            expect: Expect::Fails("more than 1000 entries"),
        },
        Case {
            name: "digest mismatch",
            build: Build::TamperFirstLayer(vec![layer(vec![file(
                "t",
                "tampered later".repeat(100),
            )])]),
            expect: Expect::Fails("digest mismatch"),
        },
        Case {
            name: "declared size differs from the blob",
            build: Build::Layers(vec![Layer {
                size: Some(10),
                ..layer(vec![file("s", "size lie")])
            }]),
            expect: Expect::Fails("size mismatch"),
        },
        Case {
            name: "manifest naming a missing blob",
            build: Build::DeleteFirstLayer(vec![layer(vec![file("m", "missing later")])]),
            expect: Expect::Fails("answered 404"),
        },
        Case {
            name: "manifest over the size limit",
            build: Build::OversizedManifest,
            expect: Expect::Fails("larger than the limit of 4194304 bytes"),
        },
        Case {
            name: "index pointing to an index",
            build: Build::IndexOfIndex,
            expect: Expect::Fails("nested image index"),
        },
        Case {
            name: "unknown layer media type",
            build: Build::Layers(vec![Layer {
                media_type: "application/x-evil".into(),
                ..layer(vec![file("w", "x")])
            }]),
            expect: Expect::Fails("unsupported media type"),
        },
        Case {
            name: "foreign layer",
            build: Build::Layers(vec![Layer {
                media_type: media_types::DOCKER_FOREIGN_LAYER_GZIP.into(),
                ..layer(vec![file("f", "x")])
            }]),
            expect: Expect::Fails("foreign (non-distributable)"),
        },
        Case {
            name: "10,000 layers",
            build: Build::ManyLayers(10_000),
            expect: Expect::Fails("10000 layers, more than the limit of 128"),
        },
        Case {
            name: "name with a NUL byte",
            build: Build::Layers(vec![layer(vec![file(b"nul\0name".as_slice(), "x")])]),
            expect: Expect::Fails("nul byte"),
        },
        Case {
            name: "name over PATH_MAX",
            build: Build::Layers(vec![layer(vec![file("d/".repeat(2100) + "f", "x")])]),
            expect: Expect::Fails("path too long"),
        },
        Case {
            name: "component over NAME_MAX",
            build: Build::Layers(vec![layer(vec![file("n".repeat(300), "x")])]),
            expect: Expect::Fails("file name too long"),
        },
        Case {
            name: "directory replaced by a file in a later layer",
            build: Build::Layers(vec![
                layer(vec![dir("d"), file("d/inner", "x")]),
                layer(vec![file("d", "now a file")]),
            ]),
            // OCI semantics: the later layer's file hides the directory below it.
            expect: Expect::Neutralised(|snaps, _| {
                assert!(lstat(&snaps[0].join("d/inner")).is_file());
                assert!(lstat(&snaps[1].join("d")).is_file());
            }),
        },
        Case {
            name: "symlink replaced by a directory then written into",
            build: Build::Layers(vec![layer(vec![
                symlink("d", &canary_s),
                dir("d"),
                file("d/secret", "overwritten?"),
            ])]),
            expect: Expect::Neutralised(|snaps, _| {
                assert!(
                    lstat(&snaps[0].join("d")).is_dir(),
                    "the symlink was replaced"
                );
                assert!(lstat(&snaps[0].join("d/secret")).is_file());
            }),
        },
    ]
}

// ---------------------------------------------------------------- checks

/// Every path under `root` with its type, size, mode, link count and content hash.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = lstat(&p);
        let content = if md.is_file() {
            Digest::of(&fs::read(&p).unwrap()).to_string()
        } else if md.file_type().is_symlink() {
            fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        out.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            format!(
                "{:o} {} {} {} {content}",
                md.mode(),
                md.len(),
                md.nlink(),
                md.mtime()
            ),
        );
        if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What a consistent store looks like from outside: its records, blobs and snapshots.
fn store_state(root: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
    (
        names(&root.join("images")),
        names(&root.join("blobs/sha256")),
        names(&root.join("snapshots")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_images_fail_cleanly_and_touch_nothing_outside() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test unpacks with ownership and device semantics and needs root"
    );
    let reg = Registry::start_with(ALLOW_FOREIGN_URLS);
    let http = reqwest::Client::new();
    let work = tempfile::tempdir().unwrap();
    let canary = work.path().join("canary");
    fs::create_dir_all(canary.join("sub")).unwrap();
    fs::write(canary.join("secret"), "do not touch").unwrap();
    fs::write(canary.join("sub/file"), "nor this").unwrap();
    let canary_before = tree(&canary);
    let store_root = work.path().join("store");
    let store = ImageStore::open(&store_root)
        .unwrap()
        .with_limits(UnpackLimits {
            max_bytes: 64 << 20,
            max_entries: 1_000,
        });
    let opts = ClientOptions {
        insecure: true,
        ..Default::default()
    };

    let all = cases(&canary);
    assert!(all.len() >= 20, "the issue asks for at least 20 cases");
    let mut report = Vec::new();
    for (i, case) in all.into_iter().enumerate() {
        let repo = format!("mal/case{i}");
        let addr = reg.addr.as_str();
        let mut pull_addr = reg.addr.clone();
        match case.build {
            Build::Layers(layers) => {
                let (_, m) = push_parts(&http, addr, &repo, &layers).await;
                push_manifest(&http, addr, &repo, "1", media_types::OCI_MANIFEST, &m).await;
            }
            Build::TamperFirstLayer(layers) | Build::DeleteFirstLayer(layers) => {
                let delete = matches!(case.expect, Expect::Fails("answered 404"));
                let (digests, m) = push_parts(&http, addr, &repo, &layers).await;
                push_manifest(&http, addr, &repo, "1", media_types::OCI_MANIFEST, &m).await;
                let data = reg.blob_file(&digests[0]);
                if delete {
                    fs::remove_file(&data).unwrap();
                } else {
                    let mut bytes = fs::read(&data).unwrap();
                    let mid = bytes.len() / 2;
                    bytes[mid] ^= 0xff;
                    fs::write(&data, bytes).unwrap();
                }
            }
            Build::OversizedManifest => {
                // docker-registry itself refuses manifests over 4 MiB ("request body too
                // large"), so a registry that would serve one is played by a tiny server.
                let mut big = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":""#.to_vec();
                big.extend(std::iter::repeat_n(b'p', 5 << 20));
                big.extend_from_slice(b"\"}}");
                pull_addr = serve_forever(big).await;
            }
            Build::IndexOfIndex => {
                let (_, m) = push_parts(&http, addr, &repo, &[layer(vec![file("i", "x")])]).await;
                let md =
                    push_manifest(&http, addr, &repo, "inner-m", media_types::OCI_MANIFEST, &m)
                        .await;
                let (os, arch) = host_platform();
                let index = |digest: &Digest, size: usize, media_type: &str| {
                    serde_json::to_vec(&serde_json::json!({
                        "schemaVersion": 2,
                        "mediaType": media_types::OCI_INDEX,
                        "manifests": [{"mediaType": media_type, "digest": digest.to_string(),
                                       "size": size, "platform": {"os": os, "architecture": arch}}],
                    }))
                    .unwrap()
                };
                let inner = index(&md, m.len(), media_types::OCI_MANIFEST);
                let id = push_manifest(&http, addr, &repo, "inner", media_types::OCI_INDEX, &inner)
                    .await;
                let outer = index(&id, inner.len(), media_types::OCI_INDEX);
                push_manifest(&http, addr, &repo, "1", media_types::OCI_INDEX, &outer).await;
            }
            Build::ManyLayers(n) => {
                let one = layer(vec![file("l", "x")]);
                let ld = push_blob(&http, addr, &repo, &one.blob).await;
                let config = config_json(n, &repo);
                let cd = push_blob(&http, addr, &repo, &config).await;
                let descs = vec![(one.media_type.clone(), ld, one.blob.len() as u64); n];
                let m = manifest_json(&cd, config.len(), &descs);
                push_manifest(&http, addr, &repo, "1", media_types::OCI_MANIFEST, &m).await;
            }
        }

        let before = store_state(&store_root);
        let r: Reference = format!("{pull_addr}/{repo}:1").parse().unwrap();
        let started = Instant::now();
        let result = store.pull(&r, &opts, |_| {}).await;
        let took = started.elapsed();
        match (&case.expect, result) {
            (Expect::Fails(want), Err(e)) => {
                let msg = e.to_string();
                assert!(
                    msg.to_lowercase().contains(&want.to_lowercase()),
                    "case {:?}: error {msg:?} does not say {want:?}",
                    case.name
                );
                assert_eq!(
                    store_state(&store_root),
                    before,
                    "case {:?}: a failed pull changed the store",
                    case.name
                );
                report.push(format!(
                    "{:<52} refused  {:>5} ms  {msg}",
                    case.name,
                    took.as_millis()
                ));
            }
            (Expect::Neutralised(check), Ok(img)) => {
                check(&img.snapshot_dirs, &canary);
                report.push(format!(
                    "{:<52} neutralised {:>5} ms",
                    case.name,
                    took.as_millis()
                ));
            }
            (Expect::Fails(want), Ok(_)) => {
                panic!(
                    "case {:?}: pull succeeded, expected an error saying {want:?}",
                    case.name
                )
            }
            (Expect::Neutralised(_), Err(e)) => {
                panic!(
                    "case {:?}: expected a neutralised pull, got: {e}",
                    case.name
                )
            }
        }
        assert_eq!(
            canary_before,
            tree(&canary),
            "case {:?} changed the canary",
            case.name
        );
        assert!(
            names(&store_root.join("tmp")).is_empty(),
            "case {:?} left temp files",
            case.name
        );
        assert!(
            names(&store_root.join("partial")).is_empty(),
            "case {:?} left a partial download",
            case.name
        );
        assert_eq!(
            names(work.path()),
            vec!["canary".to_string(), "store".to_string()],
            "case {:?} wrote next to the store",
            case.name
        );
    }
    for line in &report {
        eprintln!("{line}");
    }

    // The store still works: a good image pulls, and a collection empties it.
    let good = "mal/good";
    let (_, m) = push_parts(
        &http,
        &reg.addr,
        good,
        &[layer(vec![dir("www"), file("www/index.html", "fine")])],
    )
    .await;
    push_manifest(&http, &reg.addr, good, "1", media_types::OCI_MANIFEST, &m).await;
    let r: Reference = format!("{}/{good}:1", reg.addr).parse().unwrap();
    let img = store.pull(&r, &opts, |_| {}).await.unwrap();
    assert_eq!(
        fs::read_to_string(img.snapshot_dirs[0].join("www/index.html")).unwrap(),
        "fine"
    );
    let s = store.clone();
    let keep = img.manifest_digest.clone();
    let gc = tokio::task::spawn_blocking(move || s.gc(&[keep]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gc.images_kept, 1);
    assert_eq!(
        names(&store_root.join("snapshots")),
        vec![img.layers[0].digest.hex().to_string()]
    );
    assert!(store.get(&img.manifest_digest).unwrap().is_some());
}
