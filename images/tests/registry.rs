//! Pull from a real registry: Debian's docker-registry on a free loopback port, the demo
//! image built and pushed with scripts/build-image.sh (umoci + skopeo), then pulled into
//! an ImageStore, mounted as an overlay root and unmounted. Needs root, docker-registry,
//! umoci, skopeo and busybox-static; panics loudly when something is missing.

use std::fs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_images::{
    mount_rootfs, unmount_rootfs, ClientError, ClientOptions, ImageStore, PullEvent, Reference,
    RegistryClient, StoreError,
};

mod common;
use common::{free_port, need, Registry};

fn build_and_push(name_tag: &str, registry: &str, extra: &[&str]) {
    need("umoci", "umoci");
    need("skopeo", "skopeo");
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-image.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(name_tag)
        .arg(registry)
        .args(extra)
        .output()
        .expect("running build-image.sh");
    assert!(
        out.status.success(),
        "build-image.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn opts() -> ClientOptions {
    ClientOptions {
        insecure: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mount_and_errors_against_a_real_registry() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test mounts overlayfs and needs root"
    );
    let reg = Registry::start_with("");
    build_and_push("berth-test/hello:1", &reg.addr, &[]);
    build_and_push("berth-test/noentry:1", &reg.addr, &["--no-entrypoint"]);

    // The controller's view: resolve and validate.
    let client = RegistryClient::new(opts()).unwrap();
    let r: Reference = format!("{}/berth-test/hello:1", reg.addr).parse().unwrap();
    let resolved = client.resolve(&r).await.unwrap();
    let command = resolved.config.command().unwrap();
    assert_eq!(command[..2], ["/bin/sh", "-c"], "{command:?}");
    assert!(command[2].contains("busybox httpd"), "{command:?}");
    assert_eq!(resolved.layers.len(), 1);
    assert_eq!(
        resolved.pinned.to_string(),
        format!("{}/berth-test/hello@{}", reg.addr, resolved.manifest_digest)
    );
    let bad: Reference = format!("{}/berth-test/noentry:1", reg.addr)
        .parse()
        .unwrap();
    assert_eq!(client.resolve(&bad).await.unwrap().config.command(), None);

    // Unknown tag and unknown repository: NotFound.
    for missing in ["berth-test/hello:nope", "berth-test/absent:1"] {
        let m: Reference = format!("{}/{missing}", reg.addr).parse().unwrap();
        let e = client.resolve(&m).await.unwrap_err();
        assert!(matches!(e, ClientError::NotFound { .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("not found in registry: check the name and tag"),
            "{e}"
        );
    }

    // Pinned by a digest the registry does not have: NotFound too.
    let wrong = r.pinned(berth_images::Digest::of(b"nothing"));
    let e = client.resolve(&wrong).await.unwrap_err();
    assert!(matches!(e, ClientError::NotFound { .. }), "{e}");

    // Unreachable registry.
    let dead: Reference = format!("127.0.0.1:{}/berth-test/hello:1", free_port())
        .parse()
        .unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&store_dir.path().join("images")).unwrap();
    let e = store.pull(&dead, &opts(), |_| {}).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Client(ClientError::Unreachable { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("unreachable"), "{e}");

    // The agent's view: pull, mount, check, unmount.
    let events = Mutex::new(Vec::new());
    let img = store
        .pull(&r, &opts(), |e| events.lock().unwrap().push(e))
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, resolved.manifest_digest);
    assert_eq!(img.snapshot_dirs.len(), 1);
    let events = events.into_inner().unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PullEvent::LayerUnpacked { .. })),
        "{events:?}"
    );
    let snap = &img.snapshot_dirs[0];
    assert!(snap.join("bin/busybox").is_file());

    let instance: PathBuf = store_dir.path().join("instances/i-1");
    let rootfs = mount_rootfs(&img.snapshot_dirs, &instance).unwrap();
    let unmount_guard = scopeguard(&instance);
    assert!(
        rootfs.join("bin/busybox").is_file(),
        "busybox in the overlay"
    );
    assert!(
        fs::symlink_metadata(rootfs.join("bin/sh"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "sh is a symlink to busybox"
    );
    let cgi = fs::read_to_string(rootfs.join("www/cgi-bin/index.cgi")).unwrap();
    assert!(cgi.contains("visits"), "cgi script in the overlay");
    drop(unmount_guard);
    assert!(!rootfs.exists());

    // Second pull: from the store, no new blobs, fast.
    let blobs_before = count_files(&store_dir.path().join("images/blobs/sha256"));
    let started = Instant::now();
    let cached_events = Mutex::new(Vec::new());
    let again = store
        .pull(&r, &opts(), |e| cached_events.lock().unwrap().push(e))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(again, img);
    assert_eq!(
        count_files(&store_dir.path().join("images/blobs/sha256")),
        blobs_before
    );
    assert!(
        matches!(
            cached_events.into_inner().unwrap().as_slice(),
            [PullEvent::Cached { .. }]
        ),
        "second pull must come from the store"
    );
    assert!(took < Duration::from_secs(2), "second pull took {took:?}");
    whiteouts_hide_lower_layers(&reg, &store, &store_dir.path().join("instances/i-2")).await;
    concurrent_pulls_share_layers(&r).await;
    corrupt_blob_is_refused(&reg).await;

    // Pinned and cached: no registry needed at all.
    drop(reg);
    let offline = store.pull(&img.reference, &opts(), |_| {}).await.unwrap();
    assert_eq!(offline.snapshot_dirs, img.snapshot_dirs);
}

/// Unmounts the instance root when dropped, so a failed assertion leaves no mount behind.
struct Unmount<'a>(&'a Path);

