//! Per-instance overlay root filesystems over shared layer snapshots.
//!
//! `mount_rootfs` creates `<instance>/{rw/upper,rw/work,rootfs}` and mounts an overlay
//! whose lower dirs are the image's snapshots (top layer first). Snapshots are shared by
//! every instance and never written: all writes land in the instance's `rw/upper`. The
//! caller may first mount a size-limited filesystem on `<instance>/rw` (the agent mounts
//! a tmpfs there, so a tenant's writes to its root filesystem are capped and charged to
//! its memory) — upper and work must share one filesystem, hence the one directory. The mount(2)
//! option string is limited to one page; when many long lower-dir paths do not fit, the
//! new mount API adds them one by one (`fsconfig(..., "lowerdir+", ...)`, Linux 6.8+).
//! `unmount_rootfs` undoes it (including a mount on `rw`) and removes the directories,
//! never deleting through a still-mounted overlay.
//!
//! [`mount_rootfs_idmapped`] does the same for a sandbox with its own user namespace:
//! the lower dirs are idmapped views of the snapshots ([`crate::idmap`]) attached under
//! `<instance>/lower/<n>` just long enough to build the overlay (overlayfs keeps its
//! own private clones of its layers), and `upper`/`work` belong to the range's host
//! root, so the sandbox's root owns and can change every file of its image.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tracing::{debug, info, instrument};

/// Longest option string mount(2) accepts (one page, including the NUL).
const MOUNT_DATA_MAX: usize = 4095;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Errors from mounting or unmounting an instance root.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot path {0} contains ',', ':' or '\\', which overlay options cannot hold: move the image store")]
    BadPath(PathBuf),
    #[error("mounting overlay on {target}: {detail}: check that the kernel supports overlayfs and the snapshots exist")]
    Mount { target: PathBuf, detail: String },
    #[error("unmounting {target}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{target} is still mounted after unmount: refusing to delete through it")]
    StillMounted { target: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// True if `dir` is a mount point (a different device than its parent, or the same
/// directory as its parent).
fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let md = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let parent = fs::metadata(dir.join(".."))?;
    Ok(md.dev() != parent.dev() || md.ino() == parent.ino())
}

/// Mounts a tmpfs of at most `size_bytes` on `<instance>/rw`, where the overlay's
/// writable layer goes: a tenant's writes to its root filesystem then stop at the
/// size (ENOSPC) instead of filling the worker's disk, and the pages are charged to
/// the writer's memory cgroup. Call before [`mount_rootfs`] /
/// [`mount_rootfs_idmapped`]; a no-op when `rw` is already a mount point.
#[instrument(skip_all, fields(instance_dir = %instance_dir.display(), size_bytes))]
pub fn mount_writable_layer(instance_dir: &Path, size_bytes: u64) -> Result<(), RootfsError> {
    let rw = instance_dir.join("rw");
    fs::create_dir_all(&rw).map_err(io_err(&rw))?;
    if is_mount_point(&rw).map_err(io_err(&rw))? {
        return Ok(());
    }
    let data = format!("size={size_bytes},mode=0755");
    mount(
        Some("berth-rw"),
        &rw,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| RootfsError::Mount {
        target: rw.clone(),
        detail: format!("tmpfs for the writable layer: {e}"),
    })
}

/// Like [`mount_rootfs`], for a sandbox whose root is host id `range.host_id`: the
/// snapshots are seen through idmapped mounts and the writable layer belongs to that
/// id. Mounting an already-mounted instance root is a no-op.
#[instrument(skip_all, fields(instance_dir = %instance_dir.display(), host_id = range.host_id))]
pub fn mount_rootfs_idmapped(
    snapshot_dirs: &[PathBuf],
    instance_dir: &Path,
    range: crate::idmap::IdRange,
) -> Result<PathBuf, RootfsError> {
    let rootfs = instance_dir.join("rootfs");
    if is_mount_point(&rootfs).map_err(io_err(&rootfs))? {
        debug!("instance root already mounted");
        return Ok(rootfs);
    }
    let lower_root = instance_dir.join("lower");
    detach_lowers(&lower_root);
    let userns = crate::idmap::userns_fd(range).map_err(|e| RootfsError::Mount {
        target: rootfs.clone(),
        detail: e.to_string(),
    })?;
    let mut lowers = Vec::with_capacity(snapshot_dirs.len());
    let result = (|| {
        for (i, snap) in snapshot_dirs.iter().enumerate() {
            let target = lower_root.join(i.to_string());
            fs::create_dir_all(&target).map_err(io_err(&target))?;
            crate::idmap::mount_idmapped(snap, &target, &userns).map_err(|e| {
                RootfsError::Mount {
                    target: rootfs.clone(),
                    detail: e.to_string(),
                }
            })?;
            lowers.push(target);
        }
        for d in ["rw", "rw/upper", "rw/work"] {
            let p = instance_dir.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
            std::os::unix::fs::chown(&p, Some(range.host_id), Some(range.host_id))
                .map_err(io_err(&p))?;
        }
        mount_rootfs_impl(&lowers, instance_dir, false)
    })();
    // The overlay holds private clones of its layers: the attached views can go.
    detach_lowers(&lower_root);
    result
}

