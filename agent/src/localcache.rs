//! Local cache of a site's `/home` (the per-site `local_cache` setting).
//!
//! Before an instance of such a site starts, the agent copies the content of the
//! site's shared volume (the worker's FUSE mount of it) into the instance's own
//! directory on the worker's disk, and the sandbox gets that copy as `/home`, with
//! `BERTH_LOCALCACHE_READY=1` in the app's environment. Reads are then local-disk
//! reads. As with App Service's local cache, writes go to the copy only: they never
//! reach shared storage and are lost when the instance stops, restarts or moves. The
//! copy is made once per start; later changes to the shared volume are not seen.
//!
//! A volume larger than [`MAX_BYTES`] (or with more than [`MAX_ENTRIES`] entries) is not
//! copied: the instance gets the shared `/home` and no `BERTH_LOCALCACHE_READY`, which
//! is how an app tells the two apart. Copied: regular files (content, mode, owner,
//! mtime), directories (mode, owner, mtime) and symlinks (target, owner). Hard links
//! become separate files; extended attributes are not copied.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{info, warn};

/// The variable set in the app's environment when `/home` is the local copy.
pub const READY_ENV: &str = "BERTH_LOCALCACHE_READY=1";
/// Largest volume content copied (the sum of file sizes): 2 GiB.
pub const MAX_BYTES: u64 = 2 << 30;
/// Most files, directories and symlinks copied.
pub const MAX_ENTRIES: usize = 200_000;
/// Threads copying files at once (a network file system answers many small reads
/// faster in parallel than one after another).
const COPY_THREADS: usize = 8;

/// Errors of the local cache copy.
#[derive(Debug, Error)]
pub enum LocalCacheError {
    #[error("local cache: reading {path} from the shared /home failed: {source}; is the file server up?")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "local cache: writing {path} on the worker's disk failed: {source}; is the disk full?"
    )]
    Write { path: PathBuf, source: io::Error },
    #[error("local cache: the copy task failed: {0}")]
    Join(String),
}

/// What [`prepare`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// `/home` is this local copy.
    Copied {
        dir: PathBuf,
        files: usize,
        bytes: u64,
        took: Duration,
    },
    /// The volume was too large to copy: use the shared `/home`.
    TooLarge { bytes: u64, entries: usize },
}

/// The directory to bind as the instance's `/home` and whether it is a local copy:
/// the shared mount `shared` itself unless the site has `local_cache` and the volume
/// fits, in which case the copy made by [`prepare`].
pub async fn home_for(
    a: &berth_api::control::Assignment,
    shared: PathBuf,
    instance_dir: &Path,
) -> Result<(PathBuf, bool), LocalCacheError> {
    if !a.local_cache {
        return Ok((shared, false));
    }
    match prepare(&shared, instance_dir).await? {
        Prepared::Copied { dir, .. } => Ok((dir, true)),
        Prepared::TooLarge { .. } => Ok((shared, false)),
    }
}

/// Copies the volume mounted at `shared` to `<instance_dir>/localcache` (replacing an
/// older copy there) on a blocking thread.
pub async fn prepare(shared: &Path, instance_dir: &Path) -> Result<Prepared, LocalCacheError> {
    let shared = shared.to_path_buf();
    let dest = instance_dir.join("localcache");
    tokio::task::spawn_blocking(move || prepare_blocking(&shared, &dest))
        .await
        .map_err(|e| LocalCacheError::Join(e.to_string()))?
}

/// One entry found by the walk, relative to the volume root.
#[derive(Debug)]
enum Entry {
    Dir(PathBuf, fs::Metadata),
    File(PathBuf, fs::Metadata),
    Symlink(PathBuf, fs::Metadata),
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> LocalCacheError + '_ {
    move |source| LocalCacheError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> LocalCacheError + '_ {
    move |source| LocalCacheError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// What the walk found: the entries (directories before their content) and the sum
/// of file sizes, or, over the limits, how far it got.
type Walked = Result<(Vec<Entry>, u64), (u64, usize)>;

/// Lists the tree under `root`.
fn walk(root: &Path) -> Result<Walked, LocalCacheError> {
    let mut entries = Vec::new();
    let mut bytes = 0u64;
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let dir = root.join(&rel);
        for item in fs::read_dir(&dir).map_err(read_err(&dir))? {
            let item = item.map_err(read_err(&dir))?;
            let rel = rel.join(item.file_name());
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).map_err(read_err(&path))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                dirs.push(rel.clone());
                entries.push(Entry::Dir(rel, meta));
            } else if kind.is_symlink() {
                entries.push(Entry::Symlink(rel, meta));
            } else if kind.is_file() {
                bytes += meta.len();
                entries.push(Entry::File(rel, meta));
            }
            if bytes > MAX_BYTES || entries.len() > MAX_ENTRIES {
                return Ok(Err((bytes, entries.len())));
            }
        }
    }
    Ok(Ok((entries, bytes)))
}

