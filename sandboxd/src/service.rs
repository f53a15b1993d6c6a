//! The `berth.sandbox.v1.Sandboxes` gRPC service: maps requests onto
//! [`crate::sandboxes::Sandboxes`] and errors onto gRPC status codes.

use std::sync::Arc;
use std::time::Duration;

use berth_api::sandbox::sandboxes_server::Sandboxes as SandboxesApi;
use berth_api::sandbox::{
    CreateRequest, DeleteResponse, ListRequest, ListResponse, SandboxId, SandboxInfo, SandboxStats,
    StopRequest,
};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::sandboxes::{SandboxError, Sandboxes};

/// The gRPC front of the runtime.
#[derive(Clone)]
pub struct SandboxesService {
    sandboxes: Arc<Sandboxes>,
}

impl SandboxesService {
    /// Serves `sandboxes`.
    pub fn new(sandboxes: Arc<Sandboxes>) -> Self {
        Self { sandboxes }
    }
}

fn status(err: SandboxError) -> Status {
    let message = err.to_string();
    match err {
        SandboxError::Invalid(_) => Status::invalid_argument(message),
        SandboxError::NotFound(_) => Status::not_found(message),
        SandboxError::AlreadyExists(_) => Status::already_exists(message),
        SandboxError::WrongState { .. } => Status::failed_precondition(message),
        _ => {
            tracing::error!(error = %message, "sandbox operation failed");
            Status::internal(message)
        }
    }
}

#[tonic::async_trait]
impl SandboxesApi for SandboxesService {
    #[instrument(skip_all, fields(sandbox = %request.get_ref().id, site = %request.get_ref().site))]
    async fn create(
        &self,
        request: Request<CreateRequest>,
    ) -> Result<Response<SandboxInfo>, Status> {
        self.sandboxes
            .create(request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[instrument(skip_all, fields(sandbox = %request.get_ref().id))]
    async fn start(&self, request: Request<SandboxId>) -> Result<Response<SandboxInfo>, Status> {
        self.sandboxes
            .start(&request.get_ref().id)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[instrument(skip_all, fields(sandbox = %request.get_ref().id, grace_ms = request.get_ref().grace_ms))]
    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<SandboxInfo>, Status> {
        let req = request.into_inner();
        let grace = (req.grace_ms > 0).then(|| Duration::from_millis(u64::from(req.grace_ms)));
        self.sandboxes
            .stop(&req.id, grace)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[instrument(skip_all, fields(sandbox = %request.get_ref().id))]
    async fn delete(
        &self,
        request: Request<SandboxId>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.sandboxes
            .delete(&request.get_ref().id)
            .await
            .map(|()| Response::new(DeleteResponse {}))
            .map_err(status)
    }

    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Ok(Response::new(ListResponse {
            sandboxes: self.sandboxes.list(),
        }))
    }

    #[instrument(skip_all, fields(sandbox = %request.get_ref().id))]
    async fn get(&self, request: Request<SandboxId>) -> Result<Response<SandboxInfo>, Status> {
        self.sandboxes
            .get(&request.get_ref().id)
            .map(Response::new)
            .map_err(status)
    }

    #[instrument(skip_all, fields(sandbox = %request.get_ref().id))]
    async fn wait(&self, request: Request<SandboxId>) -> Result<Response<SandboxInfo>, Status> {
        self.sandboxes
            .wait(&request.get_ref().id)
            .await
            .map(Response::new)
            .map_err(status)
    }

    #[instrument(skip_all, fields(sandbox = %request.get_ref().id))]
    async fn stats(&self, request: Request<SandboxId>) -> Result<Response<SandboxStats>, Status> {
        let (record, usage) = self
            .sandboxes
            .stats(&request.get_ref().id)
            .map_err(status)?;
        Ok(Response::new(SandboxStats {
            id: record.id,
            site: record.site,
            cpu_usage_ns: usage.cpu_usage_ns,
            memory_bytes: usage.memory_bytes,
            memory_max_bytes: usage.memory_max_bytes,
            pids: usage.pids,
            oom_kills: usage.oom_kills,
        }))
    }
}
