//! Consistent snapshots for the watch streams: the revision and the rows are read in
//! one read transaction, so a snapshot never mixes two revisions.

use std::collections::BTreeMap;

use super::{Store, StoreError};

/// One instance assigned to a worker, with what the worker needs to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentRow {
    pub instance_id: String,
    pub site: String,
    pub image_digest: String,
    pub registry_auth: String,
    pub insecure_registry: bool,
    pub env: BTreeMap<String, String>,
    pub port: u32,
    pub generation: u64,
    /// First host id of the site's user-namespace range (0 if it has none).
    pub id_base: u32,
    pub local_cache: bool,
}

#[derive(sqlx::FromRow)]
struct AssignmentDbRow {
    instance_id: String,
    site: String,
    image_digest: String,
    registry_auth: String,
    insecure_registry: bool,
    env: String,
    port: i64,
    generation: i64,
    id_base: Option<i64>,
    local_cache: bool,
}

/// A ready instance of a site and the worker it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEndpoint {
    pub instance_id: String,
    pub worker_id: String,
    pub ingress_addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSite {
    pub site: String,
    /// Ready instances on any worker (liveness is filtered by the caller).
    pub endpoints: Vec<RouteEndpoint>,
}

impl Store {
    /// The revision and every instance assigned to `worker_id`.
    pub async fn assignments_for(
        &self,
        worker_id: &str,
    ) -> Result<(u64, Vec<AssignmentRow>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let rev: i64 = sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<AssignmentDbRow> = sqlx::query_as(
            "SELECT i.id AS instance_id, s.name AS site, s.image_digest, s.registry_auth, \
             s.insecure_registry, s.env, s.port, i.generation, r.host_id AS id_base, s.local_cache \
             FROM instances i JOIN sites s ON s.name = i.site \
             LEFT JOIN id_ranges r ON r.site = s.name WHERE i.worker_id = ? ORDER BY i.id",
        )
        .bind(worker_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let env = serde_json::from_str(&r.env).map_err(|source| StoreError::CorruptEnv {
                site: r.site.clone(),
                source,
            })?;
            out.push(AssignmentRow {
                instance_id: r.instance_id,
                site: r.site,
                image_digest: r.image_digest,
                registry_auth: r.registry_auth,
                insecure_registry: r.insecure_registry,
                env,
                port: r.port as u32,
                generation: r.generation as u64,
                id_base: r.id_base.unwrap_or(0) as u32,
                local_cache: r.local_cache,
            });
        }
        Ok((rev as u64, out))
    }

    /// The revision, every site, and the ready instances of each.
    pub async fn routes(&self) -> Result<(u64, Vec<RouteSite>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let rev: i64 = sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let sites: Vec<String> = sqlx::query_scalar("SELECT name FROM sites ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        let ready: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT i.site, i.id, w.id, w.ingress_addr FROM instances i \
             JOIN workers w ON w.id = i.worker_id WHERE i.state = 'ready' ORDER BY i.id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut by_site: BTreeMap<String, Vec<RouteEndpoint>> =
            sites.into_iter().map(|s| (s, Vec::new())).collect();
        for (site, instance_id, worker_id, ingress_addr) in ready {
            if let Some(v) = by_site.get_mut(&site) {
                v.push(RouteEndpoint {
                    instance_id,
                    worker_id,
                    ingress_addr,
                });
            }
        }
        Ok((
            rev as u64,
            by_site
                .into_iter()
                .map(|(site, endpoints)| RouteSite { site, endpoints })
                .collect(),
        ))
    }
}
