//! Wiring of the daemon: directories, clients, listeners, the control loop, and the
//! orderly shutdown on SIGTERM / SIGINT (every local instance stopped and reported).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_api::control::workers_client::WorkersClient;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::gc::GcConfig;
use crate::image::Images;
use crate::metrics::Metrics;
use crate::netns::{self, HostNetns};
use crate::network::{Network, NetworkCollector, NetworkConfig};
use crate::state::{netns_name, Agent, Config};
use crate::supervisor::Reconciler;
use crate::volumes::{self, VolumeConfig, Volumes};
use crate::{control, ingress, instance, sandbox};

/// How long shutdown waits for instances to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the agent until SIGTERM or SIGINT, then stops every local instance. Sandboxes
/// get egress with the default [`NetworkConfig`].
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    run_with(cfg, Some(NetworkConfig::default())).await
}

/// [`run`] with explicit network settings; `None` gives sandboxes loopback only.
pub async fn run_with(cfg: Config, network: Option<NetworkConfig>) -> anyhow::Result<()> {
    run_with_images(cfg, network, ImageOptions::default()).await
}

/// Image settings of the agent (`--registry-ca`, `--image-budget`).
#[derive(Clone, Debug, Default)]
pub struct ImageOptions {
    /// PEM file of extra CA certificates for HTTPS registries.
    pub registry_ca: Option<std::path::PathBuf>,
    /// Garbage collection of the image store.
    pub gc: GcConfig,
}

/// [`run_with`] with explicit image settings.
pub async fn run_with_images(
    cfg: Config,
    network: Option<NetworkConfig>,
    image_opts: ImageOptions,
) -> anyhow::Result<()> {
    for dir in [
        cfg.state_dir.clone(),
        cfg.images_dir(),
        cfg.instances_dir(),
        cfg.logs_dir(),
    ] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
    }
    let host_netns = HostNetns::open().context("opening the agent's own network namespace")?;
    volumes::make_shared_root(&cfg.volumes_dir())
        .context("preparing the shared volume mount root (the agent must run as root)")?;
    let vols = Volumes::new(VolumeConfig {
        root: cfg.volumes_dir(),
        logs: cfg.logs_dir(),
        fsd_bin: cfg.fsd_bin.clone(),
        fsd_server: cfg.fsd.clone(),
    });
    vols.clean_leftovers();
    let sandboxes = sandbox::client(&cfg.sandboxd_socket)
        .with_context(|| format!("sandboxd socket {}", cfg.sandboxd_socket.display()))?;
    let images = Images::open(&cfg.images_dir())
        .with_context(|| format!("opening the image store at {}", cfg.images_dir().display()))?
        .with_registry_ca(image_opts.registry_ca);
    let admin_socket = crate::admin::socket_path(&cfg.state_dir);
    let admin_listener = crate::admin::bind(&admin_socket)
        .with_context(|| format!("binding the admin socket {}", admin_socket.display()))?;
    let network = match network {
        Some(n) => Some(Arc::new(Network::init(n).context(
            "setting up sandbox egress (needs root, nftables and iproute2: scripts/install-deps.sh)",
        )?)),
        None => None,
    };
    let mut metrics = Metrics::new();
    if let Some(n) = &network {
        metrics.register_collector(Box::new(NetworkCollector(n.clone())));
    }
    let metrics = Arc::new(metrics);

    let ingress_listener = TcpListener::bind(cfg.ingress_listen)
        .await
        .with_context(|| format!("binding the ingress port {}", cfg.ingress_listen))?;
    let metrics_listener = TcpListener::bind(cfg.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics port {}", cfg.metrics_listen))?;
    let channel = control::channel(&cfg.controller)
        .with_context(|| format!("controller address {:?}", cfg.controller))?;
    let client = WorkersClient::new(channel);

    let mut agent = Agent::new(cfg, host_netns, sandboxes, vols, images, metrics.clone());
    if let Some(n) = network {
        agent = agent.with_network(n);
    }
    let agent = Arc::new(agent);
    clean_leftover_instances(&agent).await;
    let reconciler = Reconciler::new(agent.clone());

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let ingress_task = tokio::spawn(ingress::serve(ingress_listener, agent.clone()));
    let metrics_task = tokio::spawn(crate::metrics::serve(metrics_listener, metrics));
    let gc_task = tokio::spawn(crate::gc::run(agent.clone(), image_opts.gc));
    let admin_task = tokio::spawn(crate::admin::serve(admin_listener, agent.clone()));
    let (worker_tx, worker_rx) = watch::channel(String::new());
    let reports_task = tokio::spawn(control::deliver_reports(
        agent.clone(),
        client.clone(),
        worker_rx.clone(),
    ));
    let control_task = tokio::spawn(control::run(
        agent.clone(),
        reconciler.clone(),
        client.clone(),
        worker_tx,
    ));
    info!(name = %agent.cfg.name, state_dir = %agent.cfg.state_dir.display(), "berth-agent running");

    let sig = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(
        signal = sig,
        instances = reconciler.len(),
        "shutting down: stopping every local instance"
    );
    control_task.abort();
    // Instances stopping for a shutdown come back after it: keep their images.
    gc_task.abort();
    admin_task.abort();
    if !reconciler.shutdown(SHUTDOWN_TIMEOUT).await {
        warn!("some instances did not stop within {SHUTDOWN_TIMEOUT:?}");
    }
    agent.volumes.release_all().await;
    // Undo the shared bind mount of the volume root so the state directory can be removed.
    let _ = nix::mount::umount2(&agent.cfg.volumes_dir(), nix::mount::MntFlags::MNT_DETACH);
    reports_task.abort();
    let worker_id = worker_rx.borrow().clone();
    if !worker_id.is_empty() {
        let mut client = client.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            control::send_reports(&agent, &mut client, &worker_id),
        )
        .await;
    }
    ingress_task.abort();
    metrics_task.abort();
    info!("berth-agent stopped");
    Ok(())
}

/// Tears down what an earlier run of the agent left (sandboxes, namespaces, rootfs
/// mounts of every directory under `<state>/instances`).
async fn clean_leftover_instances(agent: &Agent) {
    let Ok(entries) = std::fs::read_dir(agent.cfg.instances_dir()) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let id = e.file_name().to_string_lossy().to_string();
        warn!(instance = %id, "cleaning up an instance left by an earlier run");
        let _ = tokio::time::timeout(
            Duration::from_secs(15),
            instance::stop_and_delete_sandbox(agent, &id),
        )
        .await;
        if let Some(net) = &agent.network {
            if let Err(err) = net.detach_async(&id).await {
                warn!(instance = %id, error = %err, "removing leftover sandbox network");
            }
        }
        if let Err(err) = netns::remove(&netns::path_of(&netns_name(&id))) {
            warn!(instance = %id, error = %err, "removing leftover network namespace");
        }
        if let Err(err) = agent.images.unmount_rootfs(&e.path()).await {
            warn!(instance = %id, error = %err, "unmounting leftover root filesystem");
        }
        if let Err(err) = std::fs::remove_dir_all(e.path()) {
            warn!(instance = %id, error = %err, "removing leftover instance directory");
        }
    }
}
