//! berth-bench-images: pull + unpack of a ~100 MB, 5-layer image from a local
//! `docker-registry`, Berth (`ImageStore::pull` into a fresh store) against
//! `skopeo copy docker://… oci:DIR` + `umoci unpack` in the same run, alternating; then
//! a second site on the same image (time and extra disk of a second pull + overlay
//! mount) and 100 overlay roots of the image (disk used vs one site).
//!
//! Run by hand as root (overlay mounts), never in CI:
//!   cargo build --release -p berth-bench-images
//!   target/release/berth-bench-images [--runs 5]
//! Needs docker-registry, skopeo, umoci and GNU tar (scripts/install-deps.sh).

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use berth_images::{mount_rootfs, unmount_rootfs, ClientOptions, ImageStore, Reference};

const LAYERS: usize = 5;
const RANDOM_FILES_PER_LAYER: usize = 4;
const RANDOM_FILE_BYTES: usize = 2_500_000;
const TEXT_FILES_PER_LAYER: usize = 200;
const TEXT_FILE_BYTES: usize = 50_000;
const SITES: usize = 100;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bytes on disk under `dir`, hardlinks counted once, other file systems (overlay
/// mounts) skipped: `du -sx`.
fn disk_usage(dir: &Path) -> Result<u64> {
    let out = run(Command::new("du").args(["-sx", "--block-size=1"]).arg(dir))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("parsing du output {out:?}"))
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn text(len: usize, seed: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 100);
    let mut i = 0;
    while s.len() < len {
        s.push_str(&format!(
            "line {i} of file {seed}: the quick brown fox jumps over the lazy dog {}\n",
            i * 7919 % 1000
        ));
        i += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.join("registry.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry: apt-get install docker-registry")?;
        let reg = Registry { child, addr };
        let start = Instant::now();
        while TcpStream::connect(&reg.addr).is_err() {
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reg)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the 5-layer image with umoci (`raw add-layer` of GNU tar layers) and pushes it.
fn build_image(work: &Path, registry: &str) -> Result<(String, u64)> {
    let layout = work.join("build-oci");
    let image = format!("{}:1", layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    let mut total = 0u64;
    for l in 0..LAYERS {
        let stage = work.join(format!("layer{l}"));
        let dir = stage.join(format!("app/layer{l}"));
        fs::create_dir_all(dir.join("text"))?;
        for f in 0..RANDOM_FILES_PER_LAYER {
            let data = noise(RANDOM_FILE_BYTES, (l * 100 + f + 1) as u64);
            total += data.len() as u64;
            fs::write(dir.join(format!("blob{f}.bin")), data)?;
        }
        for f in 0..TEXT_FILES_PER_LAYER {
            let data = text(TEXT_FILE_BYTES, l * 1000 + f);
            total += data.len() as u64;
            fs::write(dir.join(format!("text/file{f}.txt")), data)?;
        }
        let tar = work.join(format!("layer{l}.tar"));
        run(Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&stage)
            .arg("-cf")
            .arg(&tar)
            .arg("."))?;
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &image])
            .arg(&tar))?;
        fs::remove_dir_all(&stage)?;
        fs::remove_file(&tar)?;
    }
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/true",
    ]))?;
    let name = format!("{registry}/bench/big:1");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{image}"))
        .arg(format!("docker://{name}")))?;
    fs::remove_dir_all(&layout)?;
    Ok((name, total))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs needs a number")?.parse()?,
            _ => bail!("usage: berth-bench-images [--runs N]"),
        }
    }
    ensure!(
        nix_is_root(),
        "run as root: the benchmark mounts overlay roots"
    );
    let work = tempfile::Builder::new()
        .prefix("berth-bench-images-")
        .tempdir_in("/var/tmp")?;
    let w = work.path();
    let reg = Registry::start(w)?;
    let t = Instant::now();
    let (image, content_bytes) = build_image(w, &reg.addr)?;
    println!(
        "image {image}: {LAYERS} layers, {:.1} MiB of files (half random, half text), built and pushed in {:.1}s",
        mib(content_bytes),
        t.elapsed().as_secs_f64()
    );
    let r: Reference = image.parse()?;
    let opts = ClientOptions {
        insecure: true,
        ..Default::default()
    };

    // Warm-up of both (registry page cache), not counted.
    let mut berth_s = Vec::new();
    let mut peer_s = Vec::new();
    for i in 0..=runs {
        let store_dir = w.join("berth-store");
        let t = Instant::now();
        let store = ImageStore::open(&store_dir)?;
        store.pull(&r, &opts, |_| {}).await?;
        let b = t.elapsed().as_secs_f64();
        fs::remove_dir_all(&store_dir)?;

        let layout = w.join("peer-oci");
        let bundle = w.join("peer-bundle");
        let t = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{image}"))
            .arg(format!("oci:{}:1", layout.display())))?;
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:1", layout.display()))
            .arg(&bundle))?;
        let p = t.elapsed().as_secs_f64();
        fs::remove_dir_all(&layout)?;
        fs::remove_dir_all(&bundle)?;
        if i == 0 {
            println!("warm-up: berth {b:.3}s, skopeo+umoci {p:.3}s (not counted)");
            continue;
        }
        println!("run {i}: berth {b:.3}s, skopeo+umoci {p:.3}s");
        berth_s.push(b);
        peer_s.push(p);
    }
    let (bm, pm) = (median(&mut berth_s), median(&mut peer_s));
    println!(
        "pull+unpack median over {runs} runs: berth {bm:.3}s, skopeo copy + umoci unpack {pm:.3}s, ratio {:.2}x (target <= 1.0x: {})",
        bm / pm,
        if bm <= pm { "met" } else { "NOT met" }
    );

    // One site, then a second site on the same image.
    let store_dir = w.join("store");
    let inst_dir = w.join("instances");
    fs::create_dir_all(&inst_dir)?;
    let store = ImageStore::open(&store_dir)?;
    let t = Instant::now();
    let img = store.pull(&r, &opts, |_| {}).await?;
    mount_rootfs(&img.snapshot_dirs, &inst_dir.join("site-0"))?;
    let first = t.elapsed().as_secs_f64();
    let one_site = disk_usage(&store_dir)? + disk_usage(&inst_dir)?;
    let t = Instant::now();
    let img2 = store.pull(&r, &opts, |_| {}).await?;
    mount_rootfs(&img2.snapshot_dirs, &inst_dir.join("site-1"))?;
    let second = t.elapsed().as_secs_f64();
    let two_sites = disk_usage(&store_dir)? + disk_usage(&inst_dir)?;
    println!(
        "first site (pull + overlay mount): {first:.3}s, disk {:.1} MiB (store: blobs + snapshots)",
        mib(one_site)
    );
    println!(
        "second site on the same image: {:.1} ms, extra disk {} KiB",
        second * 1000.0,
        (two_sites.saturating_sub(one_site)) / 1024
    );

    // 100 sites on the image.
    let t = Instant::now();
    for i in 2..SITES {
        let img = store.pull(&r, &opts, |_| {}).await?;
        mount_rootfs(&img.snapshot_dirs, &inst_dir.join(format!("site-{i}")))?;
    }
    let mount_s = t.elapsed().as_secs_f64();
    let hundred = disk_usage(&store_dir)? + disk_usage(&inst_dir)?;
    let ok = hundred as f64 <= one_site as f64 * 1.05;
    println!(
        "{SITES} sites: disk {:.1} MiB = {:.3}x one site (target ~1x: {}); {} more pulls + mounts took {mount_s:.2}s",
        mib(hundred),
        hundred as f64 / one_site as f64,
        if ok { "met" } else { "NOT met" },
        SITES - 2
    );
    let mut failures = Vec::new();
    for i in 0..SITES {
        let d: PathBuf = inst_dir.join(format!("site-{i}"));
        if let Err(e) = unmount_rootfs(&d) {
            failures.push(format!("{}: {e}", d.display()));
        }
    }
    ensure!(failures.is_empty(), "unmounting: {}", failures.join("; "));
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
