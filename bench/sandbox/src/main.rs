//! `berth-bench-sandbox`: Berth's sandbox runtime against Debian's `runc`.
//!
//! Two measurements, on the same busybox root filesystem, the same OCI spec (built by
//! sandboxd's own spec code from one request: pid, mount, uts, ipc namespaces, one
//! shared network namespace joined by path, the same cgroup limits, no terminal):
//!
//! 1. Lifecycle latency: create + start + wait for exit + delete of a `/bin/true`
//!    sandbox, Berth (gRPC to a `berth-sandboxd` over its Unix socket, as the agent
//!    calls it) and runc (`runc create/start`, waitpid, `runc delete`) alternating
//!    in the same run. Median, p90 and the ratio Berth/runc.
//! 2. Host memory per running idle sandbox (`sleep 3600`): RSS growth of sandboxd
//!    divided by the number of sandboxes, plus any per-sandbox process other than the
//!    app; the same for runc, which keeps nothing resident once detached.
//!
//! A profile then runs sandboxd's helper directly (no daemon) to split Berth's time.
//! Run by hand as root (see `bench/README.md`); it is not a test and never runs in CI.

mod berth;
mod helper;
mod procs;
mod runc;
mod setup;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use clap::Parser;

use crate::stats::{Samples, Summary, PHASES};

/// Benchmarks berth-sandboxd against runc: lifecycle latency and memory per sandbox.
#[derive(Debug, Parser)]
#[command(name = "berth-bench-sandbox")]
struct Args {
    /// Timed iterations per runtime.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Untimed warm-up iterations per runtime.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Idle sandboxes per runtime for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 20)]
    idle: usize,
    /// Iterations of the helper profile (0 skips it).
    #[arg(long, default_value_t = 50)]
    profile_iterations: usize,
    /// Wait for Berth's process to exit by polling Get at this interval (µs) instead
    /// of the Wait call (0, the default).
    #[arg(long, default_value_t = 0)]
    poll_us: u64,
    /// The berth-sandboxd binary [default: next to this binary].
    #[arg(long)]
    sandboxd: Option<PathBuf>,
    /// The runc binary.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runc: PathBuf,
    /// Directory to make the work directory in.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Keep the work directory (logs, state) after the run.
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    setup::require_root()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}