/// Detaches every idmapped lower view under `lower_root` and removes the (then empty)
/// directories. A view has the same device number as the snapshot it shows, so a
/// device comparison cannot tell it is a mount: unmount until the kernel says EINVAL.
/// Never deletes recursively: that could reach through a view into a snapshot.
fn detach_lowers(lower_root: &Path) {
    let Ok(entries) = fs::read_dir(lower_root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        for _ in 0..8 {
            if umount2(&p, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        if let Err(err) = fs::remove_dir(&p) {
            tracing::warn!(dir = %p.display(), %err, "removing an idmapped lower view directory");
        }
    }
    let _ = fs::remove_dir(lower_root);
}

/// Mount the overlay root for an instance; returns `<instance_dir>/rootfs`.
/// `snapshot_dirs` are lowest layer first (as in [`crate::store::PulledImage`]).
/// Mounting an already-mounted instance root is a no-op.
#[instrument(skip_all, fields(instance_dir = %instance_dir.display()))]
pub fn mount_rootfs(
    snapshot_dirs: &[PathBuf],
    instance_dir: &Path,
) -> Result<PathBuf, RootfsError> {
    mount_rootfs_impl(snapshot_dirs, instance_dir, false)
}

fn mount_rootfs_impl(
    snapshot_dirs: &[PathBuf],
    instance_dir: &Path,
    force_fsconfig: bool,
) -> Result<PathBuf, RootfsError> {
    let upper = instance_dir.join("rw/upper");
    let work = instance_dir.join("rw/work");
    let rootfs = instance_dir.join("rootfs");
    for d in [&upper, &work, &rootfs] {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    if is_mount_point(&rootfs).map_err(io_err(&rootfs))? {
        debug!("instance root already mounted");
        return Ok(rootfs);
    }
    let mut lowers: Vec<PathBuf> = snapshot_dirs.iter().rev().cloned().collect();
    if lowers.is_empty() {
        // An image with no layers: overlay still needs one lower dir.
        let empty = instance_dir.join("empty");
        fs::create_dir_all(&empty).map_err(io_err(&empty))?;
        lowers.push(empty);
    }
    for p in lowers.iter().chain([&upper, &work]) {
        if p.as_os_str()
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b',' | b':' | b'\\'))
        {
            return Err(RootfsError::BadPath(p.clone()));
        }
    }
    let lowerdir = lowers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},index=off",
        upper.display(),
        work.display()
    );
    if data.len() <= MOUNT_DATA_MAX && !force_fsconfig {
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| RootfsError::Mount {
            target: rootfs.clone(),
            detail: e.to_string(),
        })?;
    } else {
        mount_with_fsconfig(&lowers, &upper, &work, &rootfs).map_err(|detail| {
            RootfsError::Mount {
                target: rootfs.clone(),
                detail: format!(
                    "{detail} (the {} lower dirs do not fit in mount(2) options and the \
                     new mount API failed; Linux 6.8+ is needed for this many layers)",
                    lowers.len()
                ),
            }
        })?;
    }
    info!(layers = snapshot_dirs.len(), "instance root mounted");
    Ok(rootfs)
}

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} contains NUL", p.display()))
}

