//! The workloads, run the same way on every target with plain std file calls from one
//! thread: mdtest-style small-file phases, sequential throughput, and an "app start"
//! that walks a tree of 5,000 small files and reads each one.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Bytes per block of the sequential phases.
pub const BLOCK: usize = 1 << 20;
/// Bytes written to, then read from, each small file.
pub const SMALL: usize = 4096;
/// Files per directory of the app tree.
pub const APP_FILES_PER_DIR: usize = 50;

pub fn name(i: usize) -> String {
    format!("f{i:06}")
}

/// Creates `n` empty files (`O_CREAT | O_EXCL`, then close).
pub fn create_empty(dir: &Path, n: usize) -> Result<Duration> {
    let start = Instant::now();
    for i in 0..n {
        let p = dir.join(name(i));
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))?;
    }
    Ok(start.elapsed())
}

/// `stat` of each of the `n` files.
pub fn stat_all(dir: &Path, n: usize) -> Result<Duration> {
    let start = Instant::now();
    for i in 0..n {
        let p = dir.join(name(i));
        fs::metadata(&p).with_context(|| format!("stat {}", p.display()))?;
    }
    Ok(start.elapsed())
}

/// Opens each existing file, writes [`SMALL`] bytes, closes it (close flushes).
pub fn write_small(dir: &Path, n: usize) -> Result<Duration> {
    let data = vec![b'x'; SMALL];
    let start = Instant::now();
    for i in 0..n {
        let p = dir.join(name(i));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        f.write_all(&data)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(start.elapsed())
}

/// Opens and reads each file to its end; checks the size.
pub fn read_small(dir: &Path, n: usize, expect: usize) -> Result<Duration> {
    let mut buf = Vec::with_capacity(SMALL * 2);
    let start = Instant::now();
    for i in 0..n {
        let p = dir.join(name(i));
        buf.clear();
        fs::File::open(&p)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .with_context(|| format!("reading {}", p.display()))?;
        anyhow::ensure!(
            buf.len() == expect,
            "{} has {} bytes, not {expect}",
            p.display(),
            buf.len()
        );
    }
    Ok(start.elapsed())
}

pub fn remove_all(dir: &Path, n: usize) -> Result<Duration> {
    let start = Instant::now();
    for i in 0..n {
        let p = dir.join(name(i));
        fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(start.elapsed())
}

fn noise(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Writes `mib` MiB in [`BLOCK`]-byte writes to a new file, then fsync and close.
pub fn seq_write(path: &Path, mib: usize) -> Result<Duration> {
    let mut block = vec![0u8; BLOCK];
    let start = Instant::now();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    for i in 0..mib {
        noise(&mut block, i as u64 + 1);
        f.write_all(&block)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    f.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    drop(f);
    Ok(start.elapsed())
}

/// Reads the whole file in [`BLOCK`]-byte reads; checks its length.
pub fn seq_read(path: &Path, mib: usize) -> Result<Duration> {
    let mut block = vec![0u8; BLOCK];
    let start = Instant::now();
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut total = 0usize;
    loop {
        let n = f
            .read(&mut block)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        total += n;
    }
    anyhow::ensure!(total == mib * BLOCK, "{} has {total} bytes", path.display());
    Ok(start.elapsed())
}

/// Size of app file `i`: 512 B to ~24 KiB, like source files and templates.
fn app_size(i: usize) -> usize {
    512 + (i * 7919) % (24 << 10)
}

/// Writes the app tree: `n` files in directories of [`APP_FILES_PER_DIR`] under
/// `root/lib/dNNN`. Returns the bytes written.
pub fn make_app_tree(root: &Path, n: usize) -> Result<u64> {
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 32 << 10];
    for d in 0..n.div_ceil(APP_FILES_PER_DIR) {
        let dir = root.join("lib").join(format!("d{d:03}"));
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        for j in 0..APP_FILES_PER_DIR.min(n - d * APP_FILES_PER_DIR) {
            let i = d * APP_FILES_PER_DIR + j;
            let len = app_size(i);
            noise(&mut buf[..len], i as u64 + 7);
            let p = dir.join(format!("m{j:03}.py"));
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&p)
                .and_then(|mut f| f.write_all(&buf[..len]))
                .with_context(|| format!("writing {}", p.display()))?;
            bytes += len as u64;
        }
    }
    Ok(bytes)
}

/// The "app start": walks `root` (readdir of every directory, stat of each entry) and
/// reads every regular file to its end, as an interpreter loading its modules does.
/// Returns the time and the number of files read.
pub fn app_start(root: &Path) -> Result<(Duration, usize)> {
    let start = Instant::now();
    let mut files = 0;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let meta = fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                buf.clear();
                fs::File::open(&p)
                    .and_then(|mut f| f.read_to_end(&mut buf))
                    .with_context(|| format!("reading {}", p.display()))?;
                anyhow::ensure!(
                    buf.len() as u64 == meta.len(),
                    "short read of {}",
                    p.display()
                );
                files += 1;
            }
        }
    }
    Ok((start.elapsed(), files))
}

/// Copies the tree `src` to the new directory `dst`: directories first, then files
/// `threads` at a time (what the agent's local cache does before a start).
pub fn copy_tree(src: &Path, dst: &Path, threads: usize) -> Result<()> {
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::new()];
    fs::create_dir_all(dst)?;
    while let Some(rel) = dirs.pop() {
        for e in fs::read_dir(src.join(&rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                fs::create_dir(dst.join(&rel))?;
                dirs.push(rel);
            } else {
                files.push(rel);
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(rel) = files.get(i) else {
                            return Ok(());
                        };
                        fs::copy(src.join(rel), dst.join(rel))
                            .with_context(|| format!("copying {}", rel.display()))?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("copy thread panicked"))
    })
}
