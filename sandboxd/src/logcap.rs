//! A cap on each sandbox's log file, so a tenant that prints without end cannot fill
//! the worker's disk.
//!
//! The app's stdout and stderr are the log file itself, opened with `O_APPEND` (no
//! copying process sits in between, so nothing costs memory per sandbox). Once a
//! second, the monitor checks every live sandbox's file: when its size or its
//! allocated blocks pass the cap, the newest `cap` bytes are kept in `<log>.1`
//! (replacing the previous one) and the file is truncated to zero — logrotate's
//! `copytruncate`. Appends continue at the new end. A tenant that clears `O_APPEND`
//! and writes at its old offset makes a sparse file: the holes take no disk, and the
//! size check catches it; one that preallocates blocks past the end (`fallocate`
//! with `KEEP_SIZE`) is caught by the allocated-blocks check. Between two checks a tenant
//! can write what its io weight lets it write in one second; then it is cut back.
//! Disk use per sandbox is thus at most about twice the cap plus one second of
//! writes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Default cap of one sandbox's log file (Docker's common `max-size=10m`).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;

/// Allocated bytes tolerated above the cap before a file of a size under the cap is
/// cut back (filesystem block rounding).
const ALLOCATION_SLACK: u64 = 1 << 20;

/// What a rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    /// Size of the file before it was truncated.
    pub size: u64,
    /// Bytes kept in `<log>.1`.
    pub kept: u64,
}

/// The previous generation's path: `<log>.1`.
pub fn previous(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Rotates `path` when its size or allocated blocks pass `cap`; `None` when below.
/// A missing file is below the cap.
pub fn enforce(path: &Path, cap: u64) -> io::Result<Option<Rotated>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let size = meta.len();
    // Blocks beyond the size (fallocate with KEEP_SIZE) count too; block rounding
    // gets some slack.
    let allocated = meta.blocks().saturating_mul(512);
    if size <= cap && allocated <= cap.saturating_add(ALLOCATION_SLACK) {
        return Ok(None);
    }
    let mut log = OpenOptions::new().read(true).write(true).open(path)?;
    let kept = copy_tail(&mut log, &previous(path), size, cap)?;
    log.set_len(0)?;
    Ok(Some(Rotated { size, kept }))
}

/// Writes the last `min(size, cap)` bytes of `log` to `dest` (temporary file, then
/// rename, so a reader never sees a half-written previous generation).
fn copy_tail(log: &mut File, dest: &Path, size: u64, cap: u64) -> io::Result<u64> {
    let keep = size.min(cap);
    log.seek(SeekFrom::Start(size - keep))?;
    let tmp = {
        let mut p = dest.as_os_str().to_owned();
        p.push(".tmp");
        PathBuf::from(p)
    };
    let mut out = File::create(&tmp)?;
    let copied = io::copy(&mut log.take(keep), &mut out)?;
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, dest)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_the_cap_nothing_happens() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        assert_eq!(enforce(&log, 100).unwrap(), None, "missing file");
        std::fs::write(&log, vec![b'a'; 100]).unwrap();
        assert_eq!(enforce(&log, 100).unwrap(), None);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 100);
        assert!(!previous(&log).exists());
    }

    #[test]
    fn over_the_cap_the_newest_bytes_are_kept_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        // The app's view: an O_APPEND descriptor that stays open across the rotation.
        let mut app = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let lines: String = (0..1000).map(|i| format!("line {i:04}\n")).collect();
        app.write_all(lines.as_bytes()).unwrap();
        let r = enforce(&log, 100).unwrap().expect("rotated");
        assert_eq!(
            r,
            Rotated {
                size: 10_000,
                kept: 100
            }
        );
        let prev = std::fs::read_to_string(previous(&log)).unwrap();
        assert!(prev.ends_with("line 0999\n"), "{prev}");
        assert_eq!(prev.len(), 100);
        app.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "after\n");
        assert!(!dir.path().join("app.log.1.tmp").exists());
    }

    #[test]
    fn a_sparse_file_costs_at_most_the_cap_to_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let mut app = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        // A tenant that seeks far (no O_APPEND) and writes a little.
        app.seek(SeekFrom::Start(1 << 30)).unwrap();
        app.write_all(b"tail\n").unwrap();
        let r = enforce(&log, 4096)
            .unwrap()
            .expect("rotated by apparent size");
        assert_eq!(r.kept, 4096);
        assert_eq!(std::fs::metadata(previous(&log)).unwrap().len(), 4096);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
    }
}