/// Read what the kernel logged on an fs context (why fsconfig failed).
fn fs_context_log(fd: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..16 {
        // SAFETY: reading into a local buffer of the given length from an owned fd.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.push(
            String::from_utf8_lossy(&buf[..n as usize])
                .trim()
                .to_string(),
        );
    }
    out.join("; ")
}

fn fsconfig_string(
    fd: &OwnedFd,
    key: &std::ffi::CStr,
    value: &std::ffi::CStr,
) -> Result<(), String> {
    // SAFETY: valid fs context fd and NUL-terminated strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(format!(
            "fsconfig {}={}: {e} {}",
            key.to_string_lossy(),
            value.to_string_lossy(),
            fs_context_log(fd)
        ));
    }
    Ok(())
}

/// Mount overlay through fsopen/fsconfig/fsmount/move_mount, adding lower dirs one by
/// one so no option string limit applies.
fn mount_with_fsconfig(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    // SAFETY: NUL-terminated fs type name; the fd returned is ours.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(format!("fsopen overlay: {}", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us this fd.
    let ctx = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    for l in lowers {
        fsconfig_string(&ctx, c"lowerdir+", &cpath(l)?)?;
    }
    fsconfig_string(&ctx, c"upperdir", &cpath(upper)?)?;
    fsconfig_string(&ctx, c"workdir", &cpath(work)?)?;
    fsconfig_string(&ctx, c"index", c"off")?;
    // SAFETY: valid fs context fd; CMD_CREATE takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            ctx.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(format!("creating overlay: {e} {}", fs_context_log(&ctx)));
    }
    // SAFETY: valid fs context fd; the mount fd returned is ours.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, ctx.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if m < 0 {
        return Err(format!("fsmount: {}", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us this fd.
    let mfd = unsafe { OwnedFd::from_raw_fd(m as libc::c_int) };
    let t = cpath(target)?;
    // SAFETY: valid mount fd, empty path with MOVE_MOUNT_F_EMPTY_PATH, NUL-terminated target.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mfd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(format!(
            "move_mount to {}: {}",
            target.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Unmount `<instance_dir>/rootfs` (lazily if busy) and remove `upper`, `work`, `rootfs`
/// (and `empty`). Safe to call on a half-created or already-removed instance.
#[instrument(skip_all, fields(instance_dir = %instance_dir.display()))]
pub fn unmount_rootfs(instance_dir: &Path) -> Result<(), RootfsError> {
    let rootfs = instance_dir.join("rootfs");
    // Several stacked mounts are possible after a crash-and-retry; undo them all.
    for _ in 0..8 {
        if !is_mount_point(&rootfs).map_err(io_err(&rootfs))? {
            break;
        }
        match umount2(&rootfs, MntFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                debug!("instance root busy: detaching lazily");
                umount2(&rootfs, MntFlags::MNT_DETACH).map_err(|source| RootfsError::Unmount {
                    target: rootfs.clone(),
                    source,
                })?;
            }
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(source) => {
                return Err(RootfsError::Unmount {
                    target: rootfs.clone(),
                    source,
                })
            }
        }
    }
    if is_mount_point(&rootfs).map_err(io_err(&rootfs))? {
        return Err(RootfsError::StillMounted { target: rootfs });
    }
    detach_lowers(&instance_dir.join("lower"));
    let rw = instance_dir.join("rw");
    if is_mount_point(&rw).map_err(io_err(&rw))? {
        umount2(&rw, MntFlags::MNT_DETACH).map_err(|source| RootfsError::Unmount {
            target: rw.clone(),
            source,
        })?;
    }
    for name in ["rootfs", "rw", "empty"] {
        let p = instance_dir.join(OsStr::new(name));
        match fs::remove_dir_all(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
        }
    }
    info!("instance root removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need_root() {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "rootfs tests mount overlayfs and need root: run them as root"
        );
    }

    fn layers(base: &Path, n: usize, name_len: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let d = base.join(format!("{i:0>width$}", width = name_len));
                fs::create_dir_all(&d).unwrap();
                fs::write(d.join(format!("f{i}")), format!("{i}")).unwrap();
                fs::write(d.join("top"), format!("{i}")).unwrap();
                d
            })
            .collect()
    }

    fn check(snaps: &[PathBuf], instance: &Path, force_fsconfig: bool) {
        let root = mount_rootfs_impl(snaps, instance, force_fsconfig).unwrap();
        // Idempotent.
        assert_eq!(mount_rootfs(snaps, instance).unwrap(), root);
        let n = snaps.len();
        for i in 0..n {
            assert_eq!(
                fs::read_to_string(root.join(format!("f{i}"))).unwrap(),
                i.to_string()
            );
        }
        // The last (top) layer wins.
        assert_eq!(
            fs::read_to_string(root.join("top")).unwrap(),
            (n - 1).to_string()
        );
        // Writes go to upper, never to a snapshot.
        fs::write(root.join("f0"), "changed").unwrap();
        assert_eq!(fs::read_to_string(snaps[0].join("f0")).unwrap(), "0");
        assert_eq!(
            fs::read_to_string(instance.join("rw/upper/f0")).unwrap(),
            "changed"
        );
        unmount_rootfs(instance).unwrap();
        assert!(!instance.join("rootfs").exists());
        assert!(!instance.join("rw").exists());

        // With a size-limited writable layer, writes past it fail and nothing of it
        // is left after unmounting.
        mount_writable_layer(instance, 1 << 20).unwrap();
        mount_writable_layer(instance, 1 << 20).unwrap();
        let root = mount_rootfs(snaps, instance).unwrap();
        let err = fs::write(root.join("big"), vec![0u8; 2 << 20]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        unmount_rootfs(instance).unwrap();
        assert!(!instance.join("rw").exists());
        assert!(!is_mount_point(&instance.join("rw")).unwrap());
        assert_eq!(fs::read_to_string(snaps[0].join("f0")).unwrap(), "0");
        // Unmounting again is fine.
        unmount_rootfs(instance).unwrap();
    }

    #[test]
    fn mounts_and_unmounts_overlay() {
        need_root();
        let tmp = tempfile::tempdir().unwrap();
        let snaps = layers(&tmp.path().join("snapshots"), 3, 8);
        check(&snaps, &tmp.path().join("inst-a"), false);
        check(&snaps, &tmp.path().join("inst-b"), true);
    }

    #[test]
    fn idmapped_overlay_belongs_to_the_host_range() {
        need_root();
        let tmp = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        // The range's root must be able to reach the instance root.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let snaps = layers(&tmp.path().join("snapshots"), 2, 8);
        let instance = tmp.path().join("inst");
        let range = crate::idmap::IdRange {
            host_id: 3_100_000,
            size: 65_536,
        };
        let root = mount_rootfs_idmapped(&snaps, &instance, range).unwrap();
        assert_eq!(
            mount_rootfs_idmapped(&snaps, &instance, range).unwrap(),
            root
        );
        assert!(
            !instance.join("lower").exists(),
            "lower views left attached"
        );
        let owner = |p: &Path| fs::metadata(p).unwrap().uid();
        assert_eq!(owner(&root), 3_100_000);
        assert_eq!(owner(&root.join("f0")), 3_100_000);
        // A write as the range's root (the sandbox's root) copies up with its owner.
        let f0 = root.join("f0");
        let status = std::process::Command::new("setpriv")
            .args([
                "--reuid=3100000",
                "--regid=3100000",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(format!(
                "echo changed > {} && touch {}/new",
                f0.display(),
                root.display()
            ))
            .status()
            .unwrap();
        assert!(status.success(), "the range's root cannot write its image");
        assert_eq!(owner(&instance.join("rw/upper/f0")), 3_100_000);
        assert_eq!(owner(&instance.join("rw/upper/new")), 3_100_000);
        // One copy per worker: the snapshot is unchanged and still owned by 0.
        assert_eq!(fs::read_to_string(snaps[0].join("f0")).unwrap(), "0");
        assert_eq!(owner(&snaps[0].join("f0")), 0);
        unmount_rootfs(&instance).unwrap();
        assert!(!instance.join("rootfs").exists());
    }

    #[test]
    fn many_long_lower_dirs_use_the_new_mount_api() {
        need_root();
        let tmp = tempfile::tempdir().unwrap();
        let snaps = layers(&tmp.path().join("snapshots"), 64, 100);
        let joined: usize = snaps.iter().map(|p| p.as_os_str().len() + 1).sum();
        assert!(joined > MOUNT_DATA_MAX, "test must exceed the option limit");
        check(&snaps, &tmp.path().join("inst"), false);
    }
}
