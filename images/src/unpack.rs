//! Safe unpacking of image layer tarballs into a snapshot directory.
//!
//! Layers are untrusted input. This module must never create, modify or link anything
//! outside the snapshot directory, whatever the archive holds:
//! - `..` components are rejected; absolute paths are taken relative to the snapshot;
//! - parents are resolved with `openat2(RESOLVE_IN_ROOT)`, so a symlink in the layer
//!   (even `evil -> /`) resolves inside the snapshot, never on the host;
//! - the last component is always created with `*at` calls that do not follow symlinks,
//!   and an existing entry is unlinked first (never written through);
//! - hard links may only point at entries already inside the snapshot;
//! - device nodes are skipped; `trusted.*` xattrs from the archive are ignored.
//!
//! A layer may hold `dir/file` without an entry for `dir/` (umoci and buildah write a
//! changed file inside an unchanged directory like this). Such an implicit parent is
//! created with the mode, owner and mtime of the same path in the lower snapshots (the
//! topmost one that shows it through overlayfs), because the topmost lower dir's
//! attributes are what the overlay shows; a later explicit entry for it still wins.
//!
//! Whiteouts are converted to overlayfs form because snapshots are overlay lower dirs:
//! `.wh.NAME` becomes a 0/0 character device `NAME`, `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory. Sizes and entry counts are bounded.

mod sys;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
const MAX_PATH_BYTES: usize = 4096;
const MAX_XATTR_BYTES: usize = 64 << 10;

use std::ffi::CStr;

/// Bounds on what one layer may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct UnpackLimits {
    /// Total decompressed bytes of the tar stream (headers and data).
    pub max_bytes: u64,
    /// Number of tar entries.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// What an unpack did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Decompressed bytes read.
    pub bytes: u64,
    pub whiteouts: u64,
    /// Entries skipped on purpose (device nodes, unknown types).
    pub skipped: u64,
}

/// Errors from unpacking a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} is unsafe: {reason}: the layer was refused")]
    UnsafePath { path: String, reason: &'static str },
    #[error("layer entry {path:?}: {op} failed: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "reading the layer archive failed: {source}: the layer is corrupt or not a tar stream"
    )]
    Archive {
        #[source]
        source: io::Error,
    },
    #[error("layer unpacks to more than {limit} bytes: refusing it")]
    TooLarge { limit: u64 },
    #[error("layer has more than {limit} entries: refusing it")]
    TooManyEntries { limit: u64 },
    #[error("opening snapshot directory {path}: {source}")]
    Dest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Counts decompressed bytes and fails the stream once past the limit.
struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.count.get() + n as u64;
        self.count.set(total);
        if total > self.limit {
            return Err(io::Error::other("layer size limit exceeded"));
        }
        Ok(n)
    }
}

/// Wrap `reader` in the decompressor its first bytes call for: gzip, zstd or plain tar.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(128 << 10, reader);
    let head = buf.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buf)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(buf)?))
    } else {
        Ok(Box::new(buf))
    }
}

/// A relative path inside the snapshot: its normal components.
type Comps = Vec<OsString>;

/// Clean an archive path: drop `.`, `/` and empty parts, refuse `..`.
fn clean(path: &Path) -> Result<Comps, &'static str> {
    if path.as_os_str().len() > MAX_PATH_BYTES {
        return Err("path too long");
    }
    if path.as_os_str().as_bytes().contains(&0) {
        return Err("path contains a NUL byte");
    }
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err("path contains '..'"),
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> OsString {
    let mut s = OsString::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            s.push("/");
        }
        s.push(c);
    }
    s
}

struct Unpacker {
    root: OwnedFd,
    /// Snapshots of the layers below this one, bottom first.
    lowers: Vec<OwnedFd>,
    /// Directories whose mtime is set at the end (adding children changes it).
    dir_times: Vec<(Comps, i64)>,
    stats: UnpackStats,
}

