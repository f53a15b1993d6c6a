//! gRPC services on `--grpc-listen`: `Workers` (agents) and `Routes` (front ends),
//! from `api/proto/control.proto`.
//!
//! Workers register (idempotent on name), heartbeat every 2 s with their instance
//! states, watch their assignments and report state changes. Front ends watch the
//! routing table: every site with its hostname and the READY instances on live
//! workers. Both watches resume from a revision (see [`watch`]).

pub mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use berth_api::control::routes_server::{Routes, RoutesServer};
use berth_api::control::workers_server::{Workers, WorkersServer};
use berth_api::control::{
    Assignment, Assignments, Endpoint, HeartbeatRequest, HeartbeatResponse, InstanceReport,
    InstanceState, RegisterRequest, RegisterResponse, ReportAck, RouteTable, SiteRoute,
    WatchAssignmentsRequest, WatchRoutesRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::context::Controller;
use crate::liveness::HEARTBEAT_INTERVAL;
use crate::store::ID_RANGE_SIZE;
use crate::store::{InstanceReportIn, StoreError};

/// Resources every instance gets in the walking skeleton.
pub const INSTANCE_MEMORY_MB: u64 = 256;
pub const INSTANCE_CPU_MILLIS: u32 = 1000;
pub const INSTANCE_PIDS_MAX: u32 = 512;
pub const HEALTH_PATH: &str = "/";

fn internal(e: StoreError) -> Status {
    tracing::error!(error = %e, "state database failure");
    Status::internal("controller state database failed: retry; see the controller log")
}

/// Maps a reported state to the stored name; `None` for UNSPECIFIED or unknown.
pub fn state_name(state: i32) -> Option<&'static str> {
    match InstanceState::try_from(state).ok()? {
        InstanceState::Unspecified => None,
        InstanceState::Pending => Some("pending"),
        InstanceState::Starting => Some("starting"),
        InstanceState::Ready => Some("ready"),
        InstanceState::Failed => Some("failed"),
        InstanceState::Stopped => Some("stopped"),
    }
}

fn to_report(default_worker: &str, r: InstanceReport) -> Option<InstanceReportIn> {
    Some(InstanceReportIn {
        worker_id: if r.worker_id.is_empty() {
            default_worker.to_string()
        } else {
            r.worker_id
        },
        state: state_name(r.state)?.to_string(),
        instance_id: r.instance_id,
        message: r.message,
        generation: r.generation,
        pull_done_bytes: r.pull_done_bytes,
        pull_total_bytes: r.pull_total_bytes,
    })
}

pub struct WorkersService {
    ctx: Arc<Controller>,
}

pub struct RoutesService {
    ctx: Arc<Controller>,
}

/// Both services, ready to add to a tonic server.
pub fn services(
    ctx: Arc<Controller>,
) -> (WorkersServer<WorkersService>, RoutesServer<RoutesService>) {
    (
        WorkersServer::new(WorkersService { ctx: ctx.clone() }),
        RoutesServer::new(RoutesService { ctx }),
    )
}

