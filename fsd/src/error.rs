//! The file server's error type and its mapping to POSIX errno and gRPC status.
//!
//! Every failure a volume operation can produce is an [`FsError`]; the gRPC layer turns
//! it into a [`tonic::Status`] carrying the errno in the `x-berth-errno` metadata, so the
//! FUSE client hands the exact errno to the kernel. Internal details (paths, SQL) are
//! logged, never sent to clients.

use berth_api::ERRNO_METADATA_KEY;
use tonic::{Code, Status};

/// What can go wrong in a volume operation.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("file name too long: at most 255 bytes are allowed")]
    NameTooLong,
    #[error("file too large: at most {max} bytes are allowed")]
    TooLarge { max: u64 },
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("extended attribute value too large: at most 64 KiB")]
    ValueTooLarge,
    #[error("no such extended attribute")]
    NoAttr,
    #[error("no space left: the extended attributes of this file are full")]
    NoSpace,
    #[error("volume quota exceeded: {0}; delete files or raise the quota")]
    Quota(String),
    #[error("volume inode quota exceeded; delete files or raise the quota")]
    InodeQuota,
    #[error("a conflicting lock is held")]
    WouldBlock,
    #[error("operation not supported: {0}")]
    NotSupported(String),
    #[error("metadata database failed: {0}; check the state directory's disk")]
    Meta(#[from] sqlx::Error),
    #[error("metadata database read failed: {0}; check the state directory's disk")]
    MetaRead(#[from] rusqlite::Error),
    #[error("metadata migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("object store failed: {0}; check the store directory or bucket")]
    Store(#[from] object_store::Error),
    #[error("volume layout in the object store is corrupt: {0}")]
    Corrupt(String),
    /// This server may not serve the volume now (another one holds its lease, or it is
    /// being taken over); the client should retry, possibly on another server.
    #[error("volume unavailable here: {0}")]
    Unavailable(String),
}

impl FsError {
    /// The POSIX errno the FUSE client should return to the kernel.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::TooLarge { .. } => libc::EFBIG,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::ValueTooLarge => libc::E2BIG,
            FsError::NoAttr => libc::ENODATA,
            FsError::NoSpace | FsError::Quota(_) => libc::ENOSPC,
            FsError::InodeQuota => libc::EDQUOT,
            FsError::WouldBlock => libc::EAGAIN,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::Meta(_)
            | FsError::MetaRead(_)
            | FsError::Migrate(_)
            | FsError::Store(_)
            | FsError::Corrupt(_) => libc::EIO,
            FsError::Unavailable(_) => libc::EAGAIN,
        }
    }

    /// Short label for metrics (`outcome` label).
    pub fn kind(&self) -> &'static str {
        match self {
            FsError::NotFound => "enoent",
            FsError::Exists => "eexist",
            FsError::NotEmpty => "enotempty",
            FsError::NotDir => "enotdir",
            FsError::IsDir => "eisdir",
            FsError::Invalid(_) => "einval",
            FsError::NameTooLong => "enametoolong",
            FsError::TooLarge { .. } => "efbig",
            FsError::NotPermitted(_) => "eperm",
            FsError::ValueTooLarge => "e2big",
            FsError::NoAttr => "enodata",
            FsError::NoSpace | FsError::Quota(_) => "enospc",
            FsError::InodeQuota => "edquot",
            FsError::WouldBlock => "eagain",
            FsError::NotSupported(_) => "eopnotsupp",
            FsError::Meta(_)
            | FsError::MetaRead(_)
            | FsError::Migrate(_)
            | FsError::Store(_)
            | FsError::Corrupt(_) => "eio",
            FsError::Unavailable(_) => "unavailable",
        }
    }

    /// Converts into a gRPC status with the errno in [`ERRNO_METADATA_KEY`]. Internal
    /// errors get a generic message: their detail is logged by the caller, not sent.
    pub fn into_status(self) -> Status {
        let errno = self.errno();
        let (code, message) = match &self {
            FsError::NotFound => (Code::NotFound, self.to_string()),
            FsError::Exists => (Code::AlreadyExists, self.to_string()),
            FsError::Invalid(_) | FsError::NameTooLong | FsError::TooLarge { .. } => {
                (Code::InvalidArgument, self.to_string())
            }
            FsError::NotEmpty | FsError::NotDir | FsError::IsDir => {
                (Code::FailedPrecondition, self.to_string())
            }
            FsError::NotPermitted(_) => (Code::PermissionDenied, self.to_string()),
            FsError::ValueTooLarge | FsError::NotSupported(_) => {
                (Code::InvalidArgument, self.to_string())
            }
            FsError::NoAttr => (Code::NotFound, self.to_string()),
            FsError::NoSpace | FsError::Quota(_) | FsError::InodeQuota => {
                (Code::ResourceExhausted, self.to_string())
            }
            FsError::WouldBlock => (Code::FailedPrecondition, self.to_string()),
            FsError::Unavailable(_) => (Code::Unavailable, self.to_string()),
            FsError::Meta(_)
            | FsError::MetaRead(_)
            | FsError::Migrate(_)
            | FsError::Store(_)
            | FsError::Corrupt(_) => (
                Code::Internal,
                "file server storage failed; see the fsd log".to_string(),
            ),
        };
        let mut status = Status::new(code, message);
        if let Ok(value) = errno.to_string().parse() {
            status.metadata_mut().insert(ERRNO_METADATA_KEY, value);
        }
        status
    }
}

/// Result of a volume operation.
pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_errno() {
        let status = FsError::NotEmpty.into_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let v = status.metadata().get(ERRNO_METADATA_KEY).unwrap();
        assert_eq!(v.to_str().unwrap(), libc::ENOTEMPTY.to_string());
    }
}