/// Unpack the (possibly compressed) layer `reader` into the existing empty directory `dest`.
/// A layer with no lower layers: implicit parents get mode 0755, owner 0:0.
pub fn unpack_layer<R: Read>(
    reader: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    unpack_layer_onto(reader, dest, &[], limits)
}

fn open_snapshot_dir(path: &Path) -> Result<OwnedFd, UnpackError> {
    Ok(File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| UnpackError::Dest {
            path: path.to_path_buf(),
            source,
        })?
        .into())
}

/// Unpack the layer `reader` into the existing empty directory `dest`, on top of the
/// already unpacked snapshots `lowers` (bottom first, as in the image's layer list). A
/// directory the layer only names as a parent takes its mode, owner and mtime from the
/// topmost lower snapshot that shows it (0755 0:0 if none does). `lowers` are only read.
pub fn unpack_layer_onto<R: Read>(
    reader: R,
    dest: &Path,
    lowers: &[PathBuf],
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let root = open_snapshot_dir(dest)?;
    let lowers = lowers
        .iter()
        .map(|p| open_snapshot_dir(p))
        .collect::<Result<Vec<_>, _>>()?;
    let count = Rc::new(Cell::new(0u64));
    let archive_err = |source: io::Error, count: &Rc<Cell<u64>>| {
        if count.get() > limits.max_bytes {
            UnpackError::TooLarge {
                limit: limits.max_bytes,
            }
        } else {
            UnpackError::Archive { source }
        }
    };
    let stream = decompress(reader).map_err(|e| archive_err(e, &count))?;
    let counting = CountingReader {
        inner: stream,
        count: count.clone(),
        limit: limits.max_bytes,
    };
    let mut archive = tar::Archive::new(counting);
    let mut u = Unpacker {
        root,
        lowers,
        dir_times: Vec::new(),
        stats: UnpackStats::default(),
    };
    let entries = archive.entries().map_err(|e| archive_err(e, &count))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| archive_err(e, &count))?;
        // A header may claim any size: refuse one past the limit before reading it.
        if entry.header().entry_size().unwrap_or(u64::MAX) > limits.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: limits.max_bytes,
            });
        }
        u.stats.entries += 1;
        if u.stats.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        match u.entry(&mut entry) {
            Ok(()) => {}
            // A failed read of entry data is an archive error (or the size limit).
            Err(_) if count.get() > limits.max_bytes => {
                return Err(UnpackError::TooLarge {
                    limit: limits.max_bytes,
                });
            }
            Err(e) => return Err(e),
        }
    }
    u.finish()?;
    u.stats.bytes = count.get();
    Ok(u.stats)
}

use std::os::unix::fs::OpenOptionsExt;

