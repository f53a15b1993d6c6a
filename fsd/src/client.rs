//! The FUSE side's gRPC client: lazily connected channels to one or more file
//! servers, failover and retries while they are unreachable, and errno decoding.
//!
//! A call that fails with `UNAVAILABLE` (connection refused, or a server that does not
//! hold the volume's lease) or that dies in flight with a transport error (no errno
//! from the server: the server crashed mid-request) is retried with backoff on the next
//! configured server until the retry window closes, so a restarted server, or another
//! server taking the volume over, is picked up without remounting: the application
//! sees a pause. Any other failure becomes the errno the server put in
//! `x-berth-errno`. A retried non-idempotent call (create, mkdir, unlink, rename)
//! that had already run on the dead server may report EEXIST / ENOENT.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::volume::volumes_client::VolumesClient;
use berth_api::volume::{WatchEvent, WatchRequest};
use berth_api::ERRNO_METADATA_KEY;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status, Streaming};

use crate::service::{BOOT_METADATA_KEY, MOUNT_METADATA_KEY};

/// Puts the mount's id on every request, so the server knows whose promises a
/// change need not break and whom a lookup's promises are for.
#[derive(Debug, Clone)]
pub struct MountHeader(MetadataValue<Ascii>);

impl Interceptor for MountHeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert(MOUNT_METADATA_KEY, self.0.clone());
        Ok(request)
    }
}

/// The generated client, with the mount header.
pub type Rpc = VolumesClient<InterceptedService<Channel, MountHeader>>;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid file server address {addr:?}; use http://host:port")]
    BadAddress {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("no file server address given; pass --server http://host:port[,http://host2:port]")]
    NoServer,
}

/// A reply and the boot id of the server that produced it.
#[derive(Debug)]
pub struct Reply<T> {
    pub value: T,
    pub boot_id: Option<String>,
}

/// gRPC client of the file servers of one volume.
#[derive(Debug, Clone)]
pub struct FsClient {
    servers: Arc<Vec<Rpc>>,
    /// Index of the server calls go to.
    current: Arc<AtomicUsize>,
    retry_window: Duration,
    /// The id of the mount this client serves (a fresh UUID per client).
    mount_id: Arc<str>,
}

impl FsClient {
    /// A client of `server` (e.g. `http://127.0.0.1:7702`), or of several servers
    /// separated by commas, tried in turn. Connects on first use.
    pub fn new(server: &str, retry_window: Duration) -> Result<Self, ClientError> {
        let mount_id = uuid::Uuid::new_v4().to_string();
        let header = MountHeader(
            MetadataValue::try_from(mount_id.as_str()).expect("a UUID is a valid header value"),
        );
        let mut servers = Vec::new();
        for addr in server.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let endpoint = Endpoint::from_shared(addr.to_string())
                .map_err(|source| ClientError::BadAddress {
                    addr: addr.to_string(),
                    source,
                })?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                // 1 MiB reads: HTTP/2's default 64 KiB window would stall each one
                // on window updates.
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(16 << 20)
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(3));
            servers.push(
                VolumesClient::with_interceptor(endpoint.connect_lazy(), header.clone())
                    .max_decoding_message_size(32 << 20)
                    .max_encoding_message_size(32 << 20),
            );
        }
        if servers.is_empty() {
            return Err(ClientError::NoServer);
        }
        Ok(Self {
            servers: Arc::new(servers),
            current: Arc::new(AtomicUsize::new(0)),
            retry_window,
            mount_id: mount_id.into(),
        })
    }

    /// The mount id sent with every request.
    pub fn mount_id(&self) -> &str {
        &self.mount_id
    }

    /// Opens a watch stream on the current server (moving on to the next one if it
    /// is unreachable or does not serve the volume). One attempt: the caller retries.
    pub async fn open_watch(
        &self,
        outbound: impl tokio_stream::Stream<Item = WatchRequest> + Send + 'static,
    ) -> Result<Streaming<WatchEvent>, i32> {
        let index = self.current.load(Ordering::SeqCst) % self.servers.len();
        match self.servers[index].clone().watch(outbound).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                if retryable(&status) {
                    self.fail_over(index);
                }
                Err(errno_of(&status))
            }
        }
    }

    /// Moves calls on from server `from` to the next one (unless another call did).
    fn fail_over(&self, from: usize) {
        let next = (from + 1) % self.servers.len();
        if self
            .current
            .compare_exchange(from, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            && next != from
        {
            tracing::warn!(from, to = next, "switching to the next file server");
        }
    }

    /// [`Self::call`] for the common case of one request message, cloned for each
    /// attempt so a retry on another server sends the same bytes.
    pub async fn unary<Q, T, F, Fut>(&self, op: &'static str, req: Q, f: F) -> Result<Reply<T>, i32>
    where
        Q: Clone,
        F: Fn(Rpc, Q) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.call(op, |c| f(c, req.clone())).await
    }

    /// Runs one call, retrying while the server is unreachable. Errors are errnos.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<Reply<T>, i32>
    where
        F: Fn(Rpc) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.retry_window;
        let mut backoff = Duration::from_millis(50);
        loop {
            let index = self.current.load(Ordering::SeqCst) % self.servers.len();
            match f(self.servers[index].clone()).await {
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
                Err(status) if retryable(&status) => {
                    self.fail_over(index);
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

/// Whether a failed call should be retried (possibly on another server): the server
/// was unreachable, refused to serve the volume for now, or the call died in flight
/// without an answer from the server (which always sends an errno).
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            status.metadata().get(ERRNO_METADATA_KEY).is_none()
        }
        _ => false,
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

    #[tokio::test]
    async fn in_flight_failures_are_retried_server_errors_are_not() {
        assert!(retryable(&Status::unavailable("connection refused")));
        assert!(retryable(&Status::unknown("transport error")));
        let served = crate::error::FsError::Unavailable("lease".into()).into_status();
        assert!(retryable(&served), "a server without the lease sends us on");
        let storage = crate::error::FsError::Corrupt("x".into()).into_status();
        assert!(!retryable(&storage), "a server's own EIO is final");
        assert!(FsClient::new(" , ", Duration::from_secs(1)).is_err());
        assert!(FsClient::new("http://a:1,http://b:2", Duration::from_secs(1)).is_ok());
    }
}
