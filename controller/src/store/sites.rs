//! Sites and their instances: create, read, scale, delete.

use std::collections::BTreeMap;

use rand::Rng;
use sqlx::{Sqlite, Transaction};

use super::{place_in_tx, InstanceRecord, NewSite, SiteRecord, Store, StoreError};

/// `<site>-<6 random lowercase alphanumerics>`.
pub fn new_instance_id(site: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..6)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{site}-{suffix}")
}

#[derive(sqlx::FromRow)]
struct SiteRow {
    name: String,
    image: String,
    image_digest: String,
    instances: i64,
    port: i64,
    env: String,
    insecure_registry: bool,
    registry_auth: String,
    local_cache: bool,
    created_at: String,
    generation: i64,
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    id: String,
    site: String,
    worker_id: Option<String>,
    worker_name: Option<String>,
    state: String,
    message: String,
    generation: i64,
    pull_done_bytes: i64,
    pull_total_bytes: i64,
}

const SITE_COLUMNS: &str = "name, image, image_digest, instances, port, env, \
    insecure_registry, registry_auth, local_cache, created_at, generation";

const INSTANCE_SELECT: &str = "SELECT i.id, i.site, i.worker_id, w.name AS worker_name, \
    i.state, i.message, i.generation, i.pull_done_bytes, i.pull_total_bytes \
    FROM instances i LEFT JOIN workers w ON w.id = i.worker_id";

fn to_record(row: SiteRow, instances: Vec<InstanceRecord>) -> Result<SiteRecord, StoreError> {
    let env: BTreeMap<String, String> =
        serde_json::from_str(&row.env).map_err(|source| StoreError::CorruptEnv {
            site: row.name.clone(),
            source,
        })?;
    Ok(SiteRecord {
        name: row.name,
        image: row.image,
        image_digest: row.image_digest,
        instances: row.instances,
        port: row.port as u32,
        env,
        insecure_registry: row.insecure_registry,
        registry_auth: row.registry_auth,
        local_cache: row.local_cache,
        created_at: row.created_at,
        generation: row.generation as u64,
        instance_states: instances,
    })
}

fn to_instance(row: InstanceRow) -> InstanceRecord {
    InstanceRecord {
        id: row.id,
        worker_id: row.worker_id,
        worker_name: row.worker_name.unwrap_or_default(),
        state: row.state,
        message: row.message,
        generation: row.generation as u64,
        pull_done_bytes: row.pull_done_bytes.max(0) as u64,
        pull_total_bytes: row.pull_total_bytes.max(0) as u64,
    }
}