impl Unpacker {
    fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Open the directory `comps` (inside the root), creating missing parts with the
    /// attributes the lower snapshots show for them (mode 0755, 0:0 if none).
    fn open_dir(&mut self, comps: &[OsString], create: bool) -> io::Result<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        if comps.is_empty() {
            return sys::open_in_root(self.root(), c".", flags);
        }
        let full = sys::cstring(&join(comps))?;
        match sys::open_in_root(self.root(), &full, flags) {
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {}
            other => return other,
        }
        let mut cur = sys::open_in_root(self.root(), c".", flags)?;
        for i in 0..comps.len() {
            let prefix = sys::cstring(&join(&comps[..=i]))?;
            cur = match sys::open_in_root(self.root(), &prefix, flags) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let name = sys::cstring(&comps[i])?;
                    match sys::mkdirat(cur.as_fd(), &name, 0o755) {
                        Ok(()) => {
                            if let Some(st) = self.lower_dir(&comps[..=i])? {
                                let fd = sys::openat(
                                    cur.as_fd(),
                                    &name,
                                    libc::O_RDONLY | libc::O_DIRECTORY,
                                    0,
                                )?;
                                sys::fchown(fd.as_fd(), st.st_uid, st.st_gid)?;
                                // chmod after chown: chown clears set-id bits.
                                sys::fchmod(fd.as_fd(), st.st_mode & 0o7777)?;
                                // Before any explicit entry's time for it: that one wins.
                                self.dir_times.push((comps[..=i].to_vec(), st.st_mtime));
                            }
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    sys::open_in_root(self.root(), &prefix, flags)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(cur)
    }

    /// The directory `comps` as the overlay of the lower snapshots shows it: the topmost
    /// lower that has it, unless a whiteout, a non-directory or an opaque directory above
    /// hides it. Never follows a symlink; each lookup stays inside its snapshot.
    fn lower_dir(&self, comps: &[OsString]) -> io::Result<Option<libc::stat>> {
        for lower in self.lowers.iter().rev() {
            match lookup_dir(lower.as_fd(), comps)? {
                Lower::Found(st) => return Ok(Some(st)),
                Lower::Hidden => return Ok(None),
                Lower::Absent => {}
            }
        }
        Ok(None)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry
            .path()
            .map_err(|source| UnpackError::Archive { source })?
            .into_owned();
        let shown = raw_path.to_string_lossy().into_owned();
        let unsafe_path = |reason| UnpackError::UnsafePath {
            path: shown.clone(),
            reason,
        };
        let io_err = |op: &'static str| {
            let path = shown.clone();
            move |source: io::Error| UnpackError::Io { path, op, source }
        };
        let comps = clean(&raw_path).map_err(unsafe_path)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            self.stats.skipped += 1;
            return Ok(());
        }
        let header = entry.header();
        let mode = header.mode().map_err(io_err("reading mode"))? & 0o7777;
        let uid = u32::try_from(header.uid().map_err(io_err("reading uid"))?)
            .map_err(|_| unsafe_path("uid out of range"))?;
        let gid = u32::try_from(header.gid().map_err(io_err("reading gid"))?)
            .map_err(|_| unsafe_path("gid out of range"))?;
        let mtime = i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(i64::MAX);

        // The snapshot root itself ("./").
        let Some((name, parent)) = comps.split_last() else {
            if kind == EntryType::Directory {
                let fd = sys::open_in_root(self.root(), c".", libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(io_err("opening root"))?;
                sys::fchown(fd.as_fd(), uid, gid).map_err(io_err("chown"))?;
                sys::fchmod(fd.as_fd(), mode).map_err(io_err("chmod"))?;
                self.dir_times.push((Vec::new(), mtime));
            } else {
                self.stats.skipped += 1;
            }
            return Ok(());
        };

        let name_str = name.as_bytes();
        if name_str.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent, name, &shown);
        }

        let dir = self
            .open_dir(parent, true)
            .map_err(io_err("opening parent directory"))?;
        let cname = sys::cstring(name).map_err(io_err("encoding name"))?;

