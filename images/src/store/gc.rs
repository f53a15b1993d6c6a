//! Garbage collection of the image store: reference counting by in-use images, and
//! eviction of the least recently used unused images down to a size budget.
//!
//! A collection holds `locks/gc.lock` exclusively, so no pull (each holds it shared) runs
//! meanwhile, in this process or another. Image records go first, then snapshots (renamed
//! into `tmp/` before their removal, so a half-removed snapshot never looks complete),
//! then blobs: a collection killed half way leaves unreferenced parts, never an image
//! record naming something missing. It never touches a snapshot of a kept image, so
//! overlays mounted from in-use images are unaffected.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

use nix::fcntl::FlockArg;
use tracing::{info, instrument, warn};

use super::{
    disk_usage, flock_file, fsync_dir, io_err, remove_any, GcReport, ImageRecord, ImageStore,
    StoreError,
};
use crate::reference::Digest;

/// One image record on disk.
struct RecordInfo {
    digest: Digest,
    used: SystemTime,
    /// Manifest, config and layer blobs.
    blobs: Vec<Digest>,
    layers: Vec<Digest>,
}

impl ImageStore {
    /// Every image record, unreadable ones as `Err(path)`.
    fn records(&self) -> Result<Vec<Result<RecordInfo, PathBuf>>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            let path = e.path();
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                out.push(Err(path));
                continue;
            };
            let parsed = fs::read(&path)
                .ok()
                .and_then(|d| serde_json::from_slice::<ImageRecord>(&d).ok())
                .filter(|rec| rec.manifest_digest.hex() == hex);
            let Some(rec) = parsed else {
                out.push(Err(path));
                continue;
            };
            let used = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let layers: Vec<Digest> = rec.layers.iter().map(|l| l.digest.clone()).collect();
            let mut blobs = vec![rec.manifest_digest.clone(), rec.config_digest.clone()];
            blobs.extend(layers.iter().cloned());
            out.push(Ok(RecordInfo {
                digest: rec.manifest_digest,
                used,
                blobs,
                layers,
            }));
        }
        Ok(out)
    }

    /// Names (digest hex) of the entries of `sub` (`blobs/sha256`, `snapshots`).
    fn entries(&self, sub: &str) -> Result<BTreeMap<String, PathBuf>, StoreError> {
        let dir = self.root.join(sub);
        let mut out = BTreeMap::new();
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            out.insert(e.file_name().to_string_lossy().into_owned(), e.path());
        }
        Ok(out)
    }

    /// Remove every image not in `in_use` (manifest digests), and every blob and snapshot
    /// no remaining image names, plus partial downloads and leftovers of interrupted
    /// pulls. Waits for running pulls to finish. Blocking: call it from a blocking thread.
    #[instrument(skip_all, fields(store = %self.root.display(), in_use = in_use.len()))]
    pub fn gc(&self, in_use: &[Digest]) -> Result<GcReport, StoreError> {
        let _lock = flock_file(&self.root.join("locks/gc.lock"), FlockArg::LockExclusive)?;
        let keep: BTreeSet<Digest> = in_use.iter().cloned().collect();
        self.collect(&keep)
    }

    /// Keep the store within `budget` bytes of disk: remove images not in `in_use`, least
    /// recently pulled first, until the store fits (or only in-use images are left; the
    /// report's `bytes_after` then says by how much the budget is exceeded). Always removes
    /// unreferenced blobs, snapshots and leftovers. Blocking, like [`ImageStore::gc`].
    #[instrument(skip_all, fields(store = %self.root.display(), budget, in_use = in_use.len()))]
    pub fn gc_to_budget(&self, budget: u64, in_use: &[Digest]) -> Result<GcReport, StoreError> {
        let _lock = flock_file(&self.root.join("locks/gc.lock"), FlockArg::LockExclusive)?;
        let in_use: BTreeSet<Digest> = in_use.iter().cloned().collect();
        let mut records: Vec<RecordInfo> = self.records()?.into_iter().flatten().collect();
        // Newest first: the ones kept longest when evicting from the end.
        records.sort_by_key(|r| std::cmp::Reverse(r.used));
        let blob_dir = self.root.join("blobs/sha256");
        let mut seen = HashSet::new();
        let mut size_of = BTreeMap::<(bool, Digest), u64>::new();
        // What the store's own directories take, whatever they hold.
        let base: u64 = ["blobs", "blobs/sha256", "snapshots", "images"]
            .iter()
            .filter_map(|d| fs::symlink_metadata(self.root.join(d)).ok())
            .map(|m| m.blocks() * 512)
            .sum();
        let mut usage = |keep: &[&RecordInfo]| -> u64 {
            let mut total = base;
            let mut counted = BTreeSet::new();
            for rec in keep {
                total += fs::symlink_metadata(self.record_path(&rec.digest))
                    .map(|m| m.blocks() * 512)
                    .unwrap_or(0);
                let parts = rec
                    .blobs
                    .iter()
                    .map(|d| (false, d.clone()))
                    .chain(rec.layers.iter().map(|d| (true, d.clone())));
                for key in parts {
                    if !counted.insert(key.clone()) {
                        continue;
                    }
                    total += *size_of.entry(key.clone()).or_insert_with(|| {
                        let path = if key.0 {
                            self.snapshot_path(&key.1)
                        } else {
                            blob_dir.join(key.1.hex())
                        };
                        disk_usage(&path, &mut seen)
                    });
                }
            }
            total
        };
        let (used, unused): (Vec<&RecordInfo>, Vec<&RecordInfo>) =
            records.iter().partition(|r| in_use.contains(&r.digest));
        // Keep the `n` most recently used unused images, for the largest `n` that fits.
        let mut n = unused.len();
        while n > 0 {
            let keep: Vec<&RecordInfo> = used.iter().chain(&unused[..n]).copied().collect();
            if usage(&keep) <= budget {
                break;
            }
            n -= 1;
        }
        let keep: BTreeSet<Digest> = used
            .iter()
            .chain(&unused[..n])
            .map(|r| r.digest.clone())
            .collect();
        let report = self.collect(&keep)?;
        if report.bytes_after > budget {
            warn!(
                bytes = report.bytes_after,
                budget, "images in use alone exceed the image store budget"
            );
        }
        Ok(report)
    }

    /// Remove everything not reachable from the images in `keep`. Caller holds the gc lock.
    fn collect(&self, keep: &BTreeSet<Digest>) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let mut live_blobs = BTreeSet::new();
        let mut live_snaps = BTreeSet::new();
        let mut doomed_records = Vec::new();
        for rec in self.records()? {
            match rec {
                Ok(rec) if keep.contains(&rec.digest) => {
                    report.images_kept += 1;
                    live_blobs.extend(rec.blobs.iter().map(|d| d.hex().to_string()));
                    live_snaps.extend(rec.layers.iter().map(|d| d.hex().to_string()));
                }
                Ok(rec) => {
                    doomed_records.push(self.record_path(&rec.digest));
                    report.images_removed.push(rec.digest);
                }
                Err(path) => {
                    warn!(path = %path.display(), "removing an unreadable image record");
                    doomed_records.push(path);
                }
            }
        }
        let mut seen = HashSet::new();
        // Records first: from here on no removed image looks complete.
        for path in &doomed_records {
            report.bytes_freed += disk_usage(path, &mut seen);
            remove_any(path).map_err(io_err("removing", path))?;
        }
        fsync_dir(&self.root.join("images"))?;
        for (name, path) in self.entries("snapshots")? {
            if live_snaps.contains(&name) {
                continue;
            }
            report.bytes_freed += disk_usage(&path, &mut seen);
            let doomed = self.tmp_path(&format!("gc-{name}"));
            fs::rename(&path, &doomed).map_err(io_err("moving aside", &path))?;
            remove_any(&doomed).map_err(io_err("removing", &doomed))?;
            report.snapshots_removed += 1;
        }
        for (name, path) in self.entries("blobs/sha256")? {
            if live_blobs.contains(&name) {
                continue;
            }
            report.bytes_freed += disk_usage(&path, &mut seen);
            remove_any(&path).map_err(io_err("removing", &path))?;
            report.blobs_removed += 1;
        }
        // No pull runs (we hold the gc lock exclusively): every partial download, temp
        // entry and per-digest lock file is a leftover.
        for sub in ["partial", "tmp"] {
            for (_, path) in self.entries(sub)? {
                report.bytes_freed += disk_usage(&path, &mut seen);
                remove_any(&path).map_err(io_err("removing", &path))?;
                report.leftovers_removed += 1;
            }
        }
        for (name, path) in self.entries("locks")? {
            if name != "gc.lock" {
                remove_any(&path).map_err(io_err("removing", &path))?;
            }
        }
        let mut seen = HashSet::new();
        report.bytes_after = ["blobs", "snapshots", "images"]
            .iter()
            .map(|s| disk_usage(&self.root.join(s), &mut seen))
            .sum();
        info!(
            images_removed = report.images_removed.len(),
            snapshots = report.snapshots_removed,
            blobs = report.blobs_removed,
            bytes_freed = report.bytes_freed,
            bytes_after = report.bytes_after,
            "image store collected"
        );
        Ok(report)
    }

    /// Disk bytes the store's blobs, snapshots and records use.
    pub fn disk_usage(&self) -> u64 {
        let mut seen = HashSet::new();
        ["blobs", "snapshots", "images"]
            .iter()
            .map(|s| disk_usage(&self.root.join(s), &mut seen))
            .sum()
    }
}