#[tonic::async_trait]
impl Workers for WorkersService {
    #[tracing::instrument(skip_all, fields(worker = %req.get_ref().name))]
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let r = req.into_inner();
        if r.name.trim().is_empty() {
            return Err(Status::invalid_argument(
                "worker name is empty: give a stable name such as the host name",
            ));
        }
        if r.ingress_addr.trim().is_empty() {
            return Err(Status::invalid_argument(
                "ingress_addr is empty: give the host:port front ends forward to",
            ));
        }
        let ctx = &self.ctx;
        let id = ctx
            .store
            .register_worker(
                &r.name,
                &r.ingress_addr,
                r.capacity_instances,
                r.memory_mb,
                &|w| ctx.is_live(w),
            )
            .await
            .map_err(internal)?;
        ctx.liveness.seen(&id);
        tracing::info!(worker_id = %id, ingress = %r.ingress_addr, capacity = r.capacity_instances, "worker registered");
        Ok(Response::new(RegisterResponse {
            worker_id: id,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL.as_millis() as u64,
        }))
    }

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id))]
    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let ctx = &self.ctx;
        if !ctx
            .store
            .worker_exists(&r.worker_id)
            .await
            .map_err(internal)?
        {
            tracing::info!("heartbeat from unknown worker: asking it to register");
            return Ok(Response::new(HeartbeatResponse { reregister: true }));
        }
        ctx.liveness.seen(&r.worker_id);
        let reports: Vec<_> = r
            .instances
            .into_iter()
            .filter_map(|i| to_report(&r.worker_id, i))
            .collect();
        ctx.store
            .report_instances(&reports)
            .await
            .map_err(internal)?;
        Ok(Response::new(HeartbeatResponse { reregister: false }))
    }

    type WatchAssignmentsStream = ReceiverStream<Result<Assignments, Status>>;

    #[tracing::instrument(skip_all, fields(worker_id = %req.get_ref().worker_id, from_revision = req.get_ref().from_revision))]
    async fn watch_assignments(
        &self,
        req: Request<WatchAssignmentsRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let r = req.into_inner();
        let ctx = self.ctx.clone();
        if !ctx
            .store
            .worker_exists(&r.worker_id)
            .await
            .map_err(internal)?
        {
            return Err(Status::not_found(format!(
                "worker {:?} is not registered: call Register first",
                r.worker_id
            )));
        }
        let worker_id = r.worker_id;
        let build_ctx = ctx.clone();
        let stream = watch::spawn(ctx, "assignments", r.from_revision, move || {
            let ctx = build_ctx.clone();
            let worker_id = worker_id.clone();
            async move { assignments(&ctx, &worker_id).await }
        });
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(instance = %req.get_ref().instance_id))]
    async fn report_instance(
        &self,
        req: Request<InstanceReport>,
    ) -> Result<Response<ReportAck>, Status> {
        let r = req.into_inner();
        if r.worker_id.is_empty() {
            return Err(Status::invalid_argument(
                "worker_id is empty: send the id Register returned",
            ));
        }
        let ctx = &self.ctx;
        if ctx
            .store
            .worker_exists(&r.worker_id)
            .await
            .map_err(internal)?
        {
            ctx.liveness.seen(&r.worker_id);
        }
        let worker = r.worker_id.clone();
        if let Some(report) = to_report(&worker, r) {
            ctx.store
                .report_instances(&[report])
                .await
                .map_err(internal)?;
        }
        Ok(Response::new(ReportAck {}))
    }
}

/// The assignment snapshot of one worker (revision left for the watch loop).
async fn assignments(ctx: &Controller, worker_id: &str) -> Result<(u64, Assignments), StoreError> {
    let (rev, rows) = ctx.store.assignments_for(worker_id).await?;
    let instances = rows
        .into_iter()
        .map(|a| Assignment {
            instance_id: a.instance_id,
            volume: a.site.clone(),
            site: a.site,
            image: a.image_digest,
            registry_auth: a.registry_auth,
            insecure_registry: a.insecure_registry,
            env: a.env.into_iter().collect::<HashMap<_, _>>(),
            port: a.port,
            memory_mb: INSTANCE_MEMORY_MB,
            cpu_millis: INSTANCE_CPU_MILLIS,
            pids_max: INSTANCE_PIDS_MAX,
            generation: a.generation,
            health_path: HEALTH_PATH.to_string(),
            id_base: a.id_base,
            id_count: if a.id_base == 0 { 0 } else { ID_RANGE_SIZE },
            local_cache: a.local_cache,
        })
        .collect();
    Ok((
        rev,
        Assignments {
            revision: 0,
            instances,
        },
    ))
}

/// The routing table: every site, READY instances on live workers only.
pub async fn route_table(ctx: &Controller) -> Result<(u64, RouteTable), StoreError> {
    let (rev, sites) = ctx.store.routes().await?;
    let sites = sites
        .into_iter()
        .map(|s| SiteRoute {
            hostnames: vec![ctx.hostname(&s.site)],
            site: s.site,
            endpoints: s
                .endpoints
                .into_iter()
                .filter(|e| ctx.is_live(&e.worker_id))
                .map(|e| Endpoint {
                    instance_id: e.instance_id,
                    ingress_addr: e.ingress_addr,
                })
                .collect(),
        })
        .collect();
    Ok((
        rev,
        RouteTable {
            revision: 0,
            domain: ctx.domain.clone(),
            sites,
        },
    ))
}

#[tonic::async_trait]
impl Routes for RoutesService {
    type WatchRoutesStream = ReceiverStream<Result<RouteTable, Status>>;

    #[tracing::instrument(skip_all, fields(from_revision = req.get_ref().from_revision))]
    async fn watch_routes(
        &self,
        req: Request<WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let from = req.into_inner().from_revision;
        let ctx = self.ctx.clone();
        let build_ctx = ctx.clone();
        let stream = watch::spawn(ctx, "routes", from, move || {
            let ctx = build_ctx.clone();
            async move { route_table(&ctx).await }
        });
        Ok(Response::new(stream))
    }
}
