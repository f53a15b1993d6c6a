//! `berth-fsd mount`: mounts one volume with FUSE and serves it until asked to stop.
//!
//! Mounting needs root (it calls mount(2) on /dev/fuse directly, no `fusermount3`).
//! Before mounting, the root directory is fetched from the server, so a mount that
//! exists is a mount that works. A stale mount left by a crashed client at the same
//! path is detached first. On shutdown the volume is unmounted (lazily if busy).
//! While mounted, a task renews the mount's lease with the server every
//! [`KEEP_ALIVE`], so the `fcntl` locks it holds stay valid (they expire when it dies).
//! Once INIT is done, the kernel's readahead for the mount is raised from FUSE's
//! 128 KiB to [`READAHEAD_KB`], so sequential reads arrive as 1 MiB requests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_api::volume::{InodeRequest, KeepAliveRequest};
use fuse3::raw::Session;
use fuse3::MountOptions;

use crate::client::{ClientError, FsClient};
use crate::error::FsError;
use crate::fuse::{Ttls, VolumeFs};
use crate::meta::ROOT_INO;
use crate::names::validate_volume;

/// What to mount where.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// File server URL, e.g. `http://127.0.0.1:7702`.
    pub server: String,
    pub volume: String,
    pub mountpoint: PathBuf,
    pub ttls: Ttls,
    /// How long a call keeps retrying while the server is unreachable.
    pub retry_window: Duration,
    /// Where to serve the mount's own `/metrics`, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Why mounting failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("invalid volume name {volume:?}")]
    Volume { volume: String, source: FsError },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("file server {server} did not answer for volume {volume} (errno {errno}); is `berth-fsd serve` running?")]
    Unreachable {
        server: String,
        volume: String,
        errno: i32,
    },
    #[error("/dev/fuse is missing; load the fuse module or give the container the device")]
    NoFuseDevice,
    #[error(
        "mounting {path} failed; the mount point must be an empty directory and this needs root"
    )]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding the mount's metrics address {addr} failed; pick a free port")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("FUSE session on {path} failed")]
    Session {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Mounts the volume, calls `ready` once the mount is usable, and serves it until
/// `shutdown` resolves or the volume is unmounted from outside.
pub async fn mount(
    config: MountConfig,
    ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), MountError> {
    validate_volume(&config.volume).map_err(|source| MountError::Volume {
        volume: config.volume.clone(),
        source,
    })?;
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuseDevice);
    }
    let client = FsClient::new(&config.server, config.retry_window)?;
    let probe = InodeRequest {
        volume: config.volume.clone(),
        ino: ROOT_INO,
    };
    client
        .call("getattr", |mut c| {
            let probe = probe.clone();
            async move { c.get_attr(probe).await }
        })
        .await
        .map_err(|errno| MountError::Unreachable {
            server: config.server.clone(),
            volume: config.volume.clone(),
            errno,
        })?;

    detach_if_stale(&config.mountpoint);
    let mut options = MountOptions::default();
    options
        .fs_name(format!("berth:{}", config.volume))
        .allow_other(true)
        .default_permissions(true);
    let fs = VolumeFs::new(client.clone(), config.volume.clone(), config.ttls);
    let keep_alive = tokio::spawn(renew_lease(client.clone(), fs.mount_id().to_string()));
    let promised = fs.promised();
    let watch = tokio::spawn(crate::fuse::promised::watch(
        client,
        config.volume.clone(),
        promised.clone(),
        fs.metrics(),
    ));
    let _metrics = match config.metrics_listen {
        Some(addr) => {
            let listener = crate::metrics::bind(addr)
                .await
                .map_err(|source| MountError::Metrics { addr, source })?;
            let serve =
                crate::metrics::serve_metrics(listener, fs.metrics(), std::future::pending::<()>());
            Some(AbortOnDrop(tokio::spawn(async move {
                if let Err(err) = serve.await {
                    tracing::error!(%err, "mount metrics server failed");
                }
            })))
        }
        None => None,
    };
    let mut handle = Session::new(options)
        .mount(fs, &config.mountpoint)
        .await
        .map_err(|source| MountError::Mount {
            path: config.mountpoint.clone(),
            source,
        })?;
    tracing::info!(
        volume = %config.volume,
        mountpoint = %config.mountpoint.display(),
        server = %config.server,
        "volume mounted"
    );
    // The kernel sets the readahead from the INIT reply, lowering it to what it sent
    // (128 KiB): raise it only once a first request has waited out INIT (blocking:
    // the session task answers that request on this runtime).
    let root = config.mountpoint.clone();
    let _ = tokio::task::spawn_blocking(move || raise_readahead(&root)).await;
    ready();

    let _stop_keep_alive = AbortOnDrop(keep_alive);
    let mut watch = AbortOnDrop(watch);
    let result = tokio::select! {
        result = &mut handle => {
            tracing::info!(mountpoint = %config.mountpoint.display(), "volume was unmounted");
            result.map_err(|source| MountError::Session { path: config.mountpoint.clone(), source })
        }
        () = shutdown => {
            tracing::info!(mountpoint = %config.mountpoint.display(), "unmounting");
            if let Err(err) = handle.unmount().await {
                tracing::warn!(%err, "clean unmount failed; detaching lazily");
                lazy_unmount(&config.mountpoint);
            }
            Ok(())
        }
    };
    // Say goodbye on the watch stream, so the server drops this mount's promises now
    // rather than making other mounts' changes wait out their lifetime.
    promised.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut watch.0).await;
    result
}

/// Readahead of a mount, in KiB: one 1 MiB read request ahead of the reader (512 KiB
/// to 1 MiB read a cold 256 MiB file at 540 MB/s, 128 KiB at 300, 4 MiB at 470).
pub const READAHEAD_KB: u32 = 1024;

/// Sets the readahead of the FUSE mount at `mountpoint` to [`READAHEAD_KB`]. The
/// stat of the mount's root waits until the kernel has INIT's reply (which sets the
/// readahead too) and names the mount's device. A failure only costs speed: it is
/// logged.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(meta) => meta.dev(),
        Err(err) => {
            tracing::warn!(%err, path = %mountpoint.display(), "stat of the new mount failed; readahead left at the default");
            return;
        }
    };
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let knob = PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"));
    if let Err(err) = std::fs::write(&knob, READAHEAD_KB.to_string()) {
        tracing::warn!(%err, knob = %knob.display(), "raising readahead failed; sequential reads will be slower");
    }
}

/// How often a mount renews its lease (the server drops its locks after 20 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Renews the lease of mount `mount_id` for as long as the mount lives.
async fn renew_lease(client: FsClient, mount_id: String) {
    let req = KeepAliveRequest { mount_id };
    let mut tick = tokio::time::interval(KEEP_ALIVE);
    loop {
        tick.tick().await;
        if let Err(errno) = client
            .call("keepalive", |mut c| {
                let req = req.clone();
                async move { c.keep_alive(req).await }
            })
            .await
        {
            tracing::warn!(errno, "renewing the mount's lock lease failed; will retry");
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Detaches a dead FUSE mount (ENOTCONN) at `path`, left by a client that crashed.
fn detach_if_stale(path: &Path) {
    if let Err(err) = std::fs::metadata(path) {
        if err.raw_os_error() == Some(libc::ENOTCONN) {
            tracing::warn!(path = %path.display(), "detaching stale mount of a crashed client");
            lazy_unmount(path);
        }
    }
}

fn lazy_unmount(path: &Path) {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(err) => tracing::error!(%err, path = %path.display(), "lazy unmount failed"),
    }
}
