//! Validation of volume names and directory entry names, before anything touches storage.
//!
//! Volume names become object-store key prefixes, so they are restricted to
//! `[a-z0-9-]{1,64}`. Entry names follow POSIX: no `/`, no NUL, not `.` or `..`,
//! at most 255 bytes.

use crate::error::{FsError, FsResult};

/// Longest entry name in bytes (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest volume name.
pub const VOLUME_MAX: usize = 64;

/// Checks a volume name: `[a-z0-9-]{1,64}`.
pub fn validate_volume(name: &str) -> FsResult<()> {
    if name.is_empty() || name.len() > VOLUME_MAX {
        return Err(FsError::Invalid(format!(
            "volume name must be 1 to {VOLUME_MAX} characters"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(FsError::Invalid(
            "volume name may contain only a-z, 0-9 and '-'".to_string(),
        ));
    }
    Ok(())
}

/// Checks a directory entry name.
pub fn validate_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() {
        return Err(FsError::Invalid("empty file name".to_string()));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name == b"." || name == b".." {
        return Err(FsError::Invalid(
            "'.' and '..' cannot be created or removed".to_string(),
        ));
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(FsError::Invalid(
            "file name may not contain '/' or NUL".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names() {
        assert!(validate_volume("site-a1").is_ok());
        assert!(validate_volume("").is_err());
        assert!(validate_volume("Site").is_err());
        assert!(validate_volume("a/b").is_err());
        assert!(validate_volume(&"a".repeat(64)).is_ok());
        assert!(validate_volume(&"a".repeat(65)).is_err());
    }

    #[test]
    fn entry_names() {
        assert!(validate_name(b"hello.txt").is_ok());
        assert!(validate_name("é ü".as_bytes()).is_ok());
        assert_eq!(validate_name(b".").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(validate_name(b"..").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(validate_name(b"a/b").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(validate_name(b"a\0b").unwrap_err().errno(), libc::EINVAL);
        assert_eq!(
            validate_name(&[b'x'; 256]).unwrap_err().errno(),
            libc::ENAMETOOLONG
        );
        assert!(validate_name(&[b'x'; 255]).is_ok());
    }
}