fn set_times(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec(),
        },
        libc::timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec(),
        },
    ];
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated path and times points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn copy_attrs(path: &Path, meta: &fs::Metadata, symlink: bool) -> io::Result<()> {
    lchown(path, Some(meta.uid()), Some(meta.gid()))?;
    if !symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    set_times(path, meta)
}

fn copy_file(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<(), LocalCacheError> {
    use std::io::{Read, Write};
    let mut from = fs::File::open(src).map_err(read_err(src))?;
    let mut to = fs::File::create(dst).map_err(write_err(dst))?;
    let mut buf = vec![0u8; (meta.len() as usize).clamp(4096, 1 << 20)];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(src)(e)),
        };
        to.write_all(&buf[..n]).map_err(write_err(dst))?;
    }
    drop(to);
    copy_attrs(dst, meta, false).map_err(write_err(dst))
}

fn prepare_blocking(shared: &Path, dest: &Path) -> Result<Prepared, LocalCacheError> {
    let started = Instant::now();
    let root_meta = fs::metadata(shared).map_err(read_err(shared))?;
    let (entries, bytes) = match walk(shared)? {
        Ok(found) => found,
        Err((bytes, entries)) => {
            warn!(volume = %shared.display(), bytes, entries, "volume too large for the local cache; the instance uses the shared /home");
            return Ok(Prepared::TooLarge { bytes, entries });
        }
    };
    if dest.exists() {
        fs::remove_dir_all(dest).map_err(write_err(dest))?;
    }
    fs::create_dir_all(dest).map_err(write_err(dest))?;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in entries {
        match entry {
            Entry::Dir(rel, meta) => {
                let path = dest.join(&rel);
                fs::create_dir(&path).map_err(write_err(&path))?;
                dirs.push((path, meta));
            }
            Entry::Symlink(rel, meta) => {
                let src = shared.join(&rel);
                let target = fs::read_link(&src).map_err(read_err(&src))?;
                let path = dest.join(&rel);
                std::os::unix::fs::symlink(&target, &path).map_err(write_err(&path))?;
                copy_attrs(&path, &meta, true).map_err(write_err(&path))?;
            }
            Entry::File(rel, meta) => files.push((rel, meta)),
        }
    }
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<LocalCacheError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..COPY_THREADS.min(files.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((rel, meta)) = files.get(i) else {
                    break;
                };
                if let Err(e) = copy_file(&shared.join(rel), &dest.join(rel), meta) {
                    failed
                        .lock()
                        .expect("copy error slot poisoned")
                        .get_or_insert(e);
                    next.store(files.len(), Ordering::Relaxed);
                    break;
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().expect("copy error slot poisoned") {
        return Err(e);
    }
    // Directory attributes last (deepest first): creating entries changes mtimes.
    for (path, meta) in dirs.iter().rev() {
        copy_attrs(path, meta, false).map_err(write_err(path))?;
    }
    copy_attrs(dest, &root_meta, false).map_err(write_err(dest))?;
    let took = started.elapsed();
    info!(
        volume = %shared.display(),
        files = files.len(),
        bytes,
        took_ms = took.as_millis() as u64,
        "copied /home to the local cache"
    );
    Ok(Prepared::Copied {
        dir: dest.to_path_buf(),
        files: files.len(),
        bytes,
        took,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_tree_with_modes_times_and_symlinks() {
        let src = tempfile::tempdir().unwrap();
        let inst = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("a/b")).unwrap();
        fs::write(s.join("a/b/f.txt"), b"hello").unwrap();
        fs::set_permissions(s.join("a/b/f.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(s.join("top"), vec![7u8; 300_000]).unwrap();
        std::os::unix::fs::symlink("a/b/f.txt", s.join("link")).unwrap();
        fs::set_permissions(s.join("a"), fs::Permissions::from_mode(0o750)).unwrap();
        let mtime = fs::metadata(s.join("a/b/f.txt")).unwrap().mtime();

        let Prepared::Copied {
            dir, files, bytes, ..
        } = prepare(s, inst.path()).await.unwrap()
        else {
            panic!("not copied")
        };
        assert_eq!((files, bytes), (2, 300_005));
        assert_eq!(fs::read(dir.join("a/b/f.txt")).unwrap(), b"hello");
        let meta = fs::metadata(dir.join("a/b/f.txt")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(meta.mtime(), mtime);
        assert_eq!(fs::metadata(dir.join("a")).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(
            fs::read_link(dir.join("link")).unwrap(),
            PathBuf::from("a/b/f.txt")
        );
        assert_eq!(fs::read(dir.join("top")).unwrap().len(), 300_000);

        // A write to the copy does not reach the source; a second prepare starts over.
        fs::write(dir.join("new"), b"x").unwrap();
        assert!(!s.join("new").exists());
        prepare(s, inst.path()).await.unwrap();
        assert!(!dir.join("new").exists());
    }

    #[tokio::test]
    async fn missing_source_is_a_read_error() {
        let inst = tempfile::tempdir().unwrap();
        let err = prepare(Path::new("/nonexistent/berth-home"), inst.path())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("reading"), "{err}");
    }
}
