//! Per-site host id ranges for sandbox user namespaces.
//!
//! Every site gets its own block of [`RANGE_SIZE`] host ids, starting at
//! [`FIRST_HOST_ID`] and going up in steps of [`RANGE_SIZE`]: root in the site's
//! sandboxes is the block's first id, and no other site shares any id of it. The
//! controller chooses the block (`Assignment.id_base`), so a site has the same ids on
//! every worker; the worker records it and refuses a block that another site already
//! holds here. Only when the controller sends none (an older controller) does the
//! worker pick the lowest free block itself.
//!
//! The table lives in `<state>/idmap.json` (`{"ranges": {"<site>": <host_id>}}`),
//! written atomically (temporary file, fsync, rename). A block is kept after the site's
//! last instance is gone, never handed to another site: files the site created in its
//! `/home` belong to the block's host ids (the file server stores the caller's host uid),
//! so a later instance of the site must get the same ids back to own them again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_api::sandbox::IdMapping;
use thiserror::Error;
use tracing::{info, warn};

/// First host id handed out.
pub const FIRST_HOST_ID: u32 = 1_000_000;
/// Ids per site: container ids `0..RANGE_SIZE`.
pub const RANGE_SIZE: u32 = 65_536;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum IdmapError {
    #[error("reading the id range table {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("id range table {path} is malformed ({detail}): fix or remove it (sites then get new ranges and may lose write access to files in /home)")]
    Malformed { path: PathBuf, detail: String },
    #[error("writing the id range table {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free host id range left for site {0}: the 32-bit id space is used up")]
    Exhausted(String),
    #[error("the controller gave site {site} the host id range {host_id}+{size}, which is not a block of {RANGE_SIZE} ids at or above {FIRST_HOST_ID}: upgrade the agent or the controller so they agree")]
    BadAssigned {
        site: String,
        host_id: u32,
        size: u32,
    },
    #[error("the controller gave site {site} host ids {host_id}.., but site {other} already uses them on this worker (a range this worker picked itself before the controller chose ranges): move {other} off this worker, then remove its entry from {path}")]
    Conflict {
        site: String,
        other: String,
        host_id: u32,
        path: PathBuf,
    },
}

/// The worker's table of site -> first host id.
pub struct IdRanges {
    path: PathBuf,
    /// `None` until first loaded from `path`.
    table: Mutex<Option<BTreeMap<String, u32>>>,
}

impl IdRanges {
    /// A table stored at `path` (read on first use).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            table: Mutex::new(None),
        }
    }

    /// The site's id range: the one the controller `assigned` (first host id and size),
    /// recorded here; or, when it assigned none, the one this worker picked for the site
    /// before, or a new lowest free block.
    pub fn range_for(
        &self,
        site: &str,
        assigned: Option<(u32, u32)>,
    ) -> Result<IdMapping, IdmapError> {
        match assigned {
            Some((host_id, size)) => self.record(site, host_id, size),
            None => self.range_of(site),
        }
    }

    /// Records the controller's block for `site`, unless another site holds it here.
    fn record(&self, site: &str, host_id: u32, size: u32) -> Result<IdMapping, IdmapError> {
        let aligned =
            host_id >= FIRST_HOST_ID && (host_id - FIRST_HOST_ID).is_multiple_of(RANGE_SIZE);
        if size != RANGE_SIZE || !aligned || host_id.checked_add(size).is_none() {
            return Err(IdmapError::BadAssigned {
                site: site.into(),
                host_id,
                size,
            });
        }
        let mut guard = self.table.lock().expect("id range table lock poisoned");
        if guard.is_none() {
            *guard = Some(load(&self.path)?);
        }
        let table = guard.as_mut().expect("loaded above");
        if table.get(site) == Some(&host_id) {
            return Ok(mapping(host_id));
        }
        if let Some((other, _)) = table.iter().find(|(s, &h)| h == host_id && *s != site) {
            return Err(IdmapError::Conflict {
                site: site.into(),
                other: other.clone(),
                host_id,
                path: self.path.clone(),
            });
        }
        let mut next = table.clone();
        if let Some(old) = next.insert(site.to_string(), host_id) {
            warn!(%site, old, new = host_id, "the controller moved the site to another host id range; files it made in /home under the old ids now belong to nobody in its sandboxes");
        }
        store(&self.path, &next)?;
        *table = next;
        info!(%site, host_id, size = RANGE_SIZE, "recorded the controller's host id range for the site");
        Ok(mapping(host_id))
    }

    /// The site's id range picked by this worker, allocating (and persisting) a new one
    /// on its first use.
    pub fn range_of(&self, site: &str) -> Result<IdMapping, IdmapError> {
        let mut guard = self.table.lock().expect("id range table lock poisoned");
        if guard.is_none() {
            *guard = Some(load(&self.path)?);
        }
        let table = guard.as_mut().expect("loaded above");
        if let Some(&host_id) = table.get(site) {
            return Ok(mapping(host_id));
        }
        let host_id = lowest_free(table.values().copied())
            .ok_or_else(|| IdmapError::Exhausted(site.into()))?;
        let mut next = table.clone();
        next.insert(site.to_string(), host_id);
        store(&self.path, &next)?;
        *table = next;
        info!(%site, host_id, size = RANGE_SIZE, "allocated a host id range for the site");
        Ok(mapping(host_id))
    }
}

