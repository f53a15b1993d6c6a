//! Public REST API (`/v1/...`, JSON) plus open `/healthz` and `/metrics`.
//!
//! Handlers validate first, then resolve the image (create only), then change desired
//! state in one store transaction: a failed request never leaves a half-made site.

mod error;
pub mod validate;

use std::sync::Arc;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_api::rest::{CreateSite, Instance, Scale, Site, SiteList, Worker, WorkerList};
use tower_http::trace::TraceLayer;

use crate::context::Controller;
use crate::images::{check_image, default_insecure, ResolveRequest};
use crate::store::{NewSite, SiteRecord};
pub use error::{ApiFailure, ApiJson};

type Ctx = State<Arc<Controller>>;

/// The whole HTTP app.
pub fn router(ctx: Arc<Controller>) -> Router {
    let v1 = Router::new()
        .route("/v1/sites", post(create_site).get(list_sites))
        .route("/v1/sites/{name}", get(get_site).delete(delete_site))
        .route("/v1/sites/{name}/scale", post(scale_site))
        .route("/v1/workers", get(list_workers))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), require_token));
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiFailure::not_found("no such endpoint: the API lives under /v1 (sites, workers)")
        })
        .method_not_allowed_fallback(|| async {
            ApiFailure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(ctx.clone(), count_requests))
        .layer(TraceLayer::new_for_http())
        .with_state(ctx)
}

async fn require_token(State(ctx): Ctx, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if ctx.token.check(given) {
        next.run(req).await
    } else {
        ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "missing or wrong API token: send 'Authorization: Bearer <token>' with the token from {} on the controller host",
                ctx.token.path().display()
            ),
        )
        .into_response()
    }
}

async fn count_requests(State(ctx): Ctx, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    ctx.metrics.record_http(&route, resp.status().as_u16());
    resp
}

async fn metrics(State(ctx): Ctx) -> Response {
    match ctx.store.counts().await {
        Ok(c) => {
            ctx.metrics.sites.set(c.sites);
            for (state, n) in c.instances_by_state {
                ctx.metrics
                    .instances
                    .get_or_create(&crate::metrics::StateLabels { state })
                    .set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "counting sites for metrics"),
    }
    if let Ok(ids) = ctx.store.worker_ids().await {
        ctx.metrics.workers_registered.set(ids.len() as i64);
        let live = ctx.liveness.live_set(ids.iter().map(String::as_str));
        ctx.metrics.workers_live.set(live.len() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

fn to_site(ctx: &Controller, s: SiteRecord) -> Site {
    Site {
        hostname: ctx.hostname(&s.name),
        url: ctx.url(&s.name),
        name: s.name,
        image: s.image,
        image_digest: s.image_digest,
        instances: s.instances,
        port: s.port,
        env: s.env,
        local_cache: s.local_cache,
        created_at: s.created_at,
        instance_states: s
            .instance_states
            .into_iter()
            .map(|i| Instance {
                id: i.id,
                worker: i.worker_name,
                state: i.state,
                message: i.message,
                pull_done_bytes: i.pull_done_bytes,
                pull_total_bytes: i.pull_total_bytes,
            })
            .collect(),
    }
}

#[tracing::instrument(skip_all, fields(site = %req.name, image = %req.image))]
async fn create_site(
    State(ctx): Ctx,
    ApiJson(req): ApiJson<CreateSite>,
) -> Result<(StatusCode, Json<Site>), ApiFailure> {
    let v = validate::create(req)?;
    // Cheap early answer before talking to the registry; the insert re-checks.
    if ctx.store.site_exists(&v.name).await? {
        return Err(crate::store::StoreError::SiteExists(v.name).into());
    }
    let insecure = match v.insecure_registry {
        Some(b) => b,
        None => default_insecure(&ctx.resolver.registry_host(&v.image)?),
    };
    let resolve = ResolveRequest {
        image: v.image.clone(),
        insecure,
        auth: (!v.registry_auth.is_empty()).then(|| v.registry_auth.clone()),
    };
    let pinned = check_image(ctx.resolver.as_ref(), &resolve).await?;
    let new = NewSite {
        name: v.name,
        image: v.image,
        image_digest: pinned,
        instances: v.instances,
        port: v.port,
        env: v.env,
        insecure_registry: insecure,
        registry_auth: v.registry_auth,
        local_cache: v.local_cache,
    };
    let record = ctx.store.create_site(&new, &|w| ctx.is_live(w)).await?;
    tracing::info!(digest = %record.image_digest, instances = record.instances, "site created");
    Ok((StatusCode::CREATED, Json(to_site(&ctx, record))))
}

#[tracing::instrument(skip_all)]
async fn list_sites(State(ctx): Ctx) -> Result<Json<SiteList>, ApiFailure> {
    let sites = ctx.store.list_sites().await?;
    Ok(Json(SiteList {
        sites: sites.into_iter().map(|s| to_site(&ctx, s)).collect(),
    }))
}

#[tracing::instrument(skip_all, fields(site = %name))]
async fn get_site(State(ctx): Ctx, Path(name): Path<String>) -> Result<Json<Site>, ApiFailure> {
    match ctx.store.get_site(&name).await? {
        Some(s) => Ok(Json(to_site(&ctx, s))),
        None => Err(ApiFailure::site_not_found(&name)),
    }
}

#[tracing::instrument(skip_all, fields(site = %name))]
async fn scale_site(
    State(ctx): Ctx,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<Scale>,
) -> Result<Json<Site>, ApiFailure> {
    let n = validate::instances(req.instances)?;
    match ctx.store.scale_site(&name, n, &|w| ctx.is_live(w)).await? {
        Some(s) => {
            tracing::info!(instances = n, "site scaled");
            Ok(Json(to_site(&ctx, s)))
        }
        None => Err(ApiFailure::site_not_found(&name)),
    }
}

#[tracing::instrument(skip_all, fields(site = %name))]
async fn delete_site(State(ctx): Ctx, Path(name): Path<String>) -> Result<StatusCode, ApiFailure> {
    if ctx.store.delete_site(&name).await? {
        tracing::info!("site deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiFailure::site_not_found(&name))
    }
}

#[tracing::instrument(skip_all)]
async fn list_workers(State(ctx): Ctx) -> Result<Json<WorkerList>, ApiFailure> {
    let workers = ctx.store.list_workers().await?;
    Ok(Json(WorkerList {
        workers: workers
            .into_iter()
            .map(|w| Worker {
                up: ctx.is_live(&w.id),
                id: w.id,
                name: w.name,
                ingress_addr: w.ingress_addr,
                capacity_instances: w.capacity,
                instances: w.instances,
            })
            .collect(),
    }))
}
