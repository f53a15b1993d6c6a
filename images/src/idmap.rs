//! Idmapped views of the shared layer snapshots, so a sandbox whose root is an
//! unprivileged host id range still owns its image's files.
//!
//! Snapshots are unpacked once per worker with the image's own ids (root = 0) and
//! shared by every instance of every site. For an instance whose root maps to host ids
//! `[host_id, host_id + size)`, each snapshot is cloned as a detached mount
//! (`open_tree(OPEN_TREE_CLONE)`), given that mapping (`mount_setattr(MOUNT_ATTR_IDMAP)`
//! with a user namespace carrying it) and attached under the instance directory
//! (`move_mount`). Through such a mount a file owned by 0 on disk is owned by
//! `host_id`, which the sandbox sees as its root. No file is copied or chowned: one copy
//! of each layer per worker. The overlay built on top
//! ([`crate::rootfs::mount_rootfs_idmapped`]) copies up with the shifted owners.
//!
//! It never changes the snapshots: the clones are read-only as well.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A host id range: container ids `0..size` are host ids `host_id..host_id + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host_id: u32,
    pub size: u32,
}

/// Errors of making idmapped mounts.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("creating a user namespace for the id mapping {host_id}+{size}: {detail}")]
    Userns {
        host_id: u32,
        size: u32,
        detail: String,
    },
    #[error("idmapping {path}: {step}: {source}: the file system must support idmapped mounts (ext4, xfs, btrfs, tmpfs; Linux 5.12+)")]
    Mount {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_else(|_| c"/nonexistent".to_owned())
}

/// A file descriptor of a new user namespace that maps `range` (uids and gids). The
/// namespace lives as long as the descriptor.
pub fn userns_fd(range: IdRange) -> Result<OwnedFd, IdmapError> {
    let err = |detail: String| IdmapError::Userns {
        host_id: range.host_id,
        size: range.size,
        detail,
    };
    let mut ready = [0 as libc::c_int; 2];
    let mut release = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the arrays.
    if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } != 0
        || unsafe { libc::pipe2(release.as_mut_ptr(), libc::O_CLOEXEC) } != 0
    {
        return Err(err(format!("pipe2: {}", io::Error::last_os_error())));
    }
    // SAFETY: the kernel just gave us these descriptors.
    let (ready_r, ready_w, release_r, release_w) = unsafe {
        (
            File::from_raw_fd(ready[0]),
            File::from_raw_fd(ready[1]),
            File::from_raw_fd(release[0]),
            File::from_raw_fd(release[1]),
        )
    };
    // SAFETY: the child only makes async-signal-safe system calls (unshare, write,
    // read, _exit) before exiting, so forking a multi-threaded process is sound.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(err(format!("fork: {}", io::Error::last_os_error())));
    }
    if pid == 0 {
        // SAFETY: see above; only raw system calls on descriptors we own.
        unsafe {
            let ok: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                1
            } else {
                0
            };
            libc::write(ready_w.as_raw_fd(), (&ok as *const u8).cast(), 1);
            let mut b = 0u8;
            libc::read(release_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(release_r);
    let result = (|| {
        let mut ok = [0u8; 1];
        let mut ready_r = ready_r;
        ready_r
            .read_exact(&mut ok)
            .map_err(|e| err(format!("waiting for the helper child: {e}")))?;
        if ok[0] != 1 {
            return Err(err("unshare(CLONE_NEWUSER) failed in the child".into()));
        }
        let line = format!("0 {} {}\n", range.host_id, range.size);
        for file in ["uid_map", "gid_map"] {
            let path = format!("/proc/{pid}/{file}");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| err(format!("writing {path}: {e}")))?;
        }
        let ns = File::open(format!("/proc/{pid}/ns/user"))
            .map_err(|e| err(format!("opening the child's user namespace: {e}")))?;
        Ok(OwnedFd::from(ns))
    })();
    // Release the child with a byte, not by closing: children forked concurrently by
    // other threads may hold a copy of the write end, so EOF might never come.
    let mut release_w = release_w;
    let _ = release_w.write_all(&[1]);
    drop(release_w);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    result
}

/// Attaches a read-only view of `source` at `target` (an existing empty directory)
/// in which ids are shifted by the mapping of the user namespace `userns`.
pub fn mount_idmapped(source: &Path, target: &Path, userns: &OwnedFd) -> Result<(), IdmapError> {
    let fail = |step, source_err| IdmapError::Mount {
        path: source.to_path_buf(),
        step,
        source: source_err,
    };
    let src = cpath(source);
    // SAFETY: NUL-terminated path; the fd returned is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(fail("open_tree", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us this fd.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: valid detached mount fd, empty path with AT_EMPTY_PATH, attr of the
    // size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(fail(
            "mount_setattr(MOUNT_ATTR_IDMAP)",
            io::Error::last_os_error(),
        ));
    }
    let dst = cpath(target);
    // SAFETY: valid mount fd, empty path, NUL-terminated target.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(fail("move_mount", io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn shifts_owners_without_touching_the_source() {
        assert_eq!(
            nix::unistd::geteuid().as_raw(),
            0,
            "idmap tests make mounts and need root: run them as root"
        );
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        std::os::unix::fs::chown(src.join("f"), Some(0), Some(0)).unwrap();
        let range = IdRange {
            host_id: 3_000_000,
            size: 65_536,
        };
        let ns = userns_fd(range).unwrap();
        mount_idmapped(&src, &dst, &ns).unwrap();
        let seen = std::fs::metadata(dst.join("f")).unwrap();
        let _ = nix::mount::umount2(&dst, nix::mount::MntFlags::MNT_DETACH);
        assert_eq!((seen.uid(), seen.gid()), (3_000_000, 3_000_000));
        assert_eq!(std::fs::metadata(src.join("f")).unwrap().uid(), 0);
    }
}
