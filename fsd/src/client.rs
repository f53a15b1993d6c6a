//! The FUSE side's gRPC client: one lazily connected channel to the file server,
//! retries while the server is unreachable, and errno decoding.
//!
//! A call that fails with `UNAVAILABLE` (connection refused or reset: the request did
//! not run) is retried with backoff until the retry window closes, so a restarted file
//! server is picked up without remounting. Any other failure becomes the errno the
//! server put in `x-berth-errno` (EIO if absent).

use std::future::Future;
use std::time::{Duration, Instant};

use berth_api::volume::volumes_client::VolumesClient;
use berth_api::ERRNO_METADATA_KEY;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

use crate::service::BOOT_METADATA_KEY;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid file server address {addr:?}; use http://host:port")]
    BadAddress {
        addr: String,
        source: tonic::transport::Error,
    },
}

/// A reply and the boot id of the server that produced it.
#[derive(Debug)]
pub struct Reply<T> {
    pub value: T,
    pub boot_id: Option<String>,
}

/// gRPC client of one file server.
#[derive(Debug, Clone)]
pub struct FsClient {
    inner: VolumesClient<Channel>,
    retry_window: Duration,
}

impl FsClient {
    /// A client of `server` (e.g. `http://127.0.0.1:7702`). Connects on first use.
    pub fn new(server: &str, retry_window: Duration) -> Result<Self, ClientError> {
        let endpoint = Endpoint::from_shared(server.to_string())
            .map_err(|source| ClientError::BadAddress {
                addr: server.to_string(),
                source,
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let inner = VolumesClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(32 << 20)
            .max_encoding_message_size(32 << 20);
        Ok(Self {
            inner,
            retry_window,
        })
    }

    /// Runs one call, retrying while the server is unreachable. Errors are errnos.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<Reply<T>, i32>
    where
        F: Fn(VolumesClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.retry_window;
        let mut backoff = Duration::from_millis(50);
        loop {
            match f(self.inner.clone()).await {
                Ok(response) => {
                    let boot_id = response
                        .metadata()
                        .get(BOOT_METADATA_KEY)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    return Ok(Reply {
                        value: response.into_inner(),
                        boot_id,
                    });
                }
                Err(status) if status.code() == Code::Unavailable => {
                    if Instant::now() >= deadline {
                        tracing::error!(op, %status, "file server unreachable; giving up");
                        return Err(libc::EIO);
                    }
                    tracing::warn!(
                        op,
                        message = status.message(),
                        "file server unreachable; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(status) => return Err(errno_of(&status)),
            }
        }
    }
}

/// The errno a failed call stands for.
pub fn errno_of(status: &Status) -> i32 {
    if let Some(errno) = status
        .metadata()
        .get(ERRNO_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|e| *e > 0)
    {
        return errno;
    }
    match status.code() {
        Code::NotFound => libc::ENOENT,
        Code::AlreadyExists => libc::EEXIST,
        Code::InvalidArgument => libc::EINVAL,
        Code::PermissionDenied => libc::EACCES,
        Code::Unimplemented => libc::ENOSYS,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_from_metadata_or_code() {
        let mut s = Status::failed_precondition("x");
        s.metadata_mut().insert(
            ERRNO_METADATA_KEY,
            libc::ENOTEMPTY.to_string().parse().unwrap(),
        );
        assert_eq!(errno_of(&s), libc::ENOTEMPTY);
        assert_eq!(errno_of(&Status::not_found("x")), libc::ENOENT);
        assert_eq!(errno_of(&Status::internal("x")), libc::EIO);
    }
}
