//! A pull killed with SIGKILL at any point leaves nothing that looks complete.
//!
//! A six-layer image (~38 MiB, incompressible) is built with umoci and pushed to Debian's
//! docker-registry. This test binary then runs itself as a child that pulls the image
//! into one store, and kills it with SIGKILL at points spread over a whole pull. After
//! every kill the store is opened again (as a restarted agent would) and checked:
//! - the image is either absent or complete (every snapshot there, with exactly the
//!   layer's files and bytes);
//! - every blob under its final name hashes to that name;
//! - every layer snapshot under its final name holds exactly its layer.
//!
//! Finally a pull into the same store succeeds and yields the whole image. Needs root,
//! docker-registry, umoci and skopeo; panics loudly when something is missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_images::{ClientOptions, Digest, ImageStore, Reference};

mod common;
use common::{need, Registry};

/// Set in the child: `<store dir>\n<reference>`.
const CHILD_ENV: &str = "BERTH_IMAGES_CRASH_CHILD";
const TEST_NAME: &str = "pull_killed_at_any_point_leaves_nothing_that_looks_complete";

const LAYERS: usize = 6;
const BIG_FILES: usize = 2;
const BIG_LEN: usize = 3 << 20;
const SMALL_FILES: usize = 200;
const SMALL_LEN: usize = 1024;

fn opts() -> ClientOptions {
    ClientOptions {
        insecure: true,
        ..Default::default()
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What layer `i` holds: `layer<i>/big<n>` and `layer<i>/small/<nnn>`.
fn layer_files(i: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for n in 0..BIG_FILES {
        files.push((
            format!("layer{i}/big{n}"),
            noise(BIG_LEN, (i * 100 + n) as u64),
        ));
    }
    for n in 0..SMALL_FILES {
        files.push((
            format!("layer{i}/small/{n:03}"),
            noise(SMALL_LEN, (i * 100_000 + n) as u64),
        ));
    }
    files
}

fn build_and_push(work: &Path, reg: &str) -> Reference {
    need("umoci", "umoci");
    need("skopeo", "skopeo");
    let layout = work.join("oci");
    let image = format!("{}:1", layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    for i in 0..LAYERS {
        let stage = work.join(format!("stage{i}"));
        for (rel, data) in layer_files(i) {
            let p = stage.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, data).unwrap();
        }
        let tar = work.join(format!("layer{i}.tar"));
        run(Command::new("tar")
            .arg("-C")
            .arg(&stage)
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&tar)
            .arg("."));
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &image])
            .arg(&tar));
    }
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/true",
        "--os",
        "linux",
        "--architecture",
        "amd64",
    ]));
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{image}"),
        &format!("docker://{reg}/crash/big:1"),
    ]));
    format!("{reg}/crash/big:1").parse().unwrap()
}

/// Which layer a snapshot holds, from its one top-level directory `layer<i>`.
fn layer_of_snapshot(snap: &Path) -> usize {
    let names: Vec<String> = fs::read_dir(snap)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "snapshot {} holds {names:?}",
        snap.display()
    );
    names[0]
        .strip_prefix("layer")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("snapshot {} holds {names:?}", snap.display()))
}

/// Panics unless `snap` holds exactly layer `i`'s files and bytes.
fn assert_complete_snapshot(snap: &Path, i: usize) {
    let expected = layer_files(i);
    let small = fs::read_dir(snap.join(format!("layer{i}/small")))
        .unwrap()
        .count();
    assert_eq!(small, SMALL_FILES, "small files in {}", snap.display());
    for (rel, data) in expected {
        let got = fs::read(snap.join(&rel))
            .unwrap_or_else(|e| panic!("{} of snapshot {}: {e}", rel, snap.display()));
        assert!(got == data, "{rel} of snapshot {} differs", snap.display());
    }
}