fn scopeguard(p: &Path) -> Unmount<'_> {
    Unmount(p)
}

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if let Err(e) = unmount_rootfs(self.0) {
            if !std::thread::panicking() {
                panic!("unmounting {}: {e}", self.0.display());
            }
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A second layer made by umoci that deletes a file and a directory: the deletions must
/// show through the overlay as whiteouts.
async fn whiteouts_hide_lower_layers(reg: &Registry, store: &ImageStore, instance: &Path) {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    let bundle = work.path().join("bundle");
    let src = format!("docker://{}/berth-test/hello:1", reg.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false", &src])
        .arg(format!("oci:{}:1", layout.display())));
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:1", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    fs::remove_file(rootfs.join("bin/wget")).unwrap();
    fs::remove_dir_all(rootfs.join("www/cgi-bin")).unwrap();
    fs::write(rootfs.join("www/added.txt"), "layer two").unwrap();
    run(Command::new("umoci")
        .arg("repack")
        .arg("--image")
        .arg(format!("{}:1", layout.display()))
        .arg(&bundle));
    let dest = format!("docker://{}/berth-test/layered:1", reg.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", layout.display()))
        .arg(&dest));

    let r: Reference = format!("{}/berth-test/layered:1", reg.addr)
        .parse()
        .unwrap();
    let img = store.pull(&r, &opts(), |_| {}).await.unwrap();
    assert_eq!(img.snapshot_dirs.len(), 2);
    let root = mount_rootfs(&img.snapshot_dirs, instance).unwrap();
    let guard = scopeguard(instance);
    assert!(root.join("bin/busybox").is_file());
    assert!(
        !root.join("bin/wget").exists(),
        "deleted file hidden by a whiteout"
    );
    assert!(root.join("bin/sh").exists());
    assert!(
        !root.join("www/cgi-bin").exists(),
        "deleted dir hidden by a whiteout"
    );
    assert_eq!(
        fs::read_to_string(root.join("www/added.txt")).unwrap(),
        "layer two"
    );
    drop(guard);
}

/// Two stores on one root pulling the same image at once: both succeed, one snapshot.
async fn concurrent_pulls_share_layers(r: &Reference) {
    let dir = tempfile::tempdir().unwrap();
    let a = ImageStore::open(dir.path()).unwrap();
    let b = ImageStore::open(dir.path()).unwrap();
    let o = opts();
    let (x, y) = tokio::join!(a.pull(r, &o, |_| {}), b.pull(r, &o, |_| {}));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.snapshot_dirs, y.snapshot_dirs);
    assert_eq!(count_files(&dir.path().join("snapshots")), 1);
    assert_eq!(count_files(&dir.path().join("tmp")), 0, "no leftovers");
    assert!(x.snapshot_dirs[0].join("bin/busybox").is_file());
}

/// Flip a byte of a layer inside the registry's storage: the pull must fail with a
/// digest mismatch and leave nothing in the store.
async fn corrupt_blob_is_refused(reg: &Registry) {
    let r: Reference = format!("{}/berth-test/noentry:1", reg.addr)
        .parse()
        .unwrap();
    let client = RegistryClient::new(opts()).unwrap();
    let layer = client.resolve(&r).await.unwrap().layers[0].digest.clone();
    let hex = layer.hex();
    let data = reg
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let e = store.pull(&r, &opts(), |_| {}).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Client(ClientError::DigestMismatch { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    assert!(!store.blob_path(&layer).exists());
    assert_eq!(count_files(&dir.path().join("snapshots")), 0);
    assert_eq!(count_files(&dir.path().join("tmp")), 0);
}