async fn insert_instances(
    tx: &mut Transaction<'static, Sqlite>,
    site: &str,
    count: u32,
    generation: u64,
) -> Result<(), StoreError> {
    for _ in 0..count {
        sqlx::query(
            "INSERT INTO instances (id, site, state, generation) VALUES (?, ?, 'pending', ?)",
        )
        .bind(new_instance_id(site))
        .bind(site)
        .bind(generation as i64)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn site_in_tx(
    tx: &mut Transaction<'static, Sqlite>,
    name: &str,
) -> Result<Option<SiteRecord>, StoreError> {
    let row: Option<SiteRow> =
        sqlx::query_as(&format!("SELECT {SITE_COLUMNS} FROM sites WHERE name = ?"))
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let instances: Vec<InstanceRow> = sqlx::query_as(&format!(
        "{INSTANCE_SELECT} WHERE i.site = ? ORDER BY i.rowid"
    ))
    .bind(name)
    .fetch_all(&mut **tx)
    .await?;
    to_record(row, instances.into_iter().map(to_instance).collect()).map(Some)
}

impl Store {
    /// Inserts a site with its instances, places them, and bumps the revision, all in
    /// one transaction. Fails with [`StoreError::SiteExists`] on a duplicate name.
    pub async fn create_site(
        &self,
        site: &NewSite,
        is_live: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<SiteRecord, StoreError> {
        let mut w = self.begin_write().await?;
        let env = serde_json::to_string(&site.env).expect("a map of strings serializes");
        let inserted = sqlx::query(
            "INSERT INTO sites (name, image, image_digest, instances, port, env, \
             insecure_registry, registry_auth, local_cache, created_at, generation) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), 1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&site.name)
        .bind(&site.image)
        .bind(&site.image_digest)
        .bind(site.instances as i64)
        .bind(site.port as i64)
        .bind(env)
        .bind(site.insecure_registry)
        .bind(&site.registry_auth)
        .bind(site.local_cache)
        .execute(&mut *w.tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::SiteExists(site.name.clone()));
        }
        super::id_ranges::ensure_in_tx(&mut w.tx, &site.name).await?;
        insert_instances(&mut w.tx, &site.name, site.instances, 1).await?;
        place_in_tx(&mut w.tx, is_live).await?;
        let record = site_in_tx(&mut w.tx, &site.name)
            .await?
            .expect("site inserted in this transaction");
        w.commit(true).await?;
        Ok(record)
    }

    pub async fn site_exists(&self, name: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    pub async fn get_site(&self, name: &str) -> Result<Option<SiteRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let site = site_in_tx(&mut tx, name).await?;
        tx.commit().await?;
        Ok(site)
    }

    pub async fn list_sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<SiteRow> =
            sqlx::query_as(&format!("SELECT {SITE_COLUMNS} FROM sites ORDER BY name"))
                .fetch_all(&mut *tx)
                .await?;
        let instances: Vec<InstanceRow> =
            sqlx::query_as(&format!("{INSTANCE_SELECT} ORDER BY i.rowid"))
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut by_site: BTreeMap<String, Vec<InstanceRecord>> = BTreeMap::new();
        for row in instances {
            by_site
                .entry(row.site.clone())
                .or_default()
                .push(to_instance(row));
        }
        rows.into_iter()
            .map(|row| {
                let inst = by_site.remove(&row.name).unwrap_or_default();
                to_record(row, inst)
            })
            .collect()
    }

    /// Sets the desired instance count. Scaling down removes unplaced instances first,
    /// then the ones that are not ready, newest first. `None` if the site is missing.
    pub async fn scale_site(
        &self,
        name: &str,
        instances: u32,
        is_live: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<SiteRecord>, StoreError> {
        let mut w = self.begin_write().await?;
        let Some(site) = site_in_tx(&mut w.tx, name).await? else {
            return Ok(None);
        };
        let current = site.instance_states.len() as u32;
        if current == instances && site.instances == instances as i64 {
            return Ok(Some(site));
        }
        sqlx::query("UPDATE sites SET instances = ? WHERE name = ?")
            .bind(instances as i64)
            .bind(name)
            .execute(&mut *w.tx)
            .await?;
        if instances > current {
            insert_instances(&mut w.tx, name, instances - current, site.generation).await?;
            place_in_tx(&mut w.tx, is_live).await?;
        } else if instances < current {
            let victims: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM instances WHERE site = ? ORDER BY \
                 (worker_id IS NOT NULL), (state = 'ready'), rowid DESC LIMIT ?",
            )
            .bind(name)
            .bind((current - instances) as i64)
            .fetch_all(&mut *w.tx)
            .await?;
            for id in victims {
                sqlx::query("DELETE FROM instances WHERE id = ?")
                    .bind(&id)
                    .execute(&mut *w.tx)
                    .await?;
            }
        }
        let record = site_in_tx(&mut w.tx, name).await?;
        w.commit(true).await?;
        Ok(record)
    }

    /// Deletes a site and (by cascade) its instances. `false` if it did not exist.
    pub async fn delete_site(&self, name: &str) -> Result<bool, StoreError> {
        let mut w = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM sites WHERE name = ?")
            .bind(name)
            .execute(&mut *w.tx)
            .await?
            .rows_affected()
            > 0;
        w.commit(deleted).await?;
        Ok(deleted)
    }
}
