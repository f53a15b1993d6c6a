//! Client of sandboxd's `Sandboxes` gRPC service over its Unix socket.

use std::path::{Path, PathBuf};

use berth_api::sandbox::sandboxes_client::SandboxesClient;
use tonic::transport::{Channel, Endpoint};

/// A sandboxd client. The connection is made lazily and re-made on demand, so sandboxd
/// may start after the agent or restart under it.
pub type SandboxClient = SandboxesClient<Channel>;

/// Builds a client for the sandboxd socket at `path`.
pub fn client(path: &Path) -> Result<SandboxClient, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }));
    Ok(SandboxesClient::new(channel))
}
