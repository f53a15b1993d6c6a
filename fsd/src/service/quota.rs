//! Per-volume quota on bytes (sum of file sizes) and inodes.
//!
//! Usage is read from the metadata store at most once per [`REFRESH`] per volume and
//! raised locally by what this server let through since, so a check costs no query on
//! the hot path. Checks run before an operation changes anything: a write that would
//! pass the quota fails whole, with ENOSPC (bytes) or EDQUOT (inodes).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{FsError, FsResult};
use crate::meta::MetaStore;

/// How long a usage reading is trusted.
const REFRESH: Duration = Duration::from_secs(1);

/// Limits of every volume; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaLimits {
    pub bytes: Option<u64>,
    pub inodes: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    bytes: u64,
    inodes: u64,
    at: Instant,
}

/// Quota enforcement for all volumes.
#[derive(Debug, Default)]
pub struct Quota {
    pub limits: QuotaLimits,
    usage: Mutex<HashMap<String, Usage>>,
}

/// Environment variable with the byte quota of every volume (unset: unlimited).
pub const QUOTA_BYTES_ENV: &str = "BERTH_FSD_QUOTA_BYTES";
/// Environment variable with the inode quota of every volume (unset: unlimited).
pub const QUOTA_INODES_ENV: &str = "BERTH_FSD_QUOTA_INODES";

impl QuotaLimits {
    /// Limits from [`QUOTA_BYTES_ENV`] and [`QUOTA_INODES_ENV`]; a value that is not a
    /// number is logged and ignored.
    pub fn from_env() -> Self {
        let read = |name: &str| -> Option<u64> {
            let raw = std::env::var(name).ok()?;
            match raw.trim().parse() {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::error!(
                        name,
                        raw,
                        "quota is not a number of bytes/inodes; ignoring it"
                    );
                    None
                }
            }
        };
        Self {
            bytes: read(QUOTA_BYTES_ENV),
            inodes: read(QUOTA_INODES_ENV),
        }
    }
}

impl Quota {
    pub fn new(limits: QuotaLimits) -> Self {
        Self {
            limits,
            usage: Mutex::new(HashMap::new()),
        }
    }

    async fn usage(&self, meta: &MetaStore, volume: &str) -> FsResult<Usage> {
        if let Some(u) = self
            .usage
            .lock()
            .expect("quota lock poisoned")
            .get(volume)
            .filter(|u| u.at.elapsed() < REFRESH)
        {
            return Ok(*u);
        }
        let (bytes, inodes) = meta.quota_usage(volume).await?;
        let u = Usage {
            bytes,
            inodes,
            at: Instant::now(),
        };
        self.usage
            .lock()
            .expect("quota lock poisoned")
            .insert(volume.to_string(), u);
        Ok(u)
    }

    fn charge(&self, volume: &str, bytes: u64, inodes: u64) {
        if let Some(u) = self
            .usage
            .lock()
            .expect("quota lock poisoned")
            .get_mut(volume)
        {
            u.bytes = u.bytes.saturating_add(bytes);
            u.inodes = u.inodes.saturating_add(inodes);
        }
    }

    /// Fails with ENOSPC if growing `volume` by `growth` bytes passes the quota;
    /// otherwise counts the growth.
    pub async fn grow(&self, meta: &MetaStore, volume: &str, growth: u64) -> FsResult<()> {
        let Some(limit) = self.limits.bytes else {
            return Ok(());
        };
        if growth == 0 {
            return Ok(());
        }
        let u = self.usage(meta, volume).await?;
        if u.bytes.saturating_add(growth) > limit {
            return Err(FsError::Quota(format!(
                "{} of {limit} bytes used, {growth} more asked",
                u.bytes
            )));
        }
        self.charge(volume, growth, 0);
        Ok(())
    }

    /// Fails with EDQUOT if one more inode passes the quota; otherwise counts it.
    pub async fn new_inode(&self, meta: &MetaStore, volume: &str) -> FsResult<()> {
        let Some(limit) = self.limits.inodes else {
            return Ok(());
        };
        let u = self.usage(meta, volume).await?;
        if u.inodes >= limit {
            return Err(FsError::InodeQuota);
        }
        self.charge(volume, 0, 1);
        Ok(())
    }

    /// Forgets the cached usage of `volume` (after deletions, so space comes back).
    pub fn invalidate(&self, volume: &str) {
        self.usage
            .lock()
            .expect("quota lock poisoned")
            .remove(volume);
    }
}