fn uname_r() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews timings.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cgroup_mode() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2 (unified)"
    } else if std::path::Path::new("/sys/fs/cgroup/unified").exists() {
        "v1 (hybrid)"
    } else {
        "v1"
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let sandboxd = match args.sandboxd.clone() {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("berth-sandboxd"),
    };
    ensure!(
        sandboxd.is_file(),
        "{} not found: build it (cargo build --release -p berth-sandboxd) or pass --sandboxd",
        sandboxd.display()
    );
    ensure!(
        args.runc.is_file(),
        "{} not found: install runc or pass --runc",
        args.runc.display()
    );

    let work = tempfile::Builder::new()
        .prefix("berth-bench-sandbox-")
        .tempdir_in(&args.work_dir)
        .with_context(|| format!("making a work directory in {}", args.work_dir.display()))?;
    let dir = work.path().to_path_buf();
    eprintln!("work directory {}", dir.display());
    let rootfs = dir.join("rootfs");
    setup::busybox_rootfs(&rootfs)?;
    let netns = setup::Netns::create(format!("berth-bench-{}", std::process::id()))?;
    let target = setup::Target {
        rootfs,
        netns_path: netns.path(),
        log_path: dir.join("app.log"),
    };
    setup::become_subreaper()?;

    let mut daemon = setup::Daemon::start(&sandboxd, &dir)?;
    let mut berth = berth::Berth {
        client: daemon.client().await?,
        target: target.clone(),
        poll: Duration::from_micros(args.poll_us),
    };
    let runc = runc::Runc {
        bin: args.runc.clone(),
        root: dir.join("runc-state"),
        bundles: dir.join("runc-bundles"),
        target: target.clone(),
    };

    let load_before = loadavg();
    eprintln!(
        "warm-up: {} iterations each, then {} timed iterations each, alternating",
        args.warmup, args.iterations
    );
    for i in 0..args.warmup {
        berth.lifecycle(&format!("wb-{i}")).await?;
        runc.lifecycle(&format!("wr-{i}"))?;
    }
    let (mut b, mut r) = (Samples::default(), Samples::default());
    for i in 0..args.iterations {
        // Alternate which runtime goes first, so neither always follows the other.
        if i % 2 == 0 {
            b.iterations.push(berth.lifecycle(&format!("b-{i}")).await?);
            r.iterations.push(runc.lifecycle(&format!("r-{i}"))?);
        } else {
            r.iterations.push(runc.lifecycle(&format!("r-{i}"))?);
            b.iterations.push(berth.lifecycle(&format!("b-{i}")).await?);
        }
        if (i + 1) % 50 == 0 {
            eprintln!("  {} / {}", i + 1, args.iterations);
        }
    }

    let profile = if args.profile_iterations > 0 {
        eprintln!("profile: {} helper iterations", args.profile_iterations);
        let helper = helper::Helper {
            exe: sandboxd.clone(),
            state_root: dir.join("helper-state"),
            bundles: dir.join("helper-bundles"),
            target: target.clone(),
        };
        let mut h = Samples::default();
        let (mut noop, mut runc_noop) = (Vec::new(), Vec::new());
        for i in 0..args.profile_iterations {
            h.iterations.push(helper.lifecycle(&format!("h-{i}"))?);
            noop.push(helper.noop()?);
            runc_noop.push(helper::runc_noop(&args.runc)?);
        }
        Some((h, Summary::of(noop), Summary::of(runc_noop)))
    } else {
        None
    };

    let memory = if args.idle > 0 {
        eprintln!("memory: {} idle sandboxes each", args.idle);
        Some((
            memory_berth(&mut berth, daemon.pid(), args.idle).await?,
            memory_runc(&runc, daemon.pid(), args.idle).await?,
        ))
    } else {
        None
    };

    println!(
        "\nberth-bench-sandbox: kernel {}, {} cpus, cgroup {}, {}",
        uname_r(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cgroup_mode(),
        runc_version(&args.runc)
    );
    println!(
        "load average (1/5/15 min) at start {load_before}, at end {}",
        loadavg()
    );
    println!(
        "lifecycle of a /bin/true sandbox (create + start + wait + delete), {} iterations each after {} warm-up, alternating; ms\n",
        args.iterations, args.warmup
    );
    println!("| runtime | phase | median | p90 | mean | min | max |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, phase: &str, s: Summary| {
        println!(
            "| {name} | {phase} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.median, s.p90, s.mean, s.min, s.max
        );
    };
    for (name, samples) in [("berth", &b), ("runc", &r)] {
        row(name, "**total**", samples.total());
        for (i, phase) in PHASES.iter().enumerate() {
            row(name, phase, samples.phase(i));
        }
    }
    let (bt, rt) = (b.total(), r.total());
    println!(
        "\nratio berth/runc: median {:.2}x, p90 {:.2}x (target <= 0.5x)",
        bt.median / rt.median,
        bt.p90 / rt.p90
    );

    if let Some((h, noop, runc_noop)) = profile {
        println!(
            "\nprofile: sandboxd's helper run directly (no daemon), {} iterations; ms\n",
            h.iterations.len()
        );
        println!("| runtime | phase | median | p90 | mean | min | max |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        row("helper", "**total**", h.total());
        for (i, phase) in PHASES.iter().enumerate() {
            row("helper", phase, h.phase(i));
        }
        row("helper", "no-op exec", noop);
        row("runc", "`--version` exec", runc_noop);
    }

    if let Some((bm, rm)) = memory {
        println!(
            "\nhost memory per running idle sandbox (sleep 3600), {} sandboxes each; KiB\n",
            args.idle
        );
        println!("| runtime | runtime RSS before | after | growth per sandbox | per-sandbox processes (RSS) | total per sandbox | app RSS per sandbox (excluded) |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, m) in [("berth", &bm), ("runc", &rm)] {
            println!(
                "| {name} | {} | {} | {:.0} | {} ({} KiB) | {:.0} | {:.0} |",
                m.runtime_before,
                m.runtime_after,
                m.growth_per_sandbox(),
                m.extra_processes.len(),
                m.extra_rss,
                m.total_per_sandbox(),
                m.app_rss_per_sandbox
            );
            if !m.extra_processes.is_empty() {
                println!("  {name} per-sandbox processes: {:?}", m.extra_processes);
            }
        }
        println!(
            "\nberth memory per sandbox: {:.0} KiB (target <= 2048 KiB)",
            bm.total_per_sandbox()
        );
    }

    drop(daemon);
    drop(netns);
    setup::remove_site_cgroups(&[runc::SITE, helper::SITE]);
    if args.keep {
        let kept = work.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

fn runc_version(runc: &std::path::Path) -> String {
    std::process::Command::new(runc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "runc (version unknown)".into())
}

/// Host memory a runtime keeps for `k` idle sandboxes.
#[derive(Debug, Default)]
struct Memory {
    k: usize,
    /// RSS of the runtime's resident process (sandboxd; none for runc), KiB.
    runtime_before: u64,
    runtime_after: u64,
    /// Processes other than the sandbox apps that appeared with the sandboxes.
    extra_processes: Vec<(i32, String)>,
    extra_rss: u64,
    app_rss_per_sandbox: f64,
}

impl Memory {
    fn growth_per_sandbox(&self) -> f64 {
        (self.runtime_after as f64 - self.runtime_before as f64) / self.k as f64
    }
    fn total_per_sandbox(&self) -> f64 {
        self.growth_per_sandbox() + self.extra_rss as f64 / self.k as f64
    }
}

/// Lets the daemon settle (helper threads, allocator) before a reading.
const SETTLE: Duration = Duration::from_secs(2);

async fn memory_berth(berth: &mut berth::Berth, daemon: i32, k: usize) -> anyhow::Result<Memory> {
    tokio::time::sleep(SETTLE).await;
    let runtime_before = procs::rss_kib(daemon);
    let mut ids = Vec::new();
    let mut apps = Vec::new();
    for i in 0..k {
        let id = format!("idle-b-{i}");
        apps.push(berth.start_idle(&id).await?);
        ids.push(id);
    }
    tokio::time::sleep(SETTLE).await;
    let runtime_after = procs::rss_kib(daemon);
    let extra: Vec<(i32, String)> = procs::descendants(daemon)
        .into_iter()
        .filter(|(pid, _)| !apps.contains(pid))
        .collect();
    let m = Memory {
        k,
        runtime_before,
        runtime_after,
        extra_rss: extra.iter().map(|(p, _)| procs::rss_kib(*p)).sum(),
        extra_processes: extra,
        app_rss_per_sandbox: apps.iter().map(|p| procs::rss_kib(*p) as f64).sum::<f64>() / k as f64,
    };
    for id in &ids {
        berth.remove(id).await?;
    }
    Ok(m)
}

async fn memory_runc(runc: &runc::Runc, daemon: i32, k: usize) -> anyhow::Result<Memory> {
    let me = std::process::id() as i32;
    // Everything under this process except sandboxd's tree and the apps.
    let ours = |apps: &[i32]| -> Vec<(i32, String)> {
        let daemon_tree: Vec<i32> = procs::descendants(daemon)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        procs::descendants(me)
            .into_iter()
            .filter(|(p, _)| *p != daemon && !daemon_tree.contains(p) && !apps.contains(p))
            .collect()
    };
    let before = ours(&[]);
    let mut started = Vec::new();
    for i in 0..k {
        let id = format!("idle-r-{i}");
        let pid = runc.start_idle(&id)?;
        started.push((id, pid));
    }
    tokio::time::sleep(SETTLE).await;
    let apps: Vec<i32> = started.iter().map(|(_, p)| *p).collect();
    let extra: Vec<(i32, String)> = ours(&apps)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let m = Memory {
        k,
        runtime_before: 0,
        runtime_after: 0,
        extra_rss: extra.iter().map(|(p, _)| procs::rss_kib(*p)).sum(),
        extra_processes: extra,
        app_rss_per_sandbox: apps.iter().map(|p| procs::rss_kib(*p) as f64).sum::<f64>() / k as f64,
    };
    for (id, pid) in &started {
        runc.remove(id, *pid)?;
    }
    Ok(m)
}
