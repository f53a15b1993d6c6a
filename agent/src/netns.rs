//! Network namespaces for instances, made without shelling out to `ip`.
//!
//! [`create`] makes `/run/netns/<name>` the way `ip netns add` does: a dedicated thread
//! unshares its network namespace, brings `lo` up with `SIOCSIFFLAGS` on a socket created
//! inside it, and bind-mounts `/proc/thread-self/ns/net` onto an empty file. The thread then
//! exits; the bind mount keeps the namespace alive until [`remove`].
//!
//! [`connect_in`] opens a TCP connection from inside such a namespace: it `setns`es the
//! calling (blocking) thread into the namespace, connects, and switches back to the agent's
//! own namespace held by [`HostNetns`]. This is how ingress and health probes reach an app
//! that only listens on its own loopback.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use thiserror::Error;

/// Where named network namespaces live (shared with `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// Errors of this module.
#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("creating {path}: {source} (is the agent running as root?)")]
    CreateFile { path: PathBuf, source: io::Error },
    #[error("network namespace {0} already exists: remove it first")]
    Exists(PathBuf),
    #[error("unsharing a network namespace for {path}: {source}")]
    Unshare { path: PathBuf, source: nix::Error },
    #[error("bringing lo up in network namespace {path}: {source}")]
    LoopbackUp { path: PathBuf, source: io::Error },
    #[error("bind-mounting the new network namespace onto {path}: {source}")]
    BindMount { path: PathBuf, source: nix::Error },
    #[error("unmounting network namespace {path}: {source}")]
    Unmount { path: PathBuf, source: nix::Error },
    #[error("removing network namespace file {path}: {source}")]
    Unlink { path: PathBuf, source: io::Error },
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("namespace helper thread for {0} panicked")]
    ThreadPanicked(PathBuf),
}

/// Path of the namespace named `name`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The agent's own network namespace, opened once at startup so blocking threads that
/// entered an instance's namespace can always come back.
#[derive(Debug)]
pub struct HostNetns {
    file: File,
}

impl HostNetns {
    /// Opens the calling thread's network namespace; call it from the main thread
    /// before anything entered another namespace.
    pub fn open() -> Result<Self, NetnsError> {
        let path = PathBuf::from("/proc/thread-self/ns/net");
        let file = File::open(&path).map_err(|source| NetnsError::Open { path, source })?;
        Ok(Self { file })
    }

    /// Switches the calling thread back into the agent's namespace.
    fn restore(&self) -> nix::Result<()> {
        setns(&self.file, CloneFlags::CLONE_NEWNET)
    }
}

/// Creates the named network namespace `/run/netns/<name>` with `lo` up.
/// On failure nothing is left behind.
pub fn create(name: &str) -> Result<PathBuf, NetnsError> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|source| NetnsError::CreateFile {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = path_of(name);
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists(path));
        }
        Err(source) => return Err(NetnsError::CreateFile { path, source }),
    }
    let thread_path = path.clone();
    let result = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || create_on_this_thread(&thread_path))
        .map_err(|source| NetnsError::CreateFile {
            path: path.clone(),
            source,
        })
        .and_then(|h| {
            h.join()
                .map_err(|_| NetnsError::ThreadPanicked(path.clone()))?
        });
    if let Err(e) = result {
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Runs on a thread that exits right after: its network namespace is thrown away.
fn create_on_this_thread(path: &Path) -> Result<(), NetnsError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Unshare {
        path: path.to_path_buf(),
        source,
    })?;
    loopback_up().map_err(|source| NetnsError::LoopbackUp {
        path: path.to_path_buf(),
        source,
    })?;
    mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| NetnsError::BindMount {
        path: path.to_path_buf(),
        source,
    })
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned by `sock` right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we pass; it lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled ifru_flags for SIOCGIFFLAGS.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes a namespace made by [`create`]. Missing namespaces are not an error.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(NetnsError::Unmount {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Unlink {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Lists the namespaces whose names start with `prefix` (leftovers of an earlier run).
pub fn list_with_prefix(prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// Opens a TCP connection to `addr` from inside the namespace at `netns`, on the calling
/// thread (use `spawn_blocking`). The thread is always back in the agent's namespace when
/// this returns; if it cannot get back the process aborts rather than leave a pool thread
/// in a tenant's namespace.
pub fn connect_in(
    host: &HostNetns,
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let ns = File::open(netns).map_err(|source| NetnsError::Open {
        path: netns.to_path_buf(),
        source,
    })?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
        path: netns.to_path_buf(),
        source,
    })?;
    let result = TcpStream::connect_timeout(&addr, timeout);
    if let Err(e) = host.restore() {
        eprintln!("berth-agent: cannot return to the agent's network namespace after connecting inside {}: {e}; aborting", netns.display());
        std::process::abort();
    }
    result.map_err(ConnectError::Connect)
}

/// Errors of [`connect_in`]: either the namespace or the connection itself.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("connecting inside the instance's network namespace: {0}")]
    Connect(io::Error),
}

/// Async wrapper of [`connect_in`]: connects on a blocking thread and hands back a tokio
/// stream.
pub async fn connect_in_async(
    host: std::sync::Arc<HostNetns>,
    netns: PathBuf,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, ConnectError> {
    let std_stream = tokio::task::spawn_blocking(move || connect_in(&host, &netns, addr, timeout))
        .await
        .map_err(|e| ConnectError::Connect(io::Error::other(e)))??;
    std_stream
        .set_nonblocking(true)
        .map_err(ConnectError::Connect)?;
    let _ = std_stream.set_nodelay(true);
    tokio::net::TcpStream::from_std(std_stream).map_err(ConnectError::Connect)
}

/// Runs `f` on a new thread that lives inside the namespace at `netns` (for tests and
/// tools that need a listener inside a namespace).
pub fn spawn_in<F, T>(netns: &Path, f: F) -> Result<std::thread::JoinHandle<T>, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let ns = File::open(netns).map_err(|source| NetnsError::Open {
        path: netns.to_path_buf(),
        source,
    })?;
    let path = netns.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        if let Err(source) = setns(&ns, CloneFlags::CLONE_NEWNET) {
            let _ = tx.send(Err(NetnsError::Enter { path, source }));
            panic!("could not enter the network namespace");
        }
        let _ = tx.send(Ok(()));
        f()
    });
    rx.recv()
        .map_err(|_| NetnsError::ThreadPanicked(netns.to_path_buf()))??;
    Ok(handle)
}
