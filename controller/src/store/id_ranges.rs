//! Host id ranges of the sites' user namespaces, one per site name, cluster-wide.
//!
//! Every site gets a block of [`ID_RANGE_SIZE`] host uids/gids, starting at
//! [`FIRST_HOST_ID`] in steps of [`ID_RANGE_SIZE`]; root in the site's sandboxes maps
//! to the block's first id on every worker. Blocks are kept when a site is deleted and
//! never reused for another name (see `migrations/0002_id_ranges.sql`).

use std::collections::BTreeSet;

use sqlx::{Sqlite, Transaction};

use super::StoreError;

/// First host id handed out (ids below are left to the host's own users).
pub const FIRST_HOST_ID: u32 = 1_000_000;
/// Ids per site: container ids `0..ID_RANGE_SIZE`.
pub const ID_RANGE_SIZE: u32 = 65_536;

/// The site's first host id, allocating the lowest free block on first use.
pub(super) async fn ensure_in_tx(
    tx: &mut Transaction<'static, Sqlite>,
    site: &str,
) -> Result<u32, StoreError> {
    let existing: Option<i64> = sqlx::query_scalar("SELECT host_id FROM id_ranges WHERE site = ?")
        .bind(site)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(host_id) = existing {
        return Ok(host_id as u32);
    }
    let used: Vec<i64> = sqlx::query_scalar("SELECT host_id FROM id_ranges")
        .fetch_all(&mut **tx)
        .await?;
    let host_id = lowest_free(used.into_iter().map(|h| h as u32))
        .ok_or_else(|| StoreError::IdRangesExhausted(site.to_string()))?;
    sqlx::query("INSERT INTO id_ranges (site, host_id) VALUES (?, ?)")
        .bind(site)
        .bind(host_id as i64)
        .execute(&mut **tx)
        .await?;
    Ok(host_id)
}

/// The lowest block start at or above [`FIRST_HOST_ID`] not in `used` whose whole block
/// fits below `u32::MAX` (which means "no id" to the kernel).
fn lowest_free(used: impl Iterator<Item = u32>) -> Option<u32> {
    let used: BTreeSet<u32> = used.collect();
    let mut candidate = FIRST_HOST_ID;
    loop {
        if !used.contains(&candidate) {
            return candidate.checked_add(ID_RANGE_SIZE).map(|_| candidate);
        }
        candidate = candidate.checked_add(ID_RANGE_SIZE)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_fill_gaps_and_stop_below_u32_max() {
        assert_eq!(lowest_free([].into_iter()), Some(FIRST_HOST_ID));
        let a = FIRST_HOST_ID;
        let b = a + ID_RANGE_SIZE;
        let c = b + ID_RANGE_SIZE;
        assert_eq!(lowest_free([a, c].into_iter()), Some(b));
        assert_eq!(lowest_free([a, b].into_iter()), Some(c));
        let all = (0..)
            .map(|i: u64| FIRST_HOST_ID as u64 + i * ID_RANGE_SIZE as u64)
            .take_while(|&s| s + (ID_RANGE_SIZE as u64) < u32::MAX as u64)
            .map(|s| s as u32);
        assert_eq!(lowest_free(all), None);
    }
}
