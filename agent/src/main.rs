//! `berth-agent`: the web worker daemon (see the library docs for how it works).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use berth_agent::Config;
use clap::Parser;

/// Berth web worker daemon: runs the sites the controller assigns to this worker.
#[derive(Debug, Parser)]
#[command(name = "berth-agent", version)]
struct Args {
    /// Controller gRPC address.
    #[arg(
        long,
        env = "BERTH_CONTROLLER",
        default_value = "http://127.0.0.1:7701"
    )]
    controller: String,
    /// sandboxd Unix socket.
    #[arg(long)]
    sandboxd_socket: PathBuf,
    /// File server gRPC address (given to `berth-fsd mount --server`).
    #[arg(long, default_value = "http://127.0.0.1:7702")]
    fsd: String,
    /// The `berth-fsd` binary (default: next to this executable).
    #[arg(long)]
    fsd_bin: Option<PathBuf>,
    /// Ingress address front ends forward requests to.
    #[arg(long, default_value = "127.0.0.1:7703")]
    ingress_listen: SocketAddr,
    /// Ingress address announced to the controller (default: --ingress-listen).
    #[arg(long)]
    ingress_advertise: Option<String>,
    /// Prometheus /metrics address.
    #[arg(long, default_value = "127.0.0.1:7704")]
    metrics_listen: SocketAddr,
    /// State directory (image store, instance root filesystems, /home mounts, logs).
    #[arg(long)]
    state_dir: PathBuf,
    /// Worker name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Instances this worker offers to run.
    #[arg(long, default_value_t = 32)]
    capacity: u32,
    /// Private IPv4 range the sandboxes' veth /30s come from (same on every agent of a host).
    #[arg(long, default_value = berth_agent::network::DEFAULT_POOL)]
    egress_pool: berth_agent::network::Ipv4Net,
    /// Open outbound connections allowed per instance; new ones beyond are rejected.
    #[arg(long, env = "BERTH_OUTBOUND_CONNECTION_LIMIT", default_value_t = berth_agent::network::DEFAULT_OUTBOUND_CONNECTION_LIMIT)]
    outbound_connection_limit: u32,
    /// Give sandboxes loopback only: no veth, no NAT, no nftables rules.
    #[arg(long)]
    no_egress: bool,
    /// PEM file of CA certificates trusted for HTTPS registries, on top of the system roots.
    #[arg(long, env = "BERTH_REGISTRY_CA")]
    registry_ca: Option<PathBuf>,
    /// Disk the image store may use before unused images are removed, least recently
    /// pulled first (bytes, or with K/M/G/T, e.g. 10GiB). Images in use are never removed.
    #[arg(long, env = "BERTH_IMAGE_BUDGET", default_value = "10GiB", value_parser = berth_agent::gc::parse_size)]
    image_budget: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating --state-dir {}", args.state_dir.display()))?;
    let state_dir = std::fs::canonicalize(&args.state_dir)
        .with_context(|| format!("resolving --state-dir {}", args.state_dir.display()))?;
    let fsd_bin = match args.fsd_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("finding this executable to locate berth-fsd next to it")?
            .with_file_name("berth-fsd"),
    };
    let name = match args.name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("reading the host name (pass --name)")?
            .to_string_lossy()
            .into_owned(),
    };
    let cfg = Config {
        controller: args.controller,
        sandboxd_socket: args.sandboxd_socket,
        fsd: args.fsd,
        fsd_bin,
        ingress_advertise: args
            .ingress_advertise
            .unwrap_or_else(|| args.ingress_listen.to_string()),
        ingress_listen: args.ingress_listen,
        metrics_listen: args.metrics_listen,
        state_dir,
        name,
        capacity: args.capacity,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let network = (!args.no_egress).then(|| berth_agent::network::NetworkConfig {
        pool: args.egress_pool,
        outbound_connection_limit: args.outbound_connection_limit,
        ..Default::default()
    });
    let image_opts = berth_agent::daemon::ImageOptions {
        registry_ca: args.registry_ca,
        gc: berth_agent::gc::GcConfig {
            budget: args.image_budget,
            ..Default::default()
        },
    };
    runtime.block_on(berth_agent::daemon::run_with_images(
        cfg, network, image_opts,
    ))
}