/// Checks the store after a crash: whether the image is there (complete), and how
/// many blobs and layer snapshots are under their final names.
fn check_store(root: &Path, r: &Reference, manifest: &Digest) -> (bool, usize, usize) {
    let store = ImageStore::open(root).expect("reopening the store after the kill");
    // Every blob under its final name is what its name says.
    let blobs = root.join("blobs/sha256");
    let mut blob_count = 0;
    for e in fs::read_dir(&blobs).into_iter().flatten() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let data = fs::read(e.path()).unwrap();
        assert_eq!(
            Digest::of(&data).hex(),
            name,
            "blob {} does not hash to its name",
            e.path().display()
        );
        blob_count += 1;
    }
    // Every snapshot under its final name is a whole layer.
    let mut snapshots = 0;
    for e in fs::read_dir(root.join("snapshots")).into_iter().flatten() {
        let p = e.unwrap().path();
        if !p.is_dir() {
            continue;
        }
        let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue; // not under a final name: a leftover the next pull ignores
        }
        assert_complete_snapshot(&p, layer_of_snapshot(&p));
        snapshots += 1;
    }
    let there = match store.get(manifest).expect("reading the image record") {
        None => false,
        Some(img) => {
            assert_eq!(
                img.snapshot_dirs.len(),
                LAYERS,
                "{r}: a recorded image has every layer"
            );
            assert_eq!(snapshots, LAYERS);
            for (i, d) in img.snapshot_dirs.iter().enumerate() {
                assert_complete_snapshot(d, i);
            }
            true
        }
    };
    (there, blob_count, snapshots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_killed_at_any_point_leaves_nothing_that_looks_complete() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        // The child: pull, then leave at once (the parent kills it before, mostly).
        let (root, reference) = spec.split_once('\n').expect("store and reference");
        let store = ImageStore::open(Path::new(root)).expect("child: opening the store");
        let r: Reference = reference.parse().expect("child: reference");
        store.pull(&r, &opts(), |_| {}).await.expect("child: pull");
        std::process::exit(0);
    }
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "the images tests run as root (unpacking keeps owners)"
    );
    let reg = Registry::start_with("");
    let work = tempfile::tempdir().unwrap();
    let r = build_and_push(work.path(), &reg.addr);

    // A whole pull, to learn how long one takes and the manifest digest.
    let reference_store = work.path().join("reference-store");
    let t = Instant::now();
    let whole = ImageStore::open(&reference_store)
        .unwrap()
        .pull(&r, &opts(), |_| {})
        .await
        .expect("a whole pull");
    let full = t.elapsed();
    let manifest = whole.manifest_digest.clone();
    assert!(check_store(&reference_store, &r, &manifest).0);
    println!("crash: a whole pull of {LAYERS} layers took {full:?}");

    // Kill a pulling child at points spread over (and a little past) a whole pull.
    let root: PathBuf = work.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let (mut absent, mut complete) = (0, 0);
    let kills = 12u32;
    for k in 0..kills {
        // Child start-up (exec, runtime) comes on top of the pull itself.
        let at = Duration::from_millis(20) + full.mul_f64(f64::from(k) / f64::from(kills - 2));
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}\n{r}", root.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning the pulling child");
        std::thread::sleep(at);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let status = child.wait().unwrap();
        let (there, blobs, snaps) = check_store(&root, &r, &manifest);
        println!(
            "crash: kill {k} at {at:?} ({status}): image {}, {blobs} blobs and {snaps} layer snapshots whole",
            if there { "complete" } else { "absent" }
        );
        if there {
            complete += 1;
            // Start over, so later kills hit a pull again.
            fs::remove_dir_all(&root).unwrap();
        } else {
            absent += 1;
        }
    }
    assert!(
        absent >= 3,
        "only {absent} kills hit a pull in progress: the test did not test"
    );

    // The same store takes a pull after all that.
    let img = ImageStore::open(&root)
        .unwrap()
        .pull(&r, &opts(), |_| {})
        .await
        .expect("pull after the kills");
    assert_eq!(img.manifest_digest, manifest);
    assert!(check_store(&root, &r, &manifest).0);
    println!("crash: {absent} kills mid-pull left no image, {complete} came after the pull; the store then pulled it whole");
}
