//! Berth's side: every operation is a gRPC call to `berth-sandboxd` over its Unix
//! socket, exactly as the agent makes it.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use berth_api::sandbox::sandboxes_client::SandboxesClient;
use berth_api::sandbox::{SandboxId, SandboxStatus, StopRequest};
use tonic::transport::Channel;

use crate::setup::Target;
use crate::stats::Iteration;

/// Site name of Berth's benchmark sandboxes (cgroups under `/berth/bench-berth/`).
pub const SITE: &str = "bench-berth";

/// A sandboxd client.
pub struct Berth {
    pub client: SandboxesClient<Channel>,
    pub target: Target,
    /// How often Get is polled while waiting for the process to exit; zero: the
    /// Wait call instead.
    pub poll: Duration,
}

impl Berth {
    /// Create, start, wait for exit (status STOPPED), delete a `/bin/true` sandbox.
    pub async fn lifecycle(&mut self, id: &str) -> anyhow::Result<Iteration> {
        let req = self.target.request(SITE, id, &["/bin/true"]);
        let t0 = Instant::now();
        self.client
            .create(req)
            .await
            .with_context(|| format!("berth create {id}"))?;
        let t1 = Instant::now();
        self.client
            .start(SandboxId { id: id.into() })
            .await
            .with_context(|| format!("berth start {id}"))?;
        let t2 = Instant::now();
        let code = if self.poll.is_zero() {
            let info = tokio::time::timeout(
                Duration::from_secs(30),
                self.client.wait(SandboxId { id: id.into() }),
            )
            .await
            .with_context(|| format!("berth sandbox {id} still not stopped after 30 s"))?
            .with_context(|| format!("berth wait {id}"))?
            .into_inner();
            ensure!(
                info.status() == SandboxStatus::Stopped,
                "berth wait {id} returned status {:?}",
                info.status()
            );
            info.exit_code
        } else {
            loop {
                let info = self
                    .client
                    .get(SandboxId { id: id.into() })
                    .await
                    .with_context(|| format!("berth get {id}"))?
                    .into_inner();
                if info.status() == SandboxStatus::Stopped {
                    break info.exit_code;
                }
                ensure!(
                    t2.elapsed() < Duration::from_secs(30),
                    "berth sandbox {id} still not stopped after 30 s"
                );
                tokio::time::sleep(self.poll).await;
            }
        };
        let t3 = Instant::now();
        self.client
            .delete(SandboxId { id: id.into() })
            .await
            .with_context(|| format!("berth delete {id}"))?;
        let t4 = Instant::now();
        if code != 0 {
            bail!("berth sandbox {id}: /bin/true exited {code}; see the sandbox log");
        }
        Ok(Iteration {
            phases: [t1 - t0, t2 - t1, t3 - t2, t4 - t3],
        })
    }

    /// Creates and starts a sandbox running `sleep 3600`; returns its init's pid.
    pub async fn start_idle(&mut self, id: &str) -> anyhow::Result<i32> {
        let req = self.target.request(SITE, id, &["/bin/sleep", "3600"]);
        self.client
            .create(req)
            .await
            .with_context(|| format!("berth create {id}"))?;
        let info = self
            .client
            .start(SandboxId { id: id.into() })
            .await
            .with_context(|| format!("berth start {id}"))?
            .into_inner();
        ensure!(
            info.status() == SandboxStatus::Running,
            "berth sandbox {id} is {:?} after start",
            info.status()
        );
        Ok(info.pid)
    }

    /// Stops (1 ms grace: `sleep` as pid 1 ignores SIGTERM) and deletes a sandbox.
    pub async fn remove(&mut self, id: &str) -> anyhow::Result<()> {
        self.client
            .stop(StopRequest {
                id: id.into(),
                grace_ms: 1,
            })
            .await
            .with_context(|| format!("berth stop {id}"))?;
        self.client
            .delete(SandboxId { id: id.into() })
            .await
            .with_context(|| format!("berth delete {id}"))?;
        Ok(())
    }
}