fn mapping(host_id: u32) -> IdMapping {
    IdMapping {
        host_id,
        size: RANGE_SIZE,
    }
}

/// The lowest block start at or above [`FIRST_HOST_ID`] not in `used`.
fn lowest_free(used: impl Iterator<Item = u32>) -> Option<u32> {
    let used: std::collections::BTreeSet<u32> = used.collect();
    let mut candidate = FIRST_HOST_ID;
    loop {
        if !used.contains(&candidate) {
            // The whole block must fit below u32::MAX (which means "no id").
            return candidate.checked_add(RANGE_SIZE).map(|_| candidate);
        }
        candidate = candidate.checked_add(RANGE_SIZE)?;
    }
}

fn load(path: &Path) -> Result<BTreeMap<String, u32>, IdmapError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(IdmapError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let bad = |detail: String| IdmapError::Malformed {
        path: path.to_path_buf(),
        detail,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let ranges = value
        .get("ranges")
        .and_then(|r| r.as_object())
        .ok_or_else(|| bad("no \"ranges\" object".into()))?;
    let mut table = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for (site, v) in ranges {
        let host_id = v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= FIRST_HOST_ID && (n - FIRST_HOST_ID).is_multiple_of(RANGE_SIZE))
            .ok_or_else(|| bad(format!("site {site:?} has an invalid host id {v}")))?;
        if !seen.insert(host_id) {
            return Err(bad(format!("host id {host_id} is given to two sites")));
        }
        table.insert(site.clone(), host_id);
    }
    Ok(table)
}

fn store(path: &Path, table: &BTreeMap<String, u32>) -> Result<(), IdmapError> {
    let err = |source| IdmapError::Write {
        path: path.to_path_buf(),
        source,
    };
    let ranges: serde_json::Map<String, serde_json::Value> = table
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "ranges": ranges }))
        .expect("a map of numbers serializes");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_get_distinct_stable_ranges_that_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idmap.json");
        let r = IdRanges::new(path.clone());
        let a = r.range_of("a").unwrap();
        let b = r.range_of("b").unwrap();
        assert_eq!(a.host_id, 1_000_000);
        assert_eq!(a.size, 65_536);
        assert_eq!(b.host_id, 1_065_536);
        assert_eq!(r.range_of("a").unwrap(), a);
        let again = IdRanges::new(path.clone());
        assert_eq!(again.range_of("b").unwrap(), b);
        assert_eq!(again.range_of("c").unwrap().host_id, 1_131_072);
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn controller_ranges_are_recorded_checked_and_refused_on_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idmap.json");
        let r = IdRanges::new(path.clone());
        // Picked locally by an older agent.
        assert_eq!(r.range_of("old").unwrap().host_id, FIRST_HOST_ID);
        let b = FIRST_HOST_ID + 3 * RANGE_SIZE;
        assert_eq!(
            r.range_for("new", Some((b, RANGE_SIZE))).unwrap().host_id,
            b
        );
        // Recorded: a local pick for a third site skips it, and it survives a restart.
        assert_eq!(
            r.range_of("third").unwrap().host_id,
            FIRST_HOST_ID + RANGE_SIZE
        );
        let again = IdRanges::new(path.clone());
        assert_eq!(again.range_for("new", None).unwrap().host_id, b);
        // Another site's block is refused, and so are blocks that are not blocks.
        let err = again
            .range_for("intruder", Some((FIRST_HOST_ID, RANGE_SIZE)))
            .unwrap_err();
        assert!(
            matches!(err, IdmapError::Conflict { ref other, .. } if other == "old"),
            "{err}"
        );
        for (h, n) in [(0, RANGE_SIZE), (FIRST_HOST_ID + 1, RANGE_SIZE), (b, 10)] {
            let err = again.range_for("x", Some((h, n))).unwrap_err();
            assert!(
                matches!(err, IdmapError::BadAssigned { .. }),
                "{h}+{n}: {err}"
            );
        }
        // A refused block changes nothing on disk.
        assert_eq!(
            IdRanges::new(path).range_of("intruder").unwrap().host_id,
            FIRST_HOST_ID + 2 * RANGE_SIZE
        );
    }

    #[test]
    fn gaps_are_filled_and_bad_tables_are_refused() {
        assert_eq!(lowest_free([1_065_536u32].into_iter()), Some(FIRST_HOST_ID));
        let all = (0u64..)
            .map(|i| u64::from(FIRST_HOST_ID) + i * u64::from(RANGE_SIZE))
            .take_while(|h| h + u64::from(RANGE_SIZE) <= u64::from(u32::MAX))
            .map(|h| h as u32);
        assert_eq!(lowest_free(all), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idmap.json");
        for bad in [
            "nope",
            "{}",
            r#"{"ranges":{"a":5}}"#,
            r#"{"ranges":{"a":1000000,"b":1000000}}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = IdRanges::new(path.clone()).range_of("a").unwrap_err();
            assert!(matches!(err, IdmapError::Malformed { .. }), "{bad}: {err}");
        }
    }
}
