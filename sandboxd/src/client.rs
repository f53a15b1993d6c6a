//! A client for the agent: connects to sandboxd's Unix socket.

use std::path::{Path, PathBuf};

use berth_api::sandbox::sandboxes_client::SandboxesClient;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors of connecting to sandboxd.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("connecting to sandboxd at {socket}: {source}; is berth-sandboxd running?")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to the sandboxd listening on the Unix socket `socket`. The channel
/// reconnects to the same socket if the daemon restarts.
pub async fn connect(socket: &Path) -> Result<SandboxesClient<Channel>, ClientError> {
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to `path`.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    Ok(SandboxesClient::new(channel))
}