        match kind {
            EntryType::Directory => {
                match sys::lstatat(dir.as_fd(), &cname) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Ok(_) => {
                        remove(dir.as_fd(), &cname).map_err(io_err("replacing entry"))?;
                        sys::mkdirat(dir.as_fd(), &cname, 0o700).map_err(io_err("mkdir"))?;
                    }
                    Err(_) => sys::mkdirat(dir.as_fd(), &cname, 0o700).map_err(io_err("mkdir"))?,
                }
                let fd = sys::openat(dir.as_fd(), &cname, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(io_err("opening directory"))?;
                sys::fchown(fd.as_fd(), uid, gid).map_err(io_err("chown"))?;
                sys::fchmod(fd.as_fd(), mode).map_err(io_err("chmod"))?;
                self.xattrs(entry, fd.as_fd(), &shown)?;
                self.dir_times.push((comps.clone(), mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove(dir.as_fd(), &cname).map_err(io_err("replacing entry"))?;
                let fd = sys::openat(
                    dir.as_fd(),
                    &cname,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )
                .map_err(io_err("creating file"))?;
                let mut file = File::from(fd);
                copy_data(entry, &mut file).map_err(|e| match e {
                    CopyError::Read(source) => UnpackError::Archive { source },
                    CopyError::Write(source) => io_err("writing file data")(source),
                })?;
                sys::fchown(file.as_fd(), uid, gid).map_err(io_err("chown"))?;
                // chmod after chown: chown clears set-id bits.
                sys::fchmod(file.as_fd(), mode).map_err(io_err("chmod"))?;
                self.xattrs(entry, file.as_fd(), &shown)?;
                sys::futimens(file.as_fd(), mtime).map_err(io_err("setting mtime"))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_path("symlink without a target"))?;
                let target = CString::new(target.into_owned())
                    .map_err(|_| unsafe_path("symlink target contains NUL"))?;
                remove(dir.as_fd(), &cname).map_err(io_err("replacing entry"))?;
                sys::symlinkat(&target, dir.as_fd(), &cname).map_err(io_err("symlink"))?;
                sys::lchownat(dir.as_fd(), &cname, uid, gid).map_err(io_err("chown"))?;
                sys::lutimesat(dir.as_fd(), &cname, mtime).map_err(io_err("setting mtime"))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|source| UnpackError::Archive { source })?
                    .ok_or_else(|| unsafe_path("hard link without a target"))?
                    .into_owned();
                let tcomps = clean(&target).map_err(unsafe_path)?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(unsafe_path("hard link to the layer root"));
                };
                let tdir = self
                    .open_dir(tparent, false)
                    .map_err(io_err("opening hard link target directory"))?;
                let tname = sys::cstring(tname).map_err(io_err("encoding name"))?;
                if tcomps == comps {
                    // A link to itself: nothing to do.
                    return Ok(());
                }
                remove(dir.as_fd(), &cname).map_err(io_err("replacing entry"))?;
                sys::linkat(tdir.as_fd(), &tname, dir.as_fd(), &cname).map_err(io_err(
                    "hard link (its target must be earlier in the same layer)",
                ))?;
            }
            EntryType::Fifo => {
                remove(dir.as_fd(), &cname).map_err(io_err("replacing entry"))?;
                sys::mknodat(dir.as_fd(), &cname, libc::S_IFIFO | mode, 0)
                    .map_err(io_err("mkfifo"))?;
                sys::lchownat(dir.as_fd(), &cname, uid, gid).map_err(io_err("chown"))?;
                sys::lutimesat(dir.as_fd(), &cname, mtime).map_err(io_err("setting mtime"))?;
            }
            // Device nodes would give a sandbox access to host devices: skip them. The
            // sandbox runtime provides the devices a container needs.
            _ => self.stats.skipped += 1,
        }
        Ok(())
    }

    /// `.wh.NAME` -> 0/0 char device NAME; `.wh..wh..opq` -> opaque xattr on the parent.
    fn whiteout(
        &mut self,
        parent: &[OsString],
        name: &OsStr,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let io_err = |op: &'static str| {
            let path = shown.to_string();
            move |source: io::Error| UnpackError::Io { path, op, source }
        };
        self.stats.whiteouts += 1;
        let dir = self
            .open_dir(parent, true)
            .map_err(io_err("opening whiteout directory"))?;
        if name == OPAQUE_WHITEOUT {
            let fd = sys::openat(dir.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .map_err(io_err("opening opaque directory"))?;
            sys::fsetxattr(fd.as_fd(), OVERLAY_OPAQUE_XATTR, b"y")
                .map_err(io_err("setting trusted.overlay.opaque"))?;
            return Ok(());
        }
        let target = &name.as_bytes()[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
            return Err(UnpackError::UnsafePath {
                path: shown.to_string(),
                reason: "bad whiteout name",
            });
        }
        let cname = sys::cstring(OsStr::from_bytes(target)).map_err(io_err("encoding name"))?;
        remove(dir.as_fd(), &cname).map_err(io_err("replacing entry"))?;
        sys::mknodat(dir.as_fd(), &cname, libc::S_IFCHR, 0).map_err(io_err("creating whiteout"))?;
        Ok(())
    }

    /// Apply PAX `SCHILY.xattr.*` records, keeping only `user.*` and file capabilities.
    fn xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        fd: BorrowedFd<'_>,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return Ok(());
        };
        for ext in exts.flatten() {
            let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if !(key.starts_with(b"user.") || key == b"security.capability") {
                continue;
            }
            if ext.value_bytes().len() > MAX_XATTR_BYTES {
                continue;
            }
            let Ok(ckey) = CString::new(key) else {
                continue;
            };
            sys::fsetxattr(fd, &ckey, ext.value_bytes()).map_err(|source| UnpackError::Io {
                path: shown.to_string(),
                op: "setting xattr",
                source,
            })?;
        }
        Ok(())
    }

    /// Set directory mtimes, now that no more children will be added.
    fn finish(&mut self) -> Result<(), UnpackError> {
        for (comps, mtime) in std::mem::take(&mut self.dir_times) {
            let shown = join(&comps).to_string_lossy().into_owned();
            let io_err = |source| UnpackError::Io {
                path: shown.clone(),
                op: "setting directory mtime",
                source,
            };
            match comps.split_last() {
                None => {
                    let fd =
                        sys::open_in_root(self.root(), c".", libc::O_RDONLY | libc::O_DIRECTORY)
                            .map_err(io_err)?;
                    sys::futimens(fd.as_fd(), mtime).map_err(io_err)?;
                }
                Some((name, parent)) => {
                    // The directory may since have been replaced or removed by a later entry.
                    let Ok(dir) = self.open_dir(parent, false) else {
                        continue;
                    };
                    let cname = sys::cstring(name).map_err(io_err)?;
                    match sys::lstatat(dir.as_fd(), &cname) {
                        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                            sys::lutimesat(dir.as_fd(), &cname, mtime).map_err(io_err)?;
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// What one lower snapshot says about a directory path.
enum Lower {
    /// The snapshot has the directory.
    Found(libc::stat),
    /// The snapshot hides the path from the snapshots below it.
    Hidden,
    /// The snapshot has nothing there: look further down.
    Absent,
}

/// Look `comps` up in the snapshot `root` one component at a time with `lstat`, so no
/// symlink is followed and nothing outside `root` is reached.
fn lookup_dir(root: BorrowedFd<'_>, comps: &[OsString]) -> io::Result<Lower> {
    let mut cur = sys::openat(root, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // Below an opaque directory the snapshots further down are not shown.
    let mut opaque = false;
    for (i, comp) in comps.iter().enumerate() {
        let name = sys::cstring(comp)?;
        let st = match sys::lstatat(cur.as_fd(), &name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && opaque => return Ok(Lower::Hidden),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Lower::Absent),
            Err(e) => return Err(e),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            // A whiteout (0/0 char device), a file or a symlink replaces the directory.
            return Ok(Lower::Hidden);
        }
        if i + 1 == comps.len() {
            return Ok(Lower::Found(st));
        }
        cur = sys::openat(cur.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        opaque = opaque || sys::fxattr_is(cur.as_fd(), OVERLAY_OPAQUE_XATTR, b"y")?;
    }
    Ok(Lower::Absent)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copy an entry's data, telling a broken archive (read) from a failing disk (write).
fn copy_data(from: &mut impl Read, to: &mut File) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        io::Write::write_all(to, &buf[..n]).map_err(CopyError::Write)?;
    }
}

/// Remove whatever is at `name` in `dir` (file, symlink, or directory tree), never
/// following a symlink. Missing is fine.
fn remove(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match sys::unlinkat(dir, name, 0) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM)) => {
            match sys::unlinkat(dir, name, libc::AT_REMOVEDIR) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    // A whole tree replaced by a file. std's remove_dir_all does not follow
                    // symlinks; the /proc/self/fd path pins the parent we already resolved.
                    let path = Path::new("/proc/self/fd")
                        .join(dir_fd_string(dir))
                        .join(OsStr::from_bytes(name.to_bytes()));
                    std::fs::remove_dir_all(path)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn dir_fd_string(dir: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    dir.as_raw_fd().to_string()
}
